"""DMTCP: hpcmig's user-space checkpoint engine for whole MPI jobs (engine=dmtcp).

Design note: this module owns DMTCP's command lines and one job's checkpoint directory:
finding the tools (`find_dmtcp`: PATH, or the `dmtcp_prefix` of hpcmig.toml), the job's own
coordinator (`start_coordinator`), wrapping the job's launcher (`launch_argv`), a checkpoint
published as a generation (`checkpoint`), and the restart command (`restart_argv`). It does
not decide when to checkpoint or where to restart, and keeps no job record: that is `hpcmig
run`'s and hpcmigd's. Every command goes through hpcmig._proc.

DMTCP preloads itself into every process started under `dmtcp_launch` (launcher, proxies,
ranks) and checkpoints them together, as the job's user. It cannot take over a container or
a job it did not start, so the container-level `Engine` registered as "dmtcp" answers every
container operation with a UsageError that says so; `get_engine("dmtcp")` still works.

A job's checkpoint directory (0700; images 0600: they hold the job's memory):

    current -> gen-<n>.tmp | gen-<n>   the --ckptdir every DMTCP process writes through
    gen-<n>/       one complete generation: ckpt_*.dmtcp, their ckpt_*_files/ (copies of
                   files DMTCP saved), dmtcp_restart_script*.sh, session.tar (session/ at
                   the checkpoint, put back for a restart), GENERATION.json
    gen-<n>.tmp/   a checkpoint in progress, or one a crash interrupted (never restarted)
    session/       Open MPI's session directory (orte_tmpdir_base), kept with the job
    tmp/           DMTCP's --tmpdir (its logs and pid maps), kept with the job
    coordinator.log, coordinator.port

`checkpoint` points `current` at a fresh gen-<n>.tmp, asks the coordinator, waits until
DMTCP's restart script and every image it names are written, then renames the directory to
gen-<n> (the atomic publication) and keeps the newest two. A crash at any moment leaves the
previous generation whole. DMTCP stores the absolute path of its saved file copies inside
the images, which is why processes write through `current` and `restart_argv` points
`current` back at the generation it restarts. A restarted process takes the real path of the
directory it was restarted from as its own (DMTCP 4.2.0), so without hpcmig's plugin (PLUGIN,
which points it back at `current` before every checkpoint) its next checkpoint would be
written over the generation it restarted from. dmtcp_command --bcheckpoint does not block in
DMTCP 4.2.0, hence the wait on the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from hpcmig import _proc
from hpcmig.checkpoint import _session
from hpcmig.checkpoint.base import CheckpointError, DumpStats, Engine, register
from hpcmig.errors import CommandError, MissingDependency, UsageError
from hpcmig.mpi import PREFIX, flavour
from hpcmig.runtime.base import Container

NOT_FOUND = ("DMTCP not found on PATH or at dmtcp_prefix; "
             "install it from your site or Spack (spack install dmtcp)")
TOOLS = {"launch": "dmtcp_launch", "command": "dmtcp_command", "restart": "dmtcp_restart",
         "coordinator": "dmtcp_coordinator"}
KEEP = 2  # complete generations kept
CURRENT = "current"
SESSION = "session"
TMP = "tmp"  # DMTCP's --tmpdir: its logs and pid maps, per job, not in /tmp
# hpcmig's DMTCP plugin (native/dmtcp_multihost.c): what a job needs of DMTCP 4.2.0 across hosts
# and after a restart
PLUGIN = os.path.join(PREFIX, "lib", "libhpcmig-dmtcp.so")
MANIFEST = "GENERATION.json"
# dmtcp_restart runs without address space randomization (util-linux's setarch): DMTCP
# 4.2.0's mtcp_restart puts the program break back with brk() from its own, and with its
# break at random a restarted rank sometimes segfaulted in malloc on its heap (SEGV_ACCERR;
# the Open MPI crash test failed 3 of 4 runs one day, 2 of 5 another). Not the launch:
# MPICH's C ring then segfaulted at once under dmtcp_launch.
NO_RANDOMIZE = ("setarch", "--addr-no-randomize")
RESTART_SCRIPT = "dmtcp_restart_script.sh"  # DMTCP's symlink, made after its script

# What each MPI needs under DMTCP 4.2.0 (Debian 12's MPICH 4.0 ch4:ucx, Open MPI 4.1); set
# over the job's own values. MPICH: without UCX_TLS UCX uses SysV shm (DMTCP's svipc plugin
# aborts in MPI_Init); without UCX_MEM_MMAP_HOOK_MODE MPI_Init deadlocks in DMTCP's dlsym;
# without HWLOC_COMPONENTS hwloc opens a block device DMTCP cannot checkpoint. Open MPI:
# orte_leave_session_attached keeps each orted under the rsh that started it (DMTCP's
# dmtcp_ssh/dmtcp_sshd pair, checkpointed with the job) instead of --daemonize; a job with
# two or more daemonized orteds did not restart (both left 5 s into the restart, 5 of 5 runs).
MPI_ENV: dict[str, dict[str, str]] = {
    "mpich": {"UCX_TLS": "tcp,self", "UCX_MEM_MMAP_HOOK_MODE": "none",
              "HWLOC_COMPONENTS": "-linuxio"},
    "openmpi": {"HWLOC_COMPONENTS": "-linuxio", "OMPI_MCA_btl": "self,tcp",
                "OMPI_MCA_pml": "ob1", "UCX_TLS": "tcp,self",
                "UCX_MEM_MMAP_HOOK_MODE": "none", "OMPI_MCA_orte_leave_session_attached": "1"},
}
# Open MPI's rsh launcher starts this many daemons at once (its default) and, with the
# sessions left attached, refuses a job with more: launch_argv raises it to the job's hosts
OMPI_CONCURRENT = 128

_GEN = re.compile(r"^gen-(\d+)(\.tmp)?$")
_IMAGE = re.compile(r"/[^\s\"']*/(ckpt_[^\s\"'/]+\.dmtcp)(?=[\s\"'])")
_PROCESSES = re.compile(r"^# Number of processes in the computation = (\d+)", re.M)
_WORKERS = re.compile(r"^worker_ckpts='([^']*)'", re.M)
_WORKER = re.compile(r"::\s*(\S+)\s*:[a-z]+:\s*([^:]+)")
_POLL = 0.02
SETTLE = 1.0  # s without a process joining or leaving before a checkpoint is asked for
SETTLE_TIMEOUT = 60.0


class CheckpointHung(CheckpointError):
    """A checkpoint that began and did not complete in time: DMTCP keeps the job suspended
    (every process waits for the checkpoint) and has no way to call it off."""


@dataclass(frozen=True)
class DmtcpTools:
    """Absolute paths of the four DMTCP programs hpcmig runs."""

    launch: str
    command: str
    restart: str
    coordinator: str


def find_dmtcp(prefix: str = "") -> DmtcpTools:
    """DMTCP's programs in `<prefix>/bin`, or on PATH when prefix is ""."""
    found: dict[str, str] = {}
    for key, name in TOOLS.items():
        path = os.path.join(prefix, "bin", name) if prefix else shutil.which(name)
        if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise MissingDependency(NOT_FOUND)
        found[key] = os.path.abspath(path)
    return DmtcpTools(**found)


