"""Whole-job checkpoint and restore: coordinated, journaled, crash-safe.

Design note: the same habits as `migration` (journal each step first, every effect through
`MigrationOps`, a point of no return, recovery from the journal), for all of a job's
containers at once.

Checkpoint (`checkpoint_job`): check (nothing undumpable, all running) -> images (prepare
every directory) -> lock (hold every container's /32 on its node, so no container
hears from another while the others are dumped: a consistent cut, unacknowledged data stays
in CRIU's socket queues) -> dump:all (left stopped) -> verify:all -> then `resume`
(continue the job: resume + unlock all) or `stop` (kill all, remove their networks, forget
their routes; the images are the job's checkpoint) -> done. Any failure before `resume`/
`stop` rolls back: every container resumed and unlocked, the images removed. From `resume`
/`stop` on, only forward. Images are kept at the end (the caller removes them at job end,
`images.remove_job`).

Restore (`restore_job`), on any set of nodes: check (no copy there yet) -> verify:all ->
net:all (netns with the same address, held) -> route (every node routes every address
to its container's node) -> restore:all -> unlock (point_local all) -> done. Until every
restore has succeeded a failure rolls back: every restored copy killed (confirmed gone),
networks and routes removed, images kept so the restore can be tried again.

Every step that acts on all containers (`<step>:all`, lock, resume, stop, rollbacks) runs on
them at once, one thread each, and waits for all: a job's pause is one container's dump and
verification, not their sum. A step fails if any container's part failed, naming each.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from hpcmig.checkpoint.base import DumpStats, Refused
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.controller._machine import FaultHook, Machine, Outcome, Stuck
from hpcmig.controller.journal import Journal
from hpcmig.controller.ops import MigrationOps
from hpcmig.errors import HpcmigError, UsageError

CHECKPOINT, RESTORE = "checkpoint", "restore"
WORKERS: int | None = None  # containers acted on at once (None: all; 1: one after another)
Action = tuple[str, bool, Callable[[], dict[str, Any] | None]]


@dataclass(frozen=True)
class Placement:
    """One container of the job: where it runs (or is to run) and its image directory."""

    node: str
    ref: ContainerRef
    image_dir: str
    manifest_sha256: str | None = None  # restore: what the checkpoint's dump journaled

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "ref": self.ref.to_json(), "image_dir": self.image_dir,
                "manifest_sha256": self.manifest_sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        return cls(data["node"], ContainerRef.from_json(data["ref"]), data["image_dir"],
                   data.get("manifest_sha256"))


@dataclass(frozen=True)
class JobSpec:
    """A whole-job operation: its containers and every node that routes their addresses."""

    job_id: str
    containers: tuple[Placement, ...]
    nodes: tuple[str, ...]
    then: str = "stop"  # checkpoint only: "stop" or "resume"

    def validate(self, kind: str) -> None:
        if not self.containers:
            raise UsageError(f"job {self.job_id}: no containers to {kind}")
        if kind == CHECKPOINT and self.then not in ("stop", "resume"):
            raise UsageError(f"after a checkpoint: 'stop' or 'resume', not {self.then!r}")
        if len({p.ref.index for p in self.containers}) != len(self.containers):
            raise UsageError(f"job {self.job_id}: a container index appears twice")
        if {p.node for p in self.containers} - set(self.nodes):
            raise UsageError("every container's node must be in nodes")

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "containers": [p.to_json() for p in self.containers],
                "nodes": list(self.nodes), "then": self.then}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        return cls(str(data["job_id"]),
                   tuple(Placement.from_json(p) for p in data["containers"]),
                   tuple(data["nodes"]), data.get("then", "stop"))


def checkpoint_job(journal: Journal, ops: MigrationOps, spec: JobSpec,
                   fault: FaultHook | None = None) -> Outcome:
    """Checkpoint every container of a job, then resume or stop it."""
    spec.validate(CHECKPOINT)
    op_id = journal.begin(CHECKPOINT, spec.job_id, spec.to_json())
    return JobCheckpoint(journal, ops, op_id, fault).run()


def restore_job(journal: Journal, ops: MigrationOps, spec: JobSpec,
                fault: FaultHook | None = None) -> Outcome:
    """Restore every container of a job from its images on the nodes spec names."""
    spec.validate(RESTORE)
    op_id = journal.begin(RESTORE, spec.job_id, spec.to_json())
    return JobRestore(journal, ops, op_id, fault).run()


class _JobMachine(Machine):
    def __init__(self, journal: Journal, ops: MigrationOps, op_id: int,
                 fault: FaultHook | None = None) -> None:
        super().__init__(journal, ops, op_id, fault)
        self.spec = JobSpec.from_json(journal.get(op_id).spec)

    def forward(self) -> list[tuple[str, Callable[[], dict[str, Any] | None]]]:
        raise NotImplementedError

    def no_return(self) -> str:
        """The first step after which the operation only goes forward."""
        raise NotImplementedError

    def rollback_actions(self, reached: int) -> list[Action]:
        raise NotImplementedError

    def _names(self) -> list[str]:
        return [name for name, _ in self.forward()]

    def _at(self, step: str) -> int:
        """Where a journaled step is in `forward`; a journal of an hpcmigd before the steps
        ran on all containers at once names them per container (`dump:2`)."""
        name, _, index = step.rpartition(":")
        return self._names().index(f"{name}:all" if index.isdigit() else step)

    def run(self, start: int = 0) -> Outcome:
        return self.run_steps(self.forward()[start:])

    def _fail(self, exc: Exception) -> Outcome:
        last = self.last_forward()
        if last is not None and self._at(last[0]) >= self._at(self.no_return()):
            self.journal.update_data(self.op_id, stuck_in="forward")
            self.journal.set_state(self.op_id, "stuck", str(exc))
            return self.outcome()
        return self.rollback(str(exc))

    def resume_after_crash(self) -> Outcome:
        op = self.journal.get(self.op_id)
        if op.state == "rolling_back" or op.data.get("stuck_in") == "rollback":
            return self.rollback(op.error or "recovering an interrupted rollback")
        last = self.last_forward()
        if last is None:
            self.journal.set_state(self.op_id, "rolled_back", "interrupted before any step")
            return self.outcome()
        reached = self._at(last[0])
        if reached < self._at(self.no_return()):
            return self.rollback(op.error or f"interrupted at step {last[0]}")
        if last[1] == "done":
            return self.outcome() if last[0] == "done" else self.run(reached + 1)
        return self.run(reached)

    def rollback(self, reason: str) -> Outcome:
        self.journal.set_state(self.op_id, "rolling_back", reason)
        last = self.last_forward()
        reached = self._at(last[0]) if last else -1
        try:
            errors = self.undo(self.rollback_actions(reached))
        except Stuck as exc:
            self.journal.update_data(self.op_id, stuck_in="rollback")
            self.journal.set_state(self.op_id, "stuck", f"{reason}; {exc}")
            return self.outcome()
        note = reason + (f" (cleanup left: {'; '.join(errors)})" if errors else "")
        self.journal.update_data(self.op_id, stuck_in=None)
        self.journal.set_state(self.op_id, "rolled_back", note)
        return self.outcome()

    def _finish(self) -> None:
        self.journal.set_state(self.op_id, "done")

    def _kill_confirmed(self, p: Placement) -> None:
        self.settle(p.node, p.ref)
        self.ops.kill(p.node, p.ref)
        state = self.ops.container_state(p.node, p.ref)
        if state is not ContainerState.ABSENT:
            raise HpcmigError(f"{p.ref.name} on {p.node} is still {state.value}")


def _all(items: tuple[Placement, ...], fn: Callable[[Placement], Any]) -> dict[str, Any]:
    """fn on every container at once; {index: what fn returned}. HpcmigError naming every
    container whose part failed, raised once all have ended."""
    with ThreadPoolExecutor(max_workers=WORKERS or len(items) or 1,
                            thread_name_prefix="jobckpt") as pool:
        futures = [(p, pool.submit(fn, p)) for p in items]
    results, failed = {}, []
    for p, future in futures:
        try:
            results[str(p.ref.index)] = future.result()
        except HpcmigError as exc:
            failed.append(f"{p.ref.name} on {p.node}: {exc}")
    if failed:
        raise HpcmigError("; ".join(failed))
    return results


class JobCheckpoint(_JobMachine):
    kind = CHECKPOINT

    def forward(self) -> list[tuple[str, Callable[[], dict[str, Any] | None]]]:
        steps: list[tuple[str, Callable[[], dict[str, Any] | None]]] = [
            ("check", self._check), ("images", self._images), ("lock", self._lock)]
        steps += [("dump:all", self._dump), ("verify:all", self._verify)]
        steps += [(self.spec.then, self._stop if self.spec.then == "stop" else self._resume),
                  ("done", self._finish)]
        return steps

    def no_return(self) -> str:
        return self.spec.then

    def _check(self) -> dict[str, Any]:
        reasons = []
        for p in self.spec.containers:
            reasons += [f"{p.ref.name}: {r}" for r in self.ops.refuse_reasons(p.node, p.ref)]
        if reasons:
            raise Refused(reasons)
        for p in self.spec.containers:
            state = self.ops.container_state(p.node, p.ref)
            if state is not ContainerState.RUNNING:
                raise HpcmigError(f"{p.ref.name} on {p.node} is {state.value}, not running")
        return {}

    def _images(self) -> dict[str, Any]:
        return _all(self.spec.containers,
                    lambda p: self.ops.prepare_images(p.node, p.image_dir, p.ref.uid))

    def _lock(self) -> dict[str, Any]:
        return _all(self.spec.containers, lambda p: self.ops.hold(p.node, p.ref.address))

    def _dump(self) -> dict[str, Any]:
        dumps = {i: stats.to_json() for i, stats in _all(
            self.spec.containers, lambda p: self.ops.dump(p.node, p.ref, p.image_dir, None)
        ).items()}
        self.journal.update_data(self.op_id, dumps=dumps)
        return {i: {"image_bytes": d["image_bytes"], "seconds": d["seconds"]}
                for i, d in dumps.items()}

    def _verify(self) -> dict[str, Any]:
        dumps = self.data["dumps"]
        return _all(self.spec.containers, lambda p: self.ops.verify_images(
            p.node, p.image_dir, DumpStats.from_json(dumps[str(p.ref.index)]).manifest_sha256))

    def _resume(self) -> dict[str, Any]:
        _all(self.spec.containers, lambda p: self.ops.resume(p.node, p.ref))
        return _all(self.spec.containers, lambda p: self.ops.point_local(p.node, p.ref))

    def _stop(self) -> dict[str, Any]:
        spec = self.spec
        _all(spec.containers, lambda p: self.ops.kill(p.node, p.ref))
        _all(spec.containers, lambda p: self.ops.remove_net(p.node, p.ref))
        for node in spec.nodes:
            for p in spec.containers:
                if p.node != node:
                    self.ops.unroute(node, p.ref.address)
        return {}

    def rollback_actions(self, reached: int) -> list[Action]:
        names = self._names()
        spec, ops = self.spec, self.ops
        actions: list[Action] = []

        def resume(p: Placement) -> None:
            if self.settle(p.node, p.ref) is ContainerState.BUSY:
                raise HpcmigError("criu still works on it")
            ops.resume(p.node, p.ref)

        if reached >= names.index("lock"):
            actions.append(("resume", True, lambda: _all(spec.containers, resume)))
            actions.append(("unlock", True, lambda: _all(
                spec.containers, lambda p: ops.point_local(p.node, p.ref))))
        if reached >= names.index("images"):
            actions.append(("images", False, lambda: _all(
                spec.containers, lambda p: ops.remove_images(p.node, p.image_dir))))
        return actions

    def checkpoint(self) -> dict[str, Any]:
        """{index: {"node", "image_dir", "manifest_sha256"}}: what `restore_job` needs."""
        dumps = self.data.get("dumps", {})
        return {str(p.ref.index): {"node": p.node, "image_dir": p.image_dir,
                                   "manifest_sha256": dumps.get(str(p.ref.index), {}).get(
                                       "manifest_sha256")}
                for p in self.spec.containers}


class JobRestore(_JobMachine):
    kind = RESTORE

    def forward(self) -> list[tuple[str, Callable[[], dict[str, Any] | None]]]:
        c = self.spec.containers
        steps: list[tuple[str, Callable[[], dict[str, Any] | None]]] = [("check", self._check)]
        steps += [("verify:all", lambda: _all(c, lambda p: self.ops.verify_images(
                      p.node, p.image_dir, p.manifest_sha256))),
                  ("net:all", lambda: _all(c, lambda p: self.ops.create_net(p.node, p.ref))),
                  ("route", self._route),
                  ("restore:all", lambda: _all(c, lambda p: {
                      "pid": self.ops.restore(p.node, p.ref, p.image_dir)})),
                  ("unlock", self._unlock), ("done", self._finish)]
        return steps

    def no_return(self) -> str:
        return "unlock"  # every restore succeeded once a run gets here

    def _check(self) -> dict[str, Any]:
        for p in self.spec.containers:
            state = self.ops.container_state(p.node, p.ref)
            if state is not ContainerState.ABSENT:
                raise HpcmigError(f"{p.node} already has a copy of {p.ref.name}")
        return {}

    def _route(self) -> dict[str, Any]:
        for node in self.spec.nodes:
            for p in self.spec.containers:
                if p.node != node:
                    self.ops.route_via(node, p.ref.address, p.node)
        return {}

    def _unlock(self) -> dict[str, Any]:
        return _all(self.spec.containers, lambda p: self.ops.point_local(p.node, p.ref))

    def rollback_actions(self, reached: int) -> list[Action]:
        names = self._names()
        spec, ops = self.spec, self.ops
        actions: list[Action] = []
        if reached >= names.index("restore:all"):
            actions.append(("kill", True, lambda: _all(spec.containers, self._kill_confirmed)))
        if reached >= names.index("route"):
            actions.append(("routes", False, lambda: _each_route(spec, ops)))
        if reached >= names.index("net:all"):
            actions.append(("nets", False, lambda: _all(
                spec.containers, lambda p: ops.remove_net(p.node, p.ref))))
        return actions


def _each_route(spec: JobSpec, ops: MigrationOps) -> dict[str, Any]:
    failed = []
    for node in spec.nodes:
        for p in spec.containers:
            if p.node != node:
                try:
                    ops.unroute(node, p.ref.address)
                except HpcmigError as exc:
                    failed.append(f"{node}: {exc}")
    if failed:
        raise HpcmigError("; ".join(failed))
    return {}
