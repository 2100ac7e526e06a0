"""hpcmig.ckpt across real ranks: MPICH and Open MPI on loopback (mpi_driver.py does the MPI
side), including a rank SIGKILLed in the middle of a save."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from hpcmig import ckpt
from hpcmig.ckpt import store
from tests.unit.ckpt import mpirun


@pytest.mark.parametrize("flavour", mpirun.FLAVOURS)
def test_round_trip_keep_request_and_errors_over_three_ranks(flavour: str, tmp_path: Path
                                                             ) -> None:
    d = tmp_path / "ckpt"
    code, out, err = mpirun.run(mpirun.argv(flavour, 3, mpirun.DRIVER, "roundtrip", str(d)),
                                mpirun.environment(flavour))
    assert code == 0, err
    assert "roundtrip: ok ranks=3" in out
    gens = ckpt.generations(str(d))
    assert [(g.generation, g.step, g.ranks, g.complete) for g in gens] == [
        (4, 40, 3, True), (5, 43, 3, True)]
    assert sorted(os.listdir(d)) == ["gen-00000004.h5", "gen-00000005.h5", "generations.json",
                                     "request"]
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("gen-00000004.h5", "gen-00000005.h5", "generations.json"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    newest = ckpt.latest(str(d), verify=True)
    assert newest is not None and newest.generation == 5 and newest.path == str(
        d / "gen-00000005.h5")


@pytest.mark.parametrize(("flavour", "victim"), [("mpich", 0), ("mpich", 1), ("openmpi", 0),
                                                 ("openmpi", 1)])
def test_a_rank_killed_mid_save_leaves_the_previous_generation(flavour: str, victim: int,
                                                               tmp_path: Path) -> None:
    d, piddir = tmp_path / "ckpt", tmp_path / "pids"
    piddir.mkdir()
    env = mpirun.environment(flavour)
    cmd = mpirun.argv(flavour, 2, mpirun.DRIVER, "hold", str(d), str(piddir))
    with mpirun.launched(cmd, env, piddir) as launch:
        mpirun.wait_for(lambda: (piddir / "holding").exists(), launch)
        partial = Path(store.temp_path(str(d), 2))
        assert partial.exists() and partial.stat().st_size > 0  # rank 0's group is written
        victim_pid = launch.rank_pid(victim)
        os.kill(victim_pid, signal.SIGKILL)
        mpirun.wait_for(lambda: victim_pid not in launch.session(), launch, timeout=10,
                        ended_ok=True)
        launch.kill()  # then the rest of the job, as Slurm would (without mpirun's delay)
        launch.wait(30)
    assert partial.exists()  # the interrupted save is left as it was...
    newest = ckpt.latest(str(d), verify=True)  # ...and ignored
    assert newest is not None and (newest.generation, newest.step) == (1, 5)
    code, out, err = mpirun.run(mpirun.argv(flavour, 2, mpirun.DRIVER, "resume", str(d)), env)
    assert code == 0, err
    assert "resume: ok" in out
    assert not partial.exists()
