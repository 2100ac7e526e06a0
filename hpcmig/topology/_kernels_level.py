"""numba kernels: hop-bytes of a placement read on a level of the dense graph's hierarchy.

Design note: private, arrays and scalars only, no validation (see `_kernels.py` for the
conventions; hierarchies as `_kernels_rb.build_hierarchy` returns them). After the mapping
most clusters of a fine level lie whole on one node; entries between whole clusters are
summed as the level's entries (one per cluster pair, all at one distance), only the ranks of
split clusters are read entry by entry. `cheapest_level` picks the level that reads fewest.
"""

from __future__ import annotations

from hpcmig.topology._jit import configure_cache

configure_cache()

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from hpcmig.topology._kernels_cost import node_distance  # noqa: E402


@njit(cache=True)
def cluster_at(cluster: np.ndarray, node_of: np.ndarray, nc: int) -> np.ndarray:
    """Node of each of `nc` clusters (`cluster[v]` of rank v), -1 where its ranks are split
    over several nodes."""
    at = np.full(nc, -2, dtype=np.int64)
    for v in range(len(cluster)):
        c = cluster[v]
        if at[c] == -2:
            at[c] = node_of[v]
        elif at[c] != node_of[v]:
            at[c] = -1
    return at


@njit(cache=True)
def cheapest_level(anc: np.ndarray, node_of: np.ndarray, xadj: np.ndarray, vofs: np.ndarray,
                   eofs: np.ndarray) -> tuple[int, np.ndarray]:
    """(level, `cluster_at` of its clusters) on which `mixed_hop_bytes` reads the fewest
    entries: the level's own plus all of those of the ranks in split clusters. Level 0 (the
    ranks themselves, every entry) when no level is cheaper. `anc`, `vofs`, `eofs` as
    `build_hierarchy` returns them."""
    n = anc.shape[1]
    best = 0
    best_work = xadj[n]
    best_at = np.zeros(0, dtype=np.int64)
    for lev in range(1, anc.shape[0]):
        at = cluster_at(anc[lev], node_of, vofs[lev] - vofs[lev - 1])
        work = eofs[lev] - eofs[lev - 1]
        for v in range(n):
            if at[anc[lev, v]] < 0:
                work += xadj[v + 1] - xadj[v]
        if work < best_work:
            best, best_work, best_at = lev, work, at
    return best, best_at


@njit(cache=True)
def _whole_row(c: int, x: np.ndarray, a: np.ndarray, e: np.ndarray, at: np.ndarray,
               groups: np.ndarray, half: np.ndarray, coords: np.ndarray, ring: np.ndarray
               ) -> float:
    """Cluster c's entries to other whole clusters (0 when c is split)."""
    total = 0.0
    if at[c] >= 0:
        for k in range(x[c], x[c + 1]):
            d = at[a[k]]
            if d >= 0 and d != at[c]:
                total += e[k] * node_distance(at[c], d, groups, half, coords, ring)
    return total


@njit(cache=True)
def _split_row(i: int, at: np.ndarray, cluster: np.ndarray, xadj: np.ndarray,
               adj: np.ndarray, w: np.ndarray, node_of: np.ndarray, groups: np.ndarray,
               half: np.ndarray, coords: np.ndarray, ring: np.ndarray) -> float:
    """Rank i's entries, those to whole clusters twice (0 when i's cluster is whole)."""
    total = 0.0
    if at[cluster[i]] < 0:
        ni = node_of[i]
        for k in range(xadj[i], xadj[i + 1]):
            nj = node_of[adj[k]]
            if nj != ni:
                f = 1.0 if at[cluster[adj[k]]] < 0 else 2.0
                total += f * w[k] * node_distance(ni, nj, groups, half, coords, ring)
    return total


@njit(cache=True, parallel=True)
def mixed_hop_bytes(x: np.ndarray, a: np.ndarray, e: np.ndarray, at: np.ndarray,
                    cluster: np.ndarray, xadj: np.ndarray, adj: np.ndarray, w: np.ndarray,
                    node_of: np.ndarray, groups: np.ndarray, half: np.ndarray,
                    coords: np.ndarray, ring: np.ndarray) -> float:
    """`hop_bytes` of the symmetric rank graph (xadj, adj, w), read on a hierarchy level
    (x, a, e; `cluster[v]` the level's cluster of rank v, `at` from `cluster_at`).

    Entries between two whole clusters (one node each) are summed as the level's entries
    between them (their sum, all at one distance). Entries of a rank in a split cluster are
    read on the ranks, twice when the partner's cluster is whole: that stands for the mirror
    entry, which the level's part skips.
    """
    total = 0.0
    for c in prange(len(x) - 1):
        total += _whole_row(c, x, a, e, at, groups, half, coords, ring)
    for i in prange(len(xadj) - 1):
        total += _split_row(i, at, cluster, xadj, adj, w, node_of, groups, half, coords, ring)
    return total
