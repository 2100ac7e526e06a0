"""Whole jobs: checkpoint, requeue, restore under Slurm; the drain's fallback.

Design note: `checkpoint` runs the journaled whole-job machine (jobckpt) over the agents with
`then=stop`, writes the job's restart record (hpcmig.checkpoint.record) next to its images and
requeues the job held (`scontrol requeuehold`: it keeps its id, its address block and its
shared directory; Slurm counts the restart). `restore` optionally excludes nodes and releases
it. When the job runs again, every node's prolog sees the record and builds its part of the
virtual cluster with the checkpointed incarnation's names and addresses but no container
(`restoring`); the first `hpcmig run` of the batch script asks hpcmigd
(`restore_allocation`) to restore the whole job on the new allocation, then steps that ended
before the checkpoint return their recorded exit code and the step that was running is
reattached (hpcmig/cli/run.py). A drain whose job cannot move live (no free spare, or the
node runs its batch step) does all of it at once (`requeue_without`): checkpoint, requeue
held, exclude the node, release; the drain's journal entry lists the jobs it requeued, so a
drain restarted after a crash finishes the release exactly once. The record is root's
(images hold process memory); the epilog removes it with the images when the job ends.
An engine=dmtcp job is never dumped by CRIU: its checkpoint is a DMTCP generation the job's
coordinator takes when hpcmigd asks (appckpt.take), and its requeued run restarts from it in
`hpcmig run` (cli/run_dmtcp.py); checkpoint, restore and the drain's requeue otherwise run as
for any job. Functions take the service (`svc`) for Slurm, the journal, the agents and the
job lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hpcmig.checkpoint import images
from hpcmig.checkpoint.record import RestartRecord, pending, save
from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.controller import appckpt
from hpcmig.controller.jobckpt import JobSpec, Placement, checkpoint_job, restore_job
from hpcmig.controller.journal import Journal
from hpcmig.controller.ops import MigrationOps
from hpcmig.controller.report import Report
from hpcmig.errors import HpcmigError, SlurmError, UsageError
from hpcmig.hostlist import expand
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.controller.evacuate import JobPlan
    from hpcmig.controller.service import Service

TAG = "job"  # image tag of whole-job checkpoints (migrations use move-<ms>)


def _ref(vc: VCluster, index: int) -> ContainerRef:
    return ContainerRef(vc.job_id, vc.restart, index, vc.member(index).address, vc.uid)


def checkpoint_spec(vc: VCluster, checkpoint_dir: str, then: str = "stop",
                    tag: str = TAG) -> JobSpec:
    """Every container of the job where it runs, images under the job's checkpoint tree."""
    return JobSpec(vc.job_id, tuple(
        Placement(m.node, _ref(vc, m.index),
                  images.image_dir(checkpoint_dir, vc.job_id, vc.restart, m.index, tag))
        for m in sorted(vc.members, key=lambda m: m.index)), tuple(vc.nodes()), then)


def restore_spec(vc: VCluster, rec: RestartRecord) -> JobSpec:
    """Container i on the node the new allocation's plan gives it, from its images."""
    missing = sorted(set(rec.containers) ^ {m.index for m in vc.members})
    if missing:
        raise HpcmigError(f"job {vc.job_id}: the checkpoint's containers and the new plan "
                          f"differ (containers {missing}); was the job resized?")
    return JobSpec(vc.job_id, tuple(
        Placement(m.node, _ref(vc, m.index), rec.containers[m.index]["image_dir"],
                  rec.containers[m.index].get("manifest_sha256"))
        for m in sorted(vc.members, key=lambda m: m.index)), tuple(vc.nodes()))


