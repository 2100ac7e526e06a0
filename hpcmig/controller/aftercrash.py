"""What the controller does when it starts again: finish or roll back what a crash left.

Design note: hpcmigd runs `report(svc)` at start, and `hpcmig recover [JOBID]` on demand
(through hpcmigd, or in-process when it is down). Every journaled operation still open is
handed to its machine (`recovery.recover_one`; rules in docs/checkpoint.md), except that a
migration whose job run has ended is closed (its epilog removed what the migration left),
nothing is decided while Slurm does not answer or the job is suspended, and a job whose lock
a live process holds is left to it. A migration recovery finished forward moves the job's
membership like a move that never crashed. Open drains are carried out again after the
operations of their jobs ended (`Service.run_drain`: idempotent, so exactly once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpcmig.controller.drain import DRAIN
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import KIND as MIGRATE
from hpcmig.controller.migration import MigrationSpec
from hpcmig.controller.recovery import MACHINES, Recovered, describe, last_step, recover_one
from hpcmig.controller.recovery import restarts as restarts_of
from hpcmig.controller.report import Report
from hpcmig.errors import HpcmigError, SlurmError
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.controller.service import Service

# Slurm states in which a job's processes still exist (stopped): its operations wait.
HELD = ("SUSPENDED", "STOPPED")


def recover_ops(svc: Service, job_id: str | None = None, dry_run: bool = False
                ) -> list[Recovered]:
    """Finish or roll back every open machine operation (of one job, or all)."""
    with svc.journal() as journal:
        open_ops = [op for op in journal.open_operations(job_id) if op.kind in MACHINES]
        jobs = sorted({op.job_id for op in open_ops}, key=lambda j: (len(j), j))
        found: list[Recovered] = []
        for job in jobs:
            ops = [op for op in open_ops if op.job_id == job]
            if dry_run:
                found += [Recovered(op, "open", op.error or "") for op in ops]
                continue
            with svc.job_lock(job, wait=False) as held:
                if not held:
                    found += [Recovered(op, "busy", "another hpcmig process is working on "
                                        f"job {job}") for op in ops]
                    continue
                found += _recover_job(svc, journal, job)
    return found


def _recover_job(svc: Service, journal: Journal, job: str) -> list[Recovered]:
    ops = [op for op in journal.open_operations(job) if op.kind in MACHINES]
    try:
        state = next((j.state for j in svc.slurm.jobs() if str(j.job_id) == job),
                     "gone from Slurm")
    except SlurmError as exc:  # Slurm did not answer: decide nothing
        return [Recovered(op, "stuck", f"cannot ask Slurm about job {job}: {exc}")
                for op in ops]
    if state in HELD:
        return [Recovered(op, "stuck", f"job {job} is {state}: recover once it runs again")
                for op in ops]
    vc: VCluster | None = None
    if state == "RUNNING":
        try:
            vc = svc.vcluster(job)
        except HpcmigError as exc:
            return [Recovered(op, "stuck", f"job {job}: {exc}") for op in ops]
    agent_ops = svc.ops_for(vc) if vc is not None else None
    found: list[Recovered] = []
    for op in ops:
        restarts = restarts_of(op.spec)
        ended = vc is None or bool(restarts and vc.restart not in restarts)
        if ended and op.kind != MIGRATE:
            found.append(Recovered(op, "stuck", f"job {job} is {state}: its {op.kind} "
                                   "needs the job's run it belongs to"))
        elif ended:
            what = (f"job {job} is {state}" if vc is None else
                    f"run {min(restarts)} of job {job} has ended (it is at run "
                    f"{vc.restart})")
            note = (f"{what}: its epilog removed this migration's containers, routes "
                    f"and images (the journal had reached {last_step(journal, op)})")
            journal.set_state(op.id, "rolled_back", note)
            found.append(Recovered(op, "rolled_back", note))
        else:
            assert agent_ops is not None
            outcome = recover_one(journal, agent_ops, op.id)
            if op.kind == MIGRATE and outcome.state == "done":
                spec = MigrationSpec.from_json(op.spec)
                svc._moved(job, spec.ref.index, spec.source, spec.target)
            svc.metrics.migration(outcome.state, None)
            found.append(Recovered(op, outcome.state, outcome.error or "", outcome))
    return found


def report(svc: Service, job_id: str | None = None, dry_run: bool = False) -> Report:
    """Recover (or, dry, list) the open operations, then carry out open drains again."""
    rep = Report("recover", "open operations", ("operation", "what", "state", "note"))
    for r in recover_ops(svc, job_id, dry_run):
        rep.add(operation=r.op.id, what=describe(r.op), state=r.state, note=r.note or None)
        if r.state not in ("done", "rolled_back", "open"):
            rep.fail()
    with svc.journal() as journal:
        drains = [op for op in journal.open_operations() if op.kind == DRAIN]
    if job_id is None:
        for op in drains:
            what = f"drain {op.spec['node']} (reason 'hpcmig: {op.spec['reason']}')"
            if dry_run:
                rep.add(operation=op.id, what=what, state="open", note=None)
                continue
            try:
                drained = svc.run_drain(op.id)
            except HpcmigError as exc:
                rep.add(operation=op.id, what=what, state="stuck", note=str(exc))
                rep.fail()
                continue
            rep.add(operation=op.id, what=what, state="done" if drained.ok else "failed",
                    note="; ".join(drained.lines) or None)
            if not drained.ok:
                rep.fail()
    if not rep.rows:
        rep.say(f"nothing to recover for {'job ' + job_id if job_id else 'any job'}")
    return rep
