"""`hpcmig-prolog` / `hpcmig-epilog`: slurmd's Prolog= and Epilog= for hpcmig jobs.

A job opts in with `--comment=hpcmig[:key=value,...]` (until the SPANK plugin carries
`--hpcmig=`); every other job is untouched and the hook exits 0 at once. A hook exits non-zero
only for a real node fault, because Slurm drains a node whose prolog fails.
"""

from __future__ import annotations

import os
import sys

from hpcmig import _proc
from hpcmig.errors import HpcmigError
from hpcmig.slurm.parse import keyvalues

OPT_IN = "hpcmig"


def parse_opt_in(comment: str) -> dict[str, str] | None:
    """`hpcmig:image=app.sif,spares=1` -> {'image': 'app.sif', 'spares': '1'}; None: not ours."""
    comment = comment.strip()
    if comment != OPT_IN and not comment.startswith(OPT_IN + ":"):
        return None
    opts: dict[str, str] = {}
    for item in comment[len(OPT_IN) + 1:].split(","):
        if item.strip():
            key, _, value = item.partition("=")
            opts[key.strip()] = value.strip()
    return opts


def job_comment(job_id: str) -> str:
    out = _proc.run(["scontrol", "show", "job", "-o", job_id], timeout=20).stdout
    for line in out.splitlines():
        if line.startswith("JobId="):
            return keyvalues(line).get("Comment", "")
    return ""


def _hook(kind: str) -> int:
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not job_id:
        print(f"hpcmig-{kind}: SLURM_JOB_ID is not set; run me from slurmd", file=sys.stderr)
        return 0
    try:
        opts = parse_opt_in(job_comment(job_id))
    except HpcmigError as exc:
        print(f"hpcmig-{kind}: job {job_id}: cannot read the job: {exc}", file=sys.stderr)
        return 0  # not a node fault
    if opts is None:
        return 0
    print(f"hpcmig-{kind}: job {job_id} asked for hpcmig {opts}, but this node has no "
          "virtual-cluster support yet; the job runs without containers", file=sys.stderr)
    return 0


def prolog_main() -> int:
    return _hook("prolog")


def epilog_main() -> int:
    return _hook("epilog")
