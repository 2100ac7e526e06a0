"""numba kernels on one task of the recursive bisection: its subgraph, exact sizes, its ranks.

Design note: private, arrays and scalars only, no validation (see `_kernels.py` for the
conventions); `_kernels_rb.recursive_bisection` is the only caller. A task is a range
perm[start:end] of ranks to be split between node positions lo..mid-1 and mid..hi-1 of the
topology order. `_extract` copies its subgraph at one hierarchy level into the batch
buffers, and on a torus turns the edges to ranks outside the task into `bias` (the pull
towards the nearer half); `_finish` turns a bisection of its vertices into rank sides with
side 0 holding exactly its capacity; `_apply_task` orders the ranks by side and records
where they now are (`rlo`, `lpos`, `csum`), which the next tasks' bias reads.

The edges of a task with many entries (dense graphs: hundreds per rank) are walked by both
cores, vertex by vertex (`_edges_parallel`), each vertex writing at an upper bound of its
offset, then packed; a vertex's entries and bias are the same whichever thread computes
them, so the result does not depend on the number of threads.
"""

from __future__ import annotations

from hpcmig.topology._jit import configure_cache

configure_cache()

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

PARALLEL_ENTRIES = 4096  # a task whose clusters have this many entries: both cores


@njit(cache=True)
def _centroid(ccum: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Mean torus coordinates of the nodes at positions lo..hi-1 of the order, into out."""
    for d in range(ccum.shape[1]):
        out[d] = (ccum[hi, d] - ccum[lo, d]) / (hi - lo)


@njit(cache=True)
def range_position(ccum: np.ndarray, lo: int, hi: int, out: np.ndarray) -> None:
    """Centroid of positions lo..hi-1 as `_extract` uses it for a rank (times 1 / count)."""
    scale = 1.0 / (hi - lo)
    for d in range(ccum.shape[1]):
        out[d] = (ccum[hi, d] - ccum[lo, d]) * scale


@njit(cache=True)
def _vertex_edges(c: int, lev: int, x: np.ndarray, a: np.ndarray, e: np.ndarray, base: int,
                  mark: np.ndarray, lid: np.ndarray, stamp: int, ba: np.ndarray,
                  be: np.ndarray, at: int, rlo: np.ndarray, lpos: np.ndarray,
                  pull: np.ndarray, csum: np.ndarray, nperm: int, ihw: np.ndarray,
                  ring: np.ndarray, c_left: np.ndarray, c_right: np.ndarray
                  ) -> tuple[int, float]:
    """Cluster c's entries inside the task, written from `at`, and its bias: (count, bias).

    Outside the task, a rank (level 0) sits at the centroid `lpos[rlo[u]]` of its node range,
    a cluster at its ranks' mean position `csum[u] * ihw[u]` (ihw = 1 / ranks in u); the
    bias adds weight x
    (d(right, u) - d(left, u)). At level 0 that difference is `pull[rlo[u]]` when given
    (`_range_pulls`), the same number computed once per range.
    """
    dims = len(ring)
    k = at
    bias = 0.0
    for q in range(x[c], x[c + 1]):
        u = a[q]
        if mark[base + u] == stamp:
            ba[k] = lid[base + u]
            be[k] = e[q]
            k += 1
        elif dims > 0:
            if lev == 0 and len(pull) > 0:
                bias += e[q] * pull[rlo[u]]
                continue
            diff = 0.0
            scale = 1.0 if lev == 0 else ihw[u]
            for d in range(dims):
                pu = lpos[rlo[u], d] if lev == 0 else csum[base + u - nperm, d] * scale
                xr = abs(c_right[d] - pu)
                xl = abs(c_left[d] - pu)
                diff += min(xr, ring[d] - xr) - min(xl, ring[d] - xl)
            bias += e[q] * diff
    return k - at, bias


@njit(cache=True)
def _range_pulls(lpos: np.ndarray, ring: np.ndarray, c_left: np.ndarray, c_right: np.ndarray
                 ) -> np.ndarray:
    """d(right, p) - d(left, p) for the centroid p of every range start (stale ones too)."""
    out = np.empty(len(lpos))
    for r in range(len(lpos)):
        diff = 0.0
        for d in range(len(ring)):
            pu = lpos[r, d]
            xr = abs(c_right[d] - pu)
            xl = abs(c_left[d] - pu)
            diff += min(xr, ring[d] - xr) - min(xl, ring[d] - xl)
        out[r] = diff
    return out


@njit(cache=True, parallel=True)
def _edges_parallel(clus: np.ndarray, ub: np.ndarray, cnt: np.ndarray, lev: int,
                    x: np.ndarray, a: np.ndarray, e: np.ndarray, base: int, mark: np.ndarray,
                    lid: np.ndarray, stamp: int, ba: np.ndarray, be: np.ndarray,
                    bb: np.ndarray, v0: int, e0: int, rlo: np.ndarray, lpos: np.ndarray,
                    pull: np.ndarray, csum: np.ndarray, nperm: int, ihw: np.ndarray,
                    ring: np.ndarray, c_left: np.ndarray, c_right: np.ndarray) -> None:
    """`_vertex_edges` of every vertex in parallel, vertex i writing from e0 + ub[i]."""
    for i in prange(len(cnt)):
        cnt[i], bb[v0 + i] = _vertex_edges(clus[i], lev, x, a, e, base, mark, lid, stamp, ba,
                                           be, e0 + ub[i], rlo, lpos, pull, csum, nperm,
                                           ihw, ring, c_left, c_right)


@njit(cache=True)
def _extract(perm: np.ndarray, start: int, end: int, lev: int, x: np.ndarray, a: np.ndarray,
             e: np.ndarray, anc: np.ndarray, base: int, mark: np.ndarray, lid: np.ndarray,
             stamp: int, clus: np.ndarray, rl: np.ndarray, bx: np.ndarray, ba: np.ndarray,
             be: np.ndarray, bw: np.ndarray, bb: np.ndarray, v0: int, xo: int, e0: int,
             rlo: np.ndarray, lpos: np.ndarray, ccum: np.ndarray, csum: np.ndarray,
             ihw: np.ndarray, ring: np.ndarray, lo: int, mid: int, hi: int) -> tuple[int, int]:
    """The task's subgraph at level `lev` into the buffers; returns (vertices, entries).

    A vertex is a level-`lev` cluster holding some of the task's ranks, weighted by how many
    (`rl[i]` = local vertex of the rank at perm[i]); clusters are told apart from others by
    `mark[base + c] == stamp`. On a torus, edges to clusters outside the task become `bias`
    towards the nearer half: the cluster's position is the mean centroid of its ranks' node
    ranges (`csum` times `ihw`, level >= 1) or the centroid of the rank's own range (level 0: `lpos`
    of the range starting at `rlo`). `ba`/`be` must hold e0 + the entries of all the task's
    clusters (inside or not).
    """
    ns = 0
    for i in range(start, end):
        c = anc[lev, perm[i]]
        f = base + c
        if mark[f] != stamp:
            mark[f] = stamp
            lid[f] = ns
            clus[ns] = c
            bw[v0 + ns] = 0.0
            ns += 1
        rl[i] = lid[f]
        bw[v0 + lid[f]] += 1.0
    dims = len(ring)
    c_left = np.empty(dims)
    c_right = np.empty(dims)
    _centroid(ccum, lo, mid, c_left)
    _centroid(ccum, mid, hi, c_right)
    nperm = len(perm)
    ub = np.zeros(ns + 1, dtype=np.int64)
    for i in range(ns):
        ub[i + 1] = ub[i] + x[clus[i] + 1] - x[clus[i]]
    pull = np.empty(0)
    if lev == 0 and dims > 0 and ub[ns] > len(lpos):  # more entries than ranges
        pull = _range_pulls(lpos, ring, c_left, c_right)
    bx[xo] = 0
    k = e0
    if ub[ns] < PARALLEL_ENTRIES:  # one core: entries written in place
        for i in range(ns):
            cnt, bb[v0 + i] = _vertex_edges(clus[i], lev, x, a, e, base, mark, lid, stamp, ba,
                                            be, k, rlo, lpos, pull, csum, nperm, ihw, ring,
                                            c_left, c_right)
            k += cnt
            bx[xo + i + 1] = k - e0
        return ns, k - e0
    cnts = np.empty(ns, dtype=np.int64)
    _edges_parallel(clus[:ns], ub, cnts, lev, x, a, e, base, mark, lid, stamp, ba, be, bb, v0,
                    e0, rlo, lpos, pull, csum, nperm, ihw, ring, c_left, c_right)
    for i in range(ns):  # pack: vertex i's entries move down from e0 + ub[i] to k
        src = e0 + ub[i]
        if src != k:
            for q in range(cnts[i]):
                ba[k + q] = ba[src + q]
                be[k + q] = be[src + q]
        k += cnts[i]
        bx[xo + i + 1] = k - e0
    return ns, k - e0


@njit(cache=True)
def _finish(side: np.ndarray, x: np.ndarray, a: np.ndarray, e: np.ndarray, w: np.ndarray,
            b: np.ndarray, target0: float, rl: np.ndarray, start: int, end: int,
            sides: np.ndarray) -> None:
    """Rank sides of a task from its vertices' sides, with side 0 holding exactly target0.

    A bisection of clusters (level >= 1) can miss the target by a few ranks: the heavy side
    then gives up whole clusters, best gain first, and splits one cluster if still needed.
    """
    ns = len(x) - 1
    w0 = 0.0
    for v in range(ns):
        if side[v] == 0:
            w0 += w[v]
    split = -1
    need = 0
    s = 0
    if abs(w0 - target0) > 0.5:
        s = 0 if w0 > target0 else 1
        need = int(round(abs(w0 - target0)))
        gain = np.zeros(ns)
        for v in range(ns):
            if side[v] == s:
                g = b[v] if s == 1 else -b[v]
                for q in range(x[v], x[v + 1]):
                    g += e[q] if side[a[q]] != s else -e[q]
                gain[v] = g
        # in order of gain (first vertex on ties), move whole vertices that fit; need only
        # shrinks, so the best one that fits now is the next one of that order that fits
        while need > 0:
            best = -1
            for v in range(ns):
                if side[v] == s and w[v] <= need and (best == -1 or gain[v] > gain[best]):
                    best = v
            if best == -1:
                break
            side[best] = 1 - s
            need -= int(w[best])
        if need > 0:  # every vertex left on side s is heavier than need: split the best
            for v in range(ns):
                if side[v] == s and (split == -1 or gain[v] > gain[split]):
                    split = v
    for i in range(start, end):
        c = rl[i]
        sides[i] = side[c]
        if c == split and need > 0:
            sides[i] = 1 - s
            need -= 1


@njit(cache=True)
def _apply_task(perm: np.ndarray, sides: np.ndarray, rlo: np.ndarray, lpos: np.ndarray,
                start: int, end: int, lo: int, mid: int, hi: int, ccum: np.ndarray,
                anc: np.ndarray, vofs: np.ndarray, csum: np.ndarray, top: int) -> None:
    """Order a bisected task's ranks side 0 first and narrow their node ranges.

    Each rank's range now starts at `rlo` (lo or mid); on a torus `lpos` holds the
    centroids of the two new ranges (ranges are disjoint: their starts tell them apart).
    With a hierarchy, the clusters' centroid sums (`csum`) follow their ranks, on levels 1 to
    `top` (no task from now on is bisected at a coarser level, so no one reads the others).
    """
    if mid < 0:
        return
    tmp = perm[start:end].copy()
    side = sides[start:end].copy()
    a = start
    for i in range(end - start):
        if side[i] == 0:
            perm[a] = tmp[i]
            a += 1
    b = a
    for i in range(end - start):
        if side[i] == 1:
            perm[b] = tmp[i]
            b += 1
    dims = ccum.shape[1]
    nlev = anc.shape[0]
    if dims > 0 and nlev > 1 and top > 0:
        old = np.empty(dims)
        d0 = np.empty(dims)
        d1 = np.empty(dims)
        _centroid(ccum, lo, hi, old)
        _centroid(ccum, lo, mid, d0)
        _centroid(ccum, mid, hi, d1)
        for k in range(start, end):
            v = perm[k]
            for lev in range(1, min(nlev, top + 1)):
                f = vofs[lev - 1] + anc[lev, v]
                for d in range(dims):
                    csum[f, d] += (d0[d] if k < a else d1[d]) - old[d]
    if dims > 0:
        range_position(ccum, lo, mid, lpos[lo])
        range_position(ccum, mid, hi, lpos[mid])
    for k in range(start, end):
        rlo[perm[k]] = lo if k < a else mid
        sides[k] = 0 if k < a else 1


