import pytest

from hpcmig.errors import SlurmError
from hpcmig.slurm.parse import NodeInfo
from hpcmig.slurm.reasons import check_resume, drain_update, hpcmig_reason


def node(**kw: object) -> NodeInfo:
    base: dict[str, object] = {"name": "n1", "state": "idle"}
    base.update(kw)
    return NodeInfo(**base)  # type: ignore[arg-type]


def test_reasons_are_prefixed_once() -> None:
    assert hpcmig_reason("evacuating") == "hpcmig: evacuating"
    assert hpcmig_reason("hpcmig: evacuating") == "hpcmig: evacuating"
    with pytest.raises(SlurmError):
        hpcmig_reason("   ")


def test_drain_a_clean_node_sets_our_reason() -> None:
    assert drain_update(node(), "disk errors") == "hpcmig: disk errors"


def test_drain_is_idempotent_for_our_own_reason() -> None:
    drained = node(flags=frozenset({"DRAIN"}), reason="hpcmig: disk errors")
    assert drain_update(drained, "disk errors") is None
    assert drain_update(drained, "other") == "hpcmig: other"


def test_foreign_reason_is_never_overwritten() -> None:
    theirs = node(flags=frozenset({"DRAIN"}), reason="bad dimm", reason_user="admin")
    assert drain_update(theirs, "evacuating") is None
    down = node(state="down", reason="not responding", reason_user="slurm")
    with pytest.raises(SlurmError, match="will not overwrite"):
        drain_update(down, "evacuating")


def test_resume_only_what_we_drained() -> None:
    assert check_resume(node(flags=frozenset({"DRAIN"}), reason="hpcmig: x")) is True
    assert check_resume(node()) is False
    with pytest.raises(SlurmError, match="not by hpcmig"):
        check_resume(node(flags=frozenset({"DRAIN"}), reason="bad dimm", reason_user="root"))
