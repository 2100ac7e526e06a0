"""`hpcmig resume NODE`: return a node hpcmig drained to service (a reason somebody else set
is left alone: resume it with scontrol yourself). A client of hpcmigd; admins only."""

from __future__ import annotations

import argparse

from hpcmig import _cmdline
from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="resume a node that hpcmig drained")
    p.add_argument("node", metavar="NODE", type=_cmdline.node_name)
    _client.add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return _client.show(_client.ask("resume", f"resuming {args.node}", node=args.node),
                        args.json)
