"""Draining a node: every hpcmig container off it (live moves, or the whole job requeued), the
jobs shrunk off it, the node left DRAINED; and returning it (`resume`).

Design note: the service's verbs `drain`, `run_drain` (a journaled drain, again after a crash:
every step idempotent), `release_node` and `resume` (hpcmig.controller.service delegates
here). Planning is `evacuate.plan_drain` (pure); a job that cannot move live is checkpointed
whole and requeued without the node (`wholejob.requeue_without`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hpcmig.controller import wholejob
from hpcmig.controller._machine import Outcome
from hpcmig.controller.evacuate import JobPlan, Move, plan_drain
from hpcmig.controller.migration import check_mode, check_transport
from hpcmig.controller.report import Report
from hpcmig.errors import HpcmigError, SlurmError, UsageError
from hpcmig.hostlist import compress
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.controller.service import Service

log = logging.getLogger("hpcmig.controller")
DRAIN = "drain"  # journal kind of a node drain (its moves are journaled on their own)
MOVE_COLUMNS = ("job", "container", "from", "to", "result", "pause", "detail")


def move_row(report: Report, mv: Move, outcome: Outcome) -> None:
    """One row of a drain's or a migration's report."""
    result = {"done": "moved", "rolled_back": "rolled back"}.get(outcome.state, outcome.state)
    report.add(job=mv.job_id, container=mv.index, **{"from": mv.source}, to=mv.target,
               result=result, pause=outcome.pause, detail=outcome.error or "")
    if outcome.state != "done":
        report.fail()


def plan(svc: Service, node: str) -> tuple[list[JobPlan], list[int]]:
    """The plan for every hpcmig job using `node`, and the ids of other jobs there."""
    plans: list[tuple[VCluster, str]] = []
    others = []
    for job in svc.slurm.jobs():
        if job.state != "RUNNING" or node not in job.nodes:
            continue
        try:
            vc = svc.vcluster(str(job.job_id), job)
        except UsageError:
            others.append(job.job_id)
            continue
        plans.append((vc, job.batch_host))
    return plan_drain(plans, node, svc.unusable()), others

def drain(svc: Service, node: str, reason: str = "evacuating", transport: str = "shared",
          dry_run: bool = False, timeout: float = 120.0, mode: str | None = None) -> Report:
    check_transport(transport)
    if mode is not None:
        check_mode(mode)
    if not reason.strip():
        raise UsageError("the drain reason is empty", hint="--reason 'disk errors'")
    info = svc.slurm.node(node)  # an unknown node is a usage error
    plans, others = plan(svc, node)
    report = Report("drain", f"{node}: hpcmig containers", MOVE_COLUMNS)
    if dry_run:
        report.say(f"would set DRAIN on {node} (reason 'hpcmig: {reason}')"
                   + (f"; its reason {info.reason!r} stays" if info.reason
                      and not info.reason_is_ours else ""))
        for p in plans:
            plan_rows(report, p, node, dry_run=True)
        say_others(report, node, others)
        return report
    with svc.journal() as journal:
        op_id = journal.begin(DRAIN, "", {"node": node, "reason": reason,
                                          "transport": transport, "timeout": timeout,
                                          "mode": mode})
    return run(svc, op_id, plans)

def run(svc: Service, op_id: int, plans: list[JobPlan] | None = None) -> Report:
    """Carry out journaled drain `op_id` (again, after a crash: every step is
    idempotent, so a drain interrupted anywhere finishes exactly once)."""
    with svc.journal() as journal:
        op = journal.get(op_id)
    node, reason = op.spec["node"], op.spec["reason"]
    transport, timeout = op.spec["transport"], float(op.spec["timeout"])
    mode = op.spec.get("mode")
    report = Report("drain", f"{node}: hpcmig containers", MOVE_COLUMNS)
    if op.data.get("drain_set") and not svc.slurm.node(node).drained:
        # an earlier life set DRAIN and somebody resumed the node since: a drain replayed
        # now would act on a stale reason (a fault healed meanwhile) and move jobs that
        # came to the node after the resume
        note = f"{node} was resumed while this drain ran: the drain is withdrawn"
        report.say(note)
        svc.decide(f"{node}: drain withdrawn (resumed since it began)", node=node)
        with svc.journal() as journal:
            journal.set_state(op_id, "done", note)
        return report
    try:
        info = svc.slurm.drain(node, f"hpcmig: {reason}")
    except SlurmError as exc:  # refused (a reason somebody else set): nothing was done, and
        with svc.journal() as journal:  # a recovery must not carry it out later
            journal.set_state(op_id, "refused", str(exc))
        raise
    with svc.journal() as journal:
        journal.update_data(op_id, drain_set=True)
    svc.decide(f"{node}: DRAIN set ({info.reason})", node=node)
    if info.reason and not info.reason_is_ours:
        report.say(f"{node} keeps the reason {info.reason!r} somebody else set")
    for job_id in op.data.get("requeued", []):  # an earlier life of this drain
        wholejob.finish_requeue(svc, str(job_id), {node})
    others: list[int] = []
    if plans is None:
        plans, others = plan(svc, node)
    with ThreadPoolExecutor(max_workers=max(1, len(plans))) as pool:
        results = list(pool.map(lambda p: _evacuate(svc, op_id, node, p, transport, mode),
                                plans))
    for rows in results:
        report.rows += rows
    failed = [r for r in report.rows if r["result"] not in ("moved", "requeued", "released")]
    say_others(report, node, others)
    if failed:
        report.fail(f"{len(failed)} container(s) could not leave {node}; their jobs keep "
                    "it (see the rows)")
    else:
        _wait_drained(svc, report, node, timeout)
    with svc.journal() as journal:
        journal.set_state(op_id, "done", "; ".join(report.lines) if failed else None)
    return report

def _evacuate(svc: Service, op_id: int, node: str, plan: JobPlan, transport: str,
              mode: str | None = None) -> list[dict[str, Any]]:
    if plan.whole:
        return wholejob.requeue_without(svc, op_id, plan, node)
    report = Report("drain")
    vc = plan.vc
    for mv in plan.moves:
        try:
            outcome = svc.migrate_one(vc, mv, transport, mode)
        except HpcmigError as exc:
            report.add(job=vc.job_id, container=mv.index, **{"from": node}, to=mv.target,
                       result="failed", pause=None, detail=str(exc))
            break
        move_row(report, mv, outcome)
        svc.metrics.evacuations.labels(how="live", result=outcome.state).inc()
        if outcome.state != "done":
            break
        vc = svc.vcluster(vc.job_id)
    else:
        release_node(svc, vc, node)
        if not plan.moves:
            report.add(job=vc.job_id, container=None, **{"from": node}, to=None,
                       result="released", pause=None, detail="a spare node of the job")
        return report.rows
    for row in report.rows:
        row["detail"] = (row["detail"] + "; " if row["detail"] else "") + \
            f"job {vc.job_id} keeps {node}"
    return report.rows

def release_node(svc: Service, vc: VCluster, node: str) -> None:
    """The job no longer uses `node` (it hosts none of its containers): shrink the job
    off it in Slurm and drop it from the job's membership."""
    job = svc.job(vc.job_id)
    svc.publish(vc.without_node(node), job.restart_count)
    # Slurm calls a node shrunk off a job idle before its epilog ran: take the job's
    # routes and record off it first, so DRAINED means empty (the epilog finds nothing)
    try:
        svc.agent(node).call("job.teardown", job_id=vc.job_id, timeout=60)
    except HpcmigError as exc:
        log.warning("job %s: %s keeps its part of the job until its epilog: %s",
                    vc.job_id, node, exc)
    if node in job.nodes and node != job.batch_host:
        rest = [n for n in job.nodes if n != node]
        svc.slurm.update_nodes(job.job_id, rest)
        svc.decide(f"job {vc.job_id}: Slurm shrank the job to {compress(rest)}",
                    job=vc.job_id)

