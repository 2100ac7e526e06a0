"""Issue 10 acceptance on the real testbed: hpcmigd moves jobs off degrading nodes by itself.

A degradation is injected with `hpcmig testbed fail NODE --degrade KIND`, which changes what
that node's agent reads (its fixture /sys view, a failing check script, a filled scratch
tmpfs); nobody calls any hpcmig verb. Cases:
- each kind under a running 3-node job with a spare: the node ends DRAINED with the rule in
  its reason and nothing of the job on it, the container ran elsewhere within 10 s of the
  injection, the job's checksum is exact;
- a job without a spare: the whole-job fallback (same job id, exact result);
- a node somebody else drained with their own reason keeps it; a job that did not opt in is
  not touched;
- hpcmigd SIGKILLed between detection and the end of the evacuation: it completes, once;
- load balancing on: CPU hogs inside the job's node move a container to its idle spare;
  off: nothing moves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig import config as site_config
from hpcmig.controller.journal import Journal
from hpcmig.health.rules import Policy
from hpcmig.slurm import Slurm
from hpcmig.testbed import cluster
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import ring
from tests.integration import hpcmigd
from tests.integration.hpcmigd import host_of
from tests.integration.test_controller import assert_empty, drained, ranks, whole_job
from tests.integration.test_migration import ELEMENTS, finish, submit_ring

pytestmark = pytest.mark.integration

RULE = {"memory-errors": "memory-errors", "temperature": "temperature", "check": "check",
        "disk": "disk", "nic": "nic"}


@pytest.fixture
def healed(testbed: Plan) -> Iterator[None]:
    """Every node healthy again after the test (and resumed by the next test's settle)."""
    yield
    healed_at = time.time()
    for node in testbed.nodes:
        cluster.heal(node.name)
    hpcmigd.ensure_running()
    hpcmigd.wait_healthy([n.name for n in testbed.nodes], since=healed_at)



def wait_moved(job_id: int, index: int, away_from: str, timeout: float) -> float:
    """Seconds until hpcmigd says container index runs elsewhere."""
    t0 = time.monotonic()
    while host_of(job_id, index) == away_from:
        assert time.monotonic() - t0 < timeout, f"container {index} still on {away_from}"
        time.sleep(0.2)
    return time.monotonic() - t0


def wait_drained(slurm: Slurm, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not drained(slurm, node):
        assert time.monotonic() < deadline, slurm.node(node)
        time.sleep(0.3)


@pytest.mark.parametrize("kind", list(RULE))
def test_a_degraded_node_is_drained_and_its_container_moves_by_itself(
        testbed: Plan, slurm: Slurm, job_dir: Path, healed: None, kind: str) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, f"degrade-{kind}", seconds=20)
    t0 = time.monotonic()
    print("\n" + cluster.fail("node2", kind))
    took = wait_moved(job_id, 1, "node2", timeout=10)
    assert host_of(job_id, 1) == "node3"
    wait_drained(slurm, "node2")
    drained_after = time.monotonic() - t0
    reason = slurm.node("node2").reason
    assert reason.startswith(f"hpcmig: {RULE[kind]}: "), reason
    assert "node2" not in slurm.job(job_id).nodes
    assert_empty(testbed, "node2", job_id)
    finish(slurm, job_id, out)
    decided = [d["what"] for d in hpcmigd.status()["decisions"]]
    assert any(d.startswith("node2: degraded (") for d in decided), decided
    print(f"{kind}: container elsewhere {took:.1f} s after the injection, node DRAINED "
          f"{drained_after:.1f} s after; reason {reason!r}")


def test_a_degraded_node_under_a_job_without_a_spare_requeues_it_whole(
        testbed: Plan, slurm: Slurm, job_dir: Path, healed: None) -> None:
    job_id, out = whole_job(testbed, slurm, job_dir, "degrade-no-spare", nodes=2, spares=0)
    assert slurm.job(job_id).nodes == ("node1", "node2")
    cluster.fail("node2", "memory-errors")
    deadline = time.monotonic() + 60
    while slurm.job(job_id).restart_count == 0:
        assert time.monotonic() < deadline, "hpcmigd never requeued the job"
        time.sleep(0.5)
    job = slurm.wait(job_id, timeout=180, states={"RUNNING", "COMPLETED", "FAILED"})
    assert "node2" not in job.nodes and "node2" in job.excluded, job
    wait_drained(slurm, "node2")
    assert slurm.node("node2").reason.startswith("hpcmig: memory-errors: ")
    job = slurm.wait(job_id, timeout=300)
    text = out.read_text()
    assert job.state == "COMPLETED" and job.restart_count == 1, (job, text)
    assert text.count(f"ring: PASS checksum={ring.expected(4, ELEMENTS, 200)} ") == 1, text
    assert "restored from the checkpoint of run 0" in text, text


def test_a_foreign_reason_stays_and_a_job_that_did_not_opt_in_is_left_alone(
        testbed: Plan, slurm: Slurm, job_dir: Path, healed: None) -> None:
    plain = job_dir / "plain.sh"
    plain.write_text("#!/bin/bash\n#SBATCH --nodes=1\nsleep 25\necho plain done\n")
    other = slurm.submit([f"--output={job_dir / 'plain.out'}", "--nodelist=node2",
                          str(plain)], user=testbed.user, cwd=str(job_dir))
    slurm.wait(other, timeout=60, states={"RUNNING"})
    subprocess.run(["scontrol", "update", "NodeName=node2", "State=DRAIN",
                    "Reason=admin: bios update"], check=True, timeout=30)
    try:
        cluster.fail("node2", "temperature")
        deadline = time.monotonic() + 8
        while not any(d["what"].startswith("node2: degraded (temperature")
                      for d in hpcmigd.status()["decisions"]):
            assert time.monotonic() < deadline, "hpcmigd never noticed"
            time.sleep(0.3)
        time.sleep(3)  # what it would do to the job, it would have done by now
        info = slurm.node("node2")
        assert info.reason == "admin: bios update" and info.drained, info
        job = slurm.job(other)
        assert job.state == "RUNNING" and job.restart_count == 0, job
        job = slurm.wait(other, timeout=60)
        assert job.state == "COMPLETED" and job.restart_count == 0, job
        assert "plain done" in (job_dir / "plain.out").read_text()
        assert slurm.node("node2").reason == "admin: bios update"
    finally:
        subprocess.run(["scontrol", "update", "NodeName=node2", "State=RESUME"], timeout=30)


def test_hpcmigd_killed_during_an_evacuation_completes_it_once(
        testbed: Plan, slurm: Slurm, job_dir: Path, healed: None) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, "degrade-killed", seconds=25)
    hpcmigd.restart(fault="restore:kill")
    cluster.fail("node2", "check")
    deadline = time.monotonic() + 20
    while hpcmigd.alive():
        assert time.monotonic() < deadline, "hpcmigd never reached the restore"
        time.sleep(0.2)
    hpcmigd.restart()  # recovery: the move rolls back, the drain runs again
    wait_moved(job_id, 1, "node2", timeout=20)
    wait_drained(slurm, "node2")
    assert host_of(job_id, 1) == "node3" and ranks() == 4
    with Journal(str(Path(site_config.load().state_dir) / "controller.db")) as journal:
        moves = [m.state for m in journal.operations(job_id=str(job_id), kind="migrate")]
    assert moves == ["rolled_back", "done"], moves
    finish(slurm, job_id, out)


