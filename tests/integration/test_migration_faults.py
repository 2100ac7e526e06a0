"""Crash safety on the real testbed: faults injected into live migrations of one job.

One 3-node MPICH ring job with a spare node runs through every case; its container 1 moves
between node2 and node3 (`hpcmig migrate`, served by hpcmigd). Cases:
- hpcmigd SIGKILLed at every journaled step (before its effect; after it at `dump` and
  `restore`; it is started with HPCMIG_FAULT), then started again: its start-up recovery
  finishes or rolls the move back, and `hpcmig recover JOB` finds nothing left;
- the target node's hpcmig-agent SIGKILLed while its criu restore runs, restarted, then
  hpcmigd started again (recovery);
- a page image corrupted between the dump and its verification (hpcmigd stopped itself
  there with HPCMIG_FAULT=dump:stop-after): the move rolls back, the source resumes.
After each case the container runs exactly once (one copy, on the source or the target, as
the journal's outcome says), every node routes its address there, and no image is left.
At the end the job must print the exact checksum of an undisturbed run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcmig import _procfs
from hpcmig.agent.node import netns_name
from hpcmig.checkpoint import criu
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.journal import Journal, Operation
from hpcmig.controller.migration import FORWARD
from hpcmig.controller.service import Service
from hpcmig.network import NodeNet
from hpcmig.runtime.ns import INIT_MODULE
from hpcmig.slurm import Slurm
from hpcmig.testbed import cluster, daemons
from hpcmig.testbed.plan import Plan
from tests.integration import hpcmigd
from tests.integration.conftest import NODES, settle
from tests.integration.hpcmigd import host_of
from tests.integration.test_migration import finish, submit_ring

pytestmark = pytest.mark.integration

ROUNDS = 400
SECONDS = 50.0  # longer than every case together (a stopped source adds its pause too)
MOVED = 1  # container 1: node2 <-> node3 (container 0 stays on node1, the batch host)
HPCMIG = os.path.join(os.path.dirname(sys.executable), "hpcmig")
KILLS = [(step, "kill") for step in FORWARD] + [("dump", "kill-after"),
                                               ("restore", "kill-after")]


@dataclass
class Job:
    id: int
    out: Path
    plan: Plan
    slurm: Slurm
    svc: Service  # in this process, for reading the controller's records
    where: str  # the node container MOVED runs on

    def other(self) -> str:
        return "node3" if self.where == "node2" else "node2"

    def journal(self) -> Journal:
        return Journal(self.svc.journal_path)


@pytest.fixture(scope="module")
def job(testbed_session: Plan) -> Iterator[Job]:
    plan = testbed_session if cluster.healthy() else cluster.up(NODES)
    slurm = Slurm()
    settle(slurm)
    home = plan.home / "test_migration_faults"
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, plan.user, plan.user)
    job_id, out = submit_ring(plan, slurm, home, "faults", rounds=ROUNDS, seconds=SECONDS,
                              memory_mb=16)
    j = Job(job_id, out, plan, slurm, Service(), host_of(job_id, MOVED))
    assert j.where == "node2"
    try:
        yield j
    finally:
        hpcmigd.ensure_running()
        if slurm.job(job_id).state in ("PENDING", "RUNNING"):
            slurm.cancel(job_id)  # a case broke it: free the testbed for the next tests


def hpcmig(*args: str, fault: str | None = None, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    """The CLI; with `fault`, hpcmigd is started again with HPCMIG_FAULT=fault first."""
    if fault:
        hpcmigd.restart(fault=fault)
    return subprocess.run([HPCMIG, *args], capture_output=True, text=True, timeout=timeout)


def last_op(job: Job) -> Operation:
    with job.journal() as journal:
        return journal.operations(job_id=str(job.id))[-1]


def ref_of(job: Job) -> tuple[ContainerRef, AgentOps]:
    vc = job.svc.vcluster(str(job.id))
    m = vc.member(MOVED)
    ops = AgentOps(vc, job.svc.node_addrs(), job.svc.cfg.agent_port, job.svc.munge)
    return ContainerRef(vc.job_id, vc.restart, MOVED, m.address, vc.uid), ops


def ranks() -> list[int]:
    """pids of the ring's MPI ranks, on every node."""
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _procfs.argv(pid)[1:3] == ["-m", "hpcmig.workloads.ring"]]


def netns_inode(plan: Plan, node: str, name: str) -> int | None:
    """The inode of netns `name` as node sees it (its own mount namespace), None if none."""
    r = subprocess.run([*plan.nsenter(plan.node(node)), "stat", "-L", "-c", "%i",
                        f"/run/netns/{name}"], capture_output=True, text=True, timeout=30)
    return int(r.stdout) if r.returncode == 0 else None


