"""The mpi4py side of tests/unit/ckpt/test_mpi.py: `mpi_driver.py MODE DIR [PIDDIR]`.

Modes: `roundtrip` (saves, keep-K, restarted, request, maybe_save, errors every rank agrees
on), `hold` (saves generation 1, then stops rank 0 in the middle of writing generation 2 and
waits to be killed), `resume` (after `hold` was killed: generation 1 loads, saving goes on).
A failed check raises, so mpiexec exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from mpi4py import MPI
from samples import data, same  # this script's directory is on sys.path

import hpcmig.ckpt
from hpcmig.ckpt import Checkpointer, CheckpointError, NoCheckpoint, _h5, checkpointer

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def expect_error(kind: type[Exception], fn: Any, *args: Any, **kw: Any) -> str:
    try:
        fn(*args, **kw)
    except kind as exc:
        return str(exc)
    raise AssertionError(f"{fn.__name__} did not raise {kind.__name__}")


def roundtrip(directory: str) -> None:
    checkpointer._CHUNK = 4096  # arrays cross in several messages, as big ones do
    ck = Checkpointer(directory=directory, keep=2)
    assert not ck.restarted()
    assert not ck.requested()
    expect_error(NoCheckpoint, ck.load)
    for generation, step in enumerate((10, 20, 30), start=1):
        assert ck.save(step, **data(rank, step)) == generation
    assert ck.restarted()
    # every rank raises the same error when one rank passes something unsaveable, or the
    # ranks disagree on the step; nothing is published
    bad = {"oops": object()} if rank == 1 else {}
    assert "rank 1" in expect_error(CheckpointError, ck.save, 31, **data(rank, 31), **bad)
    assert "disagree" in expect_error(CheckpointError, ck.save, 31 + rank, x=1)
    # the controller asks (no MPI on its side); maybe_save then saves once
    if rank == 0:
        hpcmig.ckpt.request(directory)
    assert ck.requested()
    assert ck.maybe_save(40, **data(rank, 40)) == 4
    assert not ck.requested()
    assert ck.maybe_save(41, **data(rank, 41)) is None  # no interval set
    periodic = Checkpointer(directory=directory, interval=0.3)
    assert periodic.maybe_save(42, **data(rank, 42)) is None
    time.sleep(0.35)
    assert periodic.maybe_save(43, **data(rank, 43)) == 5
    assert periodic.maybe_save(44, **data(rank, 44)) is None
    # a job started again
    again = Checkpointer(directory=directory)
    assert again.restarted()
    step, got = again.load()
    assert step == 43
    same(got, data(rank, 43))
    if rank == 0:
        print(f"roundtrip: ok ranks={size}", flush=True)


def hold(directory: str, piddir: str) -> None:
    Path(piddir, f"rank{rank}").write_text(str(os.getpid()))
    ck = Checkpointer(directory=directory)
    assert ck.save(5, **data(rank, 5)) == 1
    write_group = _h5.write_group

    def stop_after_own_group(h5: Any, r: int, *args: Any) -> None:
        write_group(h5, r, *args)
        h5.flush()
        Path(piddir, "holding").write_text(h5.filename)
        time.sleep(120)  # the test kills a rank now

    _h5.write_group = stop_after_own_group  # type: ignore[assignment]
    ck.save(6, **data(rank, 6))
    raise AssertionError("the save should have been killed")


def resume(directory: str) -> None:
    ck = Checkpointer(directory=directory)
    assert ck.restarted()
    step, got = ck.load()
    assert step == 5, step
    same(got, data(rank, 5))
    assert ck.save(7, **data(rank, 7)) == 2
    if rank == 0:
        left = sorted(os.listdir(directory))
        assert left == ["gen-00000001.h5", "gen-00000002.h5", "generations.json"], left
        print("resume: ok", flush=True)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    modes: dict[str, Any] = {"roundtrip": roundtrip, "hold": hold, "resume": resume}
    modes[mode](*rest)
