"""Who owns a node's reason: hpcmig's drain/resume rules, as pure decisions.

hpcmig's reasons start with `hpcmig:`. A reason somebody else set is never overwritten or
cleared: draining a node that already carries a foreign reason keeps it when the node is already
DRAIN (it is being emptied anyway) and refuses otherwise; resuming a node drained by somebody
else is refused.
"""

from __future__ import annotations

from hpcmig.errors import SlurmError
from hpcmig.slurm.parse import HPCMIG_PREFIX, NodeInfo


def hpcmig_reason(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise SlurmError("a drain reason must not be empty")
    return text if text.startswith(HPCMIG_PREFIX) else f"{HPCMIG_PREFIX} {text}"


def drain_update(node: NodeInfo, reason: str) -> str | None:
    """The reason to set when draining `node`, or None when the node is left as it is."""
    wanted = hpcmig_reason(reason)
    if not node.reason or node.reason_is_ours:
        return None if node.drained and node.reason == wanted else wanted
    if node.drained:
        return None  # drained by somebody else: already being emptied; keep their reason
    who = f" by {node.reason_user}" if node.reason_user else ""
    raise SlurmError(
        f"{node.name} has a reason set{who}: '{node.reason}'; hpcmig will not overwrite it",
        "clear it first (scontrol update nodename=... state=resume) or drain the node by hand",
    )


def check_resume(node: NodeInfo) -> bool:
    """True when `node` should be resumed; False when there is nothing to do."""
    if node.reason and not node.reason_is_ours:
        who = f" by {node.reason_user}" if node.reason_user else ""
        raise SlurmError(
            f"{node.name} was drained{who} with reason '{node.reason}', not by hpcmig; "
            "hpcmig will not clear it",
            "resume it with scontrol if that is really meant",
        )
    return node.drained or node.state == "down"