def assert_runs_once(job: Job, node: str) -> None:
    """Container MOVED runs exactly once, on node, not stopped; every node routes to it;
    the job's records say so; no image directory is left."""
    assert job.slurm.job(job.id).state == "RUNNING", "the job ended: lengthen SECONDS"
    assert host_of(job.id, MOVED) == node
    ref, ops = ref_of(job)
    states = {n.name: ops.container_state(n.name, ref) for n in job.plan.nodes}
    assert states == {"node1": ContainerState.ABSENT, node: ContainerState.RUNNING,
                      ("node3" if node == "node2" else "node2"): ContainerState.ABSENT}, states
    # the processes' view: 4 ranks in all, none stopped, 2 of them in the copy's netns on node
    pids = ranks()
    assert len(pids) == 4, pids
    assert all(_procfs.state(p) not in ("T", "t") for p in pids)
    inode = netns_inode(job.plan, node, netns_name(ref.name, node))
    assert sum(os.stat(f"/proc/{p}/ns/net").st_ino == inode for p in pids) == 2
    for n in job.plan.nodes:
        if n.name != node:
            assert netns_inode(job.plan, n.name, netns_name(ref.name, n.name)) is None, n.name
    for n in job.plan.nodes:
        route = NodeNet(n.netns).route_of(ref.address)
        assert route is not None, n.name
        if n.name == node:
            assert str(route.get("dev", "")).startswith("hmv"), (n.name, route)
            assert route.get("type") != "blackhole", (n.name, route)
        else:
            assert route.get("gateway") == job.plan.node(node).address, (n.name, route)
    # the agents' records: the hosting node's lists the copy (so it can move again and the
    # epilog stops it), no other node's does
    for n in job.plan.nodes:
        info = job.svc.agent(n.name).call("job.info", job_id=str(job.id))
        assert (str(MOVED) in info["containers"]) == (n.name == node), (n.name, info)
        # every agent was told where the container is now (hpcmigd pushes membership)
        assert info["vc"]["members"][MOVED]["node"] == node, (n.name, info["vc"])
    images = Path(job.svc.cfg.checkpoint_dir) / str(job.id)
    assert not [p for p in images.glob("r*/c*/*") if p.is_dir()], "images left behind"


def recover(job: Job, op: Operation, want: str) -> None:
    """hpcmigd started again (without a fault) recovers `op` to `want` before it serves."""
    hpcmigd.restart()
    with job.journal() as journal:
        assert journal.get(op.id).state == want, journal.get(op.id)
        assert not journal.open_operations(str(job.id))
    r = hpcmig("recover", str(job.id))
    assert r.returncode == 0 and "nothing to recover" in r.stdout, (r.stdout, r.stderr)


@pytest.mark.parametrize("step,how", KILLS, ids=[f"{s}-{h}" for s, h in KILLS])
def test_controller_sigkilled_at_a_step_then_recover(job: Job, step: str, how: str) -> None:
    source, target = job.where, job.other()
    r = hpcmig("migrate", str(job.id), "--from", source, "--to", target,
               fault=f"{step}:{how}")
    assert r.returncode == 1 and "connection" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert not hpcmigd.alive(), "hpcmigd should have SIGKILLed itself"
    op = last_op(job)
    assert op.state == "active"
    with job.journal() as journal:
        last = journal.steps(op.id)[-1]
    assert (last.name, last.status) == (step, "started")
    past = FORWARD.index(step) > FORWARD.index("restore") or (step, how) == ("restore",
                                                                            "kill-after")
    recover(job, op, "done" if past else "rolled_back")
    job.where = target if past else source
    assert_runs_once(job, job.where)


def _restoring(root: str) -> bool:
    """Whether a criu restore from an image directory under root runs (on any node)."""
    base = os.path.basename(criu.criu_binary())
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        argv = _procfs.argv(pid)
        if argv[1:2] == ["restore"] and os.path.basename(argv[0]) == base \
                and any(a.startswith(root) for a in argv):
            return True
    return False


def wait_stopped(cli: subprocess.Popen[str], timeout: float = 60) -> int:
    """Until hpcmigd stopped itself (HPCMIG_FAULT=<step>:stop...); its pid."""
    pid = hpcmigd.proc().pid
    deadline = time.monotonic() + timeout
    while _procfs.state(pid) != "T":
        assert cli.poll() is None, cli.communicate()
        assert time.monotonic() < deadline, "hpcmigd never stopped itself"
        time.sleep(0.02)
    return pid


