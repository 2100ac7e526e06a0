"""Issue 4 acceptance on the real testbed: whole-job checkpoint, stop, restore elsewhere.

A 2-node MPICH job (in containers of the ns runtime, or of LXC) runs two steps: a short ring,
then a long one. During the long step `hpcmig checkpoint` freezes and dumps both containers
and requeues the job held; `hpcmig restore --exclude` releases it off one of its old nodes.
When Slurm starts it again (same job id, a different set of nodes) its first `hpcmig run`
restores the containers; the finished step is not run again and the running one is
reattached: both checksums exact, each printed once. After the job, its checkpoint images
are gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import batch, ring
from tests.integration.test_migration import ELEMENTS, wait_for_ranks

pytestmark = pytest.mark.integration

SHORT, LONG = 5, 200


def hpcmig(*args: str) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "hpcmig")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("runtime", ["ns", "lxc"])
def test_whole_job_checkpoint_stop_and_restore_on_other_nodes(testbed: Plan, slurm: Slurm,
                                                              job_dir: Path,
                                                              runtime: str) -> None:
    ring_args = ["hpcmig.workloads.ring", "--elements", str(ELEMENTS)]
    script = batch.vcluster_script(
        2, [[*ring_args, "--rounds", str(SHORT)],
            [*ring_args, "--rounds", str(LONG), "--seconds", "25", "--memory-mb", "16"]],
        mpi="mpich", ntasks=4, job_name="ckpt-restart", options={"runtime": runtime})
    (job_dir / "job.sh").write_text(script)
    out = job_dir / "job.out"
    job_id = slurm.submit([f"--output={out}", str(job_dir / "job.sh")], user=testbed.user,
                          cwd=str(job_dir))
    slurm.wait(job_id, timeout=60, states={"RUNNING"})
    before = slurm.job(job_id).nodes
    wait_for_ranks(testbed, job_id)
    # the long step is the second run directory of incarnation 0
    run1 = testbed.base / "shared" / "jobs" / str(job_id) / "run-0-1"
    while not (run1 / "heartbeat").exists():
        assert slurm.job(job_id).state == "RUNNING", out.read_text()
        time.sleep(0.3)
    time.sleep(3)  # the long step's ranks are connected and exchanging

    done = hpcmig("checkpoint", str(job_id))
    assert done.returncode == 0, done.stderr
    job = slurm.wait(job_id, timeout=60, states={"PENDING"})  # after the epilogs
    assert job.reason == "JobHeldUser" and job.restart_count == 1, job
    ckpt = testbed.base / "ckpt" / str(job_id)
    assert (ckpt / "restart.json").exists()
    assert (ckpt / "restart.json").stat().st_mode & 0o077 == 0  # root's: images hold memory

    keep_off = before[0]
    done = hpcmig("restore", str(job_id), "--exclude", keep_off)
    assert done.returncode == 0, done.stderr
    job = slurm.wait(job_id, timeout=120, states={"RUNNING", "COMPLETED", "FAILED"})
    after = slurm.job(job_id).nodes
    assert keep_off not in after and set(after) != set(before), (before, after)

    job = slurm.wait(job_id, timeout=300)
    text = out.read_text()
    assert job.state == "COMPLETED" and job.restart_count == 1, (job, text)
    for rounds in (SHORT, LONG):
        want = f"ring: PASS checksum={ring.expected(4, ELEMENTS, rounds)} "
        assert text.count(want) == 1, text
    assert "restored from the checkpoint of run 0" in text, text
    assert "reattaching" in text, text
    assert not ckpt.exists(), "the job ended: its checkpoint images must be removed"


def test_a_job_cancelled_while_held_after_a_checkpoint_leaves_no_images(
        testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    script = batch.vcluster_script(
        2, [["hpcmig.workloads.ring", "--elements", str(ELEMENTS), "--rounds", str(LONG),
             "--seconds", "60"]], mpi="mpich", ntasks=4, job_name="ckpt-cancel")
    (job_dir / "job.sh").write_text(script)
    job_id = slurm.submit([f"--output={job_dir / 'job.out'}", str(job_dir / "job.sh")],
                          user=testbed.user, cwd=str(job_dir))
    slurm.wait(job_id, timeout=60, states={"RUNNING"})
    wait_for_ranks(testbed, job_id)
    done = hpcmig("checkpoint", str(job_id))
    assert done.returncode == 0, done.stderr
    slurm.wait(job_id, timeout=60, states={"PENDING"})
    ckpt = testbed.base / "ckpt" / str(job_id)
    assert (ckpt / "restart.json").exists()
    slurm.cancel(job_id)  # it never runs again, so no epilog removes its images
    deadline = time.monotonic() + 60
    while ckpt.exists():
        assert time.monotonic() < deadline, "hpcmigd left a cancelled job's images"
        time.sleep(1)
