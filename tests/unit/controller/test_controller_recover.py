"""`Service.recover_ops` (what `hpcmig recover` and a starting hpcmigd run) and recovery
before a new move, against a fake Slurm and the fake cluster: which open operations it
finishes, closes or leaves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.config import Config
from hpcmig.controller.evacuate import Move
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import FORWARD, MigrationSpec, migrate
from hpcmig.controller.ops import MigrationOps
from hpcmig.controller.service import Service
from hpcmig.errors import HpcmigError, SlurmError
from hpcmig.slurm import JobInfo
from hpcmig.vcluster import VCluster, plan
from tests.unit.controller.fake import SHARED, FakeOps, World, assert_settled

NODES = ["n1", "n2", "n3"]


class Crash(BaseException):
    """Stands for SIGKILL."""


def crash_before(step: str):  # type: ignore[no-untyped-def]
    def hook(point: str, name: str) -> None:
        if (point, name) == ("before", step):
            raise Crash(name)
    return hook


@dataclass
class FakeSlurm:
    jobs_: list[JobInfo] = field(default_factory=list)
    down: bool = False

    def jobs(self, user: str | None = None) -> list[JobInfo]:
        if self.down:
            raise SlurmError("slurmctld does not answer")
        return list(self.jobs_)


class Ctl(Service):
    def __init__(self, cfg: Config, slurm: FakeSlurm, vc: VCluster, ops: FakeOps) -> None:
        super().__init__(cfg, slurm)  # type: ignore[arg-type]
        self.vc, self.ops, self.said = vc, ops, []
        self.progress = self.said.append

    def vcluster(self, job_id: str) -> VCluster:
        return self.vc

    def ops_for(self, vc: VCluster) -> MigrationOps:
        return self.ops


def vcluster(restart: int = 0) -> VCluster:
    return plan(job_id="7", restart=restart, user="u", uid=1000, gid=1000, nodes=NODES,
                node_addrs={n: f"10.251.0.{i + 1}" for i, n in enumerate(NODES)},
                block=IPv4Network("10.252.0.0/26"), spares=1)


Env = tuple[Ctl, World, FakeSlurm, ContainerRef]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    vc = vcluster()
    m = vc.member(1)
    ref = ContainerRef("7", 0, 1, m.address, 1000)
    world = World(list(NODES))
    world.place("n2", ref)
    slurm = FakeSlurm([JobInfo(7, "ring", "u", "RUNNING", tuple(NODES))])
    cfg = Config(state_dir=str(tmp_path / "state"), checkpoint_dir=SHARED)
    yield Ctl(cfg, slurm, vc, FakeOps(world)), world, slurm, ref


def crashed_move(ctl: Ctl, ref: ContainerRef, step: str) -> int:
    spec = MigrationSpec(ref, "n2", "n3", ("n1",), f"{SHARED}/7/r0/c1/m", f"{SHARED}/7/r0/c1/m")
    with Journal(ctl.journal_path) as journal, pytest.raises(Crash):
        migrate(journal, ctl.ops, spec, fault=crash_before(step))
    with Journal(ctl.journal_path) as journal:
        [op] = journal.open_operations("7")
    return op.id


@pytest.mark.parametrize("step", ["dump", "unlock"])
def test_a_running_jobs_operation_is_finished_or_rolled_back(env: Env, step: str) -> None:
    ctl, world, _, ref = env
    op_id = crashed_move(ctl, ref, step)
    [r] = ctl.recover_ops("7")
    past = FORWARD.index(step) > FORWARD.index("restore")
    assert (r.op.id, r.state) == (op_id, "done" if past else "rolled_back"), r
    assert_settled(world, ref, "n3" if past else "n2", ["n1", "n2"] if past else ["n1", "n3"])
    assert ctl.recover_ops() == []


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELLED", "COMPLETING", "PENDING", None])
def test_a_migration_of_a_job_that_ended_is_closed_with_the_reason(env: Env,
                                                                    state: str | None) -> None:
    ctl, world, slurm, ref = env
    op_id = crashed_move(ctl, ref, "restore")
    slurm.jobs_ = [] if state is None else [JobInfo(7, "ring", "u", state)]
    calls = len(world.calls)
    [r] = ctl.recover_ops()
    assert r.state == "rolled_back"
    assert f"job 7 is {state or 'gone from Slurm'}" in r.note and "epilog" in r.note
    assert "restore (started)" in r.note
    assert len(world.calls) == calls  # no node was asked anything
    with Journal(ctl.journal_path) as journal:
        assert journal.get(op_id).state == "rolled_back"


def test_a_migration_of_an_earlier_run_of_a_requeued_job_is_closed(env: Env) -> None:
    ctl, _, _, ref = env
    crashed_move(ctl, ref, "route")
    ctl.vc = vcluster(restart=1)
    [r] = ctl.recover_ops("7")
    assert r.state == "rolled_back" and "run 0 of job 7 has ended" in r.note


@pytest.mark.parametrize("why", ["suspended", "slurm down"])
def test_operations_stay_open_while_nothing_can_be_decided(env: Env, why: str) -> None:
    ctl, _, slurm, ref = env
    op_id = crashed_move(ctl, ref, "dump")
    if why == "suspended":
        slurm.jobs_ = [JobInfo(7, "ring", "u", "SUSPENDED", tuple(NODES))]
    else:
        slurm.down = True
    [r] = ctl.recover_ops("7")
    assert r.state == "stuck"
    with Journal(ctl.journal_path) as journal:
        assert [o.id for o in journal.open_operations()] == [op_id]


def test_an_operation_another_process_drives_is_left_alone(env: Env) -> None:
    ctl, world, _, ref = env
    crashed_move(ctl, ref, "dump")
    held, release = threading.Event(), threading.Event()

    def other() -> None:
        with ctl.job_lock("7"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    try:
        assert held.wait(10)
        [r] = ctl.recover_ops("7")
        assert r.state == "busy"
    finally:
        release.set()
        t.join()
    [r] = ctl.recover_ops("7")
    assert r.state == "rolled_back"
    assert_settled(world, ref, "n2", ["n1", "n3"])


def test_dry_run_changes_nothing(env: Env) -> None:
    ctl, world, _, ref = env
    op_id = crashed_move(ctl, ref, "dump")
    calls = len(world.calls)
    [r] = ctl.recover_ops(dry_run=True)
    assert (r.op.id, r.state) == (op_id, "open") and len(world.calls) == calls


def test_a_new_move_waits_for_a_stuck_one(env: Env) -> None:
    ctl, world, _, ref = env
    crashed_move(ctl, ref, "unlock")
    ctl.ops.down.add("n3")  # the target that holds the restored copy does not answer
    with pytest.raises(HpcmigError, match="still stuck"):
        ctl.migrate_one(ctl.vc, Move("7", 1, "n2", "n3"))
    with Journal(ctl.journal_path) as journal:
        assert len(journal.operations(job_id="7")) == 1  # no second operation began


def test_a_new_move_from_where_recovery_took_the_container_away_is_refused(env: Env) -> None:
    ctl, world, _, ref = env
    crashed_move(ctl, ref, "cleanup")
    with pytest.raises(HpcmigError, match="finished an interrupted move of container 1 to n3"):
        ctl.migrate_one(ctl.vc, Move("7", 1, "n2", "n3"))
    assert_settled(world, ref, "n3", ["n1", "n2"])
