"""`hpcmig migrate JOBID --from NODE [--to NODE]`: move a running job's container live.

A client of hpcmigd: the container on NODE is checkpointed and restored on a spare node of the
job's allocation (`--comment=hpcmig:spares=N`) while the rest of the job keeps running; every
node's route to its virtual address is re-pointed. Root and the Slurm admin may move any job,
users their own. Each migration is journaled (crash-safe); `--dry-run` prints the plan.
"""

from __future__ import annotations

import argparse

from hpcmig import _cmdline
from hpcmig.cli import _client
from hpcmig.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="move one container of a running job to another node")
    p.add_argument("job_id", metavar="JOBID", type=_cmdline.job_id)
    p.add_argument("--from", dest="source", required=True, metavar="NODE",
                   type=_cmdline.node_name, help="the node the container leaves")
    p.add_argument("--to", dest="target", default=None, metavar="NODE", type=_cmdline.node_name,
                   help="a spare node of the job (default: the first usable spare)")
    p.add_argument("--transport", choices=["shared", "stream"], default="shared",
                   help="images through the shared checkpoint directory (default) or "
                        "streamed node to node (CRIU page server)")
    _client.add_mode(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _client.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.target == args.source:
        raise UsageError(f"--to names the node the container leaves ({args.source})",
                         hint="give another node of the job, or leave --to out")
    answer = _client.ask("migrate", f"migrating job {args.job_id}'s container off "
                         f"{args.source}", job_id=str(args.job_id), source=args.source,
                         target=args.target, transport=args.transport, dry_run=args.dry_run,
                         mode=args.mode)
    return _client.show(answer, args.json)
