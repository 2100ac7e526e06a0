"""Issue 14, remapping a running job, on the real testbed (3 nodes, no bandwidth limit).

A 2-container MPICH ring with a spare node runs across two leaf switches of the topology
given to `hpcmig remap` (node1 and node3 under one leaf, node2 under the other). Its
measured traffic makes the plan move container 1 from node2 to the spare node3, next to
container 0: `--dry-run` says so and that it pays, and changes nothing; without it, the
container moves live, the ring keeps its exact checksum, and hpcmigd's membership follows;
the job's measured traffic counts what each container sent once, across the move.
Another topology file than the site's is refused to users.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import batch, ring
from tests.integration import hpcmigd
from tests.integration.test_node_loss import submit_script
from tests.integration.test_traffic import hpcmig

pytestmark = pytest.mark.integration

ELEMENTS, ROUNDS = 131072, 150


def test_remap_moves_the_container_that_crosses_leaves(testbed: Plan, slurm: Slurm,
                                                       job_dir: Path) -> None:
    topo = job_dir / "topology.conf"
    topo.write_text("SwitchName=leafa Nodes=node1,node3\nSwitchName=leafb Nodes=node2\n"
                    "SwitchName=top Switches=leafa,leafb\n")
    script = batch.vcluster_script(
        3, [["hpcmig.workloads.ring", "--elements", str(ELEMENTS), "--rounds", str(ROUNDS),
             "--seconds", "45", "--report", "--linger", "20"]], mpi="mpich", ntasks=2,
            options={"spares": "1"},
        job_name="remap")
    job_id, out, _ = submit_script(testbed, slurm, job_dir, script)
    time.sleep(5)  # some traffic measured
    assert [hpcmigd.host_of(job_id, i) for i in (0, 1)] == ["node1", "node2"]

    dry = hpcmig("remap", str(job_id), "--topology", str(topo), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    print("\n" + "\n".join(plan["lines"]))
    assert [(r["container"], r["from"], r["to"], r["result"]) for r in plan["rows"]] == [
        (1, "node2", "node3", "would move")], plan
    assert plan["data"]["pays"] and plan["data"]["time_left_seconds"] is None, plan["data"]
    assert plan["data"]["hop_bytes_after"] < plan["data"]["hop_bytes_before"]
    assert hpcmigd.host_of(job_id, 1) == "node2"  # a dry run changes nothing

    uid = int(subprocess.run(["id", "-u", testbed.user], capture_output=True, text=True,
                             check=True).stdout)
    user = hpcmig("remap", str(job_id), "--topology", str(topo), "--dry-run", user=uid)
    assert user.returncode != 0 and "is for root and the Slurm admin" in user.stderr, user

    done = hpcmig("remap", str(job_id), "--topology", str(topo), "--json", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [(r["container"], r["to"], r["result"]) for r in rows] == [(1, "node3", "moved")]
    print(f"pause of the move: {rows[0]['pause']:.2f} s")
    assert [hpcmigd.host_of(job_id, i) for i in (0, 1)] == ["node1", "node3"]

    again = hpcmig("remap", str(job_id), "--topology", str(topo), "--dry-run", "--json")
    assert json.loads(again.stdout)["rows"] == [], again.stdout  # nothing left to gain

    # the traffic of the whole run, counted once across the move: what container 1 sent
    # from node2 (saved there when it left) and from node3 (counted since it came)
    deadline = time.monotonic() + 120
    while "ring: PASS" not in (text := out.read_text()):
        assert time.monotonic() < deadline, text
        time.sleep(0.5)
    sent = {(int(a), int(b)): int(n) for a, n, b in re.findall(
        r"^ring: rank (\d+) \(\S+\) sent (\d+) bytes to rank (\d+)", text, re.M)}
    assert sent == {(0, 1): ROUNDS * ELEMENTS * 8, (1, 0): ROUNDS * ELEMENTS * 8}, text
    measured = hpcmig("traffic", str(job_id), "--json")
    assert measured.returncode == 0, measured.stderr
    matrix = json.loads(measured.stdout)["bytes"]
    print(f"measured bytes across the move: {matrix}; sent: {sent}")
    for (i, j), payload in sent.items():
        assert payload <= matrix[i][j] <= 1.10 * payload, (i, j, matrix[i][j], payload)

    job = slurm.wait(job_id, timeout=180)
    text = out.read_text()
    assert job.state == "COMPLETED", text
    assert f"ring: PASS checksum={ring.expected(2, ELEMENTS, ROUNDS)} " in text, text