def _set_policy(policy: Policy) -> None:
    """Rewrite the testbed's hpcmig.toml with `policy` and start hpcmigd again."""
    plan = cluster.current_plan()
    assert plan is not None
    from dataclasses import replace

    from hpcmig.config import render
    from hpcmig.testbed.plan import MARKER

    cfg = replace(site_config.load(), health=policy)
    plan.hpcmig_conf_path.write_text(render(cfg, MARKER))
    hpcmigd.restart()


def hogs(plan: Plan, node: str, count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([*plan.nsenter(plan.node(node)), sys.executable, "-c",
                              "while True: pass"]) for _ in range(count)]


@pytest.mark.parametrize("balance", [True, False], ids=["on", "off"])
def test_load_balancing_moves_a_container_off_a_busy_node_only_when_on(
        testbed: Plan, slurm: Slurm, job_dir: Path, healed: None, balance: bool) -> None:
    before = site_config.load().health
    # 3 hogs on a 2-CPU node: a run queue of 3 or more, above 2 * balance_factor
    _set_policy(Policy(**{**before.__dict__, "balance": balance, "balance_seconds": 4.0,
                          "balance_factor": 1.0}))
    busy: list[subprocess.Popen[bytes]] = []
    try:
        job_id, out = submit_ring(testbed, slurm, job_dir, f"balance-{balance}", seconds=30)
        busy = hogs(testbed, "node2", 3)
        if balance:
            took = wait_moved(job_id, 1, "node2", timeout=30)
            assert host_of(job_id, 1) == "node3"
            print(f"\nbalancing: container moved {took:.1f} s after node2 got busy")
        else:
            time.sleep(12)
            assert host_of(job_id, 1) == "node2"
        for p in busy:
            p.kill()
            p.wait()
        busy = []
        finish(slurm, job_id, out)
    finally:
        for p in busy:
            p.kill()
            p.wait()
        _set_policy(before)
    assert os.path.exists(out)
