"""Start, find and stop the testbed's processes, always by pid.

Each daemon is started in its own session and its pid recorded by the caller before anything
else happens, so a crashed `up` can be cleaned by the next one. Processes are only ever ended
by pid: ones we recorded (checked against their command line, so a recycled pid is never hit),
or ones living inside the testbed's own node namespaces. Nothing here decides ordering.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hpcmig import _proc, _procfs
from hpcmig.errors import CommandError, TestbedError


@dataclass(frozen=True)
class Proc:
    """A recorded daemon: its pid and a word its command line must contain."""

    name: str
    pid: int
    match: str


cmdline = _procfs.live_cmdline


def alive(proc: Proc) -> bool:
    # While a process execs (setpriv -> munged), its cmdline reads empty for a moment.
    for _ in range(50):
        line = cmdline(proc.pid)
        if line != "":
            return line is not None and proc.match in line
        time.sleep(0.01)
    return False


def pids_in_namespaces(inodes: Iterable[int], kinds: tuple[str, ...] = ("net", "mnt")) -> list[int]:
    """Pids of processes whose network or mount namespace is one of `inodes`."""
    wanted = set(inodes)
    found: list[int] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        for kind in kinds:
            try:
                if os.stat(f"/proc/{entry}/ns/{kind}").st_ino in wanted:
                    found.append(int(entry))
                    break
            except OSError:
                break
    return found


def _root(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/root")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_matching(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (a path) and that see the
    same root directory as we do: a process in a chroot (another distribution's testbed run
    in a root filesystem of its own) names its own tree, not ours."""
    me, root = os.getpid(), _root("self")
    return [int(e) for e in os.listdir("/proc")
            if e.isdigit() and int(e) != me and text in (cmdline(int(e)) or "")
            and _root(e) == root]


def kill_pids(pids: Iterable[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    pending = {p for p in pids if cmdline(p) is not None}
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if cmdline(p) is not None}
        time.sleep(0.1)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if cmdline(p) is not None}
        time.sleep(0.05)


def stop(procs: Iterable[Proc], grace: float = 5.0) -> None:
    kill_pids([p.pid for p in procs if alive(p)], grace=grace)


def start(name: str, argv: list[str], match: str, log_path: str,
          env: dict[str, str] | None = None) -> Proc:
    pid = _proc.spawn(argv, log_path=log_path, env={**daemon_env(), **(env or {})})
    return Proc(name=name, pid=pid, match=match)


def daemon_env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ", "PYTHONPATH")}
    keep["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return keep


def wait_for(what: str, probe: Callable[[], bool], timeout: float, proc: Proc | None = None,
             log: str | Sequence[str] | None = None) -> None:
    """Poll `probe` until it is true; fail early if `proc` died, with the log's last lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except CommandError:
            pass
        if proc is not None and not alive(proc):
            raise TestbedError(f"{proc.name} exited while starting{_tail(log)}")
        time.sleep(0.3)
    raise TestbedError(f"{what} not ready after {timeout:g}s{_tail(log)}")


def _tail(log: str | Sequence[str] | None, lines: int = 5) -> str:
    logs = [log] if isinstance(log, str) else list(log or [])
    out = ""
    for path in logs:
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            tail = [line.rstrip() for line in f.readlines()[-lines:]]
        if tail:
            out += f"; last lines of {path}: " + " | ".join(tail)
    return out
