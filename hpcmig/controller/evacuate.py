"""Moving containers off nodes: pick targets, run the journaled migrations, tell Slurm.

Design note: `plan_moves` is the pure policy (which container goes where, or why it cannot
move); `Controller` carries a plan out: it reads the job's virtual cluster from its agents and
the node addresses from Slurm, runs one journaled `migration.migrate` per container through
`AgentOps` (containers of different jobs in parallel), and keeps Slurm's view true. The
mechanism for Slurm's view (docs/migration.md): a job keeps `spares=N` nodes of its
allocation free of containers; a container moves to a spare of its own job, so no job
process ever runs on a node Slurm does not list for that job. When a node is drained, the
job is then shrunk off it (`scontrol update JobId=... NodeList=...`), which lets Slurm call
the node DRAINED. The batch host cannot leave a job (Slurm keeps the batch step there).

One controller process at a time works on a job: `job_lock` (an flock in the state
directory, released by the kernel when the holder dies, SIGKILL included) is held around
"recover what a crash left, then migrate", and `recover` skips a job whose lock a live
process holds, so an operation still being driven is never mistaken for a crashed one.
`recover` closes a migration whose job run has ended (the epilog removed its containers,
routes and images) and hands every other open operation to `recovery.recover`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcmig import config as site_config
from hpcmig.agent.rpc import AgentClient
from hpcmig.checkpoint import images
from hpcmig.controller._machine import Outcome
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.journal import Journal, Operation
from hpcmig.controller.migration import KIND as MIGRATE
from hpcmig.controller.migration import MigrationSpec, migrate
from hpcmig.controller.ops import ContainerRef, MigrationOps
from hpcmig.controller.recovery import recover, recover_one
from hpcmig.errors import HpcmigError, SlurmError, UsageError
from hpcmig.slurm import Slurm
from hpcmig.slurm.hostlist import compress
from hpcmig.vcluster import VCluster

Progress = Callable[[str], None]
# Slurm states in which a job's processes still exist (stopped): its operations wait.
HELD = ("SUSPENDED", "STOPPED")


@dataclass(frozen=True)
class Recovered:
    """What `Controller.recover` did with one open operation. state: done, rolled_back,
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
    return f"{op.kind} job {op.job_id}"


def _restarts(spec: Any) -> set[int]:
    """The job restart counts the containers named anywhere in an operation's spec have."""
    found: set[int] = set()
    if isinstance(spec, dict):
        ref = spec.get("ref")
        if isinstance(ref, dict) and "restart" in ref:
            found.add(int(ref["restart"]))
        for value in spec.values():
            found |= _restarts(value)
    elif isinstance(spec, list):
        for value in spec:
            found |= _restarts(value)
    return found


@dataclass(frozen=True)
class Move:
    job_id: str
    index: int
    source: str
    target: str | None  # None: no spare left; `reason` says what to do
    reason: str = ""


def plan_moves(vcs: Sequence[VCluster], node: str, target: str | None = None,
               unusable: frozenset[str] = frozenset()) -> list[Move]:
    """A move for every container on `node`: to `target` if given, else to a spare of its
    job (in the order Slurm listed them) that is not `unusable` (drained, down)."""
    moves = []
    for vc in vcs:
        taken: set[str] = set()
        for m in vc.on_node(node):
            if target is not None:
                if target not in vc.spares:
                    moves.append(Move(vc.job_id, m.index, node, None,
                                      f"{target} is not a spare node of job {vc.job_id} "
                                      f"(spares: {', '.join(vc.spares) or 'none'})"))
                else:
                    moves.append(Move(vc.job_id, m.index, node, target))
                continue
            free = [s for s in vc.spares if s not in unusable and s not in taken]
            if not free:
                moves.append(Move(vc.job_id, m.index, node, None,
                                  f"job {vc.job_id} has no spare node left (submit with "
                                  f"--comment=hpcmig:spares=1)"))
                continue
            taken.add(free[0])
            moves.append(Move(vc.job_id, m.index, node, free[0]))
    return moves


