"""The testbed is a real cluster: namespaces, Slurm, MPI under srun/sbatch, agents."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed import cluster
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import batch, ring
from tests.integration.test_vcluster import in_node

pytestmark = pytest.mark.integration


def test_three_idle_nodes_each_in_its_own_namespaces(testbed: Plan, slurm: Slurm) -> None:
    nodes = {n.name: n for n in slurm.nodes()}
    assert set(nodes) == {"node1", "node2", "node3"}
    assert all(n.state == "idle" and not n.drained for n in nodes.values())
    root_net = Path("/proc/self/ns/net").stat().st_ino
    seen = set()
    for node in testbed.nodes:
        assert in_node(testbed, node.name, "hostname").strip() == node.name
        net = in_node(testbed, node.name, "readlink", "/proc/self/ns/net").strip()
        seen.add(net)
        assert str(root_net) not in net
        routes = in_node(testbed, node.name, "ip", "-4", "route")
        assert "default" not in routes, routes  # nothing can leave the testbed
        assert node.address in in_node(testbed, node.name, "ip", "-4", "addr", "show", "eth0")
        # private /tmp per node
        in_node(testbed, node.name, "touch", f"/tmp/only-on-{node.name}")
    assert len(seen) == 3
    assert not Path("/tmp/only-on-node1").exists()
    assert in_node(testbed, "node2", "ls", "/tmp").split() == ["only-on-node2"] or \
        "only-on-node1" not in in_node(testbed, "node2", "ls", "/tmp")


def test_agents_heartbeat_from_inside_their_node(testbed: Plan) -> None:
    for node in testbed.nodes:
        beat = testbed.node_dir(node) / "agent" / "heartbeat.json"
        first = json.loads(beat.read_text())
        assert first["node"] == node.name and first["hostname"] == node.name
        time.sleep(2.5)
        assert json.loads(beat.read_text())["time"] > first["time"]


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
def test_sbatch_three_node_mpi_ring(testbed: Plan, slurm: Slurm, job_dir: Path, mpi: str) -> None:
    out = job_dir / "ring.out"
    script = job_dir / "ring.sh"
    script.write_text(batch.ring_script(mpi, nodes=3, ntasks=3, args=["--rounds", "20"],
                                        output=str(out)))
    job_id = slurm.submit([str(script)], user=testbed.user, cwd=str(job_dir))
    job = slurm.wait(job_id, timeout=180)
    text = out.read_text()
    assert job.state == "COMPLETED", text
    assert job.user == testbed.user and job.nodes == ("node1", "node2", "node3")
    want = ring.expected(3, 4096, 20)
    line = next(line for line in text.splitlines() if line.startswith("ring: "))
    assert f"checksum={want} " in line and "PASS" in line
    assert "nodes=node1,node2,node3" in line
    assert ("Open MPI" if mpi == "openmpi" else "MPICH") in line


def test_srun_runs_as_the_unprivileged_user(testbed: Plan) -> None:
    out = subprocess.run(
        ["runuser", "-u", testbed.user, "--", "srun", "-N3", "-n3", "sh", "-c",
         "echo $(hostname) $(id -un)"],
        capture_output=True, text=True, timeout=60, check=True, cwd=str(testbed.home),
    ).stdout.split("\n")
    assert sorted(line for line in out if line) == [f"node{i} {testbed.user}" for i in (1, 2, 3)]


def test_drain_and_resume_through_the_adapter(testbed: Plan, slurm: Slurm) -> None:
    try:
        node = slurm.drain("node2", "integration test")
        assert node.drained and node.reason == "hpcmig: integration test"
        sinfo = subprocess.run(["sinfo", "-h", "-N", "-n", "node2", "-o", "%T|%E"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert sinfo == "drained|hpcmig: integration test"
    finally:
        node = slurm.resume("node2")
    assert not node.drained and node.state == "idle"
    assert subprocess.run(["sinfo", "-h", "-N", "-n", "node2", "-o", "%T"], capture_output=True,
                          text=True, check=True).stdout.strip() == "idle"


def test_a_reason_set_by_someone_else_is_kept(testbed: Plan, slurm: Slurm) -> None:
    subprocess.run(["scontrol", "update", "NodeName=node3", "State=DRAIN",
                    "Reason=bad dimm"], check=True)
    try:
        node = slurm.drain("node3", "evacuating")
        assert node.drained and node.reason == "bad dimm"
        with pytest.raises(Exception, match="not by hpcmig"):
            slurm.resume("node3")
        assert slurm.node("node3").reason == "bad dimm"
    finally:
        subprocess.run(["scontrol", "update", "NodeName=node3", "State=RESUME"], check=True)


def test_requeue_keeps_the_id_and_counts_restarts(testbed: Plan, slurm: Slurm,
                                                  job_dir: Path) -> None:
    job_id = slurm.submit(["-N1", "--wrap", "sleep 300"], user=testbed.user, cwd=str(job_dir))
    try:
        slurm.wait(job_id, timeout=60, states={"RUNNING"})
        slurm.requeue(job_id, hold=True)
        job = slurm.wait(job_id, timeout=60, states={"PENDING"})
        slurm.set_excluded(job_id, ["node1", "node3"])
        job = slurm.job(job_id)
        assert job.restart_count == 1 and job.excluded == ("node1", "node3")
        before = time.time()
        slurm.release(job_id)
        # eligible at once: not after Slurm's requeue delay (about 20 s, then up to a minute
        # more for the next periodic scheduler pass)
        shown = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)],
                               capture_output=True, text=True, check=True).stdout
        eligible = re.search(r"EligibleTime=(\S+)", shown)
        assert eligible and time.mktime(time.strptime(eligible[1], "%Y-%m-%dT%H:%M:%S")) \
            <= before + 2, shown
        job = slurm.wait(job_id, timeout=60, states={"RUNNING"})
        assert job.nodes == ("node2",) and job.job_id == job_id
    finally:
        slurm.cancel(job_id)


def test_status_reports_a_healthy_testbed(testbed: Plan) -> None:
    assert cluster.healthy()
    result = cluster.status()
    assert result is not None
    _, _, nodes, central = result
    assert all(central.values())
    assert [(n.name, n.address, n.slurmd, n.agent) for n in nodes] == [
        (n.name, n.address, True, True) for n in testbed.nodes
    ]
