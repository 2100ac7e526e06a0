"""Issue 9 acceptance on the real testbed: hpcmigd is the one controller.

Every verb goes through hpcmigd (the CLI, or its RPC as the CLI sends it). Cases:
- a container moved node2 -> node3, then `hpcmig drain node3`: hpcmigd knows where it is now
  and moves it back; node3 ends DRAINED and empty;
- a move forced to fail during a drain: the job keeps its node list, the container runs on
  its source, the drain reports the failure and exits non-zero;
- a drain of a node whose job has no spare, and of the node running a job's batch step: the
  whole job is checkpointed, requeued without the node and restored elsewhere (same id,
  exact checksum printed once), and the node ends DRAINED while the job runs on;
- hpcmigd SIGKILLed in the middle of a drain and started again: the drain finishes, once;
- `hpcmig status --json` validates against its schema while a job runs, and the metrics
  endpoint shows the migration counter rise after a move.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcmig import config as site_config
from hpcmig.controller import status as status_doc
from hpcmig.controller.journal import Journal
from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import batch, ring
from tests.integration import hpcmigd
from tests.integration.hpcmigd import host_of
from tests.integration.test_migration import ELEMENTS, finish, submit_ring, wait_for_ranks

pytestmark = pytest.mark.integration

HPCMIG = os.path.join(os.path.dirname(sys.executable), "hpcmig")


def hpcmig(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HPCMIG, *args], capture_output=True, text=True, timeout=timeout)


def ranks() -> int:
    """Live ring ranks of this testbed (a copy running twice would show): every process of
    the machine that sees our root (not another distribution's test run in a chroot)."""
    from hpcmig import _procfs

    def ours(pid: str) -> bool:
        try:
            st = os.stat(f"/proc/{pid}/root")
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == root

    root = (os.stat("/").st_dev, os.stat("/").st_ino)
    return sum(_procfs.argv(int(p))[1:3] == ["-m", "hpcmig.workloads.ring"] and ours(p)
               for p in os.listdir("/proc") if p.isdigit())


def assert_empty(plan: Plan, node: str, job_id: int) -> None:
    """Nothing of the job on node: containers, agent record."""
    node_dir = plan.node_dir(plan.node(node))
    assert not any((node_dir / "run-hpcmig" / "containers").glob(f"hpcmig-{job_id}-*"))
    assert not (node_dir / "run-hpcmig" / "agent" / "jobs" / f"{job_id}.json").exists()


def drained(slurm: Slurm, node: str) -> bool:
    info = slurm.node(node)
    return info.drained and info.state == "idle"


def test_a_drain_finds_a_container_that_moved_there(testbed: Plan, slurm: Slurm,
                                                   job_dir: Path) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, "moved-then-drained", seconds=25)
    try:
        hpcmigd.migrate(job_id, "node2")  # to the spare, node3
        assert host_of(job_id, 1) == "node3"
        done = hpcmig("drain", "node3", "--reason", "test")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "moved" in done.stdout and "node3 DRAINED" in done.stdout, done.stdout
        assert host_of(job_id, 1) == "node2"
        assert drained(slurm, "node3") and slurm.node("node3").reason == "hpcmig: test"
        assert "node3" not in slurm.job(job_id).nodes
        assert_empty(testbed, "node3", job_id)
        finish(slurm, job_id, out)
    finally:
        slurm.resume("node3")


