"""Lower bounds on the hop-bytes of any mapping: heaviest-partner and spectral, per level.

Design note: this module owns the bounds printed by `hpcmig map`; pure numpy/scipy, no
mapping. Hop-bytes split into levels: on a hierarchical machine every pair of ranks whose
nodes first differ at level l pays that level's hops, so hop-bytes = sum over levels of
(hops added at l) x (bytes crossing level-l groups). Each crossing term is bounded below by

* heaviest partners: a rank shares its level-l group with at most S-1 others (S = slots in
  the largest group), so at least its total traffic minus its S-1 heaviest partners leaves;
* spectral (Donath-Hoffman): cutting N ranks into parts of at most S costs at least
  1/2 sum_i m_i lambda_i of the rank graph's Laplacian (m = S, S, ..., lambda ascending; the
  first few eigenvalues are estimated from below by `spectrum.py`, the rest bounded by the
  last one). Only computed up to `spectral_limit` ranks.

On a torus, bytes at distance > r are bounded by heaviest partners within the ball of radius
r, for every r (summing over r gives hop-bytes); the spectral bound applies at r = 0 (nodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from hpcmig.topology.comm import as_csr
from hpcmig.topology.metrics import _rank_graph_arrays, slot_array
from hpcmig.topology.model import Topology
from hpcmig.topology.spectrum import smallest_eigenvalues

SPECTRAL_LIMIT = 20000
EIGENVALUES = 8


@dataclass(frozen=True)
class LevelBound:
    level: str  # e.g. "node", "level 2", "distance > 3"
    hops: float  # hops every crossing byte pays at this level at least
    slots: int  # slots in the largest group at this level
    partner: float  # heaviest-partner bound on crossing bytes
    spectral: float | None  # spectral bound on crossing bytes (None: not computed)

    @property
    def bytes(self) -> float:
        return max(self.partner, self.spectral or 0.0)


@dataclass(frozen=True)
class LowerBound:
    levels: list[LevelBound]

    @property
    def total(self) -> float:
        return float(sum(lv.hops * lv.bytes for lv in self.levels))


def partner_bound(w: sp.csr_array, group_slots: int) -> float:
    """Bytes (pairs counted once) that must cross groups of at most `group_slots` ranks."""
    return partner_bounds(w, [group_slots])[0]


def partner_bounds(w: sp.csr_array, group_slots: list[int]) -> list[float]:
    """`partner_bound` for several group sizes, in one pass over the rank graph."""
    from hpcmig.topology import _kernels_graph

    n = w.shape[0]
    keeps = np.array([max(min(s, n) - 1, 0) for s in group_slots], dtype=np.int64)
    order = np.argsort(keeps, kind="stable")
    rest = _kernels_graph.beyond_heaviest(np.asarray(w.indptr, dtype=np.int64),
                                          np.asarray(w.data, dtype=np.float64), keeps[order])
    out = np.empty(len(keeps))
    out[order] = 0.5 * rest
    return [float(x) for x in out]


def spectral_bound(eig: np.ndarray, n: int, group_slots: int) -> float:
    s = max(min(group_slots, n), 1)
    parts = -(-n // s)
    sizes = np.full(parts, s, dtype=np.float64)
    sizes[-1] = n - s * (parts - 1)
    lam = np.concatenate([eig, np.full(max(parts - len(eig), 0), eig[-1] if len(eig) else 0.0)])
    return float(0.5 * np.dot(sizes, lam[:parts]))


def rank_graph_of(comm: npt.ArrayLike | sp.sparray | sp.spmatrix) -> sp.csr_array:
    """The symmetric rank graph C + C^T by the mapper's numba pass (scipy's costs seconds)."""
    c = as_csr(comm)
    xadj, adj, w, _, scale = _rank_graph_arrays(c)
    return sp.csr_array((scale * w, adj, xadj), shape=c.shape)


def lower_bound(comm: npt.ArrayLike | sp.sparray | sp.spmatrix, topology: Topology,
                slots: int | npt.ArrayLike, spectral_limit: int = SPECTRAL_LIMIT,
                graph: sp.csr_array | None = None, graph_scale: float = 1.0) -> LowerBound:
    """Per-level lower bounds on the hop-bytes of any placement of `comm` (see module doc).

    `graph`: the rank graph of `comm` divided by `graph_scale`, if already built
    (`Mapping.graph`, `Mapping.graph_scale`), else it is built. Every bound is linear in
    the weights, so it is computed on `graph` and scaled.
    """
    w = rank_graph_of(comm) if graph is None else graph
    scale = 1.0 if graph is None else graph_scale
    n = w.shape[0]
    caps = slot_array(topology, slots)
    eig: np.ndarray | None = None
    if n <= spectral_limit and n > 1 and w.nnz:
        eig = smallest_eigenvalues(w, EIGENVALUES)
    rows: list[tuple[str, float, int, bool]] = []  # name, hops, group slots, spectral?
    if topology.hierarchical:
        for lvl in range(topology.groups.shape[1] - 1, -1, -1):
            _, inv = np.unique(topology.groups[:, lvl], return_inverse=True)
            if inv.max() == 0:
                continue  # one group: nobody crosses this level
            name = "node" if lvl == topology.groups.shape[1] - 1 else f"level {lvl}"
            rows.append((name, float(2.0 * topology.half[:, lvl].min()),
                         int(np.bincount(inv, weights=caps).max()), True))
    else:
        for r, ball in enumerate(_torus_ball_sizes(topology)):
            group_slots = int(ball * caps.max())
            rows.append(("node" if r == 0 else f"distance > {r}", 1.0, group_slots, r == 0))
            if group_slots >= n:
                break
    partner = [scale * b for b in partner_bounds(w, [row[2] for row in rows])]
    if eig is not None:
        eig = scale * eig
    return LowerBound([
        LevelBound(name, hops, slots_, part,
                   spectral_bound(eig, n, slots_) if eig is not None and spec else None)
        for (name, hops, slots_, spec), part in zip(rows, partner, strict=True)])


def _torus_ball_sizes(topology: Topology) -> list[int]:
    """Largest number of nodes within distance r of one node, for r = 0 .. diameter-1."""
    ring = topology.ring
    axes = [np.minimum(np.arange(L), L - np.arange(L)) for L in ring]
    grid = np.zeros(1, dtype=np.int64)
    for ax in axes:
        grid = (grid[:, None] + ax[None, :]).ravel()
    counts = np.bincount(grid)
    diameter = len(counts) - 1
    cum = np.cumsum(counts)
    return [int(min(cum[r], topology.n_nodes)) for r in range(diameter)]