@dataclass(frozen=True)
class Status:
    peers: int  # processes connected (launcher, proxies and ranks alike)
    running: bool  # False while a checkpoint or a restart is in progress


def parse_status(text: str) -> Status:
    """`dmtcp_command --status` output -> Status."""
    peers = re.search(r"NUM_PEERS=(\d+)", text)
    running = re.search(r"RUNNING=(yes|no)", text)
    if not peers or not running:
        raise CheckpointError(f"unexpected dmtcp_command --status output: {text.strip()!r}")
    return Status(int(peers.group(1)), running.group(1) == "yes")


def _start_ticks(pid: int) -> int | None:
    """The start time of pid (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True)
class Coordinator:
    """One job's dmtcp_coordinator, started on this host (see `start_coordinator`)."""

    tools: DmtcpTools
    ckpt_dir: str
    host: str
    port: int
    pid: int
    started: int  # the pid's start time: a recycled pid is never taken for it

    @property
    def current(self) -> str:
        return os.path.join(self.ckpt_dir, CURRENT)

    @property
    def tmpdir(self) -> str:
        return os.path.join(self.ckpt_dir, TMP)

    def address(self) -> list[str]:
        return ["--coord-host", self.host, "--coord-port", str(self.port)]

    def alive(self) -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)  # reap it if it is our exited child
        return _start_ticks(self.pid) == self.started

    def status(self, timeout: float = 10.0) -> Status:
        res = _proc.run([self.tools.command, *self.address(), "--status"], timeout=timeout,
                        check=False)
        if res.returncode != 0:
            raise CheckpointError(f"the DMTCP coordinator at {self.host}:{self.port} does not "
                                  f"answer: {(res.stderr or res.stdout).strip()}")
        return parse_status(res.stdout)

    def stop(self, timeout: float = 10.0) -> None:
        """End the coordinator by its pid (TERM, then KILL); nothing if it is gone already.
        A process still connected to it dies with it (DMTCP's rule)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.alive():
                time.sleep(_POLL)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Coordinator:
        return cls(**{**data, "tools": DmtcpTools(**data["tools"])})


def _mkdir_private(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _point_current(ckpt_dir: str, target: str) -> None:
    """Atomically make `<ckpt_dir>/current` a symlink to target (a name inside ckpt_dir)."""
    tmp = os.path.join(ckpt_dir, f".{CURRENT}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, os.path.join(ckpt_dir, CURRENT))


def _numbers(ckpt_dir: str) -> list[tuple[int, bool, str]]:
    """(number, in progress?, path) of every gen-<n> and gen-<n>.tmp directory."""
    found = []
    for name in os.listdir(ckpt_dir):
        m = _GEN.match(name)
        if m and os.path.isdir(os.path.join(ckpt_dir, name)):
            found.append((int(m.group(1)), bool(m.group(2)), os.path.join(ckpt_dir, name)))
    return sorted(found)


def _begin_generation(ckpt_dir: str) -> tuple[int, str]:
    """Drop interrupted checkpoints, make gen-<n>.tmp and point `current` at it."""
    for _, partial, path in _numbers(ckpt_dir):
        if partial:
            shutil.rmtree(path, ignore_errors=True)
    number = max((n for n, _, _ in _numbers(ckpt_dir)), default=0) + 1
    work = os.path.join(ckpt_dir, f"gen-{number}.tmp")
    os.mkdir(work, 0o700)
    _point_current(ckpt_dir, os.path.basename(work))
    return number, work


@contextlib.contextmanager
def _locked(ckpt_dir: str) -> Iterator[None]:
    """One checkpoint or restart set-up at a time per job directory."""
    fd = os.open(os.path.join(ckpt_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"another checkpoint of {ckpt_dir} is in progress") from None
        yield
    finally:
        os.close(fd)


def _prepare(ckpt_dir: str) -> None:
    """The job directory, private, with `current` pointing at a directory."""
    _mkdir_private(ckpt_dir)
    _mkdir_private(os.path.join(ckpt_dir, SESSION))
    _mkdir_private(os.path.join(ckpt_dir, TMP))
    with _locked(ckpt_dir):
        if not os.path.isdir(os.path.join(ckpt_dir, CURRENT)):
            _begin_generation(ckpt_dir)


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).strip()
    except OSError:
        return ""


def _read_port(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def start_coordinator(tools: DmtcpTools, ckpt_dir: str, port: int = 0,
                      host: str = "127.0.0.1", *, exit_on_last: bool = True,
                      timeout: float = 15.0) -> Coordinator:
    """Start the job's coordinator (its own session; port 0: a free one) and wait until it
    answers. `host` is the address the job's processes use to reach it. With exit_on_last it
    ends by itself when the job's last process does."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    _prepare(ckpt_dir)
    port_file = os.path.join(ckpt_dir, "coordinator.port")
    log = os.path.join(ckpt_dir, "coordinator.log")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(port_file)
    argv = [tools.coordinator, "--coord-port", str(port), "--port-file", port_file,
            "--ckptdir", os.path.join(ckpt_dir, CURRENT)]
    if exit_on_last:
        argv.append("--exit-on-last")
    # its own log goes to $DMTCP_TMPDIR (4.2.0 ignores --tmpdir for it)
    env = {**os.environ, "DMTCP_TMPDIR": os.path.join(ckpt_dir, TMP)}
    pid = _proc.spawn(argv, log_path=log, env=env)
    started = _start_ticks(pid)
    deadline = time.monotonic() + timeout
    while started is not None and time.monotonic() < deadline:
        if _start_ticks(pid) != started:
            break
        port_now = _read_port(port_file)
        if port_now:
            coord = Coordinator(tools, ckpt_dir, host, port_now, pid, started)
            try:
                coord.status()
                return coord
            except (CheckpointError, CommandError):
                pass  # written but not listening yet
        time.sleep(0.05)
    if started is not None:
        Coordinator(tools, ckpt_dir, host, 0, pid, started).stop()
    raise CheckpointError(f"dmtcp_coordinator did not start (log {log}): {_log_tail(log)}")


