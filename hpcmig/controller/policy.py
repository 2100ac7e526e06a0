"""hpcmigd acting on its own: health findings drain nodes, healthy nodes come back, load moves.

Design note: the `Watcher` gets every node's health sample (hpcmigd polls the agents; sites
that let Slurm drive the interval send them through `hpcmig-healthcheck`), runs the rules
(hpcmig.health.rules: pure) and acts through the service, so every action is the same
journaled, crash-safe operation an admin would run:
- a node with findings is drained with reason `hpcmig: <rule>: <detail>` (the service keeps a
  reason somebody else set; jobs that did not opt in are left to Slurm) in a thread of its
  own, one drain per node at a time; a drain that could not empty the node is retried after
  `RETRY` seconds; `dry_run` only says what it would do;
- with `resume_after` > 0, a node that hpcmig drained for a health rule and that stayed
  healthy that long is resumed (never a node somebody else drained);
- with `balance` on, a container on a node that stays overloaded (`balance_seconds`) moves to
  an idle spare of its own job; among several spares the mapper's `best_target` picks the one
  adding the fewest hop-bytes (uniform traffic between the job's containers until traffic is
  measured; the cluster's topology.conf, else one switch); a job moves at most once per
  `balance_seconds` (hysteresis).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hpcmig.errors import HpcmigError
from hpcmig.health.rules import Finding, Health, Policy
from hpcmig.health.sample import Sample
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.controller.service import Service

log = logging.getLogger("hpcmig.controller")
RETRY = 60.0  # seconds before a drain that could not empty its node is tried again
RULES = ("memory-errors", "memory-uncorrected", "temperature", "disk", "nic", "check")
TOPOLOGY_CONF = "/etc/slurm/topology.conf"


class Watcher:
    def __init__(self, svc: Service, policy: Policy) -> None:
        self.svc = svc
        self.policy = policy
        self.health = Health(policy)
        self._lock = threading.Lock()
        self._draining: dict[str, threading.Thread] = {}
        self._failed: dict[str, float] = {}  # node -> when its last drain failed
        self._said: dict[str, str] = {}  # node -> last reason said without acting (once)
        self._balanced: dict[str, float] = {}  # job -> when it was last balanced

    # -- health -----------------------------------------------------------------------------
    def observe(self, sample: Sample) -> list[Finding]:
        if not self.policy.enabled:
            return []
        findings = self.health.observe(sample)
        if findings:
            self.degraded(sample.node, findings, sample.time)
        else:
            self._said.pop(sample.node, None)  # healthy again: a new fault is said again
        return findings

    def degraded(self, node: str, findings: list[Finding], detected: float) -> None:
        first = findings[0]
        reason = f"{first.rule}: {first.detail}"
        if self.policy.dry_run:
            if self._said.get(node) != reason:
                self._said[node] = reason
                self.svc.decide(f"{node}: degraded ({reason}); dry run: would drain it",
                                node=node)
            return
        with self._lock:
            running = self._draining.get(node)
            if running is not None and running.is_alive():
                return
            if time.time() - self._failed.get(node, 0.0) < RETRY:
                return
            if self._done(node):
                if self._said.get(node) != reason:
                    self._said[node] = reason
                    self.svc.decide(f"{node}: degraded ({reason}); drained already and "
                                    "holding no hpcmig job: nothing to do", node=node)
                return
            thread = threading.Thread(target=self._drain, args=(node, reason, detected),
                                      name=f"drain-{node}", daemon=True)
            self._draining[node] = thread
        self.svc.decide(f"{node}: degraded ({reason}): draining it", node=node)
        thread.start()

    def _done(self, node: str) -> bool:
        """The node is drained (whoever did it) and holds no hpcmig job: nothing to do."""
        info = self.svc.slurm.node(node)
        if not info.drained:
            return False
        plans, _ = self.svc.plan_drain(node)
        return not plans

    def _drain(self, node: str, reason: str, detected: float) -> None:
        try:
            report = self.svc.drain(node, reason, timeout=60.0)
        except HpcmigError as exc:
            self._failed[node] = time.time()
            self.svc.decide(f"{node}: evacuation failed: {exc}", node=node)
            return
        moved = [r for r in report.rows if r["result"] in ("moved", "requeued", "released")]
        summary = ", ".join(f"job {r['job']} container {r['container']} {r['result']}"
                            + (f" to {r['to']}" if r["to"] else "")
                            + (f" (pause {r['pause']:.2f} s)" if r.get("pause") else "")
                            for r in moved) or "no hpcmig container on it"
        if not report.ok:
            self._failed[node] = time.time()
        self.svc.decide(f"{node}: evacuated {time.time() - detected:.1f} s after detection: "
                        f"{summary}" + ("" if report.ok else "; " + "; ".join(report.lines)),
                        node=node)

    def wait(self, node: str, timeout: float | None = None) -> None:
        """Until a drain this watcher started for node ended (tests, benchmarks)."""
        thread = self._draining.get(node)
        if thread is not None:
            thread.join(timeout)

    # -- every round ------------------------------------------------------------------------
    def round(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.policy.resume_after > 0 and not self.policy.dry_run:
            self._resume_healthy(now)
        if self.policy.balance and not self.policy.dry_run:
            self._balance(now)

    def _resume_healthy(self, now: float) -> None:
        for info in self.svc.slurm.nodes():
            ours = info.drained and info.reason_is_ours and any(
                info.reason.startswith(f"hpcmig: {rule}:") for rule in RULES)
            hist = self.health.nodes.get(info.name)
            if not ours or hist is None or hist.healthy_for(now) < self.policy.resume_after:
                continue
            self.svc.resume(info.name)
            self.svc.decide(f"{info.name}: healthy for {hist.healthy_for(now):.0f} s: "
                            "resumed", node=info.name)

    def _balance(self, now: float) -> None:
        with self.svc.journal() as journal:
            stored = journal.all_members()
        running = {str(j.job_id): j for j in self.svc.slurm.jobs() if j.state == "RUNNING"}
        unusable = self.svc.unusable()
        for job_id, (incarnation, data) in stored.items():
            job = running.get(job_id)
            if job is None or job.restart_count != incarnation:
                continue
            if now - self._balanced.get(job_id, 0.0) < self.policy.balance_seconds:
                continue
            vc = VCluster.from_json(data)
            if vc.engine == "dmtcp":
                continue  # its containers do not move live (Service.migrate_one)
            for m in vc.members:
                hist = self.health.nodes.get(m.node)
                if hist is None or not hist.overloaded(self.policy, now):
                    continue
                idle = [s for s in vc.spares if s not in unusable
                        and (h := self.health.nodes.get(s)) is not None and h.idle(self.policy)]
                if not idle:
                    continue
                target = self.best(vc, m.index, idle)
                self._balanced[job_id] = now
                self.svc.decide(f"job {job_id}: {m.node} overloaded for "
                                f"{self.policy.balance_seconds:g} s, {target} idle: moving "
                                f"container {m.index}", job=job_id)
                threading.Thread(target=self._move, args=(job_id, m.node, target),
                                 name=f"balance-{job_id}", daemon=True).start()
                break

    def _move(self, job_id: str, source: str, target: str) -> None:
        try:
            self.svc.migrate(job_id, source, target)
        except HpcmigError as exc:
            self.svc.decide(f"job {job_id}: balancing move failed: {exc}", job=job_id)

    def best(self, vc: VCluster, index: int, candidates: list[str]) -> str:
        """The candidate adding the fewest hop-bytes for container index."""
        if len(candidates) == 1:
            return candidates[0]
        import numpy as np

        from hpcmig.topology import placement

        names = list(dict.fromkeys([*vc.node_addrs, *candidates]))
        topo = _topology(names)
        n = len(vc.members)
        traffic = np.ones((n, n)) - np.eye(n)
        where = [m.node for m in sorted(vc.members, key=lambda m: m.index)]
        return placement.best_target(topo, traffic, where, index, candidates)


def _topology(names: list[str]):  # noqa: ANN202  (a topology model)
    from hpcmig.topology.model import from_tree

    if Path(TOPOLOGY_CONF).exists():
        from hpcmig.topology import slurmconf

        try:
            return slurmconf.read_topology_conf(TOPOLOGY_CONF)
        except HpcmigError as exc:
            log.warning("cannot read %s (%s): one switch assumed", TOPOLOGY_CONF, exc)
    return from_tree("tree", names, [[0]] * len(names), [2.0, 2.0])
