"""`hpcmig remap JOBID`: move a running job's containers to fit its measured traffic.

Design note: the controller's side of remapping. It measures the job's container traffic
(`traffic.measure`), places the job's nodes on the cluster's topology (Slurm's topology.conf
beside slurm.conf, or the file given), asks the pure planner (`hpcmig.topology.remap`) for
moves to the job's free nodes (its spares, or nodes earlier moves emptied) and their payback,
and carries the moves out one by one with the ordinary live migration (`Service.migrate_one`,
journaled and rolled back on failure) only when they pay, or when forced. The measurement
window is the time since hpcmigd first saw the job run (its traffic note); the remaining
time is Slurm's time left (a job without a limit counts as running `UNLIMITED_AS` more).
`AutoRemap` is hpcmigd's rule (off unless `remap_every` > 0): every `remap_every` seconds it
remaps each running hpcmig job, which moves containers only when the plan pays.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hpcmig.agent.traffic import saved_dir
from hpcmig.controller import traffic
from hpcmig.controller.drain import MOVE_COLUMNS, move_row
from hpcmig.controller.evacuate import Move
from hpcmig.controller.report import Report
from hpcmig.errors import HpcmigError, UsageError

if TYPE_CHECKING:
    from hpcmig.controller.service import Service

UNLIMITED_AS = 24 * 3600.0
log = logging.getLogger("hpcmigd")


def remap(svc: Service, job_id: str, topology: str = "", dry_run: bool = False,
          force: bool = False) -> Report:
    from hpcmig import rankmap
    from hpcmig.topology import remap as planner
    from hpcmig.topology.slurmconf import read_topology_conf

    job = svc.job(job_id)
    vc = svc.vcluster(str(job.job_id), job)
    conf = Path(topology) if topology else rankmap.topology_conf()
    if not conf.is_file():
        raise UsageError(f"no topology to remap on: {conf} does not exist",
                         hint="on one switch every placement costs the same; give "
                              "--topology FILE (Slurm's topology.conf format)")
    measured = traffic.measure(svc, vc.job_id, job, vc)
    members = sorted(vc.members, key=lambda m: m.index)
    placement = [m.node for m in members]
    unusable = svc.unusable()
    free = [n for n in vc.nodes() if n not in placement and n not in unusable]
    note = saved_dir(svc.cfg.state_dir, vc.job_id) / traffic.META
    window = max(1.0, time.time() - note.stat().st_mtime) if note.exists() else 1.0
    left = svc.slurm.time_left(job.job_id)
    plan = planner.plan(read_topology_conf(conf), measured["bytes"], placement, free,
                        window=window, remaining=UNLIMITED_AS if left is None else left,
                        pause=svc.cfg.remap_pause,
                        link_bytes_per_second=svc.cfg.link_bandwidth)
    report = Report("remap", f"job {vc.job_id}: remap on {conf}", MOVE_COLUMNS,
                    data={"hop_bytes_before": plan.hop_bytes_before,
                          "hop_bytes_after": plan.hop_bytes_after,
                          "saving_seconds": plan.saving_seconds,
                          "cost_seconds": plan.cost_seconds, "pays": plan.pays,
                          "window_seconds": window, "time_left_seconds": left})
    report.say(plan.describe() + f" (traffic of the last {window:.0f} s, "
                + ("no time limit" if left is None else f"{left:.0f} s left") + ")")
    go = plan.moves and (plan.pays or force) and not dry_run
    for step in plan.moves:
        if not go:
            report.add(job=vc.job_id, container=members[step.container].index,
                       **{"from": step.source}, to=step.target,
                       result="would move" if plan.pays or force else "not worth it",
                       pause=None, detail=f"hop-bytes after: {step.hop_bytes_after:.4g}")
            continue
        move = Move(vc.job_id, members[step.container].index, step.source, step.target)
        outcome = svc.migrate_one(vc, move)
        move_row(report, move, outcome)
        if outcome.state != "done":
            report.say("stopped: the moves after a failed one were not tried")
            break
        vc = svc.vcluster(vc.job_id)
    if go:
        svc.decide(f"job {vc.job_id}: remapped: {plan.describe()}", job=vc.job_id)
    return report


class AutoRemap:
    """hpcmigd's remap rule: each running job every `remap_every` s (0: off, the default)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.last: dict[str, float] = {}  # job -> when it was last looked at (or first seen)

    def round(self, now: float | None = None) -> list[str]:
        """Remap the jobs that are due; the ids of those whose containers moved."""
        every = self.svc.cfg.remap_every
        if every <= 0:
            return []
        now = time.monotonic() if now is None else now
        moved = []
        jobs = [j for j in self.svc.slurm.jobs() if j.state == "RUNNING"]
        running = {str(j.job_id) for j in jobs}
        self.last = {k: t for k, t in self.last.items() if k in running}
        for job in jobs:
            jid = str(job.job_id)
            if now - self.last.setdefault(jid, now) < every:
                continue
            self.last[jid] = now
            try:
                report = remap(self.svc, jid)
            except UsageError:
                continue  # not an hpcmig job, or no topology to remap on
            except HpcmigError as exc:
                log.warning("job %s: remap: %s", jid, exc)
                continue
            if any(r.get("result") == "moved" for r in report.rows):
                moved.append(jid)
        return moved