def launch_argv(coordinator: Coordinator, argv: Sequence[str], env: Mapping[str, str],
                mpi: str | None = None, *, gzip: bool = False, plugin: str | None = None,
                hosts: int = 1) -> tuple[list[str], dict[str, str]]:
    """The job's launcher command (mpiexec ...) under dmtcp_launch, and its environment:
    `env` plus what the MPI flavour `mpi` (mpich|openmpi; None: not MPI) needs under DMTCP,
    for a job on `hosts` hosts. Images are not compressed unless `gzip`: about 3x larger,
    checkpoints about 2x faster. `plugin`: a DMTCP plugin every process loads (DMTCP passes
    it on across hosts)."""
    if not argv:
        raise UsageError("dmtcp: nothing to launch")
    out = dict(env)
    if mpi is not None:
        out.update(MPI_ENV[flavour(mpi).name])
        if mpi == "openmpi":  # per job (DMTCP gives every job the same pids) and kept
            out["OMPI_MCA_orte_tmpdir_base"] = os.path.join(coordinator.ckpt_dir, SESSION)
            if hosts > OMPI_CONCURRENT:
                out["OMPI_MCA_plm_rsh_num_concurrent"] = str(hosts)
    wrapped = [coordinator.tools.launch, "--join-coordinator", *coordinator.address(),
               "--ckptdir", coordinator.current, "--tmpdir", coordinator.tmpdir,
               "--gzip" if gzip else "--no-gzip", "--quiet",
               *(["--with-plugin", plugin] if plugin else []), *argv]
    return wrapped, out


