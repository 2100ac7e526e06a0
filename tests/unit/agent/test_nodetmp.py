"""Open files in the node's /tmp travel with a container's dump (agent/_nodetmp.py)."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

from hpcmig.agent import _nodetmp
from hpcmig.errors import HpcmigError


def fake_proc(root: Path, pid: int, pidns: str, fds: dict[int, str]) -> None:
    (root / str(pid) / "ns").mkdir(parents=True)
    (root / str(pid) / "ns" / "pid").symlink_to(pidns)
    (root / str(pid) / "fd").mkdir()
    for fd, target in fds.items():
        (root / str(pid) / "fd" / str(fd)).symlink_to(target)


def test_only_existing_regular_files_under_top_held_by_the_container(tmp_path: Path) -> None:
    top, proc = tmp_path / "tmp", tmp_path / "proc"
    top.mkdir()
    xml, other = top / "hydra_hwloc_xmlfile_ab12", tmp_path / "elsewhere"
    xml.write_text("<topology/>")
    other.write_text("x")
    fake_proc(proc, 10, "pid:[1]", {0: "/dev/null", 6: str(xml), 7: str(other),
                                    8: f"{top}/gone (deleted)", 9: "socket:[5]"})
    fake_proc(proc, 11, "pid:[1]", {6: str(xml)})  # same file, another process
    fake_proc(proc, 12, "pid:[2]", {3: str(top / "not-ours")})  # another container
    (top / "not-ours").write_text("y")
    assert _nodetmp.held_files(10, top=str(top), proc=str(proc)) == [str(xml)]


def test_save_then_put_back_restores_the_file_with_its_content(tmp_path: Path) -> None:
    """A fake /proc names the one file: never this machine's processes (their /tmp files
    would be archived and written back under them)."""
    fd, path = tempfile.mkstemp(prefix="hpcmig-nodetmp-test-", dir="/tmp")
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    try:
        os.write(fd, b"<topology/>")
        os.close(fd)
        fake_proc(tmp_path / "proc", 10, "pid:[1]", {6: path})
        assert _nodetmp.save(10, str(image_dir), proc=str(tmp_path / "proc")) == [path]
        os.unlink(path)
        assert _nodetmp.put_back(str(image_dir)) == [path]
        assert Path(path).read_text() == "<topology/>"
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_no_archive_no_put_back(tmp_path: Path) -> None:
    assert _nodetmp.put_back(str(tmp_path)) == []


@pytest.mark.parametrize("name", ["/etc/hpcmig-nodetmp-victim", "/tmp/../etc/hpcmig-victim"])
def test_an_archive_naming_files_outside_tmp_is_refused(tmp_path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 4
    with tarfile.open(tmp_path / _nodetmp.ARCHIVE, "w") as tar:
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(HpcmigError, match="outside /tmp"):
        _nodetmp.put_back(str(tmp_path))
    assert not os.path.exists("/etc/hpcmig-nodetmp-victim")
