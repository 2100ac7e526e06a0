"""`hpcmig recover [JOBID] [--dry-run]`: finish or roll back what a crashed controller left.

Design note: what the controller (hpcmigd, or the CLI acting as controller) does when it
restarts, on demand: every journaled operation still open (of one job, or of all jobs) is
finished or rolled back through the agents (`Controller.recover`, the rules in
docs/checkpoint.md), and each outcome is printed. A migration of a job that has ended is
closed (its epilog removed what the migration left). An operation another live hpcmig process
is driving is left alone. Exit 0 when every operation ended done or rolled back, 1 when any is
still open. Root and the configured admin users may recover any job, a user only their own.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sqlite3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="finish or roll back migrations a crash left open")
    p.add_argument("job_id", metavar="JOBID", nargs="?", default=None,
                   help="only this job's operations (default: every job's)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the open operations, change nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hpcmig.controller.evacuate import Controller, describe
    from hpcmig.errors import PermissionDenied, SlurmError

    console = Console(stderr=True)
    ctl = Controller(progress=lambda m: console.print(f"hpcmig: {m}"))
    me = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() != 0 and me not in ctl.cfg.admin_users:
        if args.job_id is None:
            raise PermissionDenied("recovering every job's operations is for root and the "
                                   "hpcmig admins", hint="name one of your jobs: "
                                   "hpcmig recover JOBID")
        try:
            owner = ctl.slurm.job(int(args.job_id)).user
        except SlurmError:
            owner = None  # ended and purged: the journal's own permissions decide
        if owner is not None and owner != me:
            raise PermissionDenied(f"job {args.job_id} belongs to {owner}, not to {me}")
    try:
        found = ctl.recover(args.job_id, dry_run=args.dry_run)
    except (PermissionError, sqlite3.Error) as exc:
        raise PermissionDenied(f"cannot use the controller journal {ctl.journal_path}: {exc}",
                               hint="the controller's state is root's: run it as root") from None
    scope = f"job {args.job_id}" if args.job_id else "any job"
    if not found:
        print(f"nothing to recover for {scope}")
        return 0
    for r in found:
        print(f"operation {r.op.id} ({describe(r.op)}): {r.state}"
              + (f": {r.note}" if r.note else ""))
    return 0 if all(r.state in ("done", "rolled_back") for r in found) else 1
