"""Open MPI's session directory kept with a DMTCP generation (hpcmig.checkpoint._session):
what is archived, what is left out, and that putting it back never writes outside it."""

from __future__ import annotations

import os
import socket
import tarfile
from pathlib import Path

import pytest

from hpcmig.checkpoint import _session
from hpcmig.checkpoint.base import CheckpointError


def test_files_fifos_and_directories_come_back_sockets_and_links_do_not(
        tmp_path: Path) -> None:
    session, gen = tmp_path / "session", tmp_path / "gen-1"
    (session / "ompi.h.1001" / "pid.7").mkdir(parents=True)
    gen.mkdir()
    (session / "ompi.h.1001" / "pid.7" / "contact.txt").write_text("tcp://10.252.0.1:4000")
    os.mkfifo(session / "ompi.h.1001" / "pid.7" / "debugger_attach_fifo")
    (session / "ompi.h.1001" / "link").symlink_to("/etc/passwd")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(session / "ompi.h.1001" / "pmix.sock"))
        _session.save(str(session), str(gen))
    assert (gen / _session.ARCHIVE).stat().st_mode & 0o777 == 0o600
    (session / "ompi.h.1001" / "pid.7" / "contact.txt").unlink()
    assert _session.put_back(str(session), str(gen))
    pid = session / "ompi.h.1001" / "pid.7"
    assert (pid / "contact.txt").read_text() == "tcp://10.252.0.1:4000"
    assert (pid / "debugger_attach_fifo").is_fifo()
    assert sorted(os.listdir(session / "ompi.h.1001")) == ["pid.7"]


def test_without_an_archive_nothing_is_touched(tmp_path: Path) -> None:
    session = tmp_path / "session"
    session.mkdir()
    (session / "kept").write_text("x")
    assert not _session.put_back(str(session), str(tmp_path))
    assert (session / "kept").read_text() == "x"
    _session.save(str(tmp_path / "none"), str(tmp_path))  # no session directory: no archive
    assert not (tmp_path / _session.ARCHIVE).exists()


def test_an_archive_that_would_write_outside_is_refused_before_anything_changes(
        tmp_path: Path) -> None:
    session, gen = tmp_path / "session", tmp_path / "gen-1"
    session.mkdir()
    gen.mkdir()
    (session / "kept").write_text("x")
    (tmp_path / "evil").write_text("y")
    with tarfile.open(gen / _session.ARCHIVE, "w") as tar:
        tar.add(tmp_path / "evil", arcname="../evil")
    with pytest.raises(CheckpointError, match="outside"):
        _session.put_back(str(session), str(gen))
    assert (session / "kept").read_text() == "x"
