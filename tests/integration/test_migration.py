"""Issue 4 acceptance on the real testbed: containers of running MPI jobs move live.

Each job asks for one spare node (`--comment=hpcmig:spares=1`): 3 nodes, containers on the
first two, the third free. The ring keeps exchanging data the whole time and must print the
exact checksum of an undisturbed run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import batch, ring
from tests.integration import hpcmigd
from tests.integration.hpcmigd import host_of

pytestmark = pytest.mark.integration

ELEMENTS = 4096


def submit_ring(plan: Plan, slurm: Slurm, job_dir: Path, name: str, *, mpi: str = "mpich",
                rounds: int = 200, seconds: float = 20, memory_mb: int = 32,
                options: dict[str, str] | None = None,
                python: str = sys.executable) -> tuple[int, Path]:
    """A 4-rank ring over 3 nodes (one spare) that keeps exchanging for `seconds`; `options`
    are added to spares=1 (an image job also passes the image's `python`)."""
    script = batch.vcluster_script(
        3, [["hpcmig.workloads.ring", "--rounds", str(rounds), "--seconds", str(seconds),
             "--memory-mb", str(memory_mb), "--elements", str(ELEMENTS)]],
        mpi=mpi, ntasks=4, options={"spares": "1", **(options or {})}, job_name=name,
        python=python)
    path = job_dir / f"{name}.sh"
    path.write_text(script)
    out = job_dir / f"{name}.out"
    job_id = slurm.submit([f"--output={out}", str(path)], user=plan.user, cwd=str(job_dir))
    slurm.wait(job_id, timeout=60, states={"RUNNING"})
    wait_for_ranks(plan, job_id)
    return job_id, out


def wait_for_ranks(plan: Plan, job_id: int, timeout: float = 30) -> None:
    """Until the launcher in container 0 runs (its heartbeat exists)."""
    run_dir = plan.base / "shared" / "jobs" / str(job_id)
    deadline = time.monotonic() + timeout
    while not list(run_dir.glob("run-*/heartbeat")):
        assert time.monotonic() < deadline, f"job {job_id}: the MPI launcher never started"
        time.sleep(0.2)
    time.sleep(2.0)  # ranks connected and exchanging


def finish(slurm: Slurm, job_id: int, out: Path, rounds: int = 200) -> str:
    job = slurm.wait(job_id, timeout=300)
    text = out.read_text()
    assert job.state == "COMPLETED", f"job {job_id} {job.state}:\n{text}"
    want = ring.expected(4, ELEMENTS, rounds)
    assert f"ring: PASS checksum={want} " in text, text
    return text


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_one_container_moves_live_and_the_checksum_is_exact(testbed: Plan, slurm: Slurm,
                                                             job_dir: Path, mpi: str) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, f"mig-{mpi}", mpi=mpi)
    assert host_of(job_id, 1) == "node2"
    row = hpcmigd.migrate(job_id, "node2")
    assert row["to"] == "node3" and row["pause"] is not None
    assert host_of(job_id, 1) == "node3"
    finish(slurm, job_id, out)


def test_twenty_migrations_in_a_row(testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    """Back and forth between two nodes, within a job of 60 s (20 moves took 36 s here)."""
    job_id, out = submit_ring(testbed, slurm, job_dir, "mig-20", rounds=600, seconds=60)
    pauses = []
    started = time.monotonic()
    for i in range(20):
        source = "node2" if i % 2 == 0 else "node3"
        pauses.append(hpcmigd.migrate(job_id, source)["pause"])
    took = time.monotonic() - started
    assert host_of(job_id, 1) == "node2"
    assert slurm.job(job_id).state == "RUNNING", "the job ended before 20 moves: lengthen it"
    finish(slurm, job_id, out, rounds=600)
    print(f"20 migrations in {took:.1f} s, pauses {min(pauses):.2f}-{max(pauses):.2f} s")


def test_drain_moves_the_job_off_and_leaves_the_node_drained_and_empty(
        testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, "drain")
    hpcmig = ["hpcmig"]
    try:
        done = subprocess.run([*hpcmig, "drain", "node2", "--reason", "test"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        node = slurm.node("node2")
        assert "DRAIN" in node.flags and node.state == "idle", node
        assert node.reason == "hpcmig: test"
        assert "node2" not in slurm.job(job_id).nodes
        finish(slurm, job_id, out)
        # nothing of hpcmig on node2: container, netns, routes, job record, images
        node_dir = testbed.node_dir(testbed.node("node2"))
        assert not any((node_dir / "run-hpcmig" / "containers").glob("*"))
        assert not any((node_dir / "run-hpcmig" / "agent" / "jobs").glob("*.json"))
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not re.search(r"hpcmig-\d+-\d+-\d+\.node2", netns), netns
        routes = subprocess.run([*testbed.nsenter(testbed.node("node2")), "ip", "route",
                                 "show", "table", "all"], capture_output=True, text=True).stdout
        assert "10.252." not in routes, routes
        assert not (testbed.base / "ckpt" / str(job_id)).exists()
    finally:
        slurm.resume("node2")