class Controller:
    """The CLI acting as hpcmig's controller (the daemon will run the same code)."""

    def __init__(self, cfg: site_config.Config | None = None, slurm: Slurm | None = None,
                 progress: Progress = lambda _m: None) -> None:
        self.cfg = cfg or site_config.load()
        self.slurm = slurm or Slurm()
        self.progress = progress
        self.munge = self.cfg.munge_socket or None
        self._addrs: dict[str, str] | None = None

    @property
    def journal_path(self) -> str:
        return str(Path(self.cfg.state_dir) / "controller.db")

    def node_addrs(self) -> dict[str, str]:
        if self._addrs is None:
            self._addrs = {n.name: n.address or n.name for n in self.slurm.nodes()}
        return self._addrs

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
                self.progress(f"job {job_id}: waiting for another hpcmig process working on it")
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield True

    def agent(self, node: str) -> AgentClient:
        return AgentClient(node, self.node_addrs()[node], self.cfg.agent_port, self.munge)

    def vcluster(self, job_id: str) -> VCluster:
        job = self.slurm.job(int(job_id))
        if job.state != "RUNNING":
            raise UsageError(f"job {job_id} is {job.state}, not running")
        for node in [job.batch_host, *job.nodes]:
            if not node:
                continue
            try:
                info = self.agent(node).call("job.info", job_id=str(job_id))
            except HpcmigError:
                continue
            return VCluster.from_json(info["vc"])
        raise UsageError(f"job {job_id} does not run in an hpcmig virtual cluster",
                         hint="submit it with #SBATCH --comment=hpcmig")

    def hpcmig_jobs_on(self, node: str) -> list[VCluster]:
        """The jobs whose virtual cluster has a container on `node` (its agent's records)."""
        vcs = [VCluster.from_json(rec["vc"]) for rec in self.agent(node).call("job.list")]
        return [vc for vc in vcs if vc.on_node(node)]

    # -- one container ----------------------------------------------------------------------
    def migrate_one(self, vc: VCluster, move: Move, transport: str = "shared") -> Outcome:
        if move.target is None:
            raise UsageError(f"container {move.index} of job {vc.job_id}: {move.reason}")
        member = vc.member(move.index)
        ref = ContainerRef(vc.job_id, vc.restart, move.index, member.address, vc.uid)
        tag = f"move-{int(time.time() * 1000)}"
        if transport == "shared":
            src = dst = images.image_dir(self.cfg.checkpoint_dir, vc.job_id, vc.restart,
                                         move.index, tag)
        else:
            spool = os.path.join(self.cfg.run_dir, "spool")
            src = dst = images.image_dir(spool, vc.job_id, vc.restart, move.index, tag)
        peers = tuple(n for n in vc.nodes() if n not in (move.source, move.target))
        spec = MigrationSpec(ref, move.source, move.target, peers, src, dst, transport)
        ops = self.ops_for(vc)
        with self.job_lock(vc.job_id), Journal(self.journal_path) as journal:
            for old in recover(journal, ops, job_id=vc.job_id):  # what a crash left open
                self._after_recovery(journal, old, move)
            self.progress(f"job {vc.job_id}: moving container {move.index} ({member.address}) "
                          f"{move.source} -> {move.target} ({transport})")
            outcome = migrate(journal, ops, spec)
        pause = f", pause {outcome.pause:.2f} s" if outcome.pause is not None else ""
        self.progress(f"job {vc.job_id}: container {move.index} {outcome.state}{pause}"
                      + (f": {outcome.error}" if outcome.error else ""))
        return outcome

    def ops_for(self, vc: VCluster) -> MigrationOps:
        """The effects on the job's nodes: its agents (tests put a fake here)."""
        return AgentOps(vc, self.node_addrs(), self.cfg.agent_port, self.munge)

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
        if moved.ref.index == move.index:
            raise HpcmigError(f"job {move.job_id}: recovery finished an interrupted move of "
                              f"container {move.index} to {moved.target}",
                              hint="run the command again from where it runs now")

    def migrate(self, job_id: str, source: str, target: str | None = None,
                transport: str = "shared") -> Outcome:
        vc = self.vcluster(job_id)
        if not vc.on_node(source):
            raise UsageError(f"job {job_id} has no container on {source}",
                             hint="its containers: " + ", ".join(
                                 f"{m.index}@{m.node}" for m in vc.members))
        moves = plan_moves([vc], source, target, self._unusable())
        outcomes = [self.migrate_one(vc, mv, transport) for mv in moves]
        bad = [o for o in outcomes if o.state != "done"]
        if bad:
            raise HpcmigError(f"job {job_id}: migration {bad[0].state}: {bad[0].error}")
        return outcomes[0]

    def _unusable(self) -> frozenset[str]:
        return frozenset(n.name for n in self.slurm.nodes()
                         if n.flags & {"DRAIN", "NOT_RESPONDING"} or n.state in ("down",))

    # -- after a crash ----------------------------------------------------------------------
    def recover(self, job_id: str | None = None, dry_run: bool = False) -> list[Recovered]:
        """Finish or roll back every open journaled operation (of one job, or all), as the
        controller does when it restarts. Returns one entry per operation found open."""
        with Journal(self.journal_path) as journal:
            jobs = sorted({op.job_id for op in journal.open_operations(job_id)},
                          key=lambda j: (len(j), j))
            found: list[Recovered] = []
            for job in jobs:
                if dry_run:
                    found += [Recovered(op, "open", op.error or "") for op in
                              journal.open_operations(job)]
                    continue
                with self.job_lock(job, wait=False) as held:
                    if not held:
                        found += [Recovered(op, "busy", "another hpcmig process is working on "
                                            f"job {job}") for op in journal.open_operations(job)]
                        continue
                    found += self._recover_job(journal, job)
        return found

    def _recover_job(self, journal: Journal, job: str) -> list[Recovered]:
        ops = journal.open_operations(job)
        try:
            state = next((j.state for j in self.slurm.jobs() if str(j.job_id) == job),
                         "gone from Slurm")
        except SlurmError as exc:  # Slurm did not answer: decide nothing
            return [Recovered(op, "stuck", f"cannot ask Slurm about job {job}: {exc}")
                    for op in ops]
        if state in HELD:
            return [Recovered(op, "stuck", f"job {job} is {state}: recover once it runs again")
                    for op in ops]
        vc = None
        if state == "RUNNING":
            try:
                vc = self.vcluster(job)
            except HpcmigError as exc:
                return [Recovered(op, "stuck", f"job {job}: {exc}") for op in ops]
        agent_ops = self.ops_for(vc) if vc is not None else None
        found: list[Recovered] = []
        for op in ops:
            restarts = _restarts(op.spec)
            ended = vc is None or bool(restarts and vc.restart not in restarts)
            if ended and op.kind != MIGRATE:
                found.append(Recovered(op, "stuck", f"job {job} is {state}: its {op.kind} "
                                       "needs the job's run it belongs to"))
            elif ended:
                what = (f"job {job} is {state}" if vc is None else
                        f"run {min(restarts)} of job {job} has ended (it is at run "
                        f"{vc.restart})")
                note = (f"{what}: its epilog removed this migration's containers, routes "
                        f"and images (the journal had reached {_last_step(journal, op)})")
                journal.set_state(op.id, "rolled_back", note)
                found.append(Recovered(op, "rolled_back", note))
            else:
                assert agent_ops is not None
                outcome = recover_one(journal, agent_ops, op.id)
                found.append(Recovered(op, outcome.state, outcome.error or "", outcome))
        return found

    # -- a whole node -------------------------------------------------------------------------
    def plan_drain(self, node: str) -> tuple[list[VCluster], list[Move]]:
        vcs = self.hpcmig_jobs_on(node)
        return vcs, plan_moves(vcs, node, None, self._unusable() | {node})

    def evacuate(self, node: str, transport: str = "shared") -> list[Outcome]:
        vcs, moves = self.plan_drain(node)
        by_job = {vc.job_id: vc for vc in vcs}
        stuck = [m for m in moves if m.target is None]
        if stuck:
            raise HpcmigError("cannot evacuate " + node + ": " +
                              "; ".join(f"container {m.index} of job {m.job_id}: {m.reason}"
                                        for m in stuck))
        with ThreadPoolExecutor(max_workers=max(1, len(moves))) as pool:
            outcomes = list(pool.map(
                lambda mv: self.migrate_one(by_job[mv.job_id], mv, transport), moves))
        for vc in vcs:
            self.shrink_off(vc.job_id, node)
        return outcomes

    def shrink_off(self, job_id: str, node: str) -> None:
        """Release `node` from the job in Slurm (it hosts nothing of the job any more)."""
        job = self.slurm.job(int(job_id))
        if node not in job.nodes:
            return
        if node == job.batch_host:
            self.progress(f"job {job_id}: {node} runs its batch step and stays in the job")
            return
        rest = [n for n in job.nodes if n != node]
        self.slurm.update_nodes(int(job_id), rest)
        self.progress(f"job {job_id}: Slurm shrank the job to {compress(rest)}")


def _last_step(journal: Journal, op: Operation) -> str:
    steps = journal.steps(op.id)
    return f"{steps[-1].name} ({steps[-1].status})" if steps else "none"
