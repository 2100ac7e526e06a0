"""Start mpi4py programs on this machine over loopback, under MPICH or Open MPI, bounded.

Each launch runs in its own session; whatever is left of it when a test ends (a timeout, a
rank the test killed, ranks orphaned by a killed launcher) is killed by pid, found by session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcmig import mpi
from hpcmig.errors import HpcmigError

HERE = Path(__file__).parent
DRIVER = HERE / "mpi_driver.py"
HEAT = Path(__file__).parents[3] / "jobs" / "app_ckpt_heat.py"
FLAVOURS = ["mpich", "openmpi"]


def environment(flavour: str, **extra: str) -> dict[str, str]:
    """This flavour's variables on loopback, or skip saying what is missing."""
    fl = mpi.flavour(flavour)
    if shutil.which(fl.mpiexec) is None:
        pytest.skip(f"{fl.mpiexec} is not installed")
    try:
        env = {**os.environ, **fl.environment("lo")}
    except HpcmigError as exc:
        pytest.skip(f"{flavour} cannot run here: {exc}")
    env = {k: v for k, v in env.items() if not k.startswith(("HPCMIG_APP_CKPT", "SLURM_"))}
    if flavour == "openmpi":  # root in CI containers; a 2-core machine running 3 ranks
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMPI_MCA_rmaps_base_oversubscribe="1",  # Open MPI 4; 5 (PRRTE):
                   PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    env.update(extra)
    return env


def argv(flavour: str, n: int, program: Path, *args: str) -> list[str]:
    return [mpi.flavour(flavour).mpiexec, "-n", str(n), sys.executable, str(program), *args]


class Launch:
    """One mpiexec in its own session, with the pids its ranks wrote to `piddir`."""

    def __init__(self, cmd: list[str], env: dict[str, str], piddir: Path | None = None) -> None:
        self.piddir = piddir
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"mpiexec did not finish in {timeout:g}s:\n{out}\n{err}")
        return self.proc.returncode, out, err

    def rank_pid(self, rank: int) -> int:
        assert self.piddir is not None
        return int((self.piddir / f"rank{rank}").read_text())

    def session(self) -> list[int]:
        """Pids still in this launch's session (Open MPI puts each rank in its own process
        group, so the launcher's group alone misses them)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rpartition(")")[2].split()
                except OSError:
                    continue
                if int(fields[3]) == self.proc.pid and fields[0] != "Z":
                    pids.append(int(entry.name))
        return pids

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL every process of the launch, and wait until none is left."""
        deadline = time.monotonic() + timeout
        while pids := self.session():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.05)
            if time.monotonic() > deadline:
                pytest.fail(f"processes {pids} outlived SIGKILL")
            time.sleep(0.02)


@contextlib.contextmanager
def launched(cmd: list[str], env: dict[str, str], piddir: Path | None = None
             ) -> Iterator[Launch]:
    launch = Launch(cmd, env, piddir)
    try:
        yield launch
    finally:
        launch.kill()
        if launch.proc.stdout is not None and not launch.proc.stdout.closed:
            launch.proc.communicate()  # reap it and close the pipes


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    with launched(cmd, env) as launch:
        return launch.wait(timeout)


def wait_for(condition: Callable[[], bool], launch: Launch, timeout: float = 30,
             ended_ok: bool = False) -> None:
    """Poll `condition`; fail if it stays false `timeout` seconds, or if the launch ends
    first (unless `ended_ok`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if launch.proc.poll() is not None and not ended_ok:
            out, err = launch.proc.communicate()
            pytest.fail(f"mpiexec ended ({launch.proc.returncode}) before the test could act:"
                        f"\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"nothing happened in {timeout:g}s")
        time.sleep(0.02)
