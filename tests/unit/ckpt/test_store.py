"""The controller's side of hpcmig.ckpt: index, commit, retention, requests (no MPI, no h5py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcmig import ckpt
from hpcmig.ckpt import CheckpointError, store
from hpcmig.ckpt.checkpointer import default_directory, interval_from_env


def fake_save(d: Path, generation: int, step: int, keep: int = 2, payload: bytes = b"") -> None:
    """A save as rank 0 makes it, with any bytes for the file."""
    Path(store.temp_path(str(d), generation)).write_bytes(payload or os.urandom(64))
    store.commit(str(d), generation, step, ranks=2, keep=keep)


def test_importing_it_loads_neither_mpi4py_nor_h5py() -> None:
    code = "import sys, hpcmig.ckpt; print([m for m in sys.modules if m in ('mpi4py', 'h5py')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_commit_publishes_keeps_the_newest_k_and_prunes(tmp_path: Path) -> None:
    d = Path(store.ensure_private(str(tmp_path / "c")))
    assert ckpt.latest(str(d)) is None and ckpt.generations(str(d)) == []
    for g in (1, 2, 3):
        fake_save(d, g, step=10 * g)
    assert sorted(os.listdir(d)) == ["gen-00000002.h5", "gen-00000003.h5", "generations.json"]
    gens = ckpt.generations(str(d))
    assert [(g.generation, g.step, g.ranks, g.complete) for g in gens] == [
        (2, 20, 2, True), (3, 30, 2, True)]
    newest = ckpt.latest(str(d), verify=True)
    assert newest == gens[-1] and newest.path == str(d / "gen-00000003.h5")
    assert newest.digest.startswith(store.HASH + ":") and newest.time <= time.time()
    assert json.loads((d / "generations.json").read_text())["generations"][0]["file"] == (
        "gen-00000002.h5")
    fake_save(d, 4, step=40, keep=1)
    assert [g.generation for g in ckpt.generations(str(d))] == [4]
    assert stat.S_IMODE((d / "generations.json").stat().st_mode) == 0o600


def test_an_incomplete_or_corrupt_newest_is_not_latest(tmp_path: Path) -> None:
    d = Path(store.ensure_private(str(tmp_path / "c")))
    fake_save(d, 1, step=1, payload=b"a" * 100)
    fake_save(d, 2, step=2, payload=b"b" * 100)
    (d / "gen-00000002.h5").write_bytes(b"b" * 99 + b"X")  # same size, other bytes
    assert ckpt.latest(str(d)).generation == 2  # type: ignore[union-attr]
    assert ckpt.latest(str(d), verify=True).generation == 1  # type: ignore[union-attr]
    (d / "gen-00000002.h5").write_bytes(b"b" * 50)  # truncated
    assert [g.complete for g in ckpt.generations(str(d))] == [True, False]
    assert ckpt.latest(str(d)).generation == 1  # type: ignore[union-attr]
    (d / "gen-00000001.h5").unlink()
    (d / "gen-00000002.h5").unlink()
    assert ckpt.latest(str(d)) is None


def test_sweep_removes_interrupted_and_unindexed_generations_only(tmp_path: Path) -> None:
    d = Path(store.ensure_private(str(tmp_path / "c")))
    fake_save(d, 1, step=1)
    Path(store.temp_path(str(d), 2)).write_bytes(b"half a save")
    (d / "gen-00000002.h5").write_bytes(b"renamed, never indexed")
    (d / "heat-progress").write_text("17")
    store.sweep(str(d))
    assert sorted(os.listdir(d)) == ["gen-00000001.h5", "generations.json", "heat-progress"]


def test_an_unreadable_index_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "generations.json").write_text('{"generations": [{"generation": 1')
    with pytest.raises(CheckpointError, match="unreadable checkpoint index"):
        ckpt.latest(str(tmp_path))


def test_the_directory_is_made_private(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    assert store.ensure_private(str(d)) == str(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_a_request_asks_for_a_generation_newer_than_the_newest(tmp_path: Path) -> None:
    d = Path(store.ensure_private(str(tmp_path / "c")))
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        ckpt.request(str(tmp_path / "missing"))
    assert not store.requested(str(d), 0, 0.0)
    ckpt.request(str(d))
    assert json.loads((d / "request").read_text())["after_generation"] == 0
    assert store.requested(str(d), 0, 0.0)
    fake_save(d, 1, step=5)
    assert not store.requested(str(d), 1, time.time())  # served by generation 1
    ckpt.request(str(d))
    assert store.requested(str(d), 1, time.time()) and not store.requested(str(d), 2, 0.0)
    assert stat.S_IMODE((d / "request").stat().st_mode) == 0o600


def test_a_touched_request_file_counts_by_its_mtime(tmp_path: Path) -> None:
    d = Path(store.ensure_private(str(tmp_path / "c")))
    (d / "request").write_text("")
    os.utime(d / "request", (1000.0, 1000.0))
    assert store.requested(str(d), 3, 999.0)
    assert not store.requested(str(d), 3, 1001.0)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the request to the job's user needs root")
def test_root_gives_the_request_to_the_directory_owner(tmp_path: Path) -> None:
    d = Path(store.ensure_private(str(tmp_path / "c")))
    os.chown(d, 4242, 4343)
    ckpt.request(str(d))
    st = (d / "request").stat()
    assert (st.st_uid, st.st_gid) == (4242, 4343)


def test_default_directory_and_interval_come_from_the_environment(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_directory({"HPCMIG_APP_CKPT_DIR": "/x/y", "SLURM_JOB_ID": "7"}) == "/x/y"
    assert default_directory({"SLURM_JOB_ID": "7"}) == str(tmp_path / "hpcmig-ckpt-7")
    assert default_directory({"HPCMIG_JOB_ID": "8"}) == str(tmp_path / "hpcmig-ckpt-8")
    assert default_directory({}) == str(tmp_path / "hpcmig-ckpt-local")
    assert interval_from_env({"HPCMIG_APP_CKPT_INTERVAL": "90"}) == 90.0
    assert interval_from_env({"HPCMIG_APP_CKPT_INTERVAL": "0"}) is None
    assert interval_from_env({}) is None
    with pytest.raises(CheckpointError, match="not a number"):
        interval_from_env({"HPCMIG_APP_CKPT_INTERVAL": "soon"})
