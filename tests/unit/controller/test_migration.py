"""The migration state machine against a fake cluster: every step x crash point x failure."""

from __future__ import annotations

import pytest

from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.controller import recovery
from hpcmig.controller._machine import InjectedFault, env_faults
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import FORWARD, MigrationSpec, migrate
from hpcmig.controller.ops import MigrationOps
from tests.unit.controller.fake import SHARED, FakeOps, World, assert_settled

REF = ContainerRef("42", 0, 1, "10.252.0.2", 1000)
NODES = ["n1", "n2", "n3", "n4"]
RESTORE_AT = FORWARD.index("restore")


class Crash(BaseException):
    """Stands for SIGKILL: not an Exception, so no machine code catches it."""


def crash_at(step: str, point: str):  # type: ignore[no-untyped-def]
    def hook(p: str, name: str) -> None:
        if (p, name) == (point, step):
            raise Crash(f"{point} {name}")
    return hook


def spec(transport: str = "shared", postcopy: bool = False) -> MigrationSpec:
    if transport == "shared":
        src = dst = f"{SHARED}/42/r0/c1/m1"
    else:
        src, dst = "/spool/42/r0/c1/m1", "/spool/42/r0/c1/m1"
    return MigrationSpec(REF, "n1", "n2", ("n3", "n4"), src, dst, transport, postcopy)


# (transport, postcopy): every image transport, stop-and-copy and post-copy
MODES = [("shared", False), ("stream", False), ("shared", True), ("stream", True)]


def world() -> tuple[World, FakeOps]:
    w = World(list(NODES))
    w.place("n1", REF)
    return w, FakeOps(w)


def test_fake_satisfies_the_protocol() -> None:
    assert isinstance(FakeOps(World(["a"])), MigrationOps)


@pytest.mark.parametrize("transport,postcopy", MODES)
def test_migration_moves_the_container_and_reports_the_pause(journal: Journal,
                                                             transport: str,
                                                             postcopy: bool) -> None:
    w, ops = world()
    out = migrate(journal, ops, spec(transport, postcopy))
    assert out.state == "done", out.error
    assert_settled(w, REF, "n2", ["n1", "n3", "n4"])
    assert not w.images
    assert out.pause is not None and out.pause >= 0
    names = [s.name for s in journal.steps(out.op_id)]
    assert names == list(FORWARD)
    assert all(s.status == "done" for s in journal.steps(out.op_id))
    # the network lock is taken before the dump, the target unlocked only after the restore
    calls = w.calls
    assert calls.index("hold@n1") < calls.index("dump@n1") < calls.index("restore@n2") \
        < calls.index("point_local@n2") < calls.index("kill@n1")
    if postcopy:  # the source is killed only once its memory reached the target
        assert calls.index("point_local@n2") < calls.index("postcopy_wait@n2") \
            < calls.index("postcopy_end@n1") < calls.index("kill@n1")
    else:
        assert "postcopy_wait@n2" not in calls


@pytest.mark.parametrize("transport,postcopy", MODES)
@pytest.mark.parametrize("point", ["before", "after"])
@pytest.mark.parametrize("step", FORWARD)
def test_sigkill_at_every_step_then_recovery_runs_it_exactly_once(
        journal: Journal, step: str, point: str, transport: str, postcopy: bool) -> None:
    w, ops = world()
    with pytest.raises(Crash):
        migrate(journal, ops, spec(transport, postcopy), fault=crash_at(step, point))
    if (step, point) == ("done", "after"):  # the state was already written: nothing to do
        assert recovery.recover(journal, ops) == []
        assert_settled(w, REF, "n2", ["n1", "n3", "n4"])
        return
    assert journal.open_operations(), "the crash must leave the operation open"
    outcomes = recovery.recover(journal, ops)
    assert len(outcomes) == 1
    past_restore = FORWARD.index(step) > RESTORE_AT or (step == "restore" and point == "after")
    if past_restore:
        assert outcomes[0].state == "done", outcomes[0].error
        assert_settled(w, REF, "n2", ["n1", "n3", "n4"])
    else:
        assert outcomes[0].state == "rolled_back", outcomes[0]
        assert_settled(w, REF, "n1", ["n2", "n3", "n4"])
    assert not w.images
    assert not journal.open_operations()
    assert recovery.recover(journal, ops) == []  # nothing left: idempotent


