"""`down` leaves nothing; `up` is idempotent and recovers from kill -9 of every daemon."""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path

import pytest

from hpcmig.testbed import cluster, daemons, host
from hpcmig.testbed.plan import Plan

pytestmark = pytest.mark.lifecycle


def leftover_processes(plan: Plan) -> list[str]:
    """Live (not zombie) Slurm daemons, agents, and anything naming the testbed's tree."""
    found = []
    for entry in os.listdir("/proc"):
        line = daemons.cmdline(int(entry)) if entry.isdigit() else None
        if line and (line.split()[0].endswith(("slurmctld", "slurmd", "slurmstepd"))
                     or "hpcmig.agent" in line or str(plan.base) in line):
            found.append(f"{entry} {line}")
    return found


def assert_nothing_left(plan: Plan) -> None:
    assert [n for n in host.netns_list() if n.startswith("hpcmig-node")] == []
    assert not host.link_exists(plan.bridge)
    assert not any(host.link_exists(n.host_veth) for n in plan.nodes)
    assert not plan.base.exists()
    with open("/proc/self/mountinfo") as f:
        assert str(plan.base) not in f.read()
    assert not (plan.slurm_etc / "slurm.conf").exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(plan.user)
    assert leftover_processes(plan) == []


def test_up_twice_in_a_row_ends_healthy(testbed: Plan) -> None:
    cluster.up(3)
    assert cluster.healthy()
    cluster.up(3)
    assert cluster.healthy()


def test_up_after_kill_9_of_every_daemon(testbed: Plan) -> None:
    state = cluster.load_state(testbed)
    assert state is not None
    for proc in state.all_procs():
        assert daemons.alive(proc), proc
        os.kill(proc.pid, signal.SIGKILL)
    assert not cluster.healthy()
    cluster.up(4)
    assert cluster.healthy()
    result = cluster.status()
    assert result is not None and len(result[2]) == 4


def test_down_leaves_nothing_behind(testbed: Plan) -> None:
    cluster.down()
    assert_nothing_left(cluster.plan_for(8))
    cluster.down()  # twice is fine
    assert_nothing_left(cluster.plan_for(8))
    assert Path("/etc/hosts").read_text().count("hpcmig") == 0