def checkpoint_vc(journal: Journal, ops: MigrationOps, vc: VCluster, checkpoint_dir: str,
                  then: str = "stop", tag: str = TAG) -> RestartRecord:
    """Checkpoint the whole job; with `stop`, leave the restart record for its next run."""
    spec = checkpoint_spec(vc, checkpoint_dir, then, tag)
    outcome = checkpoint_job(journal, ops, spec)
    if outcome.state != "done":
        raise HpcmigError(f"job {vc.job_id}: checkpoint {outcome.state}: {outcome.error}")
    dumps = outcome.data.get("dumps", {})
    rec = RestartRecord(vc.job_id, vc.restart, vc.uid, {
        p.ref.index: {"image_dir": p.image_dir,
                      "manifest_sha256": dumps.get(str(p.ref.index), {}).get("manifest_sha256")}
        for p in spec.containers}, restored=then != "stop")
    if then == "stop":
        save(checkpoint_dir, rec)
    return rec


def restore_on_allocation(journal: Journal, ops: MigrationOps, vc: VCluster,
                          checkpoint_dir: str) -> bool:
    """Restore the job's pending checkpoint on the nodes of `vc`; False if none is pending."""
    rec = pending(checkpoint_dir, vc.job_id)
    if rec is None:
        return False
    outcome = restore_job(journal, ops, restore_spec(vc, rec))
    if outcome.state != "done":
        raise HpcmigError(f"job {vc.job_id}: restore {outcome.state}: {outcome.error}")
    rec.restored = True
    save(checkpoint_dir, rec)
    return True


# -- under Slurm, for the service ----------------------------------------------------------
def _stop_and_requeue(svc: Service, vc: VCluster) -> RestartRecord:
    """Checkpoint the running job, stop it and requeue it held (idempotent: a checkpoint
    of this very run still waiting to be restored is not taken again)."""
    with svc.job_lock(vc.job_id), svc.journal() as journal:
        rec = pending(svc.cfg.checkpoint_dir, vc.job_id)
        if rec is None or rec.restart != vc.restart:
            rec = checkpoint_vc(journal, svc.ops_for(vc), vc, svc.cfg.checkpoint_dir, "stop")
            svc.metrics.checkpoints.labels(result="done").inc()
        svc.slurm.requeue(int(vc.job_id), hold=True)
    svc.decide(f"job {vc.job_id}: checkpointed and requeued held", job=vc.job_id)
    return rec


def _dmtcp_generation(svc: Service, vc: VCluster) -> tuple[appckpt.AppDir, appckpt.Newest]:
    """A new DMTCP generation of the running job, taken by its coordinator (the caller holds
    the job lock)."""
    app = appckpt.load(svc.cfg.state_dir, vc.job_id)
    if app is None or app.engine != "dmtcp":
        raise HpcmigError(f"job {vc.job_id} runs under DMTCP but no `hpcmig run` of it has "
                          "registered its checkpoint directory with hpcmigd (yet)",
                          hint="it does when its first step starts; try again then")

    def running() -> str | None:
        state = svc.job(vc.job_id).state
        return None if state == "RUNNING" else f"the job is {state}"

    svc.progress(f"job {vc.job_id}: asking its DMTCP coordinator for a checkpoint")
    try:
        gen = appckpt.take(app, running, svc.cfg.dmtcp_checkpoint_timeout + 60)
    except HpcmigError:
        svc.metrics.checkpoints.labels(result="failed").inc()
        raise
    svc.metrics.checkpoints.labels(result="done").inc()
    return app, gen


def _dmtcp_stop_and_requeue(svc: Service, vc: VCluster) -> tuple[appckpt.AppDir,
                                                                  appckpt.Newest]:
    """A DMTCP generation, then the job requeued held: its next run restarts from it."""
    with svc.job_lock(vc.job_id):
        app, gen = _dmtcp_generation(svc, vc)
        svc.slurm.requeue(int(vc.job_id), hold=True)
    svc.decide(f"job {vc.job_id}: DMTCP checkpoint generation {gen.generation}; requeued "
               "held", job=vc.job_id)
    return app, gen


