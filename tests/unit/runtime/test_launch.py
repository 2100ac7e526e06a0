"""`hpcmig run`'s detached launcher and how a step stops it (hpcmig.runtime.launch,
hpcmig.cli.run._wait), with real launchers on this host standing in for a container's: the
stop command runs here as it would run in the container."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcmig.cli import run
from hpcmig.runtime import client, launch


def _start(status: Path) -> int:
    """A real launcher of `sleep 60` reporting to `status`; its pid once it wrote it."""
    subprocess.run([sys.executable, "-m", "hpcmig.runtime.launch", "--status", str(status),
                    "--", "sleep", "60"], check=True, timeout=30)
    deadline = time.monotonic() + 10
    while not (status / "pid").exists():
        assert time.monotonic() < deadline, "the launcher wrote no pid"
        time.sleep(0.05)
    return int((status / "pid").read_text())


def _exit_code(status: Path, within: float = 10.0) -> int | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (status / launch.EXIT).exists():
            return int(json.loads((status / launch.EXIT).read_text())["exit_code"])
        time.sleep(0.05)
    return None


@pytest.fixture
def launchers() -> Iterator[dict[int, Path]]:
    """Launchers a test started: pid -> status directory; ended by pid if still running."""
    started: dict[int, Path] = {}
    yield started
    for pid, status in started.items():
        if not (status / launch.EXIT).exists():
            os.kill(pid, signal.SIGTERM)  # forwarded to its sleep
            assert _exit_code(status) is not None


def test_the_stop_command_signals_the_launcher_of_its_own_run_only(tmp_path: Path,
                                                                   launchers: dict[int, Path]
                                                                   ) -> None:
    mine, other = tmp_path / "run-1-0", tmp_path / "run-0-0"
    pid = _start(mine)
    launchers[pid] = mine
    # the run before a requeue, whose pid file names a pid the next run's launcher now has
    stale = subprocess.run(launch.stop_argv(other, str(pid), signal.SIGTERM), timeout=10)
    assert stale.returncode != 0
    assert _exit_code(mine, within=1.0) is None  # still running
    gone = subprocess.run(launch.stop_argv(mine, "999999999", signal.SIGTERM), timeout=10)
    assert gone.returncode != 0
    own = subprocess.run(launch.stop_argv(mine, str(pid), signal.SIGTERM), timeout=10)
    assert own.returncode == 0
    assert _exit_code(mine) == 128 + signal.SIGTERM  # forwarded to sleep's process group


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The exec protocol replaced by running the command on this host."""
    ran: list[list[str]] = []

    def run_in(_address: str, argv: list[str], timeout: float = 0.0, **_common: Any) -> Any:
        ran.append(argv)
        return subprocess.run(argv, timeout=timeout, capture_output=True)

    monkeypatch.setattr(client, "run_in", run_in)
    monkeypatch.setattr(run, "STOP_GRACE", 2.0)
    return ran


def _stop_soon() -> Any:
    sent: list[bool] = []

    def tick() -> None:  # Slurm's SIGTERM to the step, once it is waiting
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
    return tick


def test_a_stopped_step_ends_its_launcher_with_the_signal(tmp_path: Path, here: Any,
                                                         launchers: dict[int, Path]) -> None:
    status = tmp_path / "run-0-0"
    launchers[_start(status)] = status
    assert run._wait(status, "10.0.0.1", {}, tick=_stop_soon()) == 128 + signal.SIGTERM
    assert len(here) == 1
    assert (status / launch.EXIT).exists()  # the launcher's own record: it ended


def test_a_run_that_outlived_its_requeue_leaves_the_next_runs_launcher_alone(
        tmp_path: Path, here: Any, launchers: dict[int, Path]) -> None:
    old, new = tmp_path / "run-0-0", tmp_path / "run-1-0"
    old.mkdir(mode=0o700)
    pid = _start(new)
    launchers[pid] = new
    (old / "pid").write_text(str(pid))  # the same pid in the new container
    assert run._wait(old, "10.0.0.1", {}, tick=_stop_soon()) == 128 + signal.SIGTERM
    assert len(here) == 1  # it tried, and the check refused
    assert _exit_code(new, within=0.5) is None
    os.kill(pid, signal.SIGTERM)
    assert _exit_code(new) == 128 + signal.SIGTERM
