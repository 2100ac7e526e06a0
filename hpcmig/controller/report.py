"""What a controller verb answers: a report the CLI prints as a table or as JSON.

Design note: every verb of the service (hpcmig.controller.service) returns one `Report`: a
title, rows of one kind (per container, per node, per operation) with named columns, lines
said after the table, and the exit code the CLI should end with (0: everything done; 1: a
part failed or is still open; the verb says which in its rows). It crosses hpcmigd's RPC as
JSON (`to_json`/`from_json`). No printing and no I/O here: hpcmig/cli/_client.py renders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    verb: str
    title: str = ""
    columns: tuple[str, ...] = ()
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # verb-specific, for --json

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def add(self, **row: Any) -> dict[str, Any]:
        self.rows.append(row)
        return row

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str | None = None, code: int = 1) -> None:
        """Mark the report failed (the CLI exits non-zero), saying why."""
        self.exit_code = max(self.exit_code, code)
        if line:
            self.lines.append(line)

    def to_json(self) -> dict[str, Any]:
        return {"verb": self.verb, "title": self.title, "columns": list(self.columns),
                "rows": self.rows, "lines": self.lines, "exit_code": self.exit_code,
                "ok": self.ok, "data": self.data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        return cls(str(data["verb"]), str(data.get("title", "")),
                   tuple(data.get("columns", ())), list(data.get("rows", [])),
                   list(data.get("lines", [])), int(data.get("exit_code", 0)),
                   dict(data.get("data", {})))


def cell(value: Any) -> str:
    """A row value as the table shows it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(cell(v) for v in value)
    return str(value)