def test_a_move_that_fails_during_a_drain_leaves_the_job_whole(testbed: Plan, slurm: Slurm,
                                                               job_dir: Path) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, "drain-fails", seconds=25)
    nodes = slurm.job(job_id).nodes
    hpcmigd.restart(fault="verify:fail")
    try:
        done = hpcmig("drain", "node2", "--reason", "test", "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        report = json.loads(done.stdout)
        [row] = report["rows"]
        assert (row["container"], row["result"]) == (1, "rolled back"), row
        assert "injected failure at step verify" in row["detail"], row
        assert any("could not leave node2" in line for line in report["lines"]), report
        assert slurm.job(job_id).nodes == nodes  # not shrunk: the container is still there
        assert host_of(job_id, 1) == "node2"
        assert ranks() == 4
    finally:
        hpcmigd.restart()
        slurm.resume("node2")
    finish(slurm, job_id, out)


def whole_job(testbed: Plan, slurm: Slurm, job_dir: Path, name: str, nodes: int,
              spares: int) -> tuple[int, Path]:
    script = batch.vcluster_script(
        nodes, [["hpcmig.workloads.ring", "--rounds", "200", "--seconds", "20",
                 "--memory-mb", "16", "--elements", str(ELEMENTS)]],
        mpi="mpich", ntasks=4, options={"spares": str(spares)}, job_name=name)
    path = job_dir / f"{name}.sh"
    path.write_text(script)
    out = job_dir / f"{name}.out"
    job_id = slurm.submit([f"--output={out}", str(path)], user=testbed.user,
                          cwd=str(job_dir))
    slurm.wait(job_id, timeout=60, states={"RUNNING"})
    wait_for_ranks(testbed, job_id)
    return job_id, out


def drain_whole(testbed: Plan, slurm: Slurm, job_id: int, out: Path, node: str,
                why: str) -> None:
    before = slurm.job(job_id)
    t0 = time.monotonic()
    done = hpcmig("drain", node, "--reason", "test", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {r["result"] for r in report["rows"]} == {"requeued"}, report
    assert all(why in r["detail"] for r in report["rows"]), report
    assert f"{node} DRAINED, empty of hpcmig containers" in report["lines"], report
    assert drained(slurm, node)
    job = slurm.wait(job_id, timeout=180, states={"RUNNING", "COMPLETED", "FAILED"})
    assert job.job_id == before.job_id and job.restart_count == before.restart_count + 1
    assert node not in job.nodes and node in job.excluded, job
    job = slurm.wait(job_id, timeout=300)
    text = out.read_text()
    assert job.state == "COMPLETED", (job, text)
    assert text.count(f"ring: PASS checksum={ring.expected(4, ELEMENTS, 200)} ") == 1, text
    assert "restored from the checkpoint of run 0" in text, text
    assert not (testbed.base / "ckpt" / str(job_id)).exists(), "images left behind"
    print(f"\nwhole-job drain of {node}: job back on {','.join(job.nodes)}, done "
          f"{time.monotonic() - t0:.0f} s after the drain began")


def test_a_drain_requeues_a_job_without_a_spare_elsewhere(testbed: Plan, slurm: Slurm,
                                                          job_dir: Path) -> None:
    job_id, out = whole_job(testbed, slurm, job_dir, "no-spare", nodes=2, spares=0)
    assert slurm.job(job_id).nodes == ("node1", "node2")
    try:
        drain_whole(testbed, slurm, job_id, out, "node2", "no spare node left")
    finally:
        slurm.resume("node2")


def test_a_drain_of_the_batch_host_requeues_the_job_and_the_node_drains(
        testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    job_id, out = whole_job(testbed, slurm, job_dir, "batch-host", nodes=2, spares=1)
    assert slurm.job(job_id).batch_host == "node1"
    try:
        drain_whole(testbed, slurm, job_id, out, "node1", "runs the job's batch step")
    finally:
        slurm.resume("node1")


def test_hpcmigd_killed_in_the_middle_of_a_drain_finishes_it_once(testbed: Plan, slurm: Slurm,
                                                                 job_dir: Path) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, "drain-killed", seconds=30)
    hpcmigd.restart(fault="restore:kill")
    killed = hpcmigd.proc()
    try:
        done = hpcmig("drain", "node2", "--reason", "test")
        assert done.returncode != 0 and "connection" in done.stderr, done.stderr
        assert not hpcmigd.alive(), "hpcmigd should have SIGKILLed itself at restore"
        assert not drained(slurm, "node2")  # DRAIN set, the job still there
        hpcmigd.restart()  # recovers the move, then carries the drain out again
        assert hpcmigd.proc().pid != killed.pid
        assert drained(slurm, "node2") and host_of(job_id, 1) == "node3"
        assert ranks() == 4
        with Journal(str(Path(site_config.load().state_dir) / "controller.db")) as journal:
            moves = journal.operations(job_id=str(job_id), kind="migrate")
            drains = [op for op in journal.operations(kind="drain")
                      if op.spec["node"] == "node2"]
        assert [m.state for m in moves] == ["rolled_back", "done"], moves
        assert drains[-1].state == "done" and not journal_open(drains)
        again = hpcmig("recover")
        assert again.returncode == 0 and "nothing to recover" in again.stdout, again.stdout
        assert_empty(testbed, "node2", job_id)
        finish(slurm, job_id, out)
    finally:
        hpcmigd.ensure_running()
        slurm.resume("node2")


def journal_open(ops: list) -> list:  # type: ignore[type-arg]
    return [op for op in ops if op.state in ("active", "rolling_back", "stuck")]


def scrape() -> dict[str, float]:
    cfg = site_config.load()
    url = f"http://{cfg.metrics_address}:{cfg.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_status_json_follows_its_schema_and_metrics_count_moves(testbed: Plan, slurm: Slurm,
                                                                job_dir: Path) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, "status", seconds=20)
    done = hpcmig("status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    status_doc.validate(doc)
    [job] = [j for j in doc["jobs"] if j["job_id"] == str(job_id)]
    assert [(c["index"], c["node"]) for c in job["containers"]] == [(0, "node1"), (1, "node2")]
    assert job["spares"] == ["node3"] and job["engine"] == "criu"
    assert all(n["agent"]["up"] for n in doc["nodes"]), doc["nodes"]
    # every node says how its containers' packets go: the fast path on this machine
    assert all(n["agent"]["network"].startswith("bpf (tc on ") for n in doc["nodes"]), \
        doc["nodes"]
    key = "hpcmig_migrations_total[('result', 'done')]"
    before = scrape().get(key, 0.0)
    hpcmigd.migrate(job_id, "node2")
    after = scrape()
    assert after[key] == before + 1, after
    assert after["hpcmig_migration_pause_seconds_count[]"] >= 1
    doc = hpcmigd.status()
    status_doc.validate(doc)
    assert any("container 1 done" in d["what"] for d in doc["decisions"]), doc["decisions"]
    finish(slurm, job_id, out)


def test_without_hpcmigd_verbs_say_how_to_start_it_and_recover_still_works(
        testbed: Plan) -> None:
    from hpcmig.testbed import daemons

    daemons.stop([hpcmigd.proc()])
    try:
        done = hpcmig("drain", "node2")
        assert done.returncode == 1, done
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("hpcmig: error: hpcmigd is not running") and "start it" in line
        done = hpcmig("recover")
        assert done.returncode == 0, done.stderr
        assert "hpcmigd is not running: recovered in this process" in done.stdout
        assert "nothing to recover" in done.stdout
    finally:
        hpcmigd.restart()
