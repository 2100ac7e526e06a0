"""Controller call: where should a moving container go to add the least hop-bytes?

Design note: this module owns ranking candidate target nodes for one container of a job,
given the traffic between the job's containers (one container per node, so container traffic
is node-to-node traffic). It is pure computation on a `Topology`; it does not look at health,
load or Slurm state -- the controller filters candidates first and calls `rank_targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from hpcmig.errors import UsageError
from hpcmig.topology.comm import as_csr, rank_graph
from hpcmig.topology.model import Topology


@dataclass(frozen=True)
class Candidate:
    node: str
    added_hop_bytes: float  # change of the job's hop-bytes if the container moves there


def rank_targets(topology: Topology, traffic: npt.ArrayLike | sp.sparray | sp.spmatrix,
                 placement: Sequence[str], moving: int, candidates: Sequence[str]
                 ) -> list[Candidate]:
    """Candidates sorted by added hop-bytes (least first; ties keep the given order).

    `traffic[i, j]` = bytes container i sends to container j; `placement[i]` = node of
    container i now; `moving` = index of the container to move. The added hop-bytes of a
    target t are sum over partners j of (bytes both ways) x (hops(t, node j) - hops(now, node
    j)), so a negative value means the move also shortens the job's paths.
    """
    c = as_csr(traffic, "container traffic matrix")
    n = c.shape[0]
    if len(placement) != n:
        raise UsageError(f"placement lists {len(placement)} nodes for {n} containers")
    if not 0 <= moving < n:
        raise UsageError(f"container index {moving} outside 0..{n - 1}")
    if not candidates:
        raise UsageError("no candidate target nodes")
    where = topology.index(list(placement))
    targets = topology.index(list(candidates))
    w = rank_graph(c)
    row = slice(w.indptr[moving], w.indptr[moving + 1])
    partners, weights = w.indices[row], w.data[row]
    now = topology.distance(where[moving], where[partners])
    added = [float(np.dot(weights, topology.distance(t, where[partners]) - now))
             for t in targets]
    order = sorted(range(len(targets)), key=lambda k: added[k])
    return [Candidate(candidates[k], added[k]) for k in order]


def best_target(topology: Topology, traffic: npt.ArrayLike | sp.sparray | sp.spmatrix,
                placement: Sequence[str], moving: int, candidates: Sequence[str]) -> str:
    """The candidate node that adds the least hop-bytes (see `rank_targets`)."""
    return rank_targets(topology, traffic, placement, moving, candidates)[0].node
