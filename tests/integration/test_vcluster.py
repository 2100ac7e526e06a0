"""Issue 3 acceptance on the real testbed: jobs run in hpcmig's virtual cluster.

An sbatch job over 3 nodes that opted in (`--comment=hpcmig`) runs `hpcmig run -n 6` with MPICH
and with Open MPI: the ring's checksum is exact, every rank is in a container (PID and network
namespaces differ from its node's), runs as the submitting user and sees only its virtual
address. After the job nothing of it is left on any node. Two concurrent jobs cannot reach
each other's containers. The agent refuses unauthenticated requests and other users' jobs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hpcmig.agent.rpc import AgentClient, recv_message, send_message
from hpcmig.errors import PermissionDenied, UsageError
from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import batch, ring

pytestmark = pytest.mark.integration

ROUNDS = 20
ELEMENTS = 1000


def agent(plan: Plan, name: str) -> AgentClient:
    node = plan.node(name)
    return AgentClient(name, node.address, munge_socket=str(plan.munge_socket))


def run_job(plan: Plan, slurm: Slurm, job_dir: Path, script: str, name: str,
            timeout: float = 240) -> tuple[int, str]:
    path = job_dir / f"{name}.sh"
    path.write_text(script)
    out = job_dir / f"{name}.out"
    job_id = slurm.submit([f"--output={out}", str(path)], user=plan.user, cwd=str(job_dir))
    job = slurm.wait(job_id, timeout=timeout)
    text = out.read_text() if out.exists() else ""
    assert job.state == "COMPLETED", f"job {job_id} ended {job.state}:\n{text}"
    return job_id, text


def in_node(plan: Plan, node: str, *argv: str, check: bool = True) -> str:
    """Run argv inside a testbed node's namespaces; its stdout."""
    return subprocess.run([*plan.nsenter(plan.node(node)), *argv], capture_output=True,
                          text=True, timeout=30, check=check).stdout


