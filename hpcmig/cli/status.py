"""`hpcmig status [--json]`: nodes, hpcmig jobs, operations in flight, last decisions.

A client of hpcmigd. The JSON (`--json`) follows hpcmig/data/status.schema.json (fields in
docs/controller.md); a user who is not an admin sees only their own jobs.
"""

from __future__ import annotations

import argparse
import json

from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what hpcmigd knows: nodes, jobs, operations")
    p.add_argument("--json", action="store_true",
                   help="print the status document (hpcmig/data/status.schema.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    answer = _client.ask("status", "asking hpcmigd", timeout=60)
    if args.json:
        print(json.dumps(answer["data"], indent=2, sort_keys=True))
        return 0
    return _client.show(answer, False)
