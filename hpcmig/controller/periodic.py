"""Periodic checkpoints of the jobs that ask (`ckpt=SECONDS|auto`), and their restart when a
node dies under them.

Design note: hpcmigd's `periodic` thread calls `Periodic.round` every second. A job with
`ckpt=` (its VCluster, from the prolog's options) is checkpointed whole while it keeps running
(the journaled machine of `jobckpt` with `then=resume`, image tag `gen<n>`), at its interval:
the seconds asked for, or for `auto` Young's interval sqrt(2 C M) from the job's last measured
checkpoint cost C and the job's MTBF M (`node_mtbf_hours` over its node count; the first
`auto` checkpoint after FIRST_AUTO s). A generation counts only once the machine reached
`done` (every container dumped and verified): then it is added to `generations.json` (root's,
0600, replaced atomically) and all but the newest `ckpt_keep` are deleted, so a crash in the
middle of a checkpoint leaves the previous generation current.

A node is *lost* when its agent does not answer and nothing listens on its slurmd port (a
rebooting or dead machine, not a restarted agent). `restart_lost` (asked by `hpcmig run` when
the launcher failed, or by the round when a node's agent heartbeat is older than LOST_AFTER)
turns the newest generation into the job's restart record (hpcmig.checkpoint.record), forgets
the exit codes its steps recorded after that checkpoint, requeues the job held (same id), sets
the lost nodes DOWN (`hpcmig: node lost: ...`, so Slurm ends the job there at once), excludes
them and releases the job: its next allocation restores the generation like any whole-job
checkpoint (wholejob). `generations.json` says `restarting` until the release, so a hpcmigd
killed in between finishes the release exactly once when it starts again. `restart_stuck`
does the same without a lost node, for an engine=dmtcp job whose checkpoint never completed
(asked by its `hpcmig run`: DMTCP keeps such a job suspended and cannot call it off). A job
without `ckpt=` keeps Slurm's own behaviour. Every SWEEP_SECONDS, and in the round that first
sees a job ended, the round also removes the checkpoint directories of jobs that ended or that
Slurm forgot (`sweep`): the epilog removes a job's images when it ends, but a job cancelled
while held after a checkpoint runs none, and a job's own (engine=app|dmtcp) are the sweep's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcmig.checkpoint import images
from hpcmig.checkpoint.record import RestartRecord, pending, save, write_private_json
from hpcmig.controller import appckpt, traffic
from hpcmig.controller._machine import env_faults
from hpcmig.controller.service import job_number
from hpcmig.controller.wholejob import checkpoint_vc, finish_requeue
from hpcmig.errors import HpcmigError, SlurmError, UsageError
from hpcmig.slurm import JobInfo
from hpcmig.slurm.adapter import TERMINAL
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.controller.service import Service

log = logging.getLogger("hpcmig.controller")
GENERATIONS = "generations.json"
FIRST_AUTO = 60.0  # ckpt=auto before any checkpoint cost is known
MIN_INTERVAL = 10.0
LOST_AFTER = 10.0  # seconds without an agent heartbeat before a node is checked for loss
SLURMD_PORT = 6818
NOT_OURS_AGAIN = 5.0
SWEEP_SECONDS = 30.0  # how often the checkpoints of ended jobs are looked for


def interval(ckpt: str, cost: float | None, nodes: int, mtbf_hours: float) -> float:
    """Seconds between two checkpoints: ckpt=SECONDS, or Young's sqrt(2 C M) for auto."""
    if ckpt != "auto":
        return float(ckpt)
    if cost is None:
        return FIRST_AUTO
    return max(MIN_INTERVAL, math.sqrt(2.0 * cost * mtbf_hours * 3600.0 / max(1, nodes)))


# -- the generations file --------------------------------------------------------------------
def _path(checkpoint_dir: str, job_id: str) -> Path:
    return Path(images.job_dir(checkpoint_dir, job_id)) / GENERATIONS


