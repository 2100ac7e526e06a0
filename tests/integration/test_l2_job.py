"""An MPI job on the L2 data path, on the real testbed: Slurm, prolog, `hpcmig run`, hpcmigd.

The module turns `network_l2` on in the testbed's hpcmig.toml and restarts every node's
agent (the setting is read at an agent's start), and undoes both afterwards. A 4-rank ring
over 3 nodes (one spare) runs with MPICH and with Open MPI: its ranks must talk over the
containers' macvlans (their connections go to data addresses), one container moves live to
the spare, and the ring must end with the exact checksum, once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hpcmig import config
from hpcmig.slurm import Slurm
from hpcmig.testbed import cluster, daemons
from hpcmig.testbed.plan import Plan
from tests.integration import hpcmigd
from tests.integration.conftest import NODES
from tests.integration.test_migration import finish, submit_ring
from tests.integration.test_vcluster import in_node

pytestmark = [pytest.mark.integration]


def restart_agents(plan: Plan) -> None:
    state = cluster.load_state(plan)
    assert state is not None
    for node in plan.nodes:
        proc = state.proc(f"agent@{node.name}")
        if proc is not None and daemons.alive(proc):
            daemons.kill_pids([proc.pid])  # SIGTERM, then SIGKILL after a grace
        cluster.restart_agent(node.name)


@pytest.fixture(scope="module")
def l2_testbed(testbed_session: Plan) -> Iterator[config.Config]:
    plan = testbed_session if cluster.healthy() else cluster.up(NODES)
    path = plan.hpcmig_conf_path
    original = path.read_text()
    header = next(line for line in original.splitlines() if line.startswith("#"))
    cfg = replace(config.parse(original), network_l2=True)
    path.write_text(config.render(cfg, header))
    try:
        restart_agents(plan)
        yield cfg
    finally:
        path.write_text(original)
        restart_agents(plan)


def in_container(plan: Plan, job_id: int, index: int, *argv: str) -> str:
    """Run argv in the netns of the job's container `index`, where hpcmigd says it is (its
    netns file is a mount in that node's mount namespace)."""
    node = hpcmigd.host_of(job_id, index)
    netns = f"/run/netns/hpcmig-{job_id}-0-{index}.{node}"
    return in_node(plan, node, "nsenter", f"--net={netns}", *argv)


def sent(plan: Plan, job_id: int, index: int) -> dict[str, int]:
    """Bytes each device of the container has sent."""
    links = json.loads(in_container(plan, job_id, index, "ip", "-s", "-j", "link", "show"))
    return {link["ifname"]: int(link["stats64"]["tx"]["bytes"]) for link in links}


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_an_mpi_job_runs_on_the_l2_data_path_and_moves_live(
        l2_testbed: config.Config, testbed: Plan, slurm: Slurm, job_dir: Path,
        mpi: str) -> None:
    data_pool = IPv4Network(l2_testbed.network_l2_pool)
    job_id, out = submit_ring(testbed, slurm, job_dir, f"l2-{mpi}", mpi=mpi, seconds=20)
    link = json.loads(in_container(testbed, job_id, 1, "ip", "-j", "-d", "addr", "show", "eth0"))[0]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    [address] = [a["local"] for a in link["addr_info"] if a["family"] == "inet"]
    assert IPv4Address(address) in data_pool
    # the ranks' messages leave by eth0 (the macvlan), not by the veth (ctl0)
    before = sent(testbed, job_id, 1)
    time.sleep(2.0)
    after = sent(testbed, job_id, 1)
    eth0, ctl0 = (after[d] - before[d] for d in ("eth0", "ctl0"))
    assert eth0 > 100_000 and eth0 > 10 * ctl0, (eth0, ctl0)
    conns = in_container(testbed, job_id, 1, "ss", "-Htn", "state", "established")
    peers = [line.split()[-1].rsplit(":", 1)[0] for line in conns.splitlines()]
    assert any(IPv4Address(p) in data_pool for p in peers if p.count(".") == 3), conns
    row = hpcmigd.migrate(job_id, "node2")
    assert row["to"] == "node3" and row["pause"] is not None
    finish(slurm, job_id, out)
