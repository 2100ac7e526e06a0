"""Recovery: finish or roll back every operation the journal shows as unfinished.

Design note: run at controller start (and by tests in a fresh process after a SIGKILL),
before any new operation for the same jobs. Each open operation (active, rolling back,
stuck) is handed to its machine's `resume_after_crash`, which decides from the journal alone
plus the target's container state; the rules are in `migration` and `jobckpt`. An operation
whose recovery itself fails (a node unreachable) stays open and is reported; calling
`recover` again retries it. It never starts anything new.
"""

from __future__ import annotations

from hpcmig.controller._machine import FaultHook, Machine, Outcome
from hpcmig.controller.jobckpt import CHECKPOINT, RESTORE, JobCheckpoint, JobRestore
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import KIND as MIGRATE
from hpcmig.controller.migration import Migration
from hpcmig.controller.ops import MigrationOps

MACHINES: dict[str, type[Migration] | type[JobCheckpoint] | type[JobRestore]] = {
    MIGRATE: Migration, CHECKPOINT: JobCheckpoint, RESTORE: JobRestore}


def machine_for(journal: Journal, ops: MigrationOps, op_id: int,
                fault: FaultHook | None = None) -> Machine:
    op = journal.get(op_id)
    return MACHINES[op.kind](journal, ops, op_id, fault)


def recover(journal: Journal, ops: MigrationOps, *, job_id: str | None = None,
            fault: FaultHook | None = None) -> list[Outcome]:
    """Bring every open operation (of one job, or all) to an end; returns their outcomes.
    An operation whose recovery raised is reported as `stuck` with the error."""
    return [recover_one(journal, ops, op.id, fault) for op in journal.open_operations(job_id)]


def recover_one(journal: Journal, ops: MigrationOps, op_id: int,
                fault: FaultHook | None = None) -> Outcome:
    """Finish or roll back one open operation (see `recover`)."""
    machine = machine_for(journal, ops, op_id, fault)
    try:
        return machine.resume_after_crash()
    except Exception as exc:
        journal.set_state(op_id, "stuck", f"recovery failed: {exc}")
        return machine.outcome()
