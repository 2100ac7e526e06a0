"""The testbed's hpcmigd as the tests use it: its verbs, its view of a job, restarting it.

Every verb goes through hpcmigd's RPC (what the CLI does), so the tests exercise the one
controller the product runs. `restart(fault=...)` starts it again with HPCMIG_FAULT set, so
a test can have it SIGKILL or SIGSTOP itself at a journaled step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from hpcmig.controller.client import ControllerClient
from hpcmig.controller.report import Report
from hpcmig.testbed import cluster, daemons


def call(op: str, **args: Any) -> Report:
    return Report.from_json(ControllerClient().call(op, **args))


def migrate(job_id: int, source: str, target: str | None = None,
            transport: str = "shared") -> dict[str, Any]:
    """Move the job's container off `source`; the report's row (asserts it moved)."""
    report = call("migrate", job_id=str(job_id), source=source, target=target,
                  transport=transport)
    [row] = report.rows
    assert report.ok and row["result"] == "moved", report.to_json()
    return row


def status() -> dict[str, Any]:
    return dict(ControllerClient().call("status", timeout=60)["data"])


def host_of(job_id: int, index: int) -> str:
    """Where hpcmigd says container `index` of the job runs."""
    for job in status()["jobs"]:
        if job["job_id"] == str(job_id):
            return str(next(c["node"] for c in job["containers"] if c["index"] == index))
    raise AssertionError(f"hpcmigd knows no running hpcmig job {job_id}")


def proc() -> daemons.Proc:
    p = cluster.controller()
    assert p is not None, "the testbed recorded no hpcmigd"
    return p


def alive() -> bool:
    return daemons.alive(proc())


def restart(fault: str | None = None) -> daemons.Proc:
    """Stop hpcmigd if it runs (stopped ones included), start it again (with HPCMIG_FAULT
    `fault`); returns once it answers and its start-up recovery ended."""
    p = proc()
    if daemons.alive(p):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
        daemons.stop([p])
    return cluster.restart_controller({"HPCMIG_FAULT": fault} if fault else None)


def ensure_running() -> None:
    if not alive():
        restart()


def wait_healthy(nodes: list[str], since: float, timeout: float = 30) -> None:
    """Until hpcmigd judged a sample of every node taken after `since` and found nothing (so
    resuming a node cannot race a stale finding into a new drain)."""
    deadline = time.monotonic() + timeout
    while True:
        health = {n["name"]: n["health"] for n in status()["nodes"]}
        sick = {name: h for name in nodes
                if (h := health.get(name)) is None or h["sampled"] <= since or h["findings"]}
        if not sick:
            return
        assert time.monotonic() < deadline, f"hpcmigd still sees: {sick}"
        time.sleep(0.3)