@pytest.mark.parametrize("transport,postcopy", MODES)
@pytest.mark.parametrize("step", FORWARD[:RESTORE_AT + 1])
def test_failure_before_the_restore_succeeds_rolls_back(journal: Journal, step: str,
                                                        transport: str, postcopy: bool) -> None:
    w, ops = world()
    out = migrate(journal, ops, spec(transport, postcopy), fault=env_faults(f"{step}:fail"))
    assert out.state == "rolled_back"
    assert "injected failure" in (out.error or "")
    assert_settled(w, REF, "n1", ["n2", "n3", "n4"])
    assert not w.images


@pytest.mark.parametrize("postcopy", [False, True])
@pytest.mark.parametrize("step", FORWARD[RESTORE_AT + 1:])
def test_failure_after_the_restore_goes_forward_on_recovery(journal: Journal,
                                                            step: str, postcopy: bool) -> None:
    w, ops = world()
    out = migrate(journal, ops, spec(postcopy=postcopy), fault=env_faults(f"{step}:fail"))
    assert out.state == "stuck" and "injected" in (out.error or "")
    assert [n for n, s in w.where(REF) if s == "running"] == ["n2"]  # never back to n1
    [again] = recovery.recover(journal, ops)
    assert again.state == "done", again.error
    assert_settled(w, REF, "n2", ["n1", "n3", "n4"])


@pytest.mark.parametrize("method,node", [
    ("dump", "n1"), ("verify_images", "n2"), ("create_net", "n2"), ("route_via", "n4"),
    ("restore", "n2"), ("open_stream", "n2"), ("send_images", "n1")])
def test_each_failing_operation_rolls_back(journal: Journal, method: str, node: str) -> None:
    w, ops = world()
    ops.fail(method, node)
    out = migrate(journal, ops, spec("stream"))
    assert out.state == "rolled_back", out
    assert f"injected {method} failure" in (out.error or "")
    assert_settled(w, REF, "n1", ["n2", "n3", "n4"])
    assert not w.images


def test_corrupted_image_is_refused_and_the_source_resumes(journal: Journal) -> None:
    w, ops = world()
    ops.hooks["dump_after"] = lambda: w.images[("*", spec().dst_images)].update(corrupt=True)
    out = migrate(journal, ops, spec())
    assert out.state == "rolled_back" and "does not match its manifest" in (out.error or "")
    assert "restore@n2" not in w.calls
    assert_settled(w, REF, "n1", ["n2", "n3", "n4"])


def test_restore_that_worked_but_whose_reply_was_lost_goes_forward(journal: Journal) -> None:
    w, ops = world()

    def lost_reply() -> None:
        raise InjectedFault("the agent's answer was lost")

    ops.hooks["restore_after"] = lost_reply
    out = migrate(journal, ops, spec())
    assert out.state == "done", out.error
    assert out.data["restored_by"] == "state query"
    assert_settled(w, REF, "n2", ["n1", "n3", "n4"])


def test_refused_container_is_left_untouched(journal: Journal) -> None:
    w, ops = world()
    ops.refusals = ["InfiniBand/RDMA device /dev/infiniband/uverbs0 mapped by pid 7 (a.out)"]
    out = migrate(journal, ops, spec())
    assert out.state == "refused" and "uverbs0" in (out.error or "")
    assert w.calls == ["refuse_reasons@n1"]
    assert_settled(w, REF, "n1", ["n2", "n3", "n4"])


def test_leftover_copy_on_the_target_stops_the_migration_early(journal: Journal) -> None:
    w, ops = world()
    w.copies["n2"][REF.name] = w.copies["n1"][REF.name].__class__("stopped", restored=True)
    out = migrate(journal, ops, spec())
    assert out.state == "rolled_back" and "already has a copy" in (out.error or "")
    assert "hold@n1" not in w.calls


@pytest.mark.parametrize("undo,postcopy", [
    *((u, False) for u in ("kill_target", "route_back", "target_net", "resume", "unlock",
                           "images")),
    ("end_pages", True), ("resume", True)])