def migrate_cli(job: Job, source: str, target: str, fault: str) -> subprocess.Popen[str]:
    """`hpcmig migrate` in the background, hpcmigd started with HPCMIG_FAULT=fault."""
    hpcmigd.restart(fault=fault)
    return subprocess.Popen([HPCMIG, "migrate", str(job.id), "--from", source, "--to",
                             target, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _corrupt_largest(image_dir: str, prefix: str = "pages-") -> str:
    name = max((n for n in os.listdir(image_dir) if n.startswith(prefix)),
               key=lambda n: os.path.getsize(os.path.join(image_dir, n)))
    path = os.path.join(image_dir, name)
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x5A]))
    return name


def test_corrupted_image_rolls_back_and_the_source_resumes(job: Job) -> None:
    source, target = job.where, job.other()
    proc = migrate_cli(job, source, target, "dump:stop-after")
    try:
        daemon = wait_stopped(proc)
        op = last_op(job)
        assert op.state == "active" and "dump" in op.data
        _corrupt_largest(op.spec["dst_images"])
        os.kill(daemon, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hpcmigd.restart()
    assert proc.returncode == 1, err
    [row] = json.loads(out)["rows"]
    assert row["result"] == "rolled back" and "does not match its checksum" in row["detail"], row
    with job.journal() as journal:
        done = journal.get(op.id)
        forward = journal.steps(op.id, "forward")
    assert done.state == "rolled_back"
    assert (forward[-1].name, forward[-1].status) == ("verify", "failed")
    r = hpcmig("recover", str(job.id))
    assert r.returncode == 0 and "nothing to recover" in r.stdout, (r.stdout, r.stderr)
    assert_runs_once(job, source)


def test_target_agent_killed_mid_restore_then_recover(job: Job) -> None:
    source, target = job.where, job.other()
    state = cluster.load_state(job.plan)
    assert state is not None
    agent = state.proc(f"agent@{target}")
    assert agent is not None and daemons.alive(agent)
    ckpt = os.path.join(job.svc.cfg.checkpoint_dir, str(job.id))
    # hpcmigd stops itself right before it asks for the restore; from its SIGCONT on, watch
    # for criu restore on the target and kill the agent that runs it
    proc = migrate_cli(job, source, target, "restore:stop")
    killed = False
    try:
        os.kill(wait_stopped(proc), signal.SIGCONT)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if _restoring(ckpt):
                os.kill(agent.pid, signal.SIGKILL)  # the recorded pid, checked alive above
                killed = True
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if killed or not daemons.alive(agent):
            cluster.restart_agent(target)
    assert killed, f"never saw criu restore run on {target}: {err}"
    assert proc.returncode == 1, err
    op = last_op(job)
    assert op.state == "stuck", op
    with job.journal() as journal:
        last = journal.steps(op.id, "forward")[-1]
    assert (last.name, last.status) == ("restore", "failed")
    with job.journal() as journal:
        before = journal.get(op.id).state
    assert before == "stuck"
    hpcmigd.restart()  # its start-up recovery goes on with the stuck move
    r = hpcmig("recover", str(job.id))
    assert r.returncode == 0 and "nothing to recover" in r.stdout, (r.stdout, r.stderr)
    with job.journal() as journal:
        after = journal.get(op.id)
    assert after.state in ("done", "rolled_back"), after
    print(f"\nagent killed mid-restore: recovery {after.state} ({after.error or 'forward'})")
    job.where = target if after.state == "done" else source
    assert_runs_once(job, job.where)


def test_the_job_finishes_exactly_once(job: Job) -> None:
    """Runs last: the ring's exact checksum after every case above, then nothing of the job
    is left on any node (a copy no record knew would outlive the epilog)."""
    finish(job.slurm, job.id, job.out, rounds=ROUNDS)
    settle(job.slurm)  # the epilogs ran
    name = f"hpcmig-{job.id}-"
    assert not ranks()
    inits = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
             if INIT_MODULE in (argv := _procfs.argv(pid)) and any(name in a for a in argv)]
    assert not inits, [_procfs.argv(p) for p in inits]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert name not in netns, netns
    for n in job.plan.nodes:
        assert not (job.plan.node_dir(n) / "run-hpcmig" / "agent" / "jobs" /
                    f"{job.id}.json").exists(), n.name
    assert not (Path(job.svc.cfg.checkpoint_dir) / str(job.id)).exists()
