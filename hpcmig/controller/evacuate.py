"""Where a node's containers go when it is drained: the pure plan, shared by dry runs.

Design note: `plan_moves` picks a target for every container of a job on a node (a spare of
its own job, in the order Slurm listed them, that is not drained or down), or says why
there is none; `plan_drain` decides per job whether its containers move live or the whole
job goes through the fallback (checkpoint, requeue without the node, restore on the new
allocation): a job whose batch step runs on the node (Slurm keeps the batch step there, so
the node could never leave the job), that has no free spare, or that runs under DMTCP
(engine=dmtcp: CRIU does not touch it). `hpcmig drain --dry-run` and
the drain itself print and run the same plan (hpcmig.controller.service). Mechanism for
Slurm's view: a job keeps `spares=N` nodes of its allocation free of containers; a
container moves to a spare of its own job, so no job process ever runs on a node Slurm does
not list for that job; after the moves succeeded the job is shrunk off the drained node
(`scontrol update JobId=... NodeList=...`), which lets Slurm call the node DRAINED. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcmig.vcluster import VCluster


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


@dataclass(frozen=True)
class JobPlan:
    """What a drain of `node` does to one hpcmig job: live `moves`, or, when `whole` says
    why, the whole-job fallback. A job with nothing on the node but a spare is only shrunk
    off it (no moves, `whole` empty)."""

    vc: VCluster
    batch_host: str
    moves: tuple[Move, ...] = ()
    whole: str = ""


def plan_drain(jobs: Sequence[tuple[VCluster, str]], node: str,
               unusable: frozenset[str] = frozenset()) -> list[JobPlan]:
    """A plan for every (virtual cluster, batch host) of a job that uses `node`."""
    plans = []
    for vc, batch_host in jobs:
        moves = plan_moves([vc], node, None, unusable | {node})
        if node == batch_host and vc.on_node(node):
            plans.append(JobPlan(vc, batch_host, (), f"{node} runs the job's batch step, "
                                 "which Slurm cannot move"))
        elif node == batch_host:
            plans.append(JobPlan(vc, batch_host, (), f"{node} runs the job's batch step "
                                 "(a spare node of the job), which Slurm cannot move"))
        elif vc.engine == "dmtcp" and vc.on_node(node):
            plans.append(JobPlan(vc, batch_host, (), "engine=dmtcp: the job moves by a DMTCP "
                                 "checkpoint and a restart, not live"))
        elif any(m.target is None for m in moves):
            plans.append(JobPlan(vc, batch_host, (), next(m.reason for m in moves
                                                          if m.target is None)))
        else:
            plans.append(JobPlan(vc, batch_host, tuple(moves)))
    return plans
