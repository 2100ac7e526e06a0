"""The fast path's node-wide effects: bpffs, the compiled object, pins of namespaces gone.

Design note: `hpcmig.network.node` attaches and fills the fast path of one node
(hpcmig.network.fastpath); this module does what is not one node's: mount bpffs where
nothing did, compile the program once per source (clang, Debian's libbpf headers), and
remove the pins of node network namespaces that no longer exist (a node deleted without
`remove_isolation`, a crashed run), so that a program and its maps never outlive their node.
And `bump`, the one map write that lies on a migration's pause: by the bpf(2) system call
from this process (microseconds), not by starting bpftool (milliseconds).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import shutil
import tempfile
import time

from hpcmig import _proc
from hpcmig.errors import CommandError, HpcmigError
from hpcmig.network import fastpath as fast

BPFFS = "/sys/fs/bpf"


class FastPathError(HpcmigError):
    """The fast path cannot run on this node (it forwards the kernel's way)."""


def mount_bpffs(root: str = BPFFS) -> None:
    """bpffs on /sys/fs/bpf (systemd mounts it; a bare node or a testbed node may not)."""
    with open("/proc/self/mountinfo") as fh:
        if any(line.split()[4] == root and " - bpf " in line for line in fh):
            return
    os.makedirs(root, exist_ok=True)
    try:
        _proc.run(["mount", "-t", "bpf", "bpf", root], timeout=10)
    except CommandError as exc:
        raise FastPathError(f"cannot mount bpffs on {root}: {exc.stderr.strip()}") from None


def compiled(src: bytes) -> str:
    """The fast path's object, compiled from this source once."""
    obj = fast.object_path(src)
    if os.path.exists(obj):
        return obj
    if shutil.which(fast.CLANG) is None:
        raise FastPathError("clang is not installed: cannot build the fast path",
                            hint="install Debian's clang and libbpf-dev (bootstrap.sh does)")
    os.makedirs(fast.OBJECT_CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=fast.OBJECT_CACHE) as tmp:
        src_path = os.path.join(tmp, "fastpath.bpf.c")
        with open(src_path, "wb") as fh:
            fh.write(src)
        try:
            _proc.run(fast.compile_argv(src_path, f"{tmp}/out.o"), timeout=120)
        except CommandError as exc:
            raise FastPathError(f"cannot build the fast path: {exc}",
                                hint="install Debian's libbpf-dev (bootstrap.sh does)") from None
        os.replace(f"{tmp}/out.o", obj)
    return obj


def live_netns() -> set[int]:
    """Inodes of the network namespaces that processes or bind mounts here hold."""
    live: set[int] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            live.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
        except OSError:
            continue
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            parts = line.split()
            if " - nsfs " in line and (m := re.match(r"net:\[(\d+)\]", parts[3].lstrip("/"))):
                live.add(int(m.group(1)))
    return live


def sweep() -> list[str]:
    """Remove the pins of network namespaces that are gone; returns their directories."""
    try:
        names = os.listdir(fast.PIN_ROOT)
    except FileNotFoundError:
        return []
    live = live_netns()
    gone = [f"{fast.PIN_ROOT}/{n}" for n in names
            if (m := re.fullmatch(r"net-(\d+)", n)) and int(m.group(1)) not in live]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


# bpf(2): its number per architecture, and the commands and attributes `bump` uses
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_MAP_UPDATE_ELEM, _BPF_OBJ_GET = 2, 7


class _ObjGet(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _MapUpdate(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(f"bpf(2): no system call number known for {platform.machine()}")
    rc = int(_libc().syscall(number, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def bump(pins: str) -> None:
    """Give the node's fast path a new generation (the monotonic clock in ns): every
    decision it cached before is taken again at the next packet (fastpath.bpf.c)."""
    path = ctypes.create_string_buffer(f"{pins}/{fast.GEN}".encode())
    fd = _bpf(_BPF_OBJ_GET, _ObjGet(pathname=ctypes.addressof(path)))
    try:
        key, value = ctypes.c_uint32(0), ctypes.c_uint64(time.monotonic_ns())
        _bpf(_BPF_MAP_UPDATE_ELEM, _MapUpdate(map_fd=fd, key=ctypes.addressof(key),
                                              value=ctypes.addressof(value)))
    finally:
        os.close(fd)