def _wait_drained(svc: Service, report: Report, node: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    info = svc.slurm.node(node)
    while not (info.state in ("idle", "down") and info.drained):
        if not info.drained:
            report.fail(f"{node} was resumed while the drain waited for it to empty: the "
                        "drain is withdrawn")
            return
        if time.monotonic() > deadline:
            report.fail(f"{node} is still {info.state}+{'+'.join(sorted(info.flags))} "
                        f"after {timeout:g} s: a job without hpcmig still runs there")
            return
        time.sleep(0.5)
        info = svc.slurm.node(node)
    report.say(f"{node} DRAINED, empty of hpcmig containers")
    svc.decide(f"{node}: DRAINED", node=node)

def resume(svc: Service, node: str) -> Report:
    info = svc.slurm.resume(node)
    report = Report("resume", f"node {node}", ("node", "state", "reason"))
    state = info.state + ("+" + "+".join(sorted(info.flags)) if info.flags else "")
    report.add(node=info.name, state=state, reason=info.reason or None)
    if info.drained:
        report.fail(f"{node} stays drained: its reason {info.reason!r} was set by "
                    f"{info.reason_user or 'somebody else'}, not hpcmig (scontrol update "
                    f"NodeName={node} State=RESUME)")
    else:
        svc.decide(f"{node}: resumed", node=node)
    return report


def plan_rows(report: Report, plan: JobPlan, node: str, dry_run: bool) -> None:
    vc = plan.vc
    if plan.whole:
        for m in vc.on_node(node) or vc.members:
            report.add(job=vc.job_id, container=m.index, **{"from": m.node}, to=None,
                       result="would requeue the job",
                       detail=f"{plan.whole}: checkpoint the whole job, requeue it without "
                              f"{node}, restore it on its new nodes")
    for mv in plan.moves:
        report.add(job=vc.job_id, container=mv.index, **{"from": mv.source}, to=mv.target,
                   result="would move", pause=None, detail="")
    if not plan.whole and not plan.moves:
        report.add(job=vc.job_id, container=None, **{"from": node}, to=None,
                   result="would release", pause=None, detail="a spare node of the job")


def say_others(report: Report, node: str, others: list[int]) -> None:
    if others:
        report.say(f"job(s) {', '.join(map(str, others))} on {node} did not opt in to hpcmig: "
                   "Slurm drains the node when they end")
