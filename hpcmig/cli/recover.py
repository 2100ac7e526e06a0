"""`hpcmig recover [JOBID] [--dry-run]`: finish or roll back what a crashed controller left.

Design note: what hpcmigd does at every start, on demand: every journaled operation still
open (of one job, or of all jobs) is finished or rolled back through the agents, drains a
crash interrupted are carried out again (hpcmig.controller.aftercrash), and each outcome is
printed. It asks hpcmigd when it runs; when it does not, root runs the same code in this
process (the journal and the job locks keep two controllers from working on one job). An
operation another live hpcmig process is driving is left alone. Exit 0 when every operation
ended done or rolled back, 1 when any is still open. Admins only.
"""

from __future__ import annotations

import argparse
import os
import sqlite3

from hpcmig import _cmdline
from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="finish or roll back migrations a crash left open")
    p.add_argument("job_id", metavar="JOBID", nargs="?", default=None, type=_cmdline.job_id,
                   help="only this job's operations (default: every job's)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the open operations, change nothing")
    _client.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcmig.controller.client import ControllerDown
    from hpcmig.errors import PermissionDenied

    job_id = str(args.job_id) if args.job_id is not None else None
    try:
        answer = _client.ask("recover", "recovering", job_id=job_id, dry_run=args.dry_run)
    except ControllerDown:
        if os.geteuid() != 0:
            raise PermissionDenied("hpcmigd is not running, and recovering without it is for "
                                   "root", hint="run it as root, or start hpcmigd") from None
        from hpcmig.controller.service import Service

        svc = Service()
        try:
            answer = svc.recover(job_id, args.dry_run).to_json()
        except (PermissionError, sqlite3.Error) as exc:
            raise PermissionDenied(f"cannot use the controller journal {svc.journal_path}: "
                                   f"{exc}") from None
        answer["lines"].insert(0, "hpcmigd is not running: recovered in this process")
    return _client.show(answer, args.json)
