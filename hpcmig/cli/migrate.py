"""`hpcmig migrate JOBID --from NODE [--to NODE]`: move a running job's container live.

The container on NODE is checkpointed and restored on a spare node of the job's allocation
(`--comment=hpcmig:spares=N`) while the rest of the job keeps running; every node's route to
its virtual address is re-pointed. Root and the Slurm admin may move any job, users their own
(the agents check the MUNGE identity). Each migration is journaled (crash-safe).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="move one container of a running job to another node")
    p.add_argument("job_id", metavar="JOBID")
    p.add_argument("--from", dest="source", required=True, metavar="NODE")
    p.add_argument("--to", dest="target", default=None, metavar="NODE",
                   help="a spare node of the job (default: the first usable spare)")
    p.add_argument("--transport", choices=["shared", "stream"], default="shared",
                   help="images through the shared checkpoint directory (default) or "
                        "streamed node to node (CRIU page server)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hpcmig.controller.evacuate import Controller, plan_moves

    console = Console(stderr=True)
    ctl = Controller(progress=lambda m: console.print(f"hpcmig: {m}"))
    if args.dry_run:
        vc = ctl.vcluster(args.job_id)
        for mv in plan_moves([vc], args.source, args.target):
            console.print(f"would move container {mv.index} of job {mv.job_id} "
                          f"{mv.source} -> {mv.target or '(nowhere: ' + mv.reason + ')'}")
        return 0
    with console.status(f"migrating job {args.job_id}'s container off {args.source}"):
        outcome = ctl.migrate(args.job_id, args.source, args.target, args.transport)
    print(f"job {args.job_id}: container moved {args.source} -> "
          f"{outcome.data.get('target', args.target or 'spare')}, pause "
          f"{outcome.pause:.2f} s" if outcome.pause is not None else "done")
    return 0
