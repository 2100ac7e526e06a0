"""What the controller verbs of `hpcmig` share: ask hpcmigd, print its report.

Design note: the verbs (drain, resume, migrate, checkpoint, restore, recover, status) are thin
clients: parse, send one request to hpcmigd (hpcmig.controller.client), print the `Report` it
answers as a table (rich) or, with `--json`, as JSON on stdout, and exit with the report's
code. A spinner on stderr shows that a long operation is under way.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def add_mode(p: argparse.ArgumentParser) -> None:
    """--mode of the verbs that move containers live (migrate, drain)."""
    from hpcmig.config import MIGRATION_MODES

    p.add_argument("--mode", choices=MIGRATION_MODES, default=None,
                   help="postcopy: the container runs again before its memory arrived "
                        "(short pause); stop-and-copy: all memory first (default: the "
                        "site's migration_mode)")


def ask(op: str, doing: str, timeout: float = 3600.0, **args: Any) -> Any:
    """Call hpcmigd's `op`, with a spinner saying what it is doing."""
    from rich.console import Console

    from hpcmig.controller.client import ControllerClient

    client = ControllerClient(timeout=timeout)
    console = Console(stderr=True)
    if not console.is_terminal:
        return client.call(op, **args)
    with console.status(doing):
        return client.call(op, **args)


def show(answer: dict[str, Any], as_json: bool) -> int:
    """Print a report hpcmigd answered; its exit code."""
    from rich.console import Console
    from rich.table import Table

    from hpcmig.controller.report import Report, cell

    report = Report.from_json(answer)
    if as_json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
        return report.exit_code
    console = Console()
    if report.rows:
        table = Table(title=report.title or None, title_justify="left")
        for col in report.columns:
            table.add_column(col)
        for row in report.rows:
            table.add_row(*(cell(row.get(col)) for col in report.columns))
        console.print(table)
    for line in report.lines:
        print(line, file=sys.stdout if report.ok else sys.stderr)
    return report.exit_code
