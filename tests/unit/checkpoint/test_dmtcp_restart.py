"""Real DMTCP on this machine (loopback only, no root needed, no Slurm): a counter and a
2-rank MPI ring are checkpointed mid-run, SIGKILLed, restarted from the last generation and
finish exactly; a crash during a checkpoint leaves the previous generation restartable.

DMTCP is found at $HPCMIG_DMTCP_PREFIX (else on PATH); without it these tests skip with the
reason, and fail when HPCMIG_REQUIRE_INTEGRATION=1. A run that knows its DMTCP cannot checkpoint
its MPI (scripts/distro-test.sh on Debian 13) names the reason in $HPCMIG_DMTCP_MPI_SKIP: the MPI
tests (here and in tests/integration/test_dmtcp_job.py) then skip with it. Every process is
started here in its own session and ended here by pid. The measured times are printed
(pytest -s shows them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from hpcmig import _proc
from hpcmig.checkpoint import CheckpointError, dmtcp, dmtcp_job
from hpcmig.errors import MissingDependency
from hpcmig.mpi import flavour
from hpcmig.workloads.ring import expected

JOBS_BIN = os.path.join(os.environ.get("HPCMIG_PREFIX", "/opt/hpcmig"), "jobs", "bin")
PROCESSES = {"mpich": 4, "openmpi": 3}  # mpiexec (+ hydra proxy) + 2 ranks
ELEMENTS = 4096

COUNTER = """\
import random, sys, time
token = random.getrandbits(48)  # drawn once: a restart that re-ran the program would differ
acc = 0
for n in range(int(sys.argv[1])):
    acc = (acc * 31 + n) % (2**61 - 1)
    print(token, n, acc, flush=True)
    time.sleep(0.05)
