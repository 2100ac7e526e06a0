"""Files in the node's own /tmp that a container's processes hold open, carried in its dump.

Design note: a container shares its node's mount namespace, so /tmp is the node's. Most of
what a job writes goes to its $TMPDIR, which is on shared storage (`NodeAgent.tmp_dir`), but
some programs use /tmp by a fixed name and keep the file open: MPICH 4.2's hydra_pmi_proxy
(Debian 13) holds /tmp/hydra_hwloc_xmlfile_XXXXXX for its whole life. CRIU restores an open
file by path, so on another node the restore fails ("Can't open file tmp/hydra_hwloc_...").
The dump archives those files (`nodetmp.tar`, absolute names, taken while the processes are
frozen) and the restore puts them back first. Only regular files under /tmp that still
exist are taken (deleted ones CRIU carries itself); an archive naming anything else is
refused. Reads /proc through `_tree`; the only effects are tar and the files it writes.
"""

from __future__ import annotations

import os

from hpcmig import _proc
from hpcmig.checkpoint import _tree
from hpcmig.errors import HpcmigError

NODE_TMP = "/tmp"
ARCHIVE = "nodetmp.tar"


def held_files(init_pid: int, top: str = NODE_TMP, proc: str = "/proc") -> list[str]:
    """Regular files under `top` that the container of `init_pid` holds open, sorted."""
    found: set[str] = set()
    prefix = top.rstrip("/") + "/"
    for pid in _tree.members(init_pid, proc):
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(prefix) and os.path.isfile(target):
                found.add(target)
    return sorted(found)


def save(init_pid: int, image_dir: str, proc: str = "/proc") -> list[str]:
    """Archive the held /tmp files into the dump; returns their names ([]: no archive)."""
    files = held_files(init_pid, proc=proc)
    if files:
        _proc.run(["tar", "-cpPf", os.path.join(image_dir, ARCHIVE), "--numeric-owner",
                   "--", *files], timeout=600)
    return files


def put_back(image_dir: str) -> list[str]:
    """Restore the files `save` archived, at their own paths; returns their names."""
    archive = os.path.join(image_dir, ARCHIVE)
    if not os.path.exists(archive):
        return []
    names = _proc.run(["tar", "-tPf", archive], timeout=600).stdout.splitlines()
    prefix = NODE_TMP + "/"
    bad = [n for n in names if not n.startswith(prefix) or "/../" in n or n.endswith("/..")]
    if bad:
        raise HpcmigError(f"{archive} names files outside {NODE_TMP}: {bad[:3]}")
    _proc.run(["tar", "-xpPf", archive, "--numeric-owner"], timeout=600)
    return names
