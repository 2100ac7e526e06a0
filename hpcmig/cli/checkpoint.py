"""`hpcmig checkpoint JOBID [--resume]`: checkpoint a whole running job.

A client of hpcmigd: every container of the job is frozen behind a network lock, dumped and
verified (a consistent cut; journaled, crash-safe). By default the job then stops and is
requeued held: it keeps its id, addresses and files, and `hpcmig restore JOBID` lets it run
again, on any nodes, from the checkpoint. `--resume` keeps the job running instead (a
restart point). Admins may checkpoint any job, users their own.
"""

from __future__ import annotations

import argparse

from hpcmig import _cmdline
from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint a whole job; stop and requeue it held")
    p.add_argument("job_id", metavar="JOBID", type=_cmdline.job_id)
    p.add_argument("--resume", action="store_true",
                   help="keep the job running after the checkpoint")
    _client.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    answer = _client.ask("checkpoint", f"checkpointing job {args.job_id}",
                         job_id=str(args.job_id), resume=args.resume)
    return _client.show(answer, args.json)
