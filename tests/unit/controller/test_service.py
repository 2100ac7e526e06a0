"""The controller service against a fake Slurm, fake agents and the fake cluster: one writer
of membership, drain plans (dry run = real run), shrink only after a move succeeded, the
status document's schema, and who may call which verb of hpcmigd."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hpcmig.auth import Identity
from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.config import Config
from hpcmig.controller import daemon, evacuate, status
from hpcmig.controller.ops import MigrationOps
from hpcmig.controller.report import Report
from hpcmig.controller.service import Service
from hpcmig.errors import PermissionDenied, SlurmError, UsageError
from hpcmig.health.rules import Health
from hpcmig.slurm import JobInfo
from hpcmig.slurm.parse import NodeInfo
from hpcmig.vcluster import VCluster, plan
from tests.unit.controller.fake import SHARED, FakeOps, World, assert_settled
from tests.unit.health.fake import healthy

NODES = ["n1", "n2", "n3"]
ADDRS = {n: f"10.251.0.{i + 1}" for i, n in enumerate(NODES)}


@dataclass
class FakeSlurm:
    jobs_: list[JobInfo]
    nodes_: dict[str, NodeInfo] = field(default_factory=lambda: {
        n: NodeInfo(n, "allocated", address=ADDRS[n]) for n in NODES})
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def jobs(self, user: str | None = None) -> list[JobInfo]:
        return list(self.jobs_)

    def job(self, job_id: int) -> JobInfo:
        return next(j for j in self.jobs_ if j.job_id == job_id)

    def nodes(self) -> list[NodeInfo]:
        return list(self.nodes_.values())

    def node(self, name: str) -> NodeInfo:
        if name not in self.nodes_:
            raise UsageError(f"unknown node '{name}'")
        return self.nodes_[name]

    def drain(self, name: str, reason: str) -> NodeInfo:
        self.calls.append(("drain", name, reason))
        self.nodes_[name] = replace(self.nodes_[name], flags=frozenset({"DRAIN"}),
                                    reason=reason)
        return self.nodes_[name]

    def update_nodes(self, job_id: int, nodes: list[str]) -> None:
        self.calls.append(("update_nodes", job_id, tuple(nodes)))
        self.jobs_ = [replace(j, nodes=tuple(nodes)) if j.job_id == job_id else j
                      for j in self.jobs_]
        for n in NODES:  # Slurm frees what the job no longer holds
            if n not in nodes and self.nodes_[n].drained:
                self.nodes_[n] = replace(self.nodes_[n], state="idle")


class FakeAgent:
    def __init__(self, svc: Svc, node: str) -> None:
        self.svc, self.node = svc, node

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        self.svc.agent_calls.append((self.node, op))
        if op == "job.info":
            if args["job_id"] != self.svc.planned.job_id:  # as the agent answers
                raise PermissionDenied(f"job.info: no hpcmig job {args['job_id']} on {self.node}")
            return {"vc": self.svc.planned.to_json(), "containers": {}}
        if op == "job.members":
            self.svc.pushed.setdefault(self.node, []).append(VCluster.from_json(args["vcluster"]))
            return True
        if op == "job.teardown":  # the released node drops the job's routes and record
            self.svc.torn_down.append((self.node, args["job_id"]))
            return True
        raise AssertionError(op)


class Svc(Service):
    def __init__(self, cfg: Config, slurm: FakeSlurm, planned: VCluster, ops: FakeOps) -> None:
        super().__init__(cfg, slurm)  # type: ignore[arg-type]
        self.planned, self.fake_ops = planned, ops
        self.agent_calls: list[tuple[str, str]] = []
        self.pushed: dict[str, list[VCluster]] = {}
        self.torn_down: list[tuple[str, str]] = []

    def agent(self, node: str) -> FakeAgent:  # type: ignore[override]
        return FakeAgent(self, node)

    def ops_for(self, vc: VCluster) -> MigrationOps:
        return self.fake_ops


Env = tuple[Svc, World, FakeSlurm, ContainerRef]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    vc = plan(job_id="7", restart=0, user="u", uid=1000, gid=1000, nodes=NODES,
              node_addrs=ADDRS, block=IPv4Network("10.252.0.0/26"), spares=1)
    world = World(list(NODES))
    refs = [ContainerRef("7", 0, m.index, m.address, 1000) for m in vc.members]
    for m, ref in zip(vc.members, refs, strict=True):
        world.place(m.node, ref)
    slurm = FakeSlurm([JobInfo(7, "ring", "u", "RUNNING", tuple(NODES), batch_host="n1",
                               uid=1000, gid=1000)])
    cfg = Config(state_dir=str(tmp_path / "state"), checkpoint_dir=SHARED, metrics_port=0)
    yield Svc(cfg, slurm, vc, FakeOps(world)), world, slurm, refs[1]


def test_a_drain_finds_a_container_where_it_moved_and_every_agent_learns_it(env: Env) -> None:
    svc, world, slurm, ref = env
    report = svc.migrate("7", "n2")
    assert [r["result"] for r in report.rows] == ["moved"] and report.ok
    assert_settled(world, ref, "n3", ["n1", "n2"])
    # every node of the job, the target included, was told container 1 is on n3
    assert {n: p[-1].member(1).node for n, p in svc.pushed.items()} == {n: "n3" for n in NODES}
    report = svc.drain("n3", "test", timeout=5)
    assert [(r["container"], r["from"], r["to"], r["result"]) for r in report.rows] == [
        (1, "n3", "n2", "moved")], report.to_json()
    assert report.ok and "n3 DRAINED, empty of hpcmig containers" in report.lines
    assert_settled(world, ref, "n2", ["n1", "n3"])
    assert ("update_nodes", 7, ("n1", "n2")) in slurm.calls
    # the node left behind drops the job's routes and record before Slurm calls it idle
    assert svc.torn_down == [("n3", "7")]
    vc = svc.vcluster("7")
    assert vc.member(1).node == "n2" and "n3" not in vc.nodes() and vc.spares == ()
    assert not world.violations


def test_dry_run_plans_what_the_drain_does_and_changes_nothing(env: Env) -> None:
    svc, world, slurm, _ = env
    dry = svc.drain("n2", dry_run=True)
    assert slurm.calls == [] and world.calls == []
    assert [(r["container"], r["to"], r["result"]) for r in dry.rows] == [
        (1, "n3", "would move")]
    real = svc.drain("n2", timeout=5)
    assert [(r["container"], r["to"]) for r in real.rows] == [
        (r["container"], r["to"]) for r in dry.rows]


def test_a_postcopy_move_that_rolled_back_is_tried_once_stop_and_copy(env: Env) -> None:
    svc, world, slurm, ref = env
    svc.fake_ops.fail("restore", "n3")  # e.g. no userfaultfd on the target
    report = svc.migrate("7", "n2")
    assert [r["result"] for r in report.rows] == ["moved"], report.rows
    # the post-copy dump's page server ended before the source resumed; then the second
    # move copied the memory before the restore (no post-copy wait)
    assert [c for c in world.calls if c.startswith(("dump@", "postcopy_"))] == \
        ["dump@n2", "postcopy_end@n2", "dump@n2"]
    assert any("trying stop-and-copy" in d["what"] for d in svc.decisions)
    assert_settled(world, ref, "n3", ["n1", "n2"])
    stopped = svc.migrate("7", "n3", mode="stop-and-copy")
    assert stopped.ok and "postcopy_wait@n2" not in world.calls


def test_a_failed_move_leaves_the_job_its_node_and_the_drain_fails(env: Env) -> None:
    svc, world, slurm, ref = env
    svc.fake_ops.fail("verify_images")  # not post-copy's doing: no second try
    report = svc.drain("n2", timeout=5)
    [row] = report.rows
    assert row["result"] == "rolled back" and "keeps n2" in row["detail"], row
    assert report.exit_code == 1 and any("could not leave n2" in line for line in report.lines)
    assert not [c for c in slurm.calls if c[0] == "update_nodes"] and svc.torn_down == []
    assert slurm.job(7).nodes == tuple(NODES)
    assert_settled(world, ref, "n2", ["n1", "n3"])
    assert svc.vcluster("7").member(1).node == "n2"


def test_plan_drain_sends_batch_hosts_and_jobs_without_spares_through_the_fallback(
        env: Env) -> None:
    svc, *_ = env
    vc = svc.planned
    [p] = evacuate.plan_drain([(vc, "n1")], "n1")
    assert p.whole.startswith("n1 runs the job's batch step") and not p.moves
    full = replace(vc, spares=())
    [p] = evacuate.plan_drain([(full, "n1")], "n2")
    assert "no spare node left" in p.whole
    [p] = evacuate.plan_drain([(vc, "n1")], "n3")  # n3 is only a spare: release it
    assert not p.whole and not p.moves
    [p] = evacuate.plan_drain([(vc, "n1")], "n2", unusable=frozenset({"n3"}))
    assert "no spare node left" in p.whole  # the only spare is drained too


def test_a_dmtcp_job_leaves_a_node_by_checkpoint_and_restart_never_live(env: Env) -> None:
    """engine=dmtcp: CRIU never touches it; a drain requeues it from a DMTCP checkpoint."""
    svc, world, slurm, _ = env
    svc.planned = replace(svc.planned, engine="dmtcp")
    [p] = evacuate.plan_drain([(svc.planned, "n1")], "n2")
    assert p.whole.startswith("engine=dmtcp: the job moves by a DMTCP checkpoint") and \
        not p.moves
    [p] = evacuate.plan_drain([(svc.planned, "n1")], "n3")  # only a spare: released as ever
    assert not p.whole and not p.moves
    with pytest.raises(UsageError, match="runs under DMTCP") as refused:
        svc.migrate("7", "n2")
    assert "hpcmig drain n2" in str(refused.value.hint)
    dry = svc.drain("n2", dry_run=True)
    assert [r["result"] for r in dry.rows] == ["would requeue the job"], dry.rows
    assert world.calls == [] and slurm.calls == []


def test_bad_job_ids_are_usage_errors(env: Env) -> None:
    svc, *_ = env
    for bad in ("abc", "-1", "1.5", ""):
        with pytest.raises(UsageError, match="bad job id"):
            svc.migrate(bad, "n2")


def test_reports_cross_the_wire_unchanged(env: Env) -> None:
    svc, *_ = env
    report = svc.migrate("7", "n2", dry_run=True)
    again = Report.from_json(report.to_json())
    assert again == report and again.columns == report.columns


def test_status_document_follows_its_schema_and_users_see_their_own_jobs(env: Env) -> None:
    svc, _, slurm, _ = env
    slurm.jobs_.append(JobInfo(8, "other", "v", "RUNNING", ("n1",), batch_host="n1",
                               uid=2000, gid=2000))
    svc.migrate("7", "n2")
    svc.heartbeats["n1"] = 0.0
    svc.networks["n1"] = "bpf (tc on eth0, hmv0afc0001)"
    svc.networks["n2"] = "forwarded (clang is not installed: cannot build the fast path)"
    health = Health()
    health.observe(healthy(node="n1", time=5.0))
    health.observe(healthy(node="n2", time=6.0, temperatures={"Package id 0": 99.0}))
    doc = status.document(svc, health=health)
    status.validate(doc)
    by_node = {n["name"]: n["health"] for n in doc["nodes"]}
    assert by_node["n1"] == {"sampled": 5.0, "cpus": 4, "load": 1.0, "findings": []}
    assert by_node["n2"]["findings"] == ["hpcmig: temperature: Package id 0 99 C > 90 C"]
    assert by_node["n3"] is None  # never sampled
    assert status.report(svc, health=health).rows[1]["health"].startswith("hpcmig: temp")
    [job] = doc["jobs"]  # job 8's agents do not know it: not an hpcmig job
    assert [(c["index"], c["node"]) for c in job["containers"]] == [(0, "n1"), (1, "n3")]
    assert [d["what"] for d in doc["decisions"]][0] == "job 7: container 1 done, pause " + \
        doc["decisions"][0]["what"].rsplit("pause ", 1)[1]
    assert doc["nodes"][0]["agent"]["up"] is False  # last seen in 1970
    assert doc["nodes"][0]["agent"]["network"] == "bpf (tc on eth0, hmv0afc0001)"
    assert doc["nodes"][2]["agent"]["network"] is None  # never answered
    rows = status.report(svc, health=health).rows
    assert [r["network"] for r in rows] == [
        "bpf", "forwarded (clang is not installed: cannot build the fast path)", None]
    assert status.document(svc, uid=2000)["jobs"] == []
    assert status.document(svc, uid=2000)["decisions"] == []
    broken = dict(doc, jobs=[dict(job, job_id="seven")])
    with pytest.raises(jsonschema.ValidationError):
        status.validate(broken)


@dataclass
class Ctx:
    node: str = "hpcmigd"
    munge_socket: str | None = None

    def is_admin(self, uid: int) -> bool:
        return uid == 0

    def job_owner(self, job_id: str) -> int | None:
        return {"7": 1000}.get(job_id)


@pytest.mark.parametrize(("op", "args", "uid", "allowed"), [
    ("status", {}, 1000, True),
    ("migrate", {"job_id": "7"}, 1000, True),
    ("checkpoint", {"job_id": "7"}, 1000, True),
    ("restore_allocation", {"job_id": "7"}, 1000, True),
    ("migrate", {"job_id": "7"}, 2000, False),
    ("drain", {"node": "n2"}, 1000, False),
    ("resume", {"node": "n2"}, 1000, False),
    ("restore", {"job_id": "7"}, 1000, False),
    ("recover", {}, 1000, False),
    ("drain", {"node": "n2"}, 0, True),
    ("migrate", {"job_id": "7"}, 0, True),
])
def test_who_may_call_which_verb(op: str, args: dict[str, Any], uid: int,
                                 allowed: bool) -> None:
    from hpcmig.agent.server import authorize

    operation = daemon.CONTROLLER.operations[op]
    who = Identity(uid=uid, gid=uid)
    if allowed:
        authorize(operation, who, args, Ctx())
    else:
        with pytest.raises(PermissionDenied):
            authorize(operation, who, args, Ctx())


def test_a_drain_interrupted_after_drain_was_set_is_withdrawn_when_the_node_was_resumed(
        env: Env) -> None:
    """hpcmigd died while a drain ran (health's, with a fault since healed); the admin
    resumed the node and a job came to it. The new hpcmigd's recovery must not drain it again
    and move that job (seen on Debian 13: a stale temperature drain moved a new job)."""
    svc, world, slurm, ref = env
    with svc.journal() as journal:
        op_id = journal.begin("drain", "", {"node": "n2", "reason": "temperature: 105 C",
                                            "transport": "shared", "timeout": 5})
        journal.update_data(op_id, drain_set=True)  # what the first life recorded
    # the node was resumed since (no DRAIN flag)
    report = svc.run_drain(op_id)
    assert report.ok and any("drain is withdrawn" in line for line in report.lines)
    assert not [c for c in slurm.calls if c[0] == "drain"] and world.calls == []
    assert_settled(world, ref, "n2", ["n1", "n3"])
    with svc.journal() as journal:
        assert journal.get(op_id).state == "done" and journal.open_operations() == []
    assert any("drain withdrawn" in d["what"] for d in svc.decisions)


def test_a_drain_interrupted_before_drain_was_set_runs_again(env: Env) -> None:
    svc, world, slurm, ref = env
    with svc.journal() as journal:
        op_id = journal.begin("drain", "", {"node": "n2", "reason": "disk",
                                            "transport": "shared", "timeout": 5})
    report = svc.run_drain(op_id)
    assert report.ok and ("drain", "n2", "hpcmig: disk") in slurm.calls
    assert_settled(world, ref, "n3", ["n1", "n2"])
    with svc.journal() as journal:
        assert journal.get(op_id).data["drain_set"] is True


def test_a_drain_waiting_for_a_foreign_job_stops_when_the_node_is_resumed(env: Env) -> None:
    """A job without hpcmig keeps the node busy; the admin resumes it: the drain ends
    (failed, withdrawn) instead of waiting out its timeout and leaving an open operation."""
    svc, world, slurm, ref = env
    real_drain = slurm.drain

    def drain_then_resume(name: str, reason: str) -> NodeInfo:
        info = real_drain(name, reason)
        slurm.nodes_[name] = replace(info, flags=frozenset())  # RESUME right after
        return info

    slurm.drain = drain_then_resume  # type: ignore[method-assign]
    report = svc.drain("n2", "disk", timeout=60)
    assert not report.ok and any("drain is withdrawn" in line for line in report.lines)
    with svc.journal() as journal:
        assert journal.open_operations() == []


def test_a_drain_slurm_refuses_ends_refused_and_recovery_never_carries_it_out(
        env: Env) -> None:
    """A reason somebody else set: Slurm's drain is refused. The journaled drain must end
    there; left open, the next hpcmigd's recovery drained the node later (on Debian 13, after
    the admin had resumed it and a new job had come to it) and moved that job."""
    svc, world, slurm, ref = env
    slurm.nodes_["n2"] = replace(slurm.nodes_["n2"], reason="admin: bios update",
                                 reason_user="root")

    def refuse(name: str, reason: str) -> NodeInfo:
        from hpcmig.slurm.reasons import drain_update
        drain_update(slurm.nodes_[name], reason)  # raises: a foreign reason, not drained
        raise AssertionError("not refused")

    slurm.drain = refuse  # type: ignore[method-assign]
    with pytest.raises(SlurmError, match="will not overwrite"):
        svc.drain("n2", "temperature", timeout=5)
    with svc.journal() as journal:
        assert journal.open_operations() == []
        [op] = journal.operations(kind="drain")
        assert op.state == "refused" and "bios update" in (op.error or "")
    assert world.calls == []
    assert_settled(world, ref, "n2", ["n1", "n3"])
