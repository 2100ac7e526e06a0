"""hpcmigd's side of application-level checkpoints: the registered directory is read only
when it is a real directory of the job's user, and written (a request, the removal) only as
that user."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig.checkpoint import dmtcp, dmtcp_job
from hpcmig.ckpt import store
from hpcmig.controller import appckpt
from hpcmig.errors import HpcmigError, UsageError

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
    assert gen is not None and gen.generation == 1
    assert gen.time == store.latest(str(users_dir)).time  # type: ignore[union-attr]
    with pytest.raises(UsageError):
        appckpt.register(str(state), "8", appckpt.AppDir("relative/dir", NOBODY, NOBODY))


def test_a_link_or_somebody_elses_directory_is_not_read(tmp_path: Path, users_dir: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(users_dir)
    assert appckpt.newest(appckpt.AppDir(str(link), NOBODY, NOBODY)) is None
    assert appckpt.newest(appckpt.AppDir(str(users_dir), 1234, 1234)) is None
    assert not appckpt.request(appckpt.AppDir(str(link), NOBODY, NOBODY))


def test_a_fifo_for_the_index_is_not_read(tmp_path: Path) -> None:
    d = tmp_path / "hpcmig-ckpt-8"
    d.mkdir()
    os.mkfifo(d / store.INDEX)
    assert appckpt.newest(appckpt.AppDir(str(d), os.getuid(), os.getgid())) is None


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


@pytest.fixture
def dmtcp_dir(base: Path) -> Path:
    """An engine=dmtcp job directory of uid 65534: step 0 with complete generation 3 and a
    half-written generation 4, step 1 with nothing yet."""
    d = Path(dmtcp_job.job_dir(str(base), "7"))
    gen = d / "step-0" / "gen-3"
    gen.mkdir(parents=True)
    (d / "step-0" / "gen-4.tmp").mkdir()
    (d / "step-1").mkdir()
    (d / dmtcp_job.MARK).touch()
    (gen / dmtcp.RESTART_SCRIPT).write_text("# Number of processes in the computation = 1\n")
    (gen / "ckpt_a.dmtcp").write_bytes(b"x" * 10)
    (gen / dmtcp.MANIFEST).write_text(json.dumps(
        {"number": 3, "images": {"ckpt_a.dmtcp": 10}, "image_bytes": 10, "seconds": 1.0,
         "created": 1000.0}))
    for p in [d, *d.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
    return d


def test_a_dmtcp_jobs_newest_generation_request_and_removal(
        tmp_path: Path, dmtcp_dir: Path) -> None:
    state = str(tmp_path / "state")
    app = appckpt.register(state, "7", appckpt.AppDir(str(dmtcp_dir), NOBODY, NOBODY,
                                                      "dmtcp"))
    assert appckpt.load(state, "7") == app
    assert appckpt.newest(app) == appckpt.Newest(3, 1000.0)
    (dmtcp_dir / "step-0" / "gen-3" / "ckpt_a.dmtcp").write_bytes(b"x")  # not as recorded
    assert appckpt.newest(app) is None
    assert appckpt.request(app)
    st = (dmtcp_dir / dmtcp_job.REQUEST).stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert appckpt.remove(state, "7") and not dmtcp_dir.exists()
    with pytest.raises(UsageError):
        appckpt.register(state, "8", appckpt.AppDir(str(dmtcp_dir), NOBODY, NOBODY, "criu"))


def test_a_dmtcp_directory_without_its_mark_is_not_removed(
        tmp_path: Path, dmtcp_dir: Path) -> None:
    state = str(tmp_path / "state")
    (dmtcp_dir / dmtcp_job.MARK).unlink()
    appckpt.register(state, "7", appckpt.AppDir(str(dmtcp_dir), NOBODY, NOBODY, "dmtcp"))
    assert not appckpt.remove(state, "7") and dmtcp_dir.exists()


def publish(step: Path, number: int, created: float, uid: int = NOBODY) -> None:
    """A complete DMTCP generation, as the job's step publishes it (as the job's user)."""
    tmp = step / f"gen-{number}.tmp"
    tmp.mkdir()
    (tmp / dmtcp.RESTART_SCRIPT).write_text("# Number of processes in the computation = 1\n")
    (tmp / "ckpt_b.dmtcp").write_bytes(b"y" * 5)
    (tmp / dmtcp.MANIFEST).write_text(json.dumps(
        {"number": number, "images": {"ckpt_b.dmtcp": 5}, "image_bytes": 5, "seconds": 1.0,
         "created": created}))
    for p in [tmp, *tmp.iterdir()]:
        os.chown(p, uid, uid)
    tmp.rename(step / f"gen-{number}")


def test_take_asks_a_dmtcp_job_and_waits_for_a_newer_generation(
        tmp_path: Path, dmtcp_dir: Path) -> None:
    app = appckpt.AppDir(str(dmtcp_dir), NOBODY, NOBODY, "dmtcp")
    request = dmtcp_dir / dmtcp_job.REQUEST

    def the_step() -> None:  # what the job's `hpcmig run` does when hpcmigd asks
        deadline = time.monotonic() + 10
        while not request.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        publish(dmtcp_dir / "step-1", 1, time.time())
        request.unlink()

    worker = threading.Thread(target=the_step)
    worker.start()
    gen = appckpt.take(app, lambda: None, timeout=10, poll=0.05)
    worker.join()
    # the new step's generation 1 is newer than step 0's generation 3
    assert gen.generation == 1 and gen.time > 1000.0


def test_take_gives_up_when_the_job_stops_and_leaves_no_request(
        tmp_path: Path, dmtcp_dir: Path) -> None:
    app = appckpt.AppDir(str(dmtcp_dir), NOBODY, NOBODY, "dmtcp")
    answers = iter([None, None, "the job is COMPLETING"])
    with pytest.raises(HpcmigError, match="the job is COMPLETING") as failed:
        appckpt.take(app, lambda: next(answers), timeout=10, poll=0.01)
    assert "hpcmig run" in str(failed.value.hint)
    assert not (dmtcp_dir / dmtcp_job.REQUEST).exists()  # no checkpoint later by surprise
    with pytest.raises(HpcmigError, match="none complete 0.05 s after asking"):
        appckpt.take(app, lambda: None, timeout=0.05, poll=0.01)
    gone = appckpt.AppDir(str(tmp_path / "nowhere"), NOBODY, NOBODY, "dmtcp")
    with pytest.raises(HpcmigError, match="missing"):
        appckpt.take(gone, lambda: None, timeout=1)