@pytest.mark.parametrize("point", ["before", "after"])
def test_sigkill_during_rollback_then_recovery_finishes_it(journal: Journal, undo: str,
                                                           point: str, postcopy: bool) -> None:
    w, ops = world()
    ops.fail("restore", "n2")
    with pytest.raises(Crash):
        migrate(journal, ops, spec(postcopy=postcopy), fault=crash_at(f"undo:{undo}", point))
    [out] = recovery.recover(journal, ops)
    assert out.state == "rolled_back", out
    assert_settled(w, REF, "n1", ["n2", "n3", "n4"])
    assert not w.images
    if postcopy:  # the page server ended (the tree stays stopped) before the resume
        assert w.calls.index("postcopy_end@n1") < w.calls.index("resume@n1")


def test_dead_target_after_restore_never_resumes_the_source(journal: Journal) -> None:
    """Restore ran, then the target became unreachable: the copy may be running there, so
    the source must stay stopped until the target answers again."""
    w, ops = world()

    def target_dies() -> None:
        ops.down.add("n2")
        raise InjectedFault("connection lost")

    ops.hooks["restore_after"] = target_dies
    out = migrate(journal, ops, spec())
    assert out.state == "stuck"
    assert ("n1", "stopped") in w.where(REF) and not w.violations
    [again] = recovery.recover(journal, ops)
    assert again.state == "stuck" and ("n1", "stopped") in w.where(REF)
    ops.down.clear()
    [final] = recovery.recover(journal, ops)
    assert final.state == "done", final.error  # the restored copy was running: forward
    assert_settled(w, REF, "n2", ["n1", "n3", "n4"])


def test_unreachable_target_before_restore_still_resumes_the_source(journal: Journal) -> None:
    w, ops = world()

    def target_dies() -> None:
        ops.down.add("n2")

    ops.hooks["dump_after"] = target_dies
    out = migrate(journal, ops, spec())
    assert out.state == "rolled_back"
    assert w.where(REF) == [("n1", "running")]
    assert w.routes["n1"][REF.address] == ("local",)
    assert "cleanup left" not in (out.error or "") or "n2" in (out.error or "")


def test_recovery_waits_for_a_restore_still_running(journal: Journal) -> None:
    w, ops = world()
    with pytest.raises(Crash):
        migrate(journal, ops, spec(), fault=crash_at("restore", "after"))
    ops.busy[("n2", REF.name)] = 3  # criu restore still at work for three polls
    [out] = recovery.recover(journal, ops)
    assert out.state == "done"
    assert_settled(w, REF, "n2", ["n1", "n3", "n4"])


def test_state_query_is_busy_then_absent_means_rollback(journal: Journal) -> None:
    w, ops = world()
    with pytest.raises(Crash):
        migrate(journal, ops, spec(), fault=crash_at("restore", "before"))
    ops.busy[("n2", REF.name)] = 2
    [out] = recovery.recover(journal, ops)
    assert out.state == "rolled_back"
    assert ops.container_state("n1", REF) is ContainerState.RUNNING


def test_spec_validation() -> None:
    from hpcmig.errors import UsageError
    bad = [MigrationSpec(REF, "n1", "n1", (), "/a", "/a"),
           MigrationSpec(REF, "n1", "n2", ("n2",), "/a", "/a"),
           MigrationSpec(REF, "n1", "n2", (), "/a", "/b", "shared"),
           MigrationSpec(REF, "n1", "n2", (), "/a", "/a", "carrier-pigeon")]
    for s in bad:
        with pytest.raises(UsageError):
            s.validate()
    s = spec("stream")
    assert MigrationSpec.from_json(s.to_json()) == s


def test_env_fault_parsing() -> None:
    assert env_faults("") is None
    hook = env_faults("dump:fail, undo:resume:kill")
    assert hook is not None
    hook("before", "lock")  # other steps are untouched
    with pytest.raises(InjectedFault):
        hook("before", "dump")
    from hpcmig.errors import HpcmigError
    with pytest.raises(HpcmigError):
        env_faults("dump:explode")


def test_postcopy_source_lost_before_the_memory_moved_kills_both_copies(
        journal: Journal) -> None:
    """The restored copy runs on memory still on the source: if that goes, the copy cannot
    go on; nothing is left running and the reason names the checkpoint."""
    w, ops = world()

    def source_dies() -> None:
        ops.down.add("n1")

    ops.hooks["restore_after"] = source_dies
    out = migrate(journal, ops, spec(postcopy=True))
    assert out.state == "stuck", out
    assert "did not reach n2" in (out.error or "") and "checkpoint" in (out.error or "")
    assert [s for _n, s in w.where(REF) if s == "running"] == []
    assert not w.violations
