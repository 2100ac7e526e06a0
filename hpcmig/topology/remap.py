"""Remapping a running job: which of its containers to move where, and whether it pays.

Design note: pure computation for `hpcmig remap` (the controller measures, decides and moves;
this module only plans). A job's containers sit one per node; `traffic[i, j]` is the bytes
container i sent to container j over the `window` seconds it was measured. The plan starts
from where the containers are and moves one container at a time to a free node of the job
(a spare, or a node a previous move emptied), always the move that cuts the job's hop-bytes
most, until no move cuts them by more than `MIN_GAIN` of what is left. Starting from the
current placement keeps the number of moves small (a global mapping from scratch would
relabel containers for nothing on a symmetric machine), and every target is free when its
move runs, so the moves run in the plan's order with the existing live migration.

Model (docs/topology.md): the job's interconnect time is its hop-bytes divided by the
per-hop bandwidth (`link_bytes_per_second`). Measured over `window` seconds, the plan saves
(hop-bytes before - after) / window / bandwidth seconds of every second the job still runs,
so over `remaining` seconds. Each move pauses the whole job for about `pause` seconds (a rank
that stops stops its peers). The plan pays when the saving is at least `PAYBACK` times the
pauses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hpcmig.errors import UsageError
from hpcmig.topology.model import Topology

MIN_GAIN = 0.01  # a move must cut at least 1% of the hop-bytes left
PAYBACK = 2.0  # the saving must be twice the pauses


@dataclass(frozen=True)
class Move:
    container: int
    source: str
    target: str
    hop_bytes_after: float


@dataclass(frozen=True)
class Plan:
    moves: list[Move]
    hop_bytes_before: float
    hop_bytes_after: float
    saving_seconds: float  # predicted over the job's remaining time
    cost_seconds: float  # the moves' pauses
    pays: bool

    def describe(self) -> str:
        if not self.moves:
            return "nothing to gain: no move of a container to a free node cuts its hop-bytes"
        cut = 1 - self.hop_bytes_after / self.hop_bytes_before if self.hop_bytes_before else 0
        verdict = "pays" if self.pays else f"does not pay (needs {PAYBACK:g}x the pauses)"
        return (f"{len(self.moves)} move(s) cut hop-bytes by {cut:.0%}; predicted saving "
                f"{self.saving_seconds:.1f} s against {self.cost_seconds:.1f} s of pauses: "
                f"{verdict}")


def hop_bytes(weights: npt.NDArray[np.float64], dist: npt.NDArray[np.float64],
              where: npt.NDArray[np.int64]) -> float:
    """Hop-bytes of containers at node positions `where` (weights symmetric, both ways)."""
    return float(0.5 * (weights * dist[np.ix_(where, where)]).sum())


def plan(topology: Topology, traffic: npt.ArrayLike, placement: Sequence[str],
         free: Sequence[str], *, window: float, remaining: float, pause: float,
         link_bytes_per_second: float, max_moves: int | None = None) -> Plan:
    """The moves that cut the job's hop-bytes, and whether they pay (see the module doc)."""
    c = np.asarray(traffic, dtype=np.float64)
    n = len(placement)
    if c.shape != (n, n) or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise UsageError(f"container traffic must be {n} x {n}, finite and >= 0")
    if len(set(placement)) != n or set(placement) & set(free):
        raise UsageError("containers need distinct nodes, and free nodes must be empty")
    if window <= 0 or link_bytes_per_second <= 0 or pause < 0 or remaining < 0:
        raise UsageError("window and bandwidth must be > 0, pause and remaining >= 0")
    nodes = list(placement) + list(free)
    dist = topology.distance_matrix(topology.index(nodes))
    weights = c + c.T
    np.fill_diagonal(weights, 0.0)
    where = np.arange(n, dtype=np.int64)  # container i on nodes[where[i]]
    empty = set(range(n, len(nodes)))
    before = current = hop_bytes(weights, dist, where)
    moves: list[Move] = []
    while empty and (max_moves is None or len(moves) < max_moves):
        best: tuple[float, int, int] | None = None
        for i in range(n):
            now = dist[where[i], where]
            for f in sorted(empty):
                gain = float(weights[i] @ (now - dist[f, where]))
                if best is None or gain > best[0]:
                    best = (gain, i, f)
        if best is None or best[0] <= MIN_GAIN * current or best[0] <= 0:
            break
        gain, i, f = best
        empty.add(int(where[i]))
        empty.discard(f)
        moves.append(Move(i, nodes[where[i]], nodes[f], current - gain))
        where[i] = f
        current -= gain
    saving = (before - current) / window / link_bytes_per_second * remaining
    cost = pause * len(moves)
    return Plan(moves, before, current, saving, cost,
                bool(moves) and saving >= PAYBACK * cost)