def _dmtcp_checkpoint(svc: Service, vc: VCluster, resume: bool) -> Report:
    if resume:
        with svc.job_lock(vc.job_id):
            app, gen = _dmtcp_generation(svc, vc)
    else:
        app, gen = _dmtcp_stop_and_requeue(svc, vc)
    report = Report("checkpoint", f"job {vc.job_id}", ("job", "engine", "generation",
                                                       "images"))
    report.add(job=vc.job_id, engine="dmtcp", generation=gen.generation,
               images=app.directory)
    report.data = {"job_id": vc.job_id, "stopped": not resume, "images": app.directory,
                   "engine": "dmtcp", "generation": gen.generation}
    report.say(f"job {vc.job_id}: DMTCP checkpoint generation {gen.generation} ("
               f"{len(vc.members)} containers, {app.directory}); "
               + ("it keeps running" if resume else
                  f"stopped and requeued held: hpcmig restore {vc.job_id} [--exclude NODES]"))
    return report


def checkpoint(svc: Service, job_id: str, resume: bool = False) -> Report:
    job = svc.job(job_id)
    vc = svc.vcluster(str(job.job_id), job)
    if vc.engine == "dmtcp":
        return _dmtcp_checkpoint(svc, vc, resume)
    report = Report("checkpoint", f"job {vc.job_id}", ("job", "container", "node", "images"))
    try:
        if resume:
            with svc.job_lock(vc.job_id), svc.journal() as journal:
                rec = checkpoint_vc(journal, svc.ops_for(vc), vc, svc.cfg.checkpoint_dir,
                                    "resume")
            svc.metrics.checkpoints.labels(result="done").inc()
        else:
            rec = _stop_and_requeue(svc, vc)
    except HpcmigError:
        svc.metrics.checkpoints.labels(result="failed").inc()
        raise
    for index, c in sorted(rec.containers.items()):
        report.add(job=vc.job_id, container=index, node=vc.member(index).node,
                   images=c["image_dir"])
    where = os.path.dirname(os.path.dirname(rec.containers[min(rec.containers)]["image_dir"]))
    report.data = {"job_id": vc.job_id, "stopped": not resume, "images": where}
    report.say(f"job {vc.job_id}: checkpointed ({len(rec.containers)} containers, {where}); "
               + ("it keeps running" if resume else
                  f"stopped and requeued held: hpcmig restore {vc.job_id} [--exclude NODES]"))
    return report


# slurmd 22.05 skips the prolog of a job that runs again on a node where it ran before when
# the new allocation reaches that node less than 2 whole seconds after the node last swept its
# credential cache (the end of the old run's epilog): the reissued credential's purge waits for
# the next sweep, so the job looks known and its prolog "already ran" (slurm_cred.c,
# _clear_expired_job_states; later Slurm purges at once). A requeued job is released only
# SLURMD_SETTLE s after its epilogs were seen done.
SLURMD_SETTLE = 3.0


