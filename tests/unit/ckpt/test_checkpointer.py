"""Checkpointer on one rank, in process (a stand-in communicator of size 1): file contents,
failures and fallbacks. The multi-rank protocol runs under real MPI in test_mpi.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from hpcmig import ckpt
from hpcmig.ckpt import Checkpointer, CheckpointError, NoCheckpoint, _h5, store
from tests.unit.ckpt.samples import data, same


class SoloComm:
    """The part of an mpi4py communicator Checkpointer uses, for a single rank."""

    def Dup(self) -> SoloComm:  # noqa: N802 - mpi4py's names
        return self

    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list[Any]:
        return [obj]


def checkpointer(d: Path, **kw: Any) -> Checkpointer:
    return Checkpointer(SoloComm(), directory=d, **kw)


def test_round_trip_of_every_kind_and_the_file_layout(tmp_path: Path) -> None:
    d = tmp_path / "c"
    ck = checkpointer(d)
    assert not ck.restarted()
    with pytest.raises(NoCheckpoint, match="no complete checkpoint"):
        ck.load()
    assert ck.save(3, **data(0, 3)) == 1
    assert ck.restarted()
    step, got = checkpointer(d).load()
    assert step == 3
    same(got, data(0, 3))
    with h5py.File(d / "gen-00000001.h5", "r") as h5:
        assert dict(h5.attrs) | {"created": 0} == {"hpcmig_ckpt_format": 1, "generation": 1,
                                                   "step": 3, "ranks": 1, "created": 0}
        assert h5["rank0/f64"].shape == (1000,) and h5["rank0"].attrs["label"] == "rank-0"
        assert h5py.check_opaque_dtype(h5["rank0/words"].dtype)  # no HDF5 type for unicode
        assert not h5py.check_opaque_dtype(h5["rank0/rec"].dtype)


def test_keep_k_and_generation_numbers(tmp_path: Path) -> None:
    d = tmp_path / "c"
    ck = checkpointer(d, keep=3)
    assert [ck.save(s, x=np.arange(s)) for s in range(5)] == [1, 2, 3, 4, 5]
    assert [g.generation for g in ckpt.generations(str(d))] == [3, 4, 5]
    assert sorted(p.name for p in d.glob("gen-*.h5")) == [
        "gen-00000003.h5", "gen-00000004.h5", "gen-00000005.h5"]
    step, got = checkpointer(d).load()
    assert step == 4 and np.array_equal(got["x"], np.arange(4))


def test_what_cannot_be_saved_is_refused_by_name(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path / "c")
    refused: list[tuple[dict[str, Any], str]] = [
        ({"obj": object()}, "'obj': object is neither"),
        ({"lst": [1, 2]}, "'lst': list"),
        ({"o": np.array([None, 1])}, "Python objects"),
        ({"a/b": 1}, "invalid checkpoint name 'a/b'"),
        ({"_hpcmig_x": 1}, "invalid checkpoint name")]
    for kw, match in refused:
        with pytest.raises(CheckpointError, match=match):
            ck.save(1, **kw)
    with pytest.raises(CheckpointError, match="keep must be at least 1"):
        checkpointer(tmp_path / "c", keep=0)
    with pytest.raises(CheckpointError, match="step must be >= 0"):
        ck.save(-1)
    with pytest.raises(CheckpointError, match="integer"):
        ck.save(1.5)  # type: ignore[arg-type]
    assert ckpt.generations(str(tmp_path / "c")) == []


def test_a_failed_write_publishes_nothing_and_removes_its_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    d = tmp_path / "c"
    ck = checkpointer(d)
    ck.save(1, x=np.ones(3))

    def disk_full(*_a: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_h5, "write_group", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        ck.save(2, x=np.zeros(3))
    assert sorted(os.listdir(d)) == ["gen-00000001.h5", "generations.json"]
    assert ckpt.latest(str(d)).step == 1  # type: ignore[union-attr]


def test_load_falls_back_past_a_corrupt_newest(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "c"
    ck = checkpointer(d)
    ck.save(1, x=np.full(100, 1.0))
    ck.save(2, x=np.full(100, 2.0))
    path = d / "gen-00000002.h5"
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(raw))
    again = checkpointer(d)
    assert again.restarted()  # complete by size; the checksum is checked by load
    step, got = again.load()
    assert step == 1 and np.array_equal(got["x"], np.full(100, 1.0))
    assert "generation 2" in capsys.readouterr().err
    assert [g.generation for g in ckpt.generations(str(d))] == [1]
    assert again.save(3, x=np.zeros(1)) == 2  # the corrupt file is swept and replaced


def test_a_checkpoint_of_another_job_size_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "c"
    checkpointer(d).save(1, x=np.zeros(1))
    index = json.loads((d / "generations.json").read_text())
    index["generations"][0]["ranks"] = 4
    (d / "generations.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="saved by 4 ranks; this job has 1"):
        checkpointer(d).load()


def test_maybe_save_when_requested_or_when_the_interval_passed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    d = tmp_path / "c"
    monkeypatch.setenv("HPCMIG_APP_CKPT_DIR", str(d))
    monkeypatch.setenv("HPCMIG_APP_CKPT_INTERVAL", "0.2")
    ck = Checkpointer(SoloComm())
    assert ck.directory == str(d) and ck.interval == 0.2
    assert ck.maybe_save(1, x=1) is None and not ck.requested()
    time.sleep(0.25)
    assert ck.maybe_save(2, x=2) == 1
    assert ck.maybe_save(3, x=3) is None
    ckpt.request(str(d))
    assert ck.requested()
    assert ck.maybe_save(4, x=4) == 2
    assert not ck.requested()
    (d / "request").write_text("touched by hand")
    os.utime(d / "request", (time.time() + 5, time.time() + 5))
    assert ck.requested()
    monkeypatch.setenv("HPCMIG_APP_CKPT_INTERVAL", "soon")
    with pytest.raises(CheckpointError, match="not a number"):
        Checkpointer(SoloComm())


def test_the_scalar_encoding_round_trips_without_a_file() -> None:
    arrays, scalars = _h5.split({"a": np.arange(3), "s": "x", "b": b"", "i": -(2**64)})
    assert list(arrays) == ["a"]
    assert _h5.decode(scalars) == {"s": "x", "b": b"", "i": -(2**64)}
    assert store.HASH in ("xxh3_128", "sha256")
