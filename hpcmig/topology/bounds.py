"""Lower bounds on the hop-bytes of any mapping: heaviest-partner and spectral, per level.

Design note: this module owns the bounds printed by `hpcmig map`; pure numpy/scipy, no
mapping. Hop-bytes split into levels: on a hierarchical machine every pair of ranks whose
nodes first differ at level l pays that level's hops, so hop-bytes = sum over levels of
(hops added at l) x (bytes crossing level-l groups). Each crossing term is bounded below by

* heaviest partners: a rank shares its level-l group with at most S-1 others (S = slots in
  the largest group), so at least its total traffic minus its S-1 heaviest partners leaves;
* spectral (Donath-Hoffman): cutting N ranks into parts of at most S costs at least
  1/2 sum_i m_i lambda_i of the rank graph's Laplacian (m = S, S, ..., lambda ascending; the
  first few eigenvalues are computed, the rest bounded by the last one). Only computed up to
  `spectral_limit` ranks (shift-invert eigensolves get slow).

On a torus, bytes at distance > r are bounded by heaviest partners within the ball of radius
r, for every r (summing over r gives hop-bytes); the spectral bound applies at r = 0 (nodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from hpcmig.topology.comm import as_csr, rank_graph
from hpcmig.topology.metrics import slot_array
from hpcmig.topology.model import Topology

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
    n = w.shape[0]
    keep = max(min(group_slots, n) - 1, 0)
    rows = np.repeat(np.arange(n), np.diff(w.indptr))
    order = np.lexsort((-w.data, rows))
    data = w.data[order]
    csum = np.concatenate([[0.0], np.cumsum(data)])
    starts = w.indptr[:-1]
    take = np.minimum(np.diff(w.indptr), keep)
    top = csum[starts + take] - csum[starts]
    total = csum[w.indptr[1:]] - csum[starts]
    return float(0.5 * np.maximum(total - top, 0.0).sum())


def laplacian_eigenvalues(w: sp.csr_array, count: int) -> np.ndarray:
    """The `count` smallest eigenvalues of the Laplacian of `w`, ascending."""
    from scipy.sparse.linalg import eigsh

    n = w.shape[0]
    lap = sp.csc_array(sp.diags_array(np.asarray(w.sum(axis=1)).ravel()) - w)
    count = min(count, n - 1)
    if n <= 400:
        return np.sort(np.linalg.eigvalsh(lap.toarray()))[:count]
    shift = 1e-6 * max(float(lap.diagonal().max()), 1.0)
    vals = eigsh(lap, k=count, sigma=-shift, which="LM", return_eigenvectors=False)
    return np.sort(np.maximum(vals, 0.0))


def spectral_bound(eig: np.ndarray, n: int, group_slots: int) -> float:
    s = max(min(group_slots, n), 1)
    parts = -(-n // s)
    sizes = np.full(parts, s, dtype=np.float64)
    sizes[-1] = n - s * (parts - 1)
    lam = np.concatenate([eig, np.full(max(parts - len(eig), 0), eig[-1] if len(eig) else 0.0)])
    return float(0.5 * np.dot(sizes, lam[:parts]))


def lower_bound(comm: npt.ArrayLike | sp.sparray | sp.spmatrix, topology: Topology,
                slots: int | npt.ArrayLike, spectral_limit: int = SPECTRAL_LIMIT) -> LowerBound:
    """Per-level lower bounds on the hop-bytes of any placement of `comm` (see module doc)."""
    c = as_csr(comm)
    n = c.shape[0]
    w = rank_graph(c)
    caps = slot_array(topology, slots)
    eig: np.ndarray | None = None
    if n <= spectral_limit and n > 1 and w.nnz:
        eig = laplacian_eigenvalues(w, EIGENVALUES)
    levels: list[LevelBound] = []
    if topology.hierarchical:
        for lvl in range(topology.groups.shape[1] - 1, -1, -1):
            g = topology.groups[:, lvl]
            _, inv = np.unique(g, return_inverse=True)
            if inv.max() == 0:
                continue  # one group: nobody crosses this level
            group_slots = int(np.bincount(inv, weights=caps).max())
            hops = float(2.0 * topology.half[:, lvl].min())
            name = "node" if lvl == topology.groups.shape[1] - 1 else f"level {lvl}"
            spec = spectral_bound(eig, n, group_slots) if eig is not None else None
            levels.append(LevelBound(name, hops, group_slots,
                                     partner_bound(w, group_slots), spec))
        return LowerBound(levels)
    dist = _torus_ball_sizes(topology)
    for r, ball in enumerate(dist):
        group_slots = int(ball * caps.max())
        spec = spectral_bound(eig, n, group_slots) if (eig is not None and r == 0) else None
        levels.append(LevelBound("node" if r == 0 else f"distance > {r}", 1.0, group_slots,
                                 partner_bound(w, group_slots), spec))
        if group_slots >= n:
            break
    return LowerBound(levels)


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