def _pending_job(svc: Service, job_id: str, timeout: float = 120.0) -> Any:
    """The requeued job once no node runs its epilog any more (PENDING, or whatever it went
    on to)."""
    job = svc.job(job_id)
    deadline = time.monotonic() + timeout
    while job.state in ("COMPLETING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
        if time.monotonic() > deadline:
            raise HpcmigError(f"job {job_id} is still {job.state} {timeout:g} s after its "
                              "requeue", hint="check its epilogs: scontrol show job " + job_id)
        time.sleep(0.5)
        job = svc.job(job_id)
    return job


def finish_requeue(svc: Service, job_id: str, exclude: Iterable[str]) -> list[str]:
    """Once the requeued job is pending (and settled, SLURMD_SETTLE): keep it off `exclude`
    and release it. Returns the nodes it now excludes. Harmless when done already (the job
    runs again)."""
    job = _pending_job(svc, job_id)
    if job.state == "PENDING":
        time.sleep(SLURMD_SETTLE)
        job = svc.job(job_id)
    if job.state != "PENDING":
        return list(job.excluded)
    excluded = sorted(set(job.excluded) | set(exclude))
    if excluded and set(excluded) != set(job.excluded):
        svc.slurm.set_excluded(job.job_id, excluded)
    try:
        svc.slurm.release(job.job_id)
    except SlurmError as exc:
        if "not held" not in str(exc).lower():
            raise
    svc.decide(f"job {job_id}: released" + (f", not on {','.join(excluded)}" if excluded
                                              else ""), job=job_id)
    return excluded


def requeue_without(svc: Service, op_id: int, plan: JobPlan, node: str
                    ) -> list[dict[str, Any]]:
    """The drain's fallback for one job: checkpoint it whole, requeue it held, keep it off
    `node`, release it; it is restored on its new allocation. Rows per container."""
    vc = plan.vc
    rows: list[dict[str, Any]] = []
    try:
        if vc.engine == "dmtcp":
            _, gen = _dmtcp_stop_and_requeue(svc, vc)
            how = f"DMTCP checkpoint generation {gen.generation}"
        else:
            _stop_and_requeue(svc, vc)
            how = "checkpointed whole"
        with svc.journal() as journal:
            done = journal.get(op_id).data.get("requeued", [])
            journal.update_data(op_id, requeued=sorted({*done, vc.job_id}))
        finish_requeue(svc, vc.job_id, {node})
        result, detail = "requeued", (f"{plan.whole}: {how}, requeued without {node}; it "
                                      "restores on its new nodes")
        svc.metrics.evacuations.labels(how="requeue", result="done").inc()
    except HpcmigError as exc:
        result, detail = "failed", f"{plan.whole}; whole-job checkpoint failed: {exc}"
        svc.metrics.evacuations.labels(how="requeue", result="failed").inc()
    for m in vc.members:
        rows.append({"job": vc.job_id, "container": m.index, "from": m.node, "to": None,
                     "result": result, "pause": None, "detail": detail})
    return rows


def _dmtcp_generation_held(svc: Service, jid: str) -> bool:
    """An engine=dmtcp job with a complete generation (it restarts from it when released)."""
    app = appckpt.load(svc.cfg.state_dir, jid)
    return app is not None and app.engine == "dmtcp" and appckpt.newest(app) is not None


def restore(svc: Service, job_id: str, exclude: str = "") -> Report:
    job = svc.job(job_id)
    jid = str(job.job_id)
    if pending(svc.cfg.checkpoint_dir, jid) is None and not _dmtcp_generation_held(svc, jid):
        raise UsageError(f"job {jid} has no checkpoint waiting to be restored",
                         hint=f"make one with: hpcmig checkpoint {jid}")
    if _pending_job(svc, jid).state != "PENDING":
        raise UsageError(f"job {jid} is {svc.job(jid).state}; only a requeued (pending) job "
                         "can be restored")
    excluded = finish_requeue(svc, jid, expand(exclude) if exclude else [])
    report = Report("restore", f"job {jid}", ("job", "excluded"))
    report.add(job=jid, excluded=excluded or None)
    report.say(f"job {jid}: released" + (f", not on {','.join(excluded)}" if excluded
                                         else "") + "; it restores when Slurm starts it")
    return report


def restore_allocation(svc: Service, job_id: str) -> dict[str, Any]:
    """Restore the job's pending checkpoint on the allocation it runs on now (its first
    `hpcmig run` asks)."""
    job = svc.job(job_id)
    jid = str(job.job_id)
    rec = pending(svc.cfg.checkpoint_dir, jid)
    if rec is None:
        return {"restored": False, "from_restart": None}
    vc = svc.vcluster(jid, job)
    with svc.job_lock(jid), svc.journal() as journal:
        t0 = time.monotonic()
        done = restore_on_allocation(journal, svc.ops_for(vc), vc, svc.cfg.checkpoint_dir)
        seconds = round(time.monotonic() - t0, 3)
    if done:
        svc.decide(f"job {jid}: restored from the checkpoint of run {rec.restart} on "
                   f"{','.join(vc.nodes())} in {seconds:.2f} s", job=jid)
    return {"restored": done, "from_restart": rec.restart, "seconds": seconds}