def node_namespaces(plan: Plan) -> tuple[set[int], set[int]]:
    """(net, pid) namespace inodes of the nodes themselves (slurmd's)."""
    nets = {os.stat(plan.netns_path(n)).st_ino for n in plan.nodes}
    pids = {os.stat("/proc/self/ns/pid").st_ino}
    return nets, pids


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_job_runs_inside_containers_with_exact_checksum(testbed: Plan, slurm: Slurm,
                                                        job_dir: Path, mpi: str) -> None:
    script = batch.vcluster_script(
        3, [["hpcmig.workloads.whereami"],
            ["hpcmig.workloads.ring", "--rounds", str(ROUNDS), "--elements", str(ELEMENTS)]],
        mpi=mpi, ntasks=6, job_name=f"vc-{mpi}")
    job_id, out = run_job(testbed, slurm, job_dir, script, f"vc-{mpi}")
    expected = ring.expected(6, ELEMENTS, ROUNDS)
    assert f"ring: PASS checksum={expected} " in out, out
    ranks = json.loads(re.search(r"^whereami: (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert len(ranks) == 6
    nets, pids = node_namespaces(testbed)
    uid = int(subprocess.run(["id", "-u", testbed.user], capture_output=True, text=True,
                             check=True).stdout)
    hosts = set()
    for r in ranks:
        assert r["netns"] not in nets, r  # not the node's network namespace
        assert r["pidns"] not in pids, r  # not the node's PID namespace
        assert r["uid"] == uid and r["user"] == testbed.user, r
        assert len(r["addresses"]) == 1, r
        assert IPv4Address(r["addresses"][0]) in IPv4Network("10.252.0.0/16"), r
        hosts.add(r["host"])
    assert hosts == {f"hpcmig-{job_id}-0-{i}" for i in range(3)}
    # two ranks per container, in blocks: ranks 0,1 share a container, 2,3 the next ...
    assert [r["host"] for r in ranks] == [f"hpcmig-{job_id}-0-{i // 2}" for i in range(6)]


@pytest.mark.parametrize("variant", ["sif-mpich", "sif-openmpi", "lxc"])
def test_job_with_a_sif_image_or_the_lxc_runtime(testbed: Plan, slurm: Slurm, job_dir: Path,
                                                  variant: str) -> None:
    from hpcmig.runtime import sifbuild

    if variant.startswith("sif"):
        mpi = variant.split("-")[1]
        options = {"image": str(sifbuild.build_test_image())}
        python = "python3"  # the image's own
    else:
        mpi, options, python = "mpich", {"runtime": "lxc"}, sys.executable
    script = batch.vcluster_script(
        3, [["hpcmig.workloads.whereami"],
            ["hpcmig.workloads.ring", "--rounds", str(ROUNDS), "--elements", str(ELEMENTS)]],
        mpi=mpi, ntasks=6, options=options, job_name=f"vc-{variant}", python=python)
    job_id, out = run_job(testbed, slurm, job_dir, script, f"vc-{variant}")
    assert f"ring: PASS checksum={ring.expected(6, ELEMENTS, ROUNDS)} " in out, out
    ranks = json.loads(re.search(r"^whereami: (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
    nets, pids = node_namespaces(testbed)
    assert {r["host"] for r in ranks} == {f"hpcmig-{job_id}-0-{i}" for i in range(3)}
    for r in ranks:
        assert r["netns"] not in nets and r["pidns"] not in pids and r["user"] == testbed.user
        assert IPv4Address(r["addresses"][0]) in IPv4Network("10.252.0.0/16"), r
        if variant.startswith("sif"):
            assert r["os"] == "hpcmig-test", r  # the image's root, not the host's


def test_nothing_of_a_job_is_left_when_it_ends(testbed: Plan, slurm: Slurm,
                                               job_dir: Path) -> None:
    script = batch.vcluster_script(3, [["hpcmig.workloads.ring", "--rounds", "5"]], ntasks=3,
                                   job_name="vc-clean")
    job_id, _ = run_job(testbed, slurm, job_dir, script, "vc-clean")
    slurm_wait_idle(slurm, testbed)
    for node in testbed.nodes:
        assert agent(testbed, node.name).call("job.list") == []
        routes = in_node(testbed, node.name, "ip", "-4", "route", "show", "table", "all")
        assert "10.252." not in routes, (node.name, routes)
        links = in_node(testbed, node.name, "ip", "-br", "link")
        assert "hmv" not in links, (node.name, links)
        nft = in_node(testbed, node.name, "nft", "list", "set", "ip", "hpcmig", "intra")
        assert "10.252." not in nft, (node.name, nft)
        assert not (testbed.node_dir(node) / "run-hpcmig" / "jobs" / str(job_id)).exists()
        containers = testbed.node_dir(node) / "run-hpcmig" / "containers"
        assert not containers.exists() or not any(containers.iterdir())
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"hpcmig-{job_id}-" not in netns
    procs = subprocess.run(["pgrep", "-af", f"hpcmig-{job_id}-"], capture_output=True,
                           text=True).stdout
    assert procs == ""
    assert not (testbed.base / "shared" / "jobs" / str(job_id)).exists()
    pool = json.loads((testbed.base / "shared" / "addresses.json").read_text())
    assert str(job_id) not in pool["jobs"]


def slurm_wait_idle(slurm: Slurm, plan: Plan, timeout: float = 60) -> None:
    """Epilogs are done when no node is completing."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(n.state == "idle" and "COMPLETING" not in n.flags for n in slurm.nodes()):
            return
        time.sleep(0.5)
    raise AssertionError(f"nodes still busy: {[(n.name, n.state) for n in slurm.nodes()]}")


def test_two_jobs_cannot_reach_each_other(testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    # the jobs' packets take the fast path (hpcmig.network.fastpath) on every node
    for node in testbed.nodes:
        assert agent(testbed, node.name).call("ping")["network"].startswith("bpf (tc on "), \
            node.name
    # job A holds its containers (and their exec services on port 7100) for a while
    sleeper = job_dir / "a.sh"
    sleeper.write_text("#!/bin/bash\n#SBATCH --comment=hpcmig\n#SBATCH --nodes=3\n"
                       "#SBATCH --ntasks=3\nsleep 120\n")
    a = slurm.submit([f"--output={job_dir / 'a.out'}", str(sleeper)], user=testbed.user,
                     cwd=str(job_dir))
    try:
        slurm.wait(a, timeout=60, states={"RUNNING"})
        info = wait_for_job(testbed, "node1", a)
        theirs = [m["address"] for m in info["vc"]["members"]]
        block_a = IPv4Network(info["vc"]["block"])
        # job B reads its own addresses from its hosts file, then probes both jobs
        hpcmig = os.path.join(os.path.dirname(sys.executable), "hpcmig")
        probe = " ".join(f"{addr}:7100" for addr in theirs)
        script = ("#!/bin/bash\n#SBATCH --comment=hpcmig\n#SBATCH --nodes=3\n"
                  "H=/run/hpcmig/jobs/$SLURM_JOB_ID/hosts\n"
                  "A0=$(awk 'NR==1{print $1}' $H); A2=$(awk 'NR==3{print $1}' $H)\n"
                  f"{hpcmig} run -n 1 -- {sys.executable} -m hpcmig.workloads.reach "
                  f"{probe} $A0:7100 $A2:7100\n")
        b, out = run_job(testbed, slurm, job_dir, script, "vc-reach")
        result = json.loads(re.search(r"^reach: (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
        for addr in theirs:
            assert result[f"{addr}:7100"] is False, (addr, result)  # other job: dropped
        own = {k: v for k, v in result.items() if IPv4Address(k.split(":")[0]) not in block_a}
        assert len(own) == 2 and all(own.values()), result  # own containers: reachable
    finally:
        slurm.cancel(a)
        slurm.wait(a, timeout=60)


def wait_for_job(plan: Plan, node: str, job_id: int, timeout: float = 30) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            info = agent(plan, node).call("job.info", job_id=str(job_id))
            if info["containers"]:
                return info
        except (PermissionDenied, UsageError):
            pass  # the prolog has not built the job here yet
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} has no container on {node}")
        time.sleep(0.3)


def test_agent_refuses_unauthenticated_and_foreign_requests(testbed: Plan) -> None:
    import socket

    node = testbed.node("node1")
    with socket.create_connection((node.address, 7101), timeout=10) as sock:
        send_message(sock, {"cred": "MUNGE:forged:", "body": json.dumps(
            {"op": "job.list", "args": {}, "target": "node1", "time": 0})})
        answer = recv_message(sock)
    assert answer["ok"] is False
    # the job user may not run admin operations, nor read a job that is not theirs
    env = {"HPCMIG_MUNGE_SOCKET": str(testbed.munge_socket), "PATH": os.environ["PATH"]}
    code = ("from hpcmig.agent.rpc import AgentClient\n"
            f"c = AgentClient('node1', '{node.address}')\n"
            "for op, args in (('job.list', {}), ('job.teardown', {'job_id': '1'}),\n"
            "                 ('job.info', {'job_id': '999999'})):\n"
            "    try:\n        c.call(op, **args); print(op, 'ALLOWED')\n"
            "    except Exception as e:\n        print(op, type(e).__name__)\n")
    out = subprocess.run(["setpriv", f"--reuid={testbed.user}", f"--regid={testbed.user}",
                          "--init-groups", sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["job.list PermissionDenied",
                                         "job.teardown PermissionDenied",
                                         "job.info PermissionDenied"], out.stdout
