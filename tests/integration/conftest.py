"""The integration tier: one real testbed (3 nodes) per session, brought up once.

A missing capability skips with the reason; under CI (`HPCMIG_REQUIRE_INTEGRATION=1`, set by
.ci/run) it fails instead, because CI's machine has every capability and must run this tier.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed import cluster
from hpcmig.testbed.plan import Plan

NODES = 3
LOCK = "/run/lock/hpcmig-integration.lock"
TOOLS = ("slurmctld", "slurmd", "munged", "criu", "ip", "nsenter", "unshare", "mpiexec.mpich",
         "mpiexec.openmpi")


def missing_capability() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing programs: {', '.join(missing)} (run scripts/bootstrap.sh install)"
    if subprocess.run(["criu", "check"], capture_output=True).returncode != 0:
        return "criu check fails on this kernel"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_capability()
    if reason is None or os.environ.get("HPCMIG_REQUIRE_INTEGRATION") == "1":
        return  # under CI the session fixture fails instead of skipping
    for item in items:
        if item.get_closest_marker("integration") or item.get_closest_marker("lifecycle"):
            item.add_marker(pytest.mark.skip(reason=reason))


@contextlib.contextmanager
def hold_lock() -> Iterator[None]:
    """One integration session (or benchmark on the testbed) at a time on this machine: they
    share namespace, user and daemon names, so a second concurrent run would sweep the first
    one's objects."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {LOCK}: another integration run holds it", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def bench_testbed(home_name: str, nodes: int = NODES, leaves: int = 1,
                  spine_rate: str = "1gbit") -> Iterator[tuple[Plan, Slurm, Path]]:
    """A benchmark's own testbed (NODES nodes unless told) under the lock, with a directory
    of the job user's named `home_name`; taken down afterwards, however the benchmark ends."""
    with hold_lock():
        plan = cluster.up(nodes, leaves=leaves, spine_rate=spine_rate)
        try:
            home = plan.home / home_name
            home.mkdir(parents=True, exist_ok=True)
            shutil.chown(home, plan.user, plan.user)
            yield plan, Slurm(), home
        finally:
            cluster.down()


@pytest.fixture(scope="session", autouse=True)
def integration_lock() -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    with hold_lock():
        yield


@pytest.fixture(scope="session")
def testbed_session() -> Iterator[Plan]:
    reason = missing_capability()
    if reason is not None:
        pytest.fail(f"CI requires the integration tier, but: {reason}")
    plan = cluster.up(NODES)
    yield plan
    if os.environ.get("HPCMIG_KEEP_TESTBED") != "1":  # =1: left up to read its logs
        cluster.down()


@pytest.fixture
def testbed(testbed_session: Plan) -> Plan:
    """The running testbed; brought back up if a lifecycle test took it down. Every test
    starts on settled nodes: no job still completing (epilogs run hpcmig-epilog), and no
    node left drained by hpcmig (a failed test must not starve the next ones)."""
    if not cluster.healthy():
        return cluster.up(NODES)
    settle(Slurm())
    return testbed_session


def settle(slurm: Slurm, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while any("COMPLETING" in n.flags or n.state == "completing" for n in slurm.nodes()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for node in slurm.nodes():
        if "DRAIN" in node.flags and node.reason.startswith("hpcmig:"):
            slurm.resume(node.name)
        elif "DRAIN" in node.flags and node.reason == "Kill task failed":
            # Slurm's own verdict on a step it could not end: every later test would wait
            # for a node that stays drained, so say it once, here (see the slurmd log)
            pytest.fail(f"{node.name} was drained by Slurm: 'Kill task failed' (a step's "
                        f"processes outlived UnkillableStepTimeout; see slurmd-{node.name}.log)")


@pytest.fixture
def slurm(testbed: Plan) -> Slurm:
    return Slurm()


@pytest.fixture
def job_dir(testbed: Plan, request: pytest.FixtureRequest) -> Path:
    """A directory in the job user's (shared) home for one test's files."""
    d = testbed.home / request.node.name.replace("[", "-").replace("]", "")
    d.mkdir(parents=True, exist_ok=True)
    shutil.chown(d, testbed.user, testbed.user)
    return d
