"""The processes of one container, found through /proc.

Design note: a container is every process in its init's PID namespace (the ns runtime gives
each container its own); a container copy on a node is found through its network namespace.
Reads only, except `signal_all`, which signals pids it has just listed. The /proc root is a
parameter so unit tests read fixture trees (psutil habit).
"""

from __future__ import annotations

import contextlib
import os

from hpcmig import _procfs


def ns_link(pid: int | str, kind: str, proc: str = "/proc") -> str | None:
    """'pid:[4026532...]' for pid's namespace of `kind`; None if the pid is gone."""
    try:
        return os.readlink(f"{proc}/{pid}/ns/{kind}")
    except OSError:
        return None


def pids(proc: str = "/proc") -> list[int]:
    try:
        return sorted(int(e) for e in os.listdir(proc) if e.isdigit())
    except OSError:
        return []


def members(init_pid: int, proc: str = "/proc") -> list[int]:
    """Every pid in init_pid's PID namespace (init first); [] if init is gone."""
    own = ns_link(init_pid, "pid", proc)
    if own is None:
        return []
    found = [p for p in pids(proc) if p != init_pid and ns_link(p, "pid", proc) == own]
    return [init_pid, *found]


def comm(pid: int, proc: str = "/proc") -> str:
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def in_netns(netns_path: str) -> list[int]:
    """Live pids whose network namespace is the one bound at netns_path."""
    try:
        inode = os.stat(netns_path).st_ino
    except OSError:
        return []
    found = []
    for pid in pids():
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode and \
                    _procfs.state(pid) not in (None, "Z", "X"):
                found.append(pid)
    return found


def init_in_netns(netns_path: str, marker: str) -> int | None:
    """The container's init among the processes of a netns: its argv names `marker` (the
    init's module) and its parent is not in the netns (children of the init may be inits of
    nothing). None: no init (absent, or a tree a cut-short restore left without one)."""
    found = in_netns(netns_path)
    inits = [p for p in found if marker in _procfs.argv(p) and _procfs.ppid(p) not in found]
    return inits[0] if inits else None


def live(pid: int) -> bool:
    return _procfs.state(pid) not in (None, "Z", "X")


def signal_all(init_pid: int, sig: int) -> list[int]:
    """Send sig to every process of the container; return the pids signalled."""
    sent = []
    for pid in members(init_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent.append(pid)
    return sent