print("done", token, acc, flush=True)
"""


def need(reason: str) -> None:
    if os.environ.get("HPCMIG_REQUIRE_INTEGRATION") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def need_mpi_under_dmtcp() -> None:
    """Skip with the reason the runner gave when its DMTCP cannot checkpoint its MPI."""
    if reason := os.environ.get("HPCMIG_DMTCP_MPI_SKIP"):
        pytest.skip(f"MPI under DMTCP: {reason}")


@pytest.fixture(scope="module")
def tools() -> dmtcp.DmtcpTools:
    try:
        return dmtcp.find_dmtcp(os.environ.get("HPCMIG_DMTCP_PREFIX", ""))
    except MissingDependency as exc:
        need(f"{exc} (set HPCMIG_DMTCP_PREFIX to test a copy that is not on PATH)")
        raise


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rpartition(")")[2].split()
    except OSError:
        return None


class Procs:
    """Processes this test started: one session each, ended by pid."""

    def __init__(self) -> None:
        self.sessions: list[int] = []
        self.coordinators: list[dmtcp.Coordinator] = []

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> int:
        pid = _proc.spawn(argv, log_path=str(log), env=env)
        self.sessions.append(pid)
        return pid

    def coordinator(self, tools: dmtcp.DmtcpTools, ckpt: Path) -> dmtcp.Coordinator:
        coord = dmtcp.start_coordinator(tools, str(ckpt))
        self.coordinators.append(coord)
        return coord

    @staticmethod
    def members(sid: int) -> list[int]:
        """Live processes of session sid and their descendants (Hydra puts its proxy and
        every rank in a session of its own; restarted processes keep the restarter's)."""
        table: dict[int, tuple[int, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = _stat(int(name))
                if st and st[0] not in ("Z", "X"):
                    table[int(name)] = (int(st[1]), int(st[3]))
        found = {pid for pid, (_, s) in table.items() if s == sid}
        grew = True
        while grew:
            more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
            found |= more
            grew = bool(more)
        return sorted(found)

    def kill(self, sid: int) -> None:
        for _ in range(50):
            pids = self.members(sid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(sid, os.WNOHANG)

    def wait(self, sid: int, timeout: float) -> None:
        """Until the session's leader is gone (its output is then complete)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(sid, os.WNOHANG)
            st = _stat(sid)
            if st is None or st[0] in ("Z", "X"):
                return
            time.sleep(0.05)
        raise AssertionError(f"session {sid} still running after {timeout}s")

    def close(self) -> None:
        for sid in self.sessions:
            self.kill(sid)
        for coord in self.coordinators:
            coord.stop()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(autouse=True)
def show_logs(tmp_path: Path) -> Iterator[None]:
    """After each test, the tails of its logs: pytest shows them when the test failed."""
    yield
    for log in sorted(tmp_path.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-30:]
        print(f"--- {log.relative_to(tmp_path)} (last {len(lines)} lines)", *lines, sep="\n")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def restart(tools: dmtcp.DmtcpTools, procs: Procs, ckpt: Path, log: Path,
            timeout: float = 60.0) -> tuple[dmtcp.Generation, float]:
    """Restart the last generation on a new coordinator; wait until it ends. Returns the
    generation and the seconds until every process ran again."""
    gen = dmtcp.last_generation(str(ckpt))
    coord = procs.coordinator(tools, ckpt)
    argv = dmtcp.restart_argv(tools, str(ckpt), coord)
    t0 = time.monotonic()
    sid = procs.spawn(argv, os.environ, log)
    dmtcp.wait_running(coord, len(gen.images), timeout=timeout)
    seconds = time.monotonic() - t0
    procs.wait(sid, timeout)
    return gen, seconds


def test_counter_checkpointed_killed_and_restarted_continues_exactly(
        tools: dmtcp.DmtcpTools, procs: Procs, tmp_path: Path) -> None:
    prog = tmp_path / "counter.py"
    prog.write_text(COUNTER)
    ckpt, log, rlog = tmp_path / "ckpt", tmp_path / "job.log", tmp_path / "restart.log"
    coord = procs.coordinator(tools, ckpt)
    argv, env = dmtcp.launch_argv(coord, [sys.executable, str(prog), "60"], os.environ)
    sid = procs.spawn(argv, env, log)
    dmtcp.wait_running(coord, 1)
    wait_for(lambda: log.read_text().count("\n") >= 10, 20, "ten lines")
    gen = dmtcp.checkpoint(coord, timeout=30)
    procs.kill(sid)
    before = [line.split() for line in log.read_text().splitlines()]
    assert before and before[-1][0] != "done"
    restart(tools, procs, ckpt, rlog)

    after = [line.split() for line in rlog.read_text().splitlines()
             if line.split() and line.split()[0].isdigit() or line.startswith("done")]
    token = before[0][0]
    assert after[-1][:2] == ["done", token]
    numbers = [int(fields[1]) for fields in after[:-1]]
    assert all(fields[0] == token for fields in after[:-1])
    first = numbers[0]
    assert 0 < first <= int(before[-1][1]) + 1  # from the checkpoint, not from the start
    assert numbers == list(range(first, 60))
    acc = 0
    for n in range(60):
        acc = (acc * 31 + n) % (2**61 - 1)
        if n >= first:
            assert int(after[n - first][2]) == acc
    assert int(after[-1][2]) == acc
    print(f"\ndmtcp counter: checkpoint {gen.seconds:.2f}s, {gen.image_bytes / 1e6:.1f} MB")


@pytest.mark.parametrize("keep", [True, False])
def test_a_checkpoint_that_cannot_complete_is_reported_hung_and_the_step_kept_or_ended(
        keep: bool, tools: dmtcp.DmtcpTools, procs: Procs, tmp_path: Path) -> None:
    """A process of the job SIGSTOPped: DMTCP's checkpoint waits for it for ever. `hpcmig run`
    asks with --keep-hung (exit HUNG: the job stays suspended, the generation before stays
    the newest, for hpcmigd to restart the job from) and ends the step with `stop` when there
    is no restart; without it, the step is ended at once."""
    prog = tmp_path / "counter.py"
    prog.write_text(COUNTER)
    step, log = tmp_path / "step-1", tmp_path / "job.log"
    coord = dmtcp_job.start(str(step), "127.0.0.1", os.path.dirname(os.path.dirname(
        tools.launch)))
    procs.coordinators.append(coord)
    argv, env = dmtcp.launch_argv(coord, [sys.executable, str(prog), "600"], os.environ)
    sid = procs.spawn(argv, env, log)  # dmtcp_launch execs the counter: sid is its pid
    dmtcp.wait_running(coord, 1)
    before = dmtcp_job.take(str(step), 30)
    os.kill(sid, signal.SIGSTOP)

    def job_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpcmig.checkpoint.dmtcp_job", *args],
                              capture_output=True, text=True, timeout=60)

    t0 = time.monotonic()
    res = job_cli("checkpoint", str(step), "--timeout", "3", *(["--keep-hung"] if keep else []))
    assert 3 <= time.monotonic() - t0 < 30
    assert "not complete after 3s" in res.stderr, res.stderr
    assert dmtcp.generations(str(step)) == [before]
    if keep:
        assert res.returncode == dmtcp_job.HUNG
        assert coord.alive() and _stat(sid) is not None and _stat(sid)[0] == "T"  # suspended
        assert job_cli("stop", str(step)).returncode == 0
    else:
        assert res.returncode == 1 and "so it was ended" in res.stderr
    wait_for(lambda: not coord.alive(), 15, "the coordinator to end")
    os.kill(sid, signal.SIGCONT)  # (stopped, it could not see its coordinator go)
    wait_for(lambda: _stat(sid) is None or _stat(sid)[0] in ("Z", "X"), 15,
             "the job's process to die with its coordinator")


def ring_job(mpi: str, tools: dmtcp.DmtcpTools, procs: Procs, ckpt: Path, log: Path,
             rounds: int, seconds: float, memory_mb: int = 0) -> tuple[dmtcp.Coordinator, int]:
    """A 2-rank ring (the C one) launched under DMTCP over loopback."""
    need_mpi_under_dmtcp()
    launcher = flavour(mpi).mpiexec
    ring = os.path.join(JOBS_BIN, f"ring.{mpi}")
    if shutil.which(launcher) is None or not os.path.exists(ring):
        need(f"{launcher} or {ring} is missing: bash scripts/bootstrap.sh install")
    try:
        env = {**os.environ, **flavour(mpi).environment("lo")}
    except MissingDependency as exc:
        need(str(exc))
    if mpi == "openmpi" and os.geteuid() == 0:
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    coord = procs.coordinator(tools, ckpt)
    cmd = [launcher, "-n", "2", ring, "--elements", str(ELEMENTS), "--rounds", str(rounds),
           "--seconds", str(seconds), "--memory-mb", str(memory_mb)]
    argv, env = dmtcp.launch_argv(coord, cmd, env, mpi)
    sid = procs.spawn(argv, env, log)
    # past start-up, as hpcmigd asks (dmtcp.checkpoint's peers): an Open MPI checkpoint that
    # began 0.5 s after the last rank joined once never completed in CI (a rank kept draining
    # a socket whose peer sent nothing: DMTCP's "Still draining socket")
    dmtcp.wait_running(coord, PROCESSES[mpi], timeout=30, settle=dmtcp.SETTLE)
    return coord, sid


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_mpi_ring_checkpointed_killed_and_restarted_gives_the_exact_checksum(
        mpi: str, tools: dmtcp.DmtcpTools, procs: Procs, tmp_path: Path) -> None:
    ckpt, log, rlog = tmp_path / "ckpt", tmp_path / "job.log", tmp_path / "restart.log"
    rounds = 250
    coord, sid = ring_job(mpi, tools, procs, ckpt, log, rounds=rounds, seconds=4.0)
    time.sleep(0.5)  # mid-run
    first = dmtcp.checkpoint(coord, timeout=60)
    second = dmtcp.checkpoint(coord, timeout=60)
    procs.kill(sid)  # launcher, proxy and ranks, by pid
    assert "ring:" not in log.read_text()  # killed before it finished
    assert [g.number for g in dmtcp.generations(str(ckpt))] == [1, 2]
    assert len(second.images) == PROCESSES[mpi]

    gen, restart_seconds = restart(tools, procs, ckpt, rlog)
    assert gen == second
    out = rlog.read_text()
    want = expected(2, ELEMENTS, rounds)
    assert f"ring: PASS checksum={want} expected={want} ranks=2" in out, out[-2000:]
    print(f"\ndmtcp {mpi} ring (2 ranks, {len(gen.images)} processes): checkpoint "
          f"{first.seconds:.2f}s then {second.seconds:.2f}s (+{second.publish_seconds:.2f}s "
          f"fsync/publish), {second.image_bytes / 1e6:.0f} MB uncompressed; restart to all "
          f"running {restart_seconds:.2f}s")


@pytest.mark.parametrize("victim", ["coordinator", "job"])
def test_a_crash_during_a_checkpoint_leaves_the_previous_generation_restartable(
        victim: str, tools: dmtcp.DmtcpTools, procs: Procs, tmp_path: Path) -> None:
    ckpt, log, rlog = tmp_path / "ckpt", tmp_path / "job.log", tmp_path / "restart.log"
    rounds = 250
    # 64 MiB of ballast per rank: the second checkpoint lasts long enough to be hit
    coord, sid = ring_job("mpich", tools, procs, ckpt, log, rounds=rounds, seconds=4.0,
                          memory_mb=64)
    time.sleep(0.5)
    first = dmtcp.checkpoint(coord, timeout=60)
    failure: list[BaseException] = []

    def second() -> None:
        try:
            dmtcp.checkpoint(coord, timeout=60)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    work = ckpt / "gen-2.tmp"
    wait_for(lambda: work.is_dir() and any(p.name.endswith(".temp") for p in work.iterdir()),
             30, "images being written")
    if victim == "coordinator":
        os.kill(coord.pid, signal.SIGKILL)
    procs.kill(sid)
    thread.join(60)
    assert not thread.is_alive()
    assert failure and isinstance(failure[0], CheckpointError), failure
    assert dmtcp.generations(str(ckpt)) == [first]

    gen, _ = restart(tools, procs, ckpt, rlog)
    assert gen == first
    want = expected(2, ELEMENTS, rounds)
    out = rlog.read_text()
    assert f"ring: PASS checksum={want} expected={want} ranks=2" in out, out[-2000:]
