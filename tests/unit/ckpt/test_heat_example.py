"""jobs/app_ckpt_heat.py: hpcmigd asks for a checkpoint, the job is killed, and the run started
again resumes from it, reports the lost work and ends with the uninterrupted checksum."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from hpcmig import ckpt
from tests.unit.ckpt import mpirun

ARGS = ["--cells", "512", "--steps", "400", "--every", "5", "--save-every", "100"]


def heat() -> ModuleType:
    spec = importlib.util.spec_from_file_location("app_ckpt_heat", mpirun.HEAT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checksum(out: str) -> str:
    m = re.search(r"^heat: PASS checksum=(\w+) ", out, re.M)
    assert m, out
    return m.group(1)


def reached(d: Path) -> int:
    try:
        return int((d / "heat-progress").read_text())
    except (OSError, ValueError):
        return 0


def test_serial_reference_depends_on_the_steps() -> None:
    h = heat()
    assert h.expected(64, 3) == h.expected(64, 3) != h.expected(64, 4)


@pytest.mark.parametrize("flavour", mpirun.FLAVOURS)
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(flavour: str, tmp_path: Path
                                                               ) -> None:
    once, d = tmp_path / "once", tmp_path / "ckpt"
    code, out, err = mpirun.run(mpirun.argv(flavour, 2, mpirun.HEAT, *ARGS),
                                mpirun.environment(flavour, HPCMIG_APP_CKPT_DIR=str(once)))
    assert code == 0, err
    uninterrupted = checksum(out)
    assert uninterrupted == heat().expected(512, 400)

    env = mpirun.environment(flavour, HPCMIG_APP_CKPT_DIR=str(d))
    with mpirun.launched(mpirun.argv(flavour, 2, mpirun.HEAT, *ARGS, "--sleep", "0.005"),
                         env) as launch:
        mpirun.wait_for(lambda: reached(d) >= 110, launch)  # generation 1 is at step 100
        ckpt.request(str(d))  # as hpcmigd would: the next maybe_save (every 5 steps) saves
        mpirun.wait_for(lambda: (g := ckpt.latest(str(d))) is not None and g.generation > 1,
                        launch)
        asked = ckpt.latest(str(d))
        assert asked is not None
        mpirun.wait_for(lambda: reached(d) >= asked.step + 20, launch)
        launch.kill()  # SIGKILL to the launcher and every rank: a node failure, scancel
        launch.wait(30)
    newest = ckpt.latest(str(d), verify=True)
    assert newest is not None and newest.step >= asked.step
    lost = reached(d) - newest.step
    assert 0 <= lost < 400

    code, out, err = mpirun.run(mpirun.argv(flavour, 2, mpirun.HEAT, *ARGS), env)
    assert code == 0, err
    assert f"heat: resuming at step {newest.step} " in out
    assert f"lost work: {lost} steps" in out
    assert checksum(out) == uninterrupted
