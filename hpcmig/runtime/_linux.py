"""Thin ctypes wrappers for the Linux calls Python 3.11 lacks: setns, unshare, prctl.

Design note: only syscalls, no policy; callers decide which namespaces to enter or create.
Errors come back as OSError with errno, like the os module's own functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(path: str, nstype: int) -> None:
    """Move the calling thread into the namespace behind `path` (e.g. /run/netns/x)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), f"setns({path})")
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def set_child_subreaper(on: bool = True) -> None:
    """Orphaned descendants are reparented to us (so we can reap them) instead of PID 1."""
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0), "prctl(CHILD_SUBREAPER)")


def clear_parent_death_signal() -> None:
    """No signal when our parent dies (undo a PR_SET_PDEATHSIG the parent set)."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0), "prctl(PDEATHSIG)")


def detach_mount(path: str) -> None:
    """umount2(path, MNT_DETACH): take the mount out of this mount namespace now."""
    _check(_libc.umount2(os.fsencode(path), MNT_DETACH), f"umount2({path})")


def ns_inode(pid: int | str, kind: str) -> int:
    """Inode of a namespace of a process ("self" allowed), e.g. kind="net"."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
