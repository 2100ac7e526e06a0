"""TCP repair mode on another process's sockets, through pidfd_getfd(2).

Design note: `criu dump --tcp-established --leave-stopped` leaves every established TCP
socket of the dumped tree in repair mode (CRIU unlocks them only for --leave-running), so that
killing the source later closes them silently: no FIN or RST reaches the peers, whose packets
already go to the restored copy. A rollback must therefore turn repair off before it
continues the tree, or the first read on such a socket fails and the peer is reset (we saw
exactly this). Leaving repair mode also makes the kernel send a window probe, which is how a
peer hears from the socket again. Needs root (PTRACE_MODE_ATTACH for pidfd_getfd,
CAP_NET_ADMIN for TCP_REPAIR); Linux >= 5.6. Only sockets; it never touches other fds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
from collections.abc import Callable

SYS_PIDFD_GETFD = 438  # same number on every architecture
TCP_REPAIR = 19
TCP_REPAIR_ON, TCP_REPAIR_OFF = 1, 0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _getfd(pidfd: int, fd: int) -> int:
    ret = int(_libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _tcp_sockets(pid: int) -> list[tuple[int, str]]:
    """(fd number, 'socket:[inode]') of pid's sockets."""
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{name}")
                if target.startswith("socket:["):
                    found.append((int(name), target))
    return found


def _each_tcp(pids: list[int], fn: Callable[[socket.socket], bool]) -> int:
    """Call fn(sock) once per distinct established-or-not TCP socket of pids; count calls."""
    seen: set[str] = set()
    done = 0
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            for fd, inode in _tcp_sockets(pid):
                if inode in seen:
                    continue
                seen.add(inode)
                try:
                    dup = _getfd(pidfd, fd)
                except OSError:
                    continue
                sock = socket.socket(fileno=dup)
                try:
                    inet = sock.family in (socket.AF_INET, socket.AF_INET6)
                    if inet and sock.type == socket.SOCK_STREAM and fn(sock):
                        done += 1
                finally:
                    sock.close()  # our duplicate only
        finally:
            os.close(pidfd)
    return done


def repair_off(pids: list[int]) -> int:
    """Take every TCP socket of pids out of repair mode; returns how many were in it."""
    def off(sock: socket.socket) -> bool:
        if sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) != 1:
            return False
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
        return True
    return _each_tcp(pids, off)


def window_probe(pids: list[int]) -> int:
    """Make every established TCP socket of pids send a window probe now (repair on, then
    off), so peers hear from it at once instead of at their next retransmission."""
    def probe(sock: socket.socket) -> bool:
        try:
            sock.getpeername()
        except OSError:
            return False  # listening or unconnected
        if sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR) == 1:
            return False
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
        return True
    return _each_tcp(pids, probe)
