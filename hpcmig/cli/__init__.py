"""The `hpcmig` command: one module per subcommand, one place that turns errors into exit codes.

Each subcommand module in this package defines `add_parser(subparsers)` and `run(args) -> int`
(Flux's habit). Modules import their heavy dependencies (numba, h5py, Slurm) inside `run`, so
`hpcmig --help` stays fast. Errors derived from `HpcmigError` print one line,
`hpcmig: error: ...`, and exit with the error's code; nothing else is caught here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hpcmig import __version__
from hpcmig.errors import HpcmigError

# Subcommand name -> module under hpcmig.cli. Order is the order of `hpcmig --help`.
SUBCOMMANDS: dict[str, str] = {
    "testbed": "testbed",
    "demo": "demo",
    "run": "run",
    "status": "status",
    "migrate": "migrate",
    "recover": "recover",
    "drain": "drain",
    "resume": "resume",
    "checkpoint": "checkpoint",
    "restore": "restore",
    "map": "map",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcmig",
        description="Keep MPI jobs alive on Slurm clusters when nodes degrade.",
    )
    parser.add_argument("--version", action="version", version=f"hpcmig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(f"hpcmig.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hpcmig.cli.{module_name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def error(message: str, code: int = 1) -> int:
    print(f"hpcmig: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HpcmigError as exc:
        return error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return error("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
