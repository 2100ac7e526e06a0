"""`hpcmig remap JOBID [--dry-run]`: move a running job's containers to fit its traffic.

A client of hpcmigd (hpcmig.controller.remap): from the traffic hpcmig measured between the
job's containers and the cluster's topology (Slurm's topology.conf), it plans live moves to
the job's free nodes (spares) that cut the job's hop-bytes, and carries them out only when
the predicted saving over the job's remaining time is at least twice the pauses (`--force`:
anyway). `--dry-run` prints the plan, the predicted saving and the cost. The model is in
docs/topology.md. Root and the Slurm admin may remap any job, users their own.
"""

from __future__ import annotations

import argparse
import os

from hpcmig import _cmdline
from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("remap", help="move a running job's containers to fit its measured "
                       "traffic, when it pays")
    p.add_argument("job_id", metavar="JOBID", type=_cmdline.job_id)
    p.add_argument("--topology", metavar="FILE", default="",
                   help="topology.conf to plan on (admins; default: the one beside "
                        "slurm.conf)")
    p.add_argument("--force", action="store_true",
                   help="move even when the saving does not pay for the pauses")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, the predicted saving and the cost; change nothing")
    _client.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    topology = os.path.abspath(args.topology) if args.topology else ""
    answer = _client.ask("remap", f"remapping job {args.job_id}", job_id=str(args.job_id),
                         topology=topology, dry_run=args.dry_run, force=args.force)
    return _client.show(answer, args.json)
