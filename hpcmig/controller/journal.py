"""The controller's journal: operations (migrations, checkpoints, restores) and their steps.

Design note: one SQLite file in WAL mode with `synchronous=FULL`, so every commit is on disk
(fsync'd) before the call returns; the state machines write a step here *before* they run
it, so after a SIGKILL the journal says which step may have been under way. It stores and
reads; it decides nothing (that is `migration`, `jobckpt`, `recovery`). One `Journal` object
per thread; several processes may share the file (SQLite's locking, a busy timeout).

It also holds job membership (`members`: which container of a job is on which node, the
controller's own record, one row per job and Slurm incarnation), so that a move and the
membership it changes are in one file.

Operation states: `active` (going forward), `rolling_back`, `stuck` (an action that must
succeed failed; `recovery.recover` retries it), and the terminal `done`, `rolled_back`,
`refused`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    job_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    op_id INTEGER NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    result TEXT,
    error TEXT,
    PRIMARY KEY (op_id, seq)
);
CREATE INDEX IF NOT EXISTS operations_state ON operations(state);
CREATE TABLE IF NOT EXISTS members (
    job_id TEXT PRIMARY KEY,
    incarnation INTEGER NOT NULL,
    vcluster TEXT NOT NULL,
    updated REAL NOT NULL
);
"""
OPEN_STATES = ("active", "rolling_back", "stuck")
TERMINAL_STATES = ("done", "rolled_back", "refused")


@dataclass(frozen=True)
class Operation:
    id: int
    kind: str
    job_id: str
    spec: dict[str, Any]
    state: str
    data: dict[str, Any]
    error: str | None
    created: float
    updated: float


@dataclass(frozen=True)
class StepRecord:
    op_id: int
    seq: int
    phase: str  # "forward" or "rollback"
    name: str
    status: str  # "started", "done", "failed"
    started: float
    ended: float | None
    result: dict[str, Any] | None
    error: str | None


class Journal:
    """A journal file; created (0600, its directory fsync'd) on first use."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        fresh = not os.path.exists(path)
        if fresh:
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)  # idempotent (IF NOT EXISTS)
        if fresh:
            dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- operations ------------------------------------------------------------------------
    def begin(self, kind: str, job_id: str, spec: Mapping[str, Any]) -> int:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO operations (kind, job_id, spec, state, created, updated) "
                "VALUES (?, ?, ?, 'active', ?, ?)", (kind, str(job_id), _dump(spec), now, now))
            return int(cur.lastrowid or 0)

    def get(self, op_id: int) -> Operation:
        row = self._db.execute("SELECT * FROM operations WHERE id = ?", (op_id,)).fetchone()
        if row is None:
            raise KeyError(f"no operation {op_id} in {self.path}")
        return _operation(row)

    def operations(self, *, states: tuple[str, ...] | None = None, kind: str | None = None,
                   job_id: str | None = None) -> list[Operation]:
        sql = "SELECT * FROM operations WHERE 1=1"
        args: list[object] = []
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(str(job_id))
        return [_operation(r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def open_operations(self, job_id: str | None = None) -> list[Operation]:
        """Operations recovery must finish or roll back (active, rolling back, stuck)."""
        return self.operations(states=OPEN_STATES, job_id=job_id)

    def set_state(self, op_id: int, state: str, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE operations SET state = ?, error = ?, updated = ? WHERE id = ?",
                       (state, error, time.time(), op_id))

    def update_data(self, op_id: int, **values: Any) -> dict[str, Any]:
        """Merge values into the operation's data (what later steps and recovery need)."""
        with self._tx() as db:
            row = db.execute("SELECT data FROM operations WHERE id = ?", (op_id,)).fetchone()
            data = {**json.loads(row["data"]), **values}
            db.execute("UPDATE operations SET data = ?, updated = ? WHERE id = ?",
                       (_dump(data), time.time(), op_id))
        return data

    # -- steps ----------------------------------------------------------------------------
    def step_started(self, op_id: int, phase: str, name: str) -> int:
        """Journal a step before it runs; returns its sequence number."""
        with self._tx() as db:
            row = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE op_id = ?",
                             (op_id,)).fetchone()
            seq = int(row[0])
            db.execute("INSERT INTO steps (op_id, seq, phase, name, status, started) "
                       "VALUES (?, ?, ?, ?, 'started', ?)", (op_id, seq, phase, name,
                                                             time.time()))
            db.execute("UPDATE operations SET updated = ? WHERE id = ?", (time.time(), op_id))
        return seq

    def step_ended(self, op_id: int, seq: int, status: str,
                   result: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE steps SET status = ?, ended = ?, result = ?, error = ? "
                       "WHERE op_id = ? AND seq = ?",
                       (status, time.time(), None if result is None else _dump(result), error,
                        op_id, seq))

    def steps(self, op_id: int, phase: str | None = None) -> list[StepRecord]:
        sql = "SELECT * FROM steps WHERE op_id = ?"
        args: list[object] = [op_id]
        if phase:
            sql += " AND phase = ?"
            args.append(phase)
        return [StepRecord(r["op_id"], r["seq"], r["phase"], r["name"], r["status"],
                           r["started"], r["ended"],
                           None if r["result"] is None else json.loads(r["result"]), r["error"])
                for r in self._db.execute(sql + " ORDER BY seq", args)]


    # -- membership -------------------------------------------------------------------------
    def set_members(self, job_id: str, incarnation: int, vcluster: Mapping[str, Any]) -> None:
        """Where job `job_id` (Slurm's restart count `incarnation`) has its containers."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO members (job_id, incarnation, vcluster, updated) "
                       "VALUES (?, ?, ?, ?)", (str(job_id), incarnation, _dump(vcluster),
                                               time.time()))

    def members(self, job_id: str) -> tuple[int, dict[str, Any]] | None:
        row = self._db.execute("SELECT incarnation, vcluster FROM members WHERE job_id = ?",
                               (str(job_id),)).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def all_members(self) -> dict[str, tuple[int, dict[str, Any]]]:
        return {r[0]: (int(r[1]), json.loads(r[2])) for r in
                self._db.execute("SELECT job_id, incarnation, vcluster FROM members")}

    def forget_members(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM members WHERE job_id = ?", (str(job_id),))

    def recent(self, limit: int = 10) -> list[Operation]:
        """The last operations that ended, newest first."""
        rows = self._db.execute(
            f"SELECT * FROM operations WHERE state IN ({','.join('?' * len(TERMINAL_STATES))})"
            " ORDER BY updated DESC LIMIT ?", (*TERMINAL_STATES, limit))
        return [_operation(r) for r in rows]


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True)


def _operation(row: sqlite3.Row) -> Operation:
    return Operation(row["id"], row["kind"], row["job_id"], json.loads(row["spec"]),
                     row["state"], json.loads(row["data"]), row["error"], row["created"],
                     row["updated"])
