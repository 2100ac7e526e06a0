"""Whole-job checkpoint and restore against the fake cluster, with crashes at every step."""

from __future__ import annotations

import threading

import pytest

from hpcmig.checkpoint.base import DumpStats
from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.checkpoint.stream import Stream
from hpcmig.controller import recovery
from hpcmig.controller._machine import env_faults
from hpcmig.controller.jobckpt import (
    JobCheckpoint,
    JobSpec,
    Placement,
    checkpoint_job,
    restore_job,
)
from hpcmig.controller.journal import Journal
from hpcmig.errors import UsageError
from tests.unit.controller.fake import SHARED, FakeOps, World, assert_settled

OLD = ["n1", "n2", "n3"]
NEW = ["n4", "n5", "n6"]
REFS = [ContainerRef("7", 0, i, f"10.252.0.{i + 1}", 1000) for i in range(3)]


class Crash(BaseException):
    pass


def crash_at(step: str, point: str):  # type: ignore[no-untyped-def]
    def hook(p: str, name: str) -> None:
        if (p, name) == (point, step):
            raise Crash(f"{point} {name}")
    return hook


def setup() -> tuple[World, FakeOps, JobSpec]:
    w = World(OLD + NEW)
    for node, ref in zip(OLD, REFS, strict=True):
        w.place(node, ref)
    # nodes outside the job do not route the job's addresses
    for n in NEW:
        w.routes[n].clear()
    spec = JobSpec("7", tuple(Placement(n, r, f"{SHARED}/7/r0/c{r.index}/ckpt")
                              for n, r in zip(OLD, REFS, strict=True)), tuple(OLD))
    return w, FakeOps(w), spec


def restore_spec(ckpt: dict[str, dict[str, str]]) -> JobSpec:
    return JobSpec("7", tuple(
        Placement(node, ref, ckpt[str(ref.index)]["image_dir"],
                  ckpt[str(ref.index)]["manifest_sha256"])
        for node, ref in zip(NEW, REFS, strict=True)), tuple(NEW))


def checkpoint_steps(spec: JobSpec) -> list[str]:
    return ["check", "images", "lock", "dump:all", "verify:all", spec.then, "done"]


def test_checkpoint_stop_then_restore_elsewhere(journal: Journal) -> None:
    w, ops, spec = setup()
    out = checkpoint_job(journal, ops, spec)
    assert out.state == "done", out.error
    assert all(not w.where(r) for r in REFS)  # stopped: no copy anywhere
    assert all(not w.nets[n] and not w.routes[n] for n in OLD)
    ckpt = JobCheckpoint(journal, ops, out.op_id).checkpoint()
    assert len(w.images) == 3
    back = restore_job(journal, ops, restore_spec(ckpt))
    assert back.state == "done", back.error
    for node, ref in zip(NEW, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in NEW if n != node])


def test_checkpoint_and_resume_keeps_the_job_running(journal: Journal) -> None:
    w, ops, spec = setup()
    spec = JobSpec(spec.job_id, spec.containers, spec.nodes, then="resume")
    out = checkpoint_job(journal, ops, spec)
    assert out.state == "done"
    for node, ref in zip(OLD, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in OLD if n != node])
    assert len(w.images) == 3 and all(i.get("verified") for i in w.images.values())
    # locks come before any dump: a consistent cut
    calls = w.calls
    assert max(i for i, c in enumerate(calls) if c.startswith("hold")) < \
        min(i for i, c in enumerate(calls) if c.startswith("dump"))


@pytest.mark.parametrize("then", ["stop", "resume"])
@pytest.mark.parametrize("point", ["before", "after"])
@pytest.mark.parametrize("step", checkpoint_steps(JobSpec("7", (), ())))
def test_checkpoint_sigkill_at_every_step(journal: Journal, step: str, point: str,
                                          then: str) -> None:
    w, ops, spec = setup()
    spec = JobSpec(spec.job_id, spec.containers, spec.nodes, then=then)
    step = then if step == "stop" else step
    with pytest.raises(Crash):
        checkpoint_job(journal, ops, spec, fault=crash_at(step, point))
    outcomes = recovery.recover(journal, ops)
    steps = checkpoint_steps(spec)
    forward = steps.index(step) >= steps.index(then)
    if forward:
        assert [o.state for o in outcomes] in ([], ["done"])
        assert len(w.images) == 3
    else:
        assert [o.state for o in outcomes] == ["rolled_back"]
        assert not w.images
    if then == "stop" and forward:
        assert all(not w.where(r) for r in REFS)
    else:
        for node, ref in zip(OLD, REFS, strict=True):
            assert_settled(w, ref, node, [n for n in OLD if n != node])


@pytest.mark.parametrize("step", ["dump:all", "verify:all"])
def test_checkpoint_failure_resumes_every_container(journal: Journal, step: str) -> None:
    w, ops, spec = setup()
    out = checkpoint_job(journal, ops, spec, fault=env_faults(f"{step}:fail"))
    assert out.state == "rolled_back"
    for node, ref in zip(OLD, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in OLD if n != node])
    assert not w.images


class Together(FakeOps):
    """Dumps and restores that return only once all three containers' have started: a
    step that ran them one after another would break the barrier (and fail)."""

    def __init__(self, world: World, crash_index: int | None = None) -> None:
        super().__init__(world)
        self.barrier = threading.Barrier(3, timeout=5)
        self.crash_index = crash_index

    def dump(self, node: str, ref: ContainerRef, image_dir: str, stream: Stream | None,
             postcopy: bool = False) -> DumpStats:
        self.barrier.wait()
        if ref.index == self.crash_index:
            raise Crash(f"hpcmigd SIGKILLed while {ref.name} was dumped")
        return super().dump(node, ref, image_dir, stream, postcopy)

    def restore(self, node: str, ref: ContainerRef, image_dir: str,
                lazy_from: tuple[str, int] | None = None) -> int:
        self.barrier.wait()
        return super().restore(node, ref, image_dir, lazy_from)


