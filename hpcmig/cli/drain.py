"""`hpcmig drain NODE [--reason TEXT] [--dry-run]`: empty a node while its jobs keep running.

DRAINs the node in Slurm with an `hpcmig:` reason (a reason somebody else set is kept), moves
every hpcmig container on it to a spare node of its job, in parallel, journaled, then shrinks
each job off the node so that Slurm can call it DRAINED. Admins only (root or SlurmUser).
`--dry-run` prints the plan and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import time


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drain", help="evacuate a node's containers live, then DRAIN it")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--reason", default="evacuating", help="drain reason (after 'hpcmig: ')")
    p.add_argument("--transport", choices=["shared", "stream"], default="shared")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for Slurm to call the node DRAINED")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hpcmig.controller.evacuate import Controller
    from hpcmig.errors import PermissionDenied

    console = Console(stderr=True)
    ctl = Controller(progress=lambda m: console.print(f"hpcmig: {m}"))
    vcs, moves = ctl.plan_drain(args.node)
    if args.dry_run:
        console.print(f"would drain {args.node} (reason 'hpcmig: {args.reason}')")
        for mv in moves:
            console.print(f"would move container {mv.index} of job {mv.job_id} -> "
                          f"{mv.target or '(nowhere: ' + mv.reason + ')'}")
        if not moves:
            console.print("no hpcmig container on it")
        return 0
    if os.geteuid() != 0:
        raise PermissionDenied("draining a node is for root and the Slurm admin")
    ctl.slurm.drain(args.node, f"hpcmig: {args.reason}")
    console.print(f"hpcmig: {args.node} DRAIN set; {len(moves)} container(s) to move")
    t0 = time.monotonic()
    outcomes = ctl.evacuate(args.node, args.transport)
    pauses = [o.pause for o in outcomes if o.pause is not None]
    console.print(f"hpcmig: {len(outcomes)} container(s) moved in "
                  f"{time.monotonic() - t0:.1f} s"
                  + (f", pauses {', '.join(f'{p:.2f} s' for p in pauses)}" if pauses else ""))
    with console.status(f"waiting for Slurm to call {args.node} DRAINED"):
        deadline = time.monotonic() + args.timeout
        node = ctl.slurm.node(args.node)
        while not (node.state in ("idle", "down") and "DRAIN" in node.flags):
            if time.monotonic() > deadline:
                console.print(f"hpcmig: {args.node} is {node.state}+{'+'.join(node.flags)}: "
                              "a job without hpcmig (or its batch step) still runs there")
                return 1
            time.sleep(0.5)
            node = ctl.slurm.node(args.node)
    print(f"{args.node} DRAINED, empty of hpcmig containers")
    return 0