@dataclass(frozen=True)
class Generation:
    """One complete checkpoint of a job: restart it with `restart_argv`."""

    number: int
    path: str
    images: tuple[str, ...]  # absolute paths of the ckpt_*.dmtcp files, one per process
    image_bytes: int  # images and saved file copies
    seconds: float  # checkpoint request -> restart script and every image written
    publish_seconds: float  # fsync and rename after that
    created: float  # unix time
    # host -> its images, for a job that spanned hosts ({}: one host)
    hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)


def parse_restart_script(text: str) -> tuple[list[str], int | None]:
    """Image file names a DMTCP restart script names, and its process count (if stated)."""
    names = list(dict.fromkeys(m.group(1) for m in _IMAGE.finditer(text)))
    count = _PROCESSES.search(text)
    return names, int(count.group(1)) if count else None


def parse_worker_hosts(text: str) -> dict[str, list[str]]:
    """{host: image file names} of a restart script that spans hosts (its `worker_ckpts`:
    one ` :: HOST :MODE: IMAGE...` group per host, as gethostname() said at the
    checkpoint); {} for a job on one host (its script names no hosts)."""
    block = _WORKERS.search(text)
    if block is None:
        return {}
    hosts: dict[str, list[str]] = {}
    for m in _WORKER.finditer(block.group(1)):
        names = [os.path.basename(w) for w in m.group(2).split() if w.endswith(".dmtcp")]
        hosts.setdefault(m.group(1), []).extend(names)
    return hosts


