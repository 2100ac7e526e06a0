"""`hpcmig resume NODE`: return a node hpcmig drained to service (a reason somebody else set
is left alone: resume it with scontrol yourself)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="resume a node that hpcmig drained")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcmig.slurm import Slurm

    node = Slurm().resume(args.node)
    print(f"{node.name}: {node.state}{'+' + '+'.join(sorted(node.flags)) if node.flags else ''}")
    return 0
