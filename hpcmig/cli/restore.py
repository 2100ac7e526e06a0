"""`hpcmig restore JOBID [--exclude NODES]`: let a checkpointed job run again.

A client of hpcmigd: the job (stopped and requeued held by `hpcmig checkpoint`) is released,
optionally kept off some nodes; when Slurm starts it, on whatever nodes it gets, its prologs
prepare the virtual cluster and its first `hpcmig run` has hpcmigd restore every container
from the checkpoint, then reattaches to the step that was running (docs/checkpoint.md).
"""

from __future__ import annotations

import argparse

from hpcmig import _cmdline
from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="release a checkpointed job to run again from its "
                                       "checkpoint")
    p.add_argument("job_id", metavar="JOBID", type=_cmdline.job_id)
    p.add_argument("--exclude", default="", metavar="NODES", type=_cmdline.hostlist,
                   help="nodes the restored job must not use (Slurm hostlist)")
    _client.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    answer = _client.ask("restore", f"releasing job {args.job_id}", job_id=str(args.job_id),
                         exclude=args.exclude)
    return _client.show(answer, args.json)
