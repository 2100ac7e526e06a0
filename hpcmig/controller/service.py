"""The controller service: one method per verb, each answering a `Report`.

Design note: the one home of decisions and job membership. hpcmigd serves these methods over
MUNGE RPC (hpcmig.controller.daemon); the `hpcmig` verbs are its thin clients; `hpcmig
recover` may also run it in-process when hpcmigd is down. Dry runs call the same planning
code as real runs (`plan_moves`, `plan_drain`) and stop before the first effect.

Membership: which container of a job is on which node is the service's record (the journal's
`members` table, per job and Slurm incarnation), read from the job's agents the first time
(their prologs planned it) and changed only here, after a move succeeded; every change is
pushed to every agent of the job (`job.members`), the target of a move included, so a drain
of any node finds every container on it, wherever it came from.

Locks: one journal (SQLite) and one flock per job (`job_lock`, released by the kernel when
the holder dies); an operation on a job holds it, and `recover` leaves a job whose lock a
live process holds. Whole-job checkpoints, restores and the drain's fallback live in
`wholejob`; recovery after a crash in `recovery` (machines) and `recover_ops` here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcmig import config as site_config
from hpcmig.agent.rpc import AgentClient
from hpcmig.checkpoint import images
from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.controller import drain as node_drain
from hpcmig.controller import wholejob
from hpcmig.controller._machine import Outcome
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.evacuate import JobPlan, Move, plan_moves
from hpcmig.controller.journal import Journal
from hpcmig.controller.metrics import Metrics
from hpcmig.controller.migration import KIND as MIGRATE
from hpcmig.controller.migration import MigrationSpec, check_mode, check_transport, migrate
from hpcmig.controller.ops import MigrationOps
from hpcmig.controller.recovery import Recovered, recover
from hpcmig.controller.report import Report
from hpcmig.errors import HpcmigError, UsageError
from hpcmig.slurm import JobInfo, Slurm
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.health.rules import Health

log = logging.getLogger("hpcmig.controller")
Progress = Callable[[str], None]
def job_number(job_id: str | int) -> int:
    text = str(job_id).strip()
    if not text.isdigit():
        raise UsageError(f"bad job id {str(job_id)!r}: a job id is a number (see squeue)")
    return int(text)


class Service:
    def __init__(self, cfg: site_config.Config | None = None, slurm: Slurm | None = None,
                 progress: Progress | None = None, metrics: Metrics | None = None) -> None:
        self.cfg = cfg or site_config.load()
        self.slurm = slurm or Slurm()
        self.progress: Progress = progress or log.info
        self.metrics = metrics or Metrics()
        self.munge = self.cfg.munge_socket or None
        self._addrs: dict[str, str] | None = None
        self.decisions: deque[dict[str, Any]] = deque(maxlen=20)
        self.heartbeats: dict[str, float] = {}  # node -> when its agent last answered
        self.networks: dict[str, str] = {}  # node -> how its containers' packets go (ping)
        self._lock = threading.Lock()

    # -- the world ------------------------------------------------------------------------
    @property
    def journal_path(self) -> str:
        return str(Path(self.cfg.state_dir) / "controller.db")

    def journal(self) -> Journal:
        return Journal(self.journal_path)

    def node_addrs(self, refresh: bool = False) -> dict[str, str]:
        if self._addrs is None or refresh:
            self._addrs = {n.name: n.address or n.name for n in self.slurm.nodes()}
        return self._addrs

    def decide(self, what: str, **detail: Any) -> None:
        """Remember a decision (status shows the last ones) and say it."""
        self.decisions.appendleft({"time": time.time(), "what": what, **detail})
        self.progress(what)

    @contextlib.contextmanager
    def job_lock(self, job_id: str, wait: bool = True) -> Iterator[bool]:
        """Hold the job's controller lock (yields True); with wait=False yield False at once
        when another process holds it."""
        locks = Path(self.cfg.state_dir) / "controller.locks"
        locks.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(locks / f"{job_id}.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                self.progress(f"job {job_id}: waiting for another operation on it")
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield True

    def agent(self, node: str) -> AgentClient:
        addrs = self.node_addrs()
        if node not in addrs:
            addrs = self.node_addrs(refresh=True)
        return AgentClient(node, addrs[node], self.cfg.agent_port, self.munge)

    def ops_for(self, vc: VCluster) -> MigrationOps:
        """The effects on the job's nodes: its agents (unit tests put a fake here)."""
        return AgentOps(vc, self.node_addrs(), self.cfg.agent_port, self.munge)

    def job(self, job_id: str | int) -> JobInfo:
        return self.slurm.job(job_number(job_id))

    def unusable(self) -> frozenset[str]:
        return frozenset(n.name for n in self.slurm.nodes()
                         if n.flags & {"DRAIN", "NOT_RESPONDING"} or n.state in ("down",))

    # -- membership -----------------------------------------------------------------------
    def vcluster(self, job_id: str, job: JobInfo | None = None) -> VCluster:
        """The running job's virtual cluster as the controller knows it."""
        job = job or self.job(job_id)
        if job.state != "RUNNING":
            raise UsageError(f"job {job.job_id} is {job.state}, not running")
        with self.journal() as journal:
            stored = journal.members(str(job.job_id))
            if stored is not None and stored[0] == job.restart_count:
                return VCluster.from_json(stored[1])
            vc = self._from_agents(job)
            journal.set_members(vc.job_id, job.restart_count, vc.to_json())
        return vc

    def _from_agents(self, job: JobInfo) -> VCluster:
        """The plan the job's prologs made (first sight of this incarnation)."""
        errors = []
        for node in dict.fromkeys([job.batch_host, *job.nodes]):
            if not node:
                continue
            try:
                info = self.agent(node).call("job.info", job_id=str(job.job_id))
            except HpcmigError as exc:
                errors.append(str(exc))
                continue
            return VCluster.from_json(info["vc"])
        raise UsageError(f"job {job.job_id} does not run in an hpcmig virtual cluster",
                         hint="submit it with #SBATCH --hpcmig (or --comment=hpcmig) "
                         + (f"({errors[0]})" if errors else ""))

    def publish(self, vc: VCluster, incarnation: int) -> None:
        """Record the job's membership and push it to every agent of the job."""
        with self.journal() as journal:
            journal.set_members(vc.job_id, incarnation, vc.to_json())
        for node in vc.node_addrs:
            try:
                self.agent(node).call("job.members", vcluster=vc.to_json())
            except HpcmigError as exc:  # the record stays the controller's; say it
                self.progress(f"job {vc.job_id}: could not tell {node} the new membership: "
                              f"{exc}")

    def _moved(self, job_id: str, index: int, source: str, target: str) -> None:
        """Container `index` now runs on `target` (a finished move): record and push it."""
        with self.journal() as journal:
            stored = journal.members(job_id)
        if stored is None:
            return
        vc = VCluster.from_json(stored[1])
        if vc.member(index).node != source:
            return  # already recorded
        self.publish(vc.moved(index, target, self.node_addrs()[target]), stored[0])

    # -- one container --------------------------------------------------------------------
    def migrate_one(self, vc: VCluster, move: Move, transport: str = "shared",
                    mode: str | None = None) -> Outcome:
        """One live move, in `mode` (default: the site's `migration_mode`). A post-copy move
        that rolled back (the source runs on, untouched) is tried once more stop-and-copy:
        post-copy needs userfaultfd on the target and the source's page server."""
        if move.target is None:
            raise UsageError(f"container {move.index} of job {vc.job_id}: {move.reason}")
        if vc.engine == "dmtcp":
            raise UsageError(f"job {vc.job_id} runs under DMTCP (engine=dmtcp), whose "
                             "containers CRIU does not move live",
                             hint=f"hpcmig drain {move.source} moves it by a DMTCP checkpoint "
                                  f"and a restart; hpcmig checkpoint {vc.job_id} stops it")
        mode = check_mode(mode or self.cfg.migration_mode)
        outcome = self._move_once(vc, move, transport, mode == "postcopy")
        if mode == "postcopy" and outcome.state == "rolled_back" and \
                self._failed_step(outcome.op_id) in ("dump", "restore"):
            self.decide(f"job {vc.job_id}: post-copy move of container {move.index} rolled "
                        f"back ({outcome.error}); trying stop-and-copy", job=vc.job_id)
            outcome = self._move_once(vc, move, transport, False)
        return outcome

    def _failed_step(self, op_id: int) -> str | None:
        """The forward step an operation failed at (where post-copy differs: dump, restore)."""
        with self.journal() as journal:
            failed = [s.name for s in journal.steps(op_id, "forward") if s.status == "failed"]
        return failed[-1] if failed else None

    def _move_once(self, vc: VCluster, move: Move, transport: str, postcopy: bool) -> Outcome:
        assert move.target is not None
        member = vc.member(move.index)
        ref = ContainerRef(vc.job_id, vc.restart, move.index, member.address, vc.uid)
        tag = f"move-{int(time.time() * 1000)}"
        root = (self.cfg.checkpoint_dir if transport == "shared"
                else os.path.join(self.cfg.run_dir, "spool"))
        src = dst = images.image_dir(root, vc.job_id, vc.restart, move.index, tag)
        peers = tuple(n for n in vc.nodes() if n not in (move.source, move.target))
        spec = MigrationSpec(ref, move.source, move.target, peers, src, dst, transport,
                             postcopy)
        ops = self.ops_for(vc)
        with self.job_lock(vc.job_id), self.journal() as journal:
            for old in recover(journal, ops, job_id=vc.job_id):  # what a crash left open
                self._after_recovery(journal, old, move)
            self.decide(f"job {vc.job_id}: moving container {move.index} ({member.address}) "
                        f"{move.source} -> {move.target} ({transport}, "
                        f"{'postcopy' if postcopy else 'stop-and-copy'})", job=vc.job_id)
            outcome = migrate(journal, ops, spec)
            if outcome.state == "done":
                self._moved(vc.job_id, move.index, move.source, move.target)
        self.metrics.migration(outcome.state, outcome.pause)
        pause = f", pause {outcome.pause:.2f} s" if outcome.pause is not None else ""
        self.decide(f"job {vc.job_id}: container {move.index} {outcome.state}{pause}"
                    + (f": {outcome.error}" if outcome.error else ""), job=vc.job_id)
        return outcome

    def _after_recovery(self, journal: Journal, outcome: Outcome, move: Move) -> None:
        """A new move starts only once the job's earlier operations ended, and only from
        where its container is now."""
        self.progress(f"job {move.job_id}: recovered operation {outcome.op_id} "
                      f"({outcome.kind}): {outcome.state}"
                      + (f": {outcome.error}" if outcome.error else ""))
        if outcome.state not in ("done", "rolled_back", "refused"):
            raise HpcmigError(f"job {move.job_id}: operation {outcome.op_id} ({outcome.kind}) "
                              f"is still {outcome.state}: {outcome.error}",
                              hint=f"fix what it names, then: hpcmig recover {move.job_id}")
        if outcome.kind != MIGRATE or outcome.state != "done":
            return
        moved = MigrationSpec.from_json(journal.get(outcome.op_id).spec)
        self._moved(move.job_id, moved.ref.index, moved.source, moved.target)
        if moved.ref.index == move.index:
            raise HpcmigError(f"job {move.job_id}: recovery finished an interrupted move of "
                              f"container {move.index} to {moved.target}",
                              hint="run the command again from where it runs now")

    def migrate(self, job_id: str, source: str, target: str | None = None,
                transport: str = "shared", dry_run: bool = False,
                mode: str | None = None) -> Report:
        check_transport(transport)
        if mode is not None:
            check_mode(mode)
        job = self.job(job_id)
        vc = self.vcluster(str(job.job_id), job)
        if not vc.on_node(source):
            raise UsageError(f"job {vc.job_id} has no container on {source}",
                             hint="its containers: " + ", ".join(
                                 f"{m.index}@{m.node}" for m in vc.members))
        moves = plan_moves([vc], source, target, self.unusable() - {target or ""})
        for mv in moves:
            if mv.target is None:
                raise UsageError(f"container {mv.index} of job {vc.job_id}: {mv.reason}")
        report = Report("migrate", f"job {vc.job_id}: containers on {source}",
                        node_drain.MOVE_COLUMNS)
        for mv in moves:
            if dry_run:
                report.add(job=vc.job_id, container=mv.index, **{"from": source},
                           to=mv.target, result="would move", pause=None, detail="")
                continue
            node_drain.move_row(report, mv, self.migrate_one(vc, mv, transport, mode))
            vc = self.vcluster(vc.job_id)
        return report

    # -- a whole node (controller/drain.py) -------------------------------------------------
    def plan_drain(self, node: str) -> tuple[list[JobPlan], list[int]]:
        return node_drain.plan(self, node)

    def drain(self, node: str, reason: str = "evacuating", transport: str = "shared",
              dry_run: bool = False, timeout: float = 120.0, mode: str | None = None
              ) -> Report:
        return node_drain.drain(self, node, reason, transport, dry_run, timeout, mode)

    def run_drain(self, op_id: int, plans: list[JobPlan] | None = None) -> Report:
        return node_drain.run(self, op_id, plans)

    def release_node(self, vc: VCluster, node: str) -> None:
        node_drain.release_node(self, vc, node)

    def resume(self, node: str) -> Report:
        return node_drain.resume(self, node)

    # -- whole jobs, recovery, status (their own modules) ---------------------------------
    def checkpoint(self, job_id: str, resume: bool = False) -> Report:
        return wholejob.checkpoint(self, job_id, resume)

    def restore(self, job_id: str, exclude: str = "") -> Report:
        return wholejob.restore(self, job_id, exclude)

    def restore_allocation(self, job_id: str) -> dict[str, Any]:
        return wholejob.restore_allocation(self, job_id)

    def recover_ops(self, job_id: str | None = None, dry_run: bool = False
                    ) -> list[Recovered]:
        from hpcmig.controller import aftercrash

        return aftercrash.recover_ops(self, job_id, dry_run)

    def recover(self, job_id: str | None = None, dry_run: bool = False) -> Report:
        from hpcmig.controller import aftercrash

        return aftercrash.report(self, job_id, dry_run)

    def status(self, uid: int | None = None, health: Health | None = None) -> Report:
        from hpcmig.controller import status

        return status.report(self, uid, health)