def _complete_images(work: str) -> list[str] | None:
    """The images of the checkpoint being written in `work`, once every one is done."""
    try:
        with open(os.path.join(work, RESTART_SCRIPT), encoding="utf-8") as fh:
            names, count = parse_restart_script(fh.read())
        pending = [n for n in os.listdir(work) if n.endswith(".temp")]
    except OSError:
        return None
    if not names or (count is not None and len(names) != count) or pending:
        return None
    for name in names:
        try:
            if os.stat(os.path.join(work, name)).st_size == 0:
                return None
        except FileNotFoundError:
            return None
    return names


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_bytes(path: str) -> int:
    """Bytes of the regular files under path (symlinks not followed)."""
    total = 0
    for d, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(d, name))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _publish(ckpt_dir: str, number: int, work: str, names: list[str],
             seconds: float) -> Generation:
    t0 = time.monotonic()
    with open(os.path.join(work, RESTART_SCRIPT), encoding="utf-8") as fh:
        hosts = parse_worker_hosts(fh.read())
    sizes: dict[str, int] = {}
    for name in names:
        path = os.path.join(work, name)
        os.chmod(path, 0o600)
        _fsync(path)
        sizes[name] = os.path.getsize(path)
    for name in os.listdir(work):
        path = os.path.join(work, name)
        saved_files = name.endswith("_files") and os.path.isdir(path)
        script = name.startswith("dmtcp_restart_script_") and not os.path.islink(path)
        if saved_files or script:
            os.chmod(path, 0o700)
    total = _tree_bytes(work)
    manifest = {"number": number, "images": sizes, "hosts": hosts, "image_bytes": total,
                "seconds": seconds, "publish_seconds": time.monotonic() - t0,
                "created": time.time()}
    fd = os.open(os.path.join(work, MANIFEST), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync(work)
    final = os.path.join(ckpt_dir, f"gen-{number}")
    os.rename(work, final)  # the publication
    _point_current(ckpt_dir, os.path.basename(final))
    _fsync(ckpt_dir)
    return _generation(final, manifest)


def _generation(path: str, manifest: dict[str, Any]) -> Generation:
    return Generation(
        number=int(manifest["number"]), path=path,
        images=tuple(os.path.join(path, n) for n in manifest["images"]),
        image_bytes=int(manifest["image_bytes"]), seconds=float(manifest["seconds"]),
        publish_seconds=float(manifest.get("publish_seconds", 0.0)),
        created=float(manifest["created"]),
        hosts={h: tuple(os.path.join(path, n) for n in names)
               for h, names in manifest.get("hosts", {}).items()})


def _load(path: str) -> Generation | None:
    """The generation in `path` if it is complete: manifest, restart script, every image.
    Read by root too (hpcmigd), in a directory of the job's user: the manifest is read only
    if it is a regular file (a FIFO there would block the reader), nothing follows a link."""
    try:
        manifest_path = os.path.join(path, MANIFEST)
        if os.path.islink(path) or not stat.S_ISREG(os.lstat(manifest_path).st_mode):
            return None
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
        if not os.path.isfile(os.path.join(path, RESTART_SCRIPT)):
            return None
        images = manifest["images"]
        if not images:
            return None
        for name, size in images.items():
            if size <= 0 or os.path.getsize(os.path.join(path, name)) != size:
                return None
        return _generation(path, manifest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def generations(ckpt_dir: str) -> list[Generation]:
    """The complete generations in ckpt_dir, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = (_load(path) for _, partial, path in _numbers(ckpt_dir) if not partial)
    return [g for g in found if g is not None]


def last_generation(ckpt_dir: str) -> Generation:
    gens = generations(ckpt_dir)
    if not gens:
        raise CheckpointError(f"no complete DMTCP checkpoint in {ckpt_dir}",
                              hint="nothing to restart from; run the job again")
    return gens[-1]


def _prune(ckpt_dir: str, keep: int) -> None:
    """Keep the newest `keep` complete generations; remove every gen-<n> older than those."""
    kept = generations(ckpt_dir)[-keep:]
    oldest = kept[0].number if kept else 0
    for number, partial, path in _numbers(ckpt_dir):
        if number < oldest and not partial:
            shutil.rmtree(path, ignore_errors=True)


def checkpoint(coordinator: Coordinator, timeout: float = 300.0, *,
               keep: int = KEEP, hosts: int | None = None,
               peers: int | None = None) -> Generation:
    """Checkpoint every process connected to the coordinator into a new generation (the
    job runs on), once at least `peers` of them run and their number has settled (waiting up
    to SETTLE_TIMEOUT). Raises CheckpointError when the checkpoint cannot complete
    (coordinator or job gone, timeout, not settled) or, given the number of `hosts` the job
    runs on, holds the processes of fewer (a host was lost: its processes left the
    computation, and a restart from such a generation would wait for them for ever); the
    newest complete generation is then still the previous one."""
    if keep < 1:
        raise UsageError("dmtcp: keep at least one generation")
    ckpt_dir = coordinator.ckpt_dir
    with _locked(ckpt_dir):
        if peers is not None:  # (DMTCP 4.2.0 never completes a checkpoint that began while
            # a process forked, rejecting it: seen 0.1 s after a 3-container Open MPI job's
            # ranks appeared, its daemons still forking them; 1 first checkpoint of 6)
            try:
                wait_running(coordinator, peers, min(timeout, SETTLE_TIMEOUT), settle=SETTLE)
            except CheckpointError as exc:
                if not coordinator.alive():
                    raise
                raise CheckpointError(f"{exc}: the job is starting or ending, so it was not "
                                      "checkpointed",
                                      hint="hpcmigd asks again at the job's next interval"
                                      ) from None
        status = coordinator.status()
        if status.peers == 0:
            raise CheckpointError("no process is connected to the job's DMTCP coordinator",
                                  hint="the job was not started under dmtcp_launch, or ended")
        if not status.running:
            raise CheckpointError("the job's DMTCP coordinator is busy (a checkpoint or a "
                                  "restart is in progress)", hint="try again")
        number, work = _begin_generation(ckpt_dir)
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            _proc.run([coordinator.tools.command, *coordinator.address(), "--bcheckpoint"],
                      timeout=timeout)
        except CommandError as exc:
            raise CheckpointError(f"dmtcp checkpoint request failed: {exc}") from None
        next_status = t0 + 1.0
        while (names := _complete_images(work)) is None:
            now = time.monotonic()
            if not coordinator.alive():
                raise CheckpointError("the DMTCP coordinator exited during the checkpoint",
                                      hint=f"the job is lost; restart it from {ckpt_dir}")
            if now > deadline:
                raise CheckpointHung(f"dmtcp checkpoint not complete after {timeout:g}s "
                                     f"({work})")
            if now > next_status:
                next_status = now + 1.0
                if coordinator.status().peers == 0:
                    raise CheckpointError("the job ended during the checkpoint")
            time.sleep(_POLL)
        if hosts is not None:
            _check_hosts(work, number, hosts)
        _session.save(os.path.join(ckpt_dir, SESSION), work)
        gen = _publish(ckpt_dir, number, work, names, time.monotonic() - t0)
        _prune(ckpt_dir, keep)
        return gen


def _check_hosts(work: str, number: int, hosts: int) -> None:
    """The checkpoint in `work` spans `hosts` hosts, or it is dropped."""
    with open(os.path.join(work, RESTART_SCRIPT), encoding="utf-8") as fh:
        found = parse_worker_hosts(fh.read())
    spans = max(1, len(found))  # a script of a job on one host names none
    if spans < hosts:
        shutil.rmtree(work, ignore_errors=True)
        raise CheckpointError(f"dmtcp checkpoint {number} holds the processes of "
                              f"{spans} of the job's {hosts} hosts "
                              f"({', '.join(sorted(found)) or 'one'}): a host was lost, so it "
                              "is not published", hint="the job restarts from the generation "
                                                       "before, if a node of it was lost")


def restart_argv(tools: DmtcpTools, ckpt_dir: str, coordinator: Coordinator) -> list[str]:
    """dmtcp_restart of the last complete generation, joining `coordinator` (a new one).
    Puts Open MPI's session directory back as it was at that generation (_session), and
    points `<ckpt_dir>/current` at that generation: DMTCP reads its saved file copies
    through it, and the restarted job's next checkpoints go through it too when the job loads
    PLUGIN (else into that generation's own directory)."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    if os.path.abspath(coordinator.ckpt_dir) != ckpt_dir:
        raise UsageError(f"dmtcp: the coordinator serves {coordinator.ckpt_dir}, "
                         f"not {ckpt_dir}")
    with _locked(ckpt_dir):
        gen = last_generation(ckpt_dir)
        _point_current(ckpt_dir, os.path.basename(gen.path))
        _session.put_back(os.path.join(ckpt_dir, SESSION), gen.path)
    return [*NO_RANDOMIZE, tools.restart, "--join-coordinator", *coordinator.address(),
            "--ckptdir",
            os.path.join(ckpt_dir, CURRENT), "--tmpdir", coordinator.tmpdir, "--quiet",
            *gen.images]


def wait_running(coordinator: Coordinator, peers: int, timeout: float = 60.0,
                 settle: float = 0.0) -> float:
    """Wait until `peers` processes are connected and running (after a launch or a
    restart), and with `settle` none joined or left for that many seconds; return the
    seconds waited."""
    t0 = time.monotonic()
    seen, since = -1, t0
    while True:
        if not coordinator.alive():
            raise CheckpointError("the job's DMTCP coordinator exited")
        status = coordinator.status()
        now = time.monotonic()
        if not status.running or status.peers != seen:
            seen, since = (status.peers if status.running else -1), now
        if status.running and status.peers >= peers and now - since >= settle:
            return now - t0
        if now - t0 > timeout:
            if settle:
                raise CheckpointError(
                    f"not every process of the job runs under DMTCP ({status.peers} do, at "
                    f"least {peers} expected, or their number still changes) after "
                    f"{timeout:g}s")
            raise CheckpointError(f"{status.peers} of {peers} processes running under DMTCP "
                                  f"after {timeout:g}s")
        time.sleep(0.05)


_CONTAINERS = ("checkpoint engine 'dmtcp' checkpoints whole jobs launched under it "
               "(engine=dmtcp), not containers: it cannot take over a process it did not start")
_CONTAINERS_HINT = ("use criu for containers; DMTCP jobs are driven by "
                    "hpcmig.checkpoint.dmtcp (start_coordinator, launch_argv, checkpoint, "
                    "restart_argv)")


@register("dmtcp")
class DmtcpEngine(Engine):
    """Registered so `get_engine("dmtcp")` works; every container operation is refused."""

    required_tools = tuple(TOOLS.values())

    def _containers(self) -> NoReturn:
        raise UsageError(_CONTAINERS, hint=_CONTAINERS_HINT)

    def refuse_reasons(self, init_pid: int) -> list[str]:
        self._containers()

    def dump(self, container: Container, image_dir: str, *, leave_stopped: bool = True,
             page_server: tuple[str, int] | None = None, netns_key: str | None = None
             ) -> DumpStats:
        self._containers()

    def restore(self, image_dir: str, *, netns_path: str, key: str | None = None) -> int:
        self._containers()

    def resume(self, init_pid: int) -> None:
        self._containers()

    def kill_stopped(self, init_pid: int) -> None:
        self._containers()
