"""Recovery: finish or roll back every operation the journal shows as unfinished.

Design note: run at controller start (and by tests in a fresh process after a SIGKILL),
before any new operation for the same jobs. Each open operation (active, rolling back,
stuck) is handed to its machine's `resume_after_crash`, which decides from the journal alone
plus the target's container state; the rules are in `migration` and `jobckpt`. An operation
whose recovery itself fails (a node unreachable) stays open and is reported; calling
`recover` again retries it. It never starts anything new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcmig.controller._machine import FaultHook, Machine, Outcome
from hpcmig.controller.jobckpt import CHECKPOINT, RESTORE, JobCheckpoint, JobRestore
from hpcmig.controller.journal import Journal, Operation
from hpcmig.controller.migration import KIND as MIGRATE
from hpcmig.controller.migration import Migration, MigrationSpec
from hpcmig.controller.ops import MigrationOps

MACHINES: dict[str, type[Migration] | type[JobCheckpoint] | type[JobRestore]] = {
    MIGRATE: Migration, CHECKPOINT: JobCheckpoint, RESTORE: JobRestore}


@dataclass(frozen=True)
class Recovered:
    """What recovery did with one open operation. state: done, rolled_back,
    stuck, busy (another live process works on the job), open (dry run: nothing done)."""

    op: Operation  # as the journal showed it before recovery
    state: str
    note: str = ""
    outcome: Outcome | None = None


def describe(op: Operation) -> str:
    """One line naming an operation: `migrate job 42 container 1 node2 -> node3`."""
    if op.kind == MIGRATE:
        spec = MigrationSpec.from_json(op.spec)
        return (f"migrate job {op.job_id} container {spec.ref.index} "
                f"{spec.source} -> {spec.target}")
    if op.kind == "drain":
        return f"drain {op.spec.get('node')}"
    return f"{op.kind} job {op.job_id}"


def restarts(spec: Any) -> set[int]:
    """The job restart counts the containers named anywhere in an operation's spec have."""
    found: set[int] = set()
    if isinstance(spec, dict):
        ref = spec.get("ref")
        if isinstance(ref, dict) and "restart" in ref:
            found.add(int(ref["restart"]))
        for value in spec.values():
            found |= restarts(value)
    elif isinstance(spec, list):
        for value in spec:
            found |= restarts(value)
    return found


def last_step(journal: Journal, op: Operation) -> str:
    steps = journal.steps(op.id)
    return f"{steps[-1].name} ({steps[-1].status})" if steps else "none"


def machine_for(journal: Journal, ops: MigrationOps, op_id: int,
                fault: FaultHook | None = None) -> Machine:
    op = journal.get(op_id)
    return MACHINES[op.kind](journal, ops, op_id, fault)


def recover(journal: Journal, ops: MigrationOps, *, job_id: str | None = None,
            fault: FaultHook | None = None) -> list[Outcome]:
    """Bring every open operation (of one job, or all) to an end; returns their outcomes.
    An operation whose recovery raised is reported as `stuck` with the error."""
    return [recover_one(journal, ops, op.id, fault) for op in journal.open_operations(job_id)
            if op.kind in MACHINES]


def recover_one(journal: Journal, ops: MigrationOps, op_id: int,
                fault: FaultHook | None = None) -> Outcome:
    """Finish or roll back one open operation (see `recover`)."""
    machine = machine_for(journal, ops, op_id, fault)
    try:
        return machine.resume_after_crash()
    except Exception as exc:
        journal.set_state(op_id, "stuck", f"recovery failed: {exc}")
        return machine.outcome()
