"""`hpcmig drain NODE [--reason TEXT] [--dry-run]`: empty a node while its jobs keep running.

A client of hpcmigd (hpcmig.controller.service.Service.drain): DRAIN with an `hpcmig:`
reason (one somebody else set is kept), move every hpcmig container on the node live to a
spare node of its job (a job without a free spare, or whose batch step runs there, is
checkpointed whole, requeued without the node and restored elsewhere), shrink each job off the
node once its containers moved, wait until Slurm calls it DRAINED. One row per container;
exit 1 if any container could not leave. Admins only. `--dry-run` prints the same plan.
"""

from __future__ import annotations

import argparse

from hpcmig import _cmdline
from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drain", help="evacuate a node's containers live, then DRAIN it")
    p.add_argument("node", metavar="NODE", type=_cmdline.node_name)
    p.add_argument("--reason", default="evacuating", type=_cmdline.reason,
                   help="drain reason (after 'hpcmig: ')")
    p.add_argument("--transport", choices=["shared", "stream"], default="shared")
    _client.add_mode(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--timeout", type=_cmdline.seconds, default=120.0,
                   help="seconds to wait for Slurm to call the node DRAINED")
    _client.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    answer = _client.ask("drain", f"draining {args.node}", node=args.node, reason=args.reason,
                         transport=args.transport, dry_run=args.dry_run, timeout=args.timeout,
                         mode=args.mode)
    return _client.show(answer, args.json)
