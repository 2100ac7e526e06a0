"""hpcmigd's side of application-level checkpoints: the registered directory is read only
when it is a real directory of the job's user, and written (a request, the removal) only as
that user."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig.ckpt import store
from hpcmig.controller import appckpt
from hpcmig.errors import UsageError

NOBODY = 65534


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the other user can reach and make entries in, like a job's work dir
    (pytest's tmp_path is root's 0700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (files of another user)")
    path = Path(tempfile.mkdtemp(prefix="hpcmig-appckpt-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def users_dir(base: Path) -> Path:
    """A checkpoint directory of uid 65534 holding one committed generation."""
    d = base / "hpcmig-ckpt-7"
    d.mkdir(mode=0o700)
    Path(store.temp_path(str(d), 1)).write_bytes(b"x" * 10)
    store.commit(str(d), 1, 40, 2, keep=2)
    for p in [d, *d.iterdir()]:
        os.chown(p, NOBODY, NOBODY)
    return d


def test_register_load_and_the_newest_generation(tmp_path: Path, users_dir: Path) -> None:
    state = tmp_path / "state"
    app = appckpt.register(str(state), "7", appckpt.AppDir(str(users_dir), NOBODY, NOBODY))
    assert appckpt.load(str(state), "7") == app
    assert appckpt.registered(str(state)) == ["7"]
    assert (state / appckpt.SUBDIR / "7.json").stat().st_mode & 0o077 == 0
    gen = appckpt.newest(app)
    assert gen is not None and (gen.generation, gen.step) == (1, 40)
    with pytest.raises(UsageError):
        appckpt.register(str(state), "8", appckpt.AppDir("relative/dir", NOBODY, NOBODY))


def test_a_link_or_somebody_elses_directory_is_not_read(tmp_path: Path, users_dir: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(users_dir)
    assert appckpt.newest(appckpt.AppDir(str(link), NOBODY, NOBODY)) is None
    assert appckpt.newest(appckpt.AppDir(str(users_dir), 1234, 1234)) is None
    assert not appckpt.request(appckpt.AppDir(str(link), NOBODY, NOBODY))


def test_a_request_is_written_as_the_user(users_dir: Path) -> None:
    assert appckpt.request(appckpt.AppDir(str(users_dir), NOBODY, NOBODY))
    st = (users_dir / store.REQUEST).stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert store.requested(str(users_dir), 1, 0.0)


def test_removal_once_the_job_ended(tmp_path: Path, base: Path, users_dir: Path) -> None:
    state = str(tmp_path / "state")
    appckpt.register(state, "7", appckpt.AppDir(str(users_dir), NOBODY, NOBODY))
    other = base / "not-a-checkpoint"
    other.mkdir()
    os.chown(other, NOBODY, NOBODY)
    appckpt.register(state, "9", appckpt.AppDir(str(other), NOBODY, NOBODY))
    assert appckpt.remove(state, "7") and not users_dir.exists()
    assert not appckpt.remove(state, "9") and other.exists()  # no hpcmig.ckpt index there
    assert appckpt.registered(state) == []