def test_containers_are_dumped_and_restored_at_once(journal: Journal) -> None:
    w, _, spec = setup()
    ops = Together(w)
    out = checkpoint_job(journal, ops, spec)
    assert out.state == "done", out.error
    back = restore_job(journal, ops, restore_spec(
        JobCheckpoint(journal, ops, out.op_id).checkpoint()))
    assert back.state == "done", back.error
    for node, ref in zip(NEW, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in NEW if n != node])


def test_a_crash_while_some_dumps_are_done_rolls_every_container_back(journal: Journal
                                                                     ) -> None:
    w, _, spec = setup()
    with pytest.raises(Crash):
        checkpoint_job(journal, Together(w, crash_index=1), spec)
    assert sum("sha" in i for i in w.images.values()) == 2  # the other two dumps ended
    assert [o.state for o in recovery.recover(journal, FakeOps(w))] == ["rolled_back"]
    for node, ref in zip(OLD, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in OLD if n != node])
    assert not w.images


def test_a_journal_of_per_container_steps_still_recovers(journal: Journal) -> None:
    """An hpcmigd before the parallel steps journaled `dump:<i>`; one SIGKILLed then, and
    upgraded, rolls that checkpoint back as it would its own."""
    w, ops, spec = setup()
    with pytest.raises(Crash):
        checkpoint_job(journal, ops, spec, fault=crash_at("dump:all", "before"))
    [op] = journal.open_operations()
    for i in range(2):  # what the old order left: dumps 0 and 1 journaled, done
        journal.step_ended(op.id, journal.step_started(op.id, "forward", f"dump:{i}"), "done")
    assert [o.state for o in recovery.recover(journal, ops)] == ["rolled_back"]
    for node, ref in zip(OLD, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in OLD if n != node])
    assert not w.images


def test_a_failing_dump_names_its_container(journal: Journal) -> None:
    w, ops, spec = setup()
    ops.fail("dump", "n2")
    out = checkpoint_job(journal, ops, spec)
    assert out.state == "rolled_back"
    assert REFS[1].name in (out.error or "") and "n2" in (out.error or ""), out.error
    for node, ref in zip(OLD, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in OLD if n != node])


def test_checkpoint_refused_when_one_container_cannot_be_dumped(journal: Journal) -> None:
    w, ops, spec = setup()
    ops.refusals = ["NVIDIA GPU device /dev/nvidia0 open by pid 9 (app)"]
    out = checkpoint_job(journal, ops, spec)
    assert out.state == "refused" and "nvidia0" in (out.error or "")
    assert not [c for c in w.calls if c.startswith(("hold", "dump"))]


RESTORE_STEPS = ["check", "verify:all", "net:all", "route", "restore:all", "unlock", "done"]


@pytest.mark.parametrize("point", ["before", "after"])
@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_restore_sigkill_at_every_step(journal: Journal, step: str, point: str) -> None:
    w, ops, spec = setup()
    out = checkpoint_job(journal, ops, spec)
    rspec = restore_spec(JobCheckpoint(journal, ops, out.op_id).checkpoint())
    with pytest.raises(Crash):
        restore_job(journal, ops, rspec, fault=crash_at(step, point))
    outcomes = recovery.recover(journal, ops)
    if RESTORE_STEPS.index(step) >= RESTORE_STEPS.index("unlock"):
        assert [o.state for o in outcomes] in ([], ["done"])
    else:
        assert [o.state for o in outcomes] == ["rolled_back"]
        assert all(not w.where(r) for r in REFS) and not w.violations
        assert all(not w.nets[n] and not w.routes[n] for n in NEW)
        assert restore_job(journal, ops, rspec).state == "done"  # images kept: try again
    for node, ref in zip(NEW, REFS, strict=True):
        assert_settled(w, ref, node, [n for n in NEW if n != node])


def test_restore_of_a_corrupt_checkpoint_changes_nothing(journal: Journal) -> None:
    w, ops, spec = setup()
    out = checkpoint_job(journal, ops, spec)
    rspec = restore_spec(JobCheckpoint(journal, ops, out.op_id).checkpoint())
    w.images[("*", rspec.containers[1].image_dir)]["corrupt"] = True
    back = restore_job(journal, ops, rspec)
    assert back.state == "rolled_back" and "manifest" in (back.error or "")
    assert all(not w.where(r) for r in REFS)
    assert all(not w.nets[n] for n in NEW)


def test_restore_failing_midway_kills_what_was_restored(journal: Journal) -> None:
    w, ops, spec = setup()
    out = checkpoint_job(journal, ops, spec)
    rspec = restore_spec(JobCheckpoint(journal, ops, out.op_id).checkpoint())
    ops.fail("restore", "n6")
    back = restore_job(journal, ops, rspec)
    assert back.state == "rolled_back"
    assert all(not w.where(r) for r in REFS)
    assert all(not w.nets[n] and not w.routes[n] for n in NEW)


def test_job_spec_validation() -> None:
    _, _, spec = setup()
    with pytest.raises(UsageError):
        JobSpec("7", (), ()).validate("checkpoint")
    with pytest.raises(UsageError):
        JobSpec("7", spec.containers, spec.nodes, then="pause").validate("checkpoint")
    with pytest.raises(UsageError):
        JobSpec("7", spec.containers, ("n1",)).validate("checkpoint")
    assert JobSpec.from_json(spec.to_json()) == spec
