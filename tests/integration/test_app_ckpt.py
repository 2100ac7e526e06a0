"""Issue 11 acceptance on the real testbed: a node dies under a job that checkpoints itself
(application level, `engine=app,ckpt=10`), and the job comes back by itself.

The worked example (jobs/app_ckpt_heat.sh and .py: mpi4py, hpcmig.ckpt; its interval made
10 s, its steps fewer) runs on 4 ranks in two containers. Its `hpcmig
run` registers the program's checkpoint directory with hpcmigd, which asks the program for a
generation every 10 s (the program saves at its next `maybe_save`). Once two generations
exist, `testbed fail NODE --crash` SIGKILLs everything of the job's second node. With no
command from anybody, hpcmigd requeues the job (same id) off the dead node; the batch script
runs again and the program resumes from its newest generation: the checksum of an
uninterrupted run printed once, the steps done twice at most one interval's worth, the dead
node DOWN with hpcmig's reason, and the program's checkpoint directory gone once the job ended.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from tests.integration import hpcmigd
from tests.integration.test_node_loss import (  # noqa: F401 - crashed: a fixture
    INTERVAL,
    crash_mid_interval,
    crashed,
    submit_script,
)

pytestmark = pytest.mark.integration

HEAT = Path(__file__).resolve().parents[2] / "jobs" / "app_ckpt_heat.py"
STEPS = 8000  # the interval is test_node_loss's (crash_mid_interval waits half of it)


def app_generations(directory: Path) -> list[dict]:
    try:
        return list(json.loads((directory / "generations.json").read_text())["generations"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def test_a_crashed_node_restarts_an_app_checkpointed_job_from_its_last_generation(
        testbed: Plan, slurm: Slurm, job_dir: Path, crashed: list[str]) -> None:  # noqa: F811
    # the worked example as it is, with a 10 s interval and fewer steps
    shutil.copy(HEAT, job_dir / HEAT.name)
    script = (HEAT.with_suffix(".sh")).read_text()
    assert "ckpt=30" in script and "--steps 20000" in script
    script = script.replace("ckpt=30", f"ckpt={INTERVAL}").replace(
        "--steps 20000", f"--steps {STEPS}").replace("/opt/hpcmig/venv/bin/python",
                                                     sys.executable)
    job_id, out, victim = submit_script(testbed, slurm, job_dir, script)
    directory = job_dir / f"hpcmig-ckpt-{job_id}"

    deadline = time.monotonic() + 4 * INTERVAL
    while len(app_generations(directory)) < 2:
        assert time.monotonic() < deadline, f"fewer than 2 generations after {4 * INTERVAL} s" \
            f"\n{out.read_text()}\n" + (testbed.base / "log" / "hpcmigd.log").read_text()[-3000:]
        assert slurm.job(job_id).state == "RUNNING", out.read_text()
        time.sleep(0.3)
    first, second = app_generations(directory)[-2:]
    per_interval = second["step"] - first["step"]
    crash_mid_interval(victim, second, crashed)

    job = slurm.wait(job_id, timeout=240, states={"COMPLETED", "FAILED", "CANCELLED"})
    text = out.read_text()
    assert job.state == "COMPLETED", (job, text)
    assert job.restart_count == 1 and victim not in job.nodes, job
    assert len(re.findall(r"^heat: PASS checksum=\w+ expected=\w+ ranks=4 ", text, re.M)) == 1, \
        text
    assert "resumed=yes" in text and "heat: resuming at step" in text, text
    lost = int(re.search(r"^lost work: (\d+) steps", text, re.M).group(1))  # type: ignore[union-attr]
    print(f"app-level: {per_interval} steps per {INTERVAL} s interval; {lost} steps done again")
    assert lost <= per_interval * 1.2 + 100, (lost, per_interval)
    assert slurm.node(victim).reason.startswith("hpcmig: node lost"), slurm.node(victim)
    decided = [d["what"] for d in hpcmigd.status()["decisions"]]
    assert any(f"job {job_id}: {victim} lost" in d for d in decided), decided

    deadline = time.monotonic() + 60
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not directory.exists(), "the job ended: its checkpoints must be removed"
