"""Open MPI's session directory, kept with each DMTCP generation and put back for a restart.

Design note: an engine=dmtcp job's Open MPI keeps its session directory (orte_tmpdir_base)
in the job's checkpoint directory (hpcmig.checkpoint.dmtcp, `session/`): per host, the
launcher's and daemons' job directories, the files the ranks' shared memory maps, the PMIx
segments. When a node dies, the launcher, if it outlived the node (the node was not the
batch host), ends the job and removes what it can of that directory; a launcher and ranks
restarted from a generation then found their files gone, the launcher and the lost host's
daemon ended at once and the ranks waited for them (seen on the testbed: 2 of 6 processes
back after 180 s). So `save` archives the directory into the generation being written (the
processes have just written their images; the directory changes only when a job starts or
ends), and `put_back` makes it that archive again before `dmtcp_restart`, as the CRIU path
puts $TMPDIR back (hpcmig.agent.ckpt). Sockets and links are not archived (their owners
make them anew); a file that vanishes while it is read is left out.
"""

from __future__ import annotations

import os
import shutil
import tarfile

from hpcmig.checkpoint.base import CheckpointError

ARCHIVE = "session.tar"


def save(session: str, generation: str) -> None:
    """session/ as it is now, into `generation`/ARCHIVE (0600): nothing if there is none."""
    if not os.path.isdir(session):
        return
    fd = os.open(os.path.join(generation, ARCHIVE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
        for name in sorted(os.listdir(session)):
            _add(tar, os.path.join(session, name), name)


def _add(tar: tarfile.TarFile, path: str, name: str) -> None:
    try:
        info = tar.gettarinfo(path, name)
        if info is None or info.issym() or info.islnk():  # a socket or a link: not ours
            return
        if info.isreg():
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
        else:
            tar.addfile(info)
        children = sorted(os.listdir(path)) if info.isdir() else []
    except OSError:  # gone, or shorter than when it was listed: the job changed it meanwhile
        return
    for child in children:
        _add(tar, os.path.join(path, child), f"{name}/{child}")


def put_back(session: str, generation: str) -> bool:
    """session/ becomes the generation's archive again; False (untouched) without one."""
    archive = os.path.join(generation, ARCHIVE)
    if not os.path.exists(archive):
        return False
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:  # ours (0600 in a 0700 directory), still: nothing outside session/
            parts = m.name.split("/")
            if m.name.startswith("/") or ".." in parts or m.islnk() or m.issym():
                raise CheckpointError(f"{archive}: {m.name!r} would land outside {session}")
        shutil.rmtree(session, ignore_errors=True)
        os.makedirs(session, mode=0o700)
        tar.extractall(session, members=members)  # noqa: S202 - checked above
    return True
