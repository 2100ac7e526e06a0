"""Baselines for the mapping benchmark: METIS, KaHIP and Scotch applied level by level.

Design note: this module owns the "by levels" use of general graph partitioners, which know
nothing about networks: the machine's hierarchy (`Topology.order` / `split_key`) is cut at its
highest level into k children, the ranks' graph is partitioned into k parts sized to the
children's capacities, and each part recurses into its child. Partitioners that return a
slightly unbalanced partition are repaired to exact capacities by greedy moves of the
vertices that lose least connectivity (slots are a hard limit). Nothing here is used by
hpcmig itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from hpcmig.topology.model import Topology

PartFn = Callable[[sp.csr_array, int], np.ndarray]


def _int_weights(w: sp.csr_array) -> np.ndarray:
    """Integer edge weights >= 1 (the tools need them), scaled so the max is about 1e6."""
    scale = 1e6 / max(float(w.data.max()), 1.0) if w.nnz else 1.0
    return np.maximum(np.round(w.data * scale), 1).astype(np.int64)


def metis_part(w: sp.csr_array, k: int) -> np.ndarray:
    import pymetis

    adjacency = pymetis.CSRAdjacency(w.indptr.astype(np.int64), w.indices.astype(np.int64))
    opts = pymetis.Options(ufactor=1, seed=0)
    _, parts = pymetis.part_graph(k, adjacency=adjacency, eweights=_int_weights(w),
                                  options=opts)
    return np.asarray(parts, dtype=np.int64)


def kahip_part(w: sp.csr_array, k: int) -> np.ndarray:
    import kahip

    n = w.shape[0]
    _, blocks = kahip.kaffpa(np.ones(n, dtype=np.int64).tolist(),
                             w.indptr.astype(np.int64).tolist(), _int_weights(w).tolist(),
                             w.indices.astype(np.int64).tolist(), k, 0.03, True, 0, 1)  # eco, 3%
    return np.asarray(blocks, dtype=np.int64)


def scotch_part(w: sp.csr_array, k: int) -> np.ndarray:
    import pyscotch
    from pyscotch import Graph

    pyscotch.random_reset() if hasattr(pyscotch, "random_reset") else None
    g = Graph()
    g.build(w.indptr.astype(np.int64), w.indices.astype(np.int64),
            edlotab=_int_weights(w))
    return np.asarray(g.partition(k), dtype=np.int64)


TOOLS: dict[str, PartFn] = {"metis": metis_part, "kahip": kahip_part, "scotch": scotch_part}


def repair(w: sp.csr_array, parts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Move vertices until part p holds exactly sizes[p] (greedy, least connectivity lost)."""
    parts = parts.copy()
    k = len(sizes)
    count = np.bincount(parts, minlength=k)
    if np.array_equal(count, sizes):
        return parts
    onehot = sp.csr_array((np.ones(len(parts)), (np.arange(len(parts)), parts)),
                          shape=(len(parts), k))
    conn = (w @ onehot).toarray()
    while True:
        over = np.flatnonzero(count > sizes)
        if not len(over):
            return parts
        under = np.flatnonzero(count < sizes)
        cand = np.flatnonzero(np.isin(parts, over))
        gain = conn[cand][:, under] - conn[cand, parts[cand]][:, None]
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        v, src, dst = cand[i], parts[cand[i]], under[j]
        parts[v] = dst
        count[src] -= 1
        count[dst] += 1
        row = slice(w.indptr[v], w.indptr[v + 1])
        nbrs, wts = w.indices[row], w.data[row]
        conn[nbrs, src] -= wts
        conn[nbrs, dst] += wts


def _children(topology: Topology, lo: int, hi: int) -> list[tuple[int, int]]:
    keys = topology.split_key[lo : hi - 1]
    cuts = lo + 1 + np.flatnonzero(keys == keys.max())
    bounds = [lo, *cuts.tolist(), hi]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def by_levels(w: sp.csr_array, topology: Topology, caps: np.ndarray, part: PartFn
              ) -> np.ndarray:
    """Node index of every rank, partitioning level by level along the topology."""
    n = w.shape[0]
    pos_caps = caps[topology.order]
    capcum = np.concatenate([[0], np.cumsum(pos_caps)])
    out = np.full(n, -1, dtype=np.int64)
    stack: list[tuple[np.ndarray, int, int]] = [(np.arange(n), 0, topology.n_nodes)]
    while stack:
        ranks, lo, hi = stack.pop()
        if hi - lo == 1:
            out[ranks] = topology.order[lo]
            continue
        kids = _children(topology, lo, hi)
        room = np.array([capcum[b] - capcum[a] for a, b in kids])
        sizes = np.zeros(len(kids), dtype=np.int64)
        left = len(ranks)
        for i, r in enumerate(room):  # fill children in order, like hpcmig
            sizes[i] = min(left, r)
            left -= sizes[i]
        used = np.flatnonzero(sizes)
        sub = sp.csr_array(w[ranks][:, ranks])
        if len(used) == 1:
            parts = np.zeros(len(ranks), dtype=np.int64)
        else:
            parts = repair(sub, part(sub, len(used)) if sub.nnz else
                           np.arange(len(ranks)) % len(used), sizes[used])
        for j, child in enumerate(used):
            a, b = kids[child]
            stack.append((ranks[parts == j], a, b))
    return out
