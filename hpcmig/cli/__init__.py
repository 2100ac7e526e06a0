"""The `hpcmig` command: one module per subcommand, one place that turns errors into exit codes.

Each subcommand module in this package defines `add_parser(subparsers)` and `run(args) -> int`
(Flux's habit). Modules import their heavy dependencies (numba, h5py, Slurm) inside `run`, so
`hpcmig --help` stays fast. Bad arguments are refused while parsing (hpcmig._cmdline: checked
types, one line, exit 2), before any work or RPC. Errors derived from `HpcmigError` print one
line, `hpcmig: error: ...`, and exit with the error's code. Anything else is a bug: one line
`hpcmig: internal error: ...` and exit 70 (EX_SOFTWARE); HPCMIG_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hpcmig import __version__
from hpcmig._cmdline import Parser, one_line
from hpcmig.errors import HpcmigError

INTERNAL_ERROR = 70  # sysexits.h EX_SOFTWARE
DEBUG_ENV = "HPCMIG_DEBUG"

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
    "traffic": "traffic",
    "remap": "remap",
    "map": "map",
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    print(f"hpcmig: error: {one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except HpcmigError as exc:
        return error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return error("interrupted", 130)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"hpcmig: internal error: {type(exc).__name__}: {one_line(str(exc))} "
              f"(please report it; {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