def load(checkpoint_dir: str, job_id: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(_path(checkpoint_dir, job_id).read_text())
        return data
    except FileNotFoundError:
        return {"generations": []}


def _save(checkpoint_dir: str, job_id: str, data: dict[str, Any]) -> None:
    write_private_json(_path(checkpoint_dir, job_id), data)


def take(svc: Service, vc: VCluster) -> dict[str, Any]:
    """One generation of the running job (the caller holds the job lock)."""
    cfg = svc.cfg
    data = load(cfg.checkpoint_dir, vc.job_id)
    gens = data["generations"]
    number = max((g["n"] for g in gens), default=0) + 1
    began, t0 = time.time(), time.monotonic()
    with svc.journal() as journal:
        rec = checkpoint_vc(journal, svc.ops_for(vc), vc, cfg.checkpoint_dir, "resume",
                            tag=f"gen{number}")
    entry = {"n": number, "restart": vc.restart, "time": began,
             "seconds": round(time.monotonic() - t0, 3),
             "containers": {str(i): c for i, c in rec.containers.items()}}
    gens.append(entry)
    data["generations"], old = gens[-cfg.ckpt_keep:], gens[:-cfg.ckpt_keep]
    _save(cfg.checkpoint_dir, vc.job_id, data)  # the generation counts from here on
    for g in old:
        for c in g["containers"].values():
            images.remove(c["image_dir"])
    return entry


def newest(svc: Service, vc: VCluster, data: dict[str, Any]) -> dict[str, Any] | None:
    """The job's newest complete generation ({n, time, ...}; None: none yet): hpcmigd's for
    CRIU (`data`: the generations file), the job's own for engine=app and engine=dmtcp."""
    if vc.engine in appckpt.ENGINES:
        app = appckpt.load(svc.cfg.state_dir, vc.job_id)
        gen = appckpt.newest(app) if app else None
        return {"n": gen.generation, "time": gen.time} if gen else None
    return data["generations"][-1] if data["generations"] else None


# -- a lost node -----------------------------------------------------------------------------
def node_lost(svc: Service, node: str) -> bool:
    """The node's agent does not answer and nothing listens on its slurmd port."""
    try:
        svc.agent(node).call("ping", timeout=3)
        return False
    except HpcmigError:
        pass
    address = svc.node_addrs().get(node, node)
    try:
        socket.create_connection((address, SLURMD_PORT), timeout=3).close()
        return False
    except OSError:
        return True


def _forget_exits(state_dir: str, job_id: str, restart: int, since: float) -> None:
    """Exit codes the checkpointed run's steps recorded after the checkpoint (its launcher
    failing with the lost node) are not the restored steps' ones."""
    for result in Path(state_dir, "jobs", job_id).glob(f"run-{restart}-*/exit.json"):
        with contextlib.suppress(OSError):
            if result.stat().st_mtime >= since:
                result.unlink()


def restart_lost(svc: Service, job_id: str) -> dict[str, Any]:
    """Restart the job from its newest generation if a node of it is lost (once: callers that
    come later find the restart begun or done)."""
    return _restart(svc, job_id, None)


def restart_stuck(svc: Service, job_id: str, why: str) -> dict[str, Any]:
    """Restart an engine=app|dmtcp job from its newest generation because its running copy
    cannot go on (`why`): its `hpcmig run` asks when a DMTCP checkpoint never completed, which
    DMTCP cannot call off, so the job would stay suspended. Once, as restart_lost."""
    return _restart(svc, job_id, why)


def _restart(svc: Service, job_id: str, stuck: str | None) -> dict[str, Any]:
    cfg = svc.cfg
    jid = str(job_number(job_id))
    with svc.job_lock(jid):
        data = load(cfg.checkpoint_dir, jid)
        job = svc.job(jid)
        if data.get("restarting"):
            return _release(svc, jid, data)  # begun by another caller or an earlier hpcmigd
        with svc.journal() as journal:
            stored = journal.members(jid)
        if stored is not None and stored[0] != job.restart_count:
            # (the run that asks was requeued already, by this restart that ended meanwhile)
            return {"restarted": True, "why": "restarted already", "lost": [],
                    "generation": None}
        if stored is None or job.state != "RUNNING":
            return {"restarted": False, "why": f"the job is {job.state.lower()}"}
        vc = VCluster.from_json(stored[1])
        if stuck is not None and vc.engine not in appckpt.ENGINES:
            raise UsageError(f"job {jid} (engine={vc.engine}) does not checkpoint itself: "
                             "only an engine=app or engine=dmtcp job is restarted on request")
        gen = newest(svc, vc, data)
        if gen is None:
            return {"restarted": False, "why": "the job has no periodic checkpoint yet"}
        lost = [] if stuck is not None else [n for n in vc.nodes() if node_lost(svc, n)]
        if stuck is None and not lost:
            return {"restarted": False, "why": "every node of the job answers"}
        if vc.engine == "criu":  # its next allocation restores the generation's images
            rec = pending(cfg.checkpoint_dir, jid)
            if rec is None or rec.restart != gen["restart"]:
                save(cfg.checkpoint_dir, RestartRecord(
                    jid, gen["restart"], vc.uid,
                    {int(i): c for i, c in gen["containers"].items()}))
            _fault("restart-record")
            _forget_exits(cfg.state_dir, jid, gen["restart"], gen["time"])
        data["restarting"] = {"lost": lost, "generation": gen["n"]}
        _save(cfg.checkpoint_dir, jid, data)
        svc.slurm.requeue(int(jid), hold=True)
        svc.decide(f"job {jid}: {stuck or ','.join(lost) + ' lost'}; requeued to restart "
                   f"from checkpoint generation {gen['n']} (taken "
                   f"{time.time() - gen['time']:.0f} s before)", job=jid)
        _fault("restart-requeue")
        return _release(svc, jid, data)


def _fault(step: str) -> None:
    """HPCMIG_FAULT=<step>:kill-after (hpcmig.controller._machine) at a step of the restart."""
    if hook := env_faults():
        hook("after", step)


def _release(svc: Service, jid: str, data: dict[str, Any]) -> dict[str, Any]:
    """The second half of a restart, done again by a hpcmigd that stopped in between: the
    lost nodes DOWN (Slurm ends what is left of the job there), excluded, the job released."""
    lost = data["restarting"]["lost"]
    for node in lost:
        with contextlib.suppress(SlurmError):
            svc.slurm.down(node, "hpcmig: node lost: agent and slurmd unreachable")
    excluded = finish_requeue(svc, jid, lost)
    generation = data.pop("restarting")["generation"]
    _save(svc.cfg.checkpoint_dir, jid, data)
    return {"restarted": True, "lost": lost, "excluded": excluded, "generation": generation}


def ended_jobs(names: list[str], states: dict[str, str]) -> list[str]:
    """The job directories of a checkpoint tree whose job ended or Slurm no longer knows
    (a job cancelled while it was held after a checkpoint never runs an epilog)."""
    return sorted(n for n in names if n.isdigit()
                  and (n not in states or states[n] in TERMINAL))


def sweep(svc: Service, jobs: list[JobInfo]) -> list[str]:
    """Remove the checkpoints of jobs that ended (`jobs`: what Slurm lists now); the job ids
    removed."""
    root = svc.cfg.checkpoint_dir
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        names = []
    states = {str(j.job_id): j.state for j in jobs}
    gone = ended_jobs(names, states)
    for jid in gone:
        images.remove_job(root, jid)
        svc.decide(f"job {jid}: ended ({states.get(jid, 'gone from Slurm').lower()}); "
                   "its checkpoint images removed", job=jid)
    with contextlib.suppress(FileNotFoundError):
        traffic.sweep(svc.cfg.state_dir, ended_jobs(
            os.listdir(Path(svc.cfg.state_dir, "traffic")), states),
            {str(j.job_id): j for j in jobs}, svc.cfg.block_prefix)
    for jid in ended_jobs(appckpt.registered(svc.cfg.state_dir), states):
        if appckpt.remove(svc.cfg.state_dir, jid):
            svc.decide(f"job {jid}: ended; its application checkpoints removed", job=jid)
    return gone


class Periodic:
    """hpcmigd's clock for periodic checkpoints and lost nodes."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.last: dict[str, float] = {}  # job -> monotonic time of its last generation
        self.cost: dict[str, float] = {}  # job -> seconds its last checkpoint took
        # (job, restart) -> when hpcmigd found no vcluster for it: asked again NOT_OURS_AGAIN
        # s later (a job seen before its prologs asked the agents is not yet known to them)
        self.not_ours: dict[tuple[int, int], float] = {}
        self.swept = float("-inf")
        self.ended: set[int] = set()  # the jobs Slurm listed as ended in the last round
        self.started = time.time()  # a node never heard from counts as heard from then
        self.asked: dict[str, float] = {}  # app|dmtcp job -> when it was asked (unix time)

    def round(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        jobs = self.svc.slurm.jobs()
        ended = {j.job_id for j in jobs if j.state in TERMINAL}
        if now - self.swept >= SWEEP_SECONDS or ended - self.ended:
            self.swept = now
            sweep(self.svc, jobs)
        self.ended = ended
        for job in jobs:
            try:
                self._job(job, now)
            except HpcmigError as exc:
                log.warning("job %s: periodic checkpoint: %s", job.job_id, exc)
        known = {j.job_id for j in jobs}
        self.not_ours = {k: t for k, t in self.not_ours.items() if k[0] in known}

    def _job(self, job: JobInfo, now: float) -> None:
        svc, jid = self.svc, str(job.job_id)
        if job.state != "RUNNING":
            if load(svc.cfg.checkpoint_dir, jid).get("restarting"):
                restart_lost(svc, jid)  # a restart hpcmigd began before it stopped: finish it
            return
        key = (job.job_id, job.restart_count)
        if now - self.not_ours.get(key, -math.inf) < NOT_OURS_AGAIN:
            return
        try:
            vc = svc.vcluster(jid, job)
        except UsageError:
            self.not_ours[key] = now
            return
        traffic.remember(svc.cfg.state_dir, job, vc)  # for `hpcmig run --map auto`
        if not vc.ckpt or pending(svc.cfg.checkpoint_dir, jid):
            return  # (a pending record: the job is being restored)
        stale = [n for n in vc.nodes()
                 if time.time() - svc.heartbeats.get(n, self.started) > LOST_AFTER]
        if (stale and newest(svc, vc, load(svc.cfg.checkpoint_dir, jid)) is not None
                and restart_lost(svc, jid)["restarted"]):
            return
        if vc.engine in appckpt.ENGINES:
            self._app(vc, now)
            return
        if not self._due(vc, now):
            return
        with svc.job_lock(jid, wait=False) as got:
            if not got:
                return  # a migration or a drain has it: next round
            try:
                entry = take(svc, vc)
            except HpcmigError:
                self.last[jid] = time.monotonic()  # try again one interval later
                svc.metrics.checkpoints.labels(result="failed").inc()
                raise
        self.last[jid], self.cost[jid] = time.monotonic(), entry["seconds"]
        svc.metrics.checkpoints.labels(result="done").inc()
        log.info("job %s: checkpoint generation %d in %.2f s", jid, entry["n"],
                 entry["seconds"])

    def _app(self, vc: VCluster, now: float) -> None:
        """engine=app|dmtcp: ask the job for a generation at the job's interval, counted from
        when the last one was complete (as for CRIU: DMTCP suspends the job for the whole
        checkpoint, 7-8 s for a 3-container Open MPI job, which an interval counted from the
        ask took from every 10 s); the cost of one (for `auto`) is how long after the ask the
        job's generation was complete. An ask never answered is repeated an interval later."""
        jid = vc.job_id
        app = appckpt.load(self.svc.cfg.state_dir, jid)
        if app is None:
            return  # its `hpcmig run` has not registered the directory yet
        gen = appckpt.newest(app)
        asked = self.asked.get(jid)
        if asked is not None and gen is not None and gen.time > asked:
            self.cost[jid] = max(0.0, gen.time - asked)
            self.asked.pop(jid)
            self.last[jid] = now - max(0.0, time.time() - gen.time)
        if not self._due(vc, now):
            return
        self.last[jid] = now
        if appckpt.request(app):
            self.asked[jid] = time.time()
            log.info("job %s: asked the program for a checkpoint", jid)

    def _due(self, vc: VCluster, now: float) -> bool:
        """The job's interval has passed since its last checkpoint (or since it was first
        seen)."""
        self.last.setdefault(vc.job_id, now)
        return now - self.last[vc.job_id] >= interval(
            vc.ckpt, self.cost.get(vc.job_id), len(vc.nodes()), self.svc.cfg.node_mtbf_hours)
