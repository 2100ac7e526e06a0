"""numba kernels: multilevel bisection and the recursive bisection that follows the topology.

Design note: private, arrays and scalars only, no validation (see `_kernels.py` for the
conventions and the random generator). `recursive_bisection` walks the machine's split order
breadth first: a task is (ranks, range of node positions); it splits the range at its highest
`split_key` nearest the capacity midpoint, bisects the ranks' subgraph with exact sizes (left
side filled to capacity first), and queues both halves for the next level. On a torus the
ranks already placed elsewhere pull each vertex towards the nearer half (`bias`), which
orients the halves, so a torus level runs task after task; a tree's tasks are independent
and a level runs in parallel (`prange`). Each task has its own random stream.
"""

from __future__ import annotations

from hpcmig.topology._jit import configure_cache

configure_cache()

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from hpcmig.topology._kernels import (  # noqa: E402
    _MOD,
    _permutation,
    _rand,
    contract,
    fm_refine,
    grow_bisection,
    heavy_edge_matching,
    objective,
)


@njit(cache=True)
def _force_balance(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
                   bias: np.ndarray, side: np.ndarray, target0: float, tol: float) -> None:
    """Move best-gain vertices off the heavy side until |w0 - target0| <= tol (or stuck)."""
    n = len(xadj) - 1
    w0 = 0.0
    for v in range(n):
        if side[v] == 0:
            w0 += vw[v]
    while abs(w0 - target0) > tol + 1e-9:
        s = 0 if w0 > target0 else 1
        imb = abs(w0 - target0)
        best = -1
        best_gain = -np.inf
        for v in range(n):
            if side[v] != s:
                continue
            new_imb = abs(w0 - vw[v] - target0) if s == 0 else abs(w0 + vw[v] - target0)
            if new_imb >= imb:
                continue
            g = bias[v] if s == 1 else -bias[v]
            for e in range(xadj[v], xadj[v + 1]):
                g += ew[e] if side[adj[e]] != s else -ew[e]
            if g > best_gain:
                best_gain = g
                best = v
        if best == -1:
            return
        side[best] = 1 - s
        w0 += -vw[best] if s == 0 else vw[best]


@njit(cache=True)
def multilevel_bisect(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
                      bias: np.ndarray, target0: float, state: np.ndarray, ntries: int,
                      coarsen_to: int) -> np.ndarray:
    """Bisection with side-0 weight exactly target0 (when vertex weights allow it)."""
    total = vw.sum()
    maxvw = max(1.5 * total / coarsen_to, vw.max())
    gx = [xadj]
    ga = [adj]
    ge = [ew]
    gv = [vw]
    gb = [bias]
    cmaps = [np.empty(0, dtype=np.int64)]
    while len(gx[-1]) - 1 > coarsen_to:
        n = len(gx[-1]) - 1
        visit = _permutation(n, state)
        match = heavy_edge_matching(gx[-1], ga[-1], ge[-1], gv[-1], maxvw, visit)
        cmap, cx, ca, ce, cv, cb = contract(gx[-1], ga[-1], ge[-1], gv[-1], gb[-1], match)
        if len(cx) - 1 > 0.95 * n:
            break
        gx.append(cx)
        ga.append(ca)
        ge.append(ce)
        gv.append(cv)
        gb.append(cb)
        cmaps.append(cmap)
    top = len(gx) - 1
    nc = len(gx[top]) - 1
    tol_c = gv[top].max() if top > 0 else 0.0
    search_c = max(gv[top].max(), 1.0)
    best_side = np.zeros(nc, dtype=np.int8)
    best_key0 = np.inf
    best_key1 = np.inf
    for _ in range(ntries):
        side = grow_bisection(gx[top], ga[top], ge[top], gv[top], gb[top], target0,
                              _rand(state) % nc)
        obj = fm_refine(gx[top], ga[top], ge[top], gv[top], gb[top], side, target0, tol_c,
                        search_c, 6)
        w0 = 0.0
        for v in range(nc):
            if side[v] == 0:
                w0 += gv[top][v]
        excess = max(abs(w0 - target0) - tol_c, 0.0)
        if excess < best_key0 or (excess == best_key0 and obj < best_key1):
            best_key0 = excess
            best_key1 = obj
            best_side = side
    side = best_side
    slack = max(1.0, 0.002 * total)
    for lvl in range(top - 1, -1, -1):
        cmap = cmaps[lvl + 1]
        fine = np.empty(len(cmap), dtype=np.int8)
        for v in range(len(cmap)):
            fine[v] = side[cmap[v]]
        side = fine
        tol = 0.0 if lvl == 0 else gv[lvl].max()
        fm_refine(gx[lvl], ga[lvl], ge[lvl], gv[lvl], gb[lvl], side, target0, tol,
                  max(tol, slack, gv[lvl].max()), 8)
    _force_balance(xadj, adj, ew, vw, bias, side, target0, 0.0)
    return side


@njit(cache=True)
def _ring_dist(a: np.ndarray, b: np.ndarray, ring: np.ndarray) -> float:
    d = 0.0
    for k in range(len(ring)):
        x = abs(a[k] - b[k])
        y = ring[k] - x
        d += x if x < y else y
    return d


@njit(cache=True)
def _split_point(keys: np.ndarray, capcum: np.ndarray, lo: int, hi: int) -> int:
    """Boundary of the highest key in lo..hi nearest the capacity midpoint."""
    kmax = keys[lo:hi - 1].max()
    half = 0.5 * (capcum[hi] + capcum[lo])
    mid = -1
    bestd = np.inf
    for p in range(lo, hi - 1):
        if keys[p] == kmax and abs(capcum[p + 1] - half) < bestd:
            bestd = abs(capcum[p + 1] - half)
            mid = p + 1
    return mid


@njit(cache=True)
def _bisect_task(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, members: np.ndarray,
                 owner: np.ndarray, task: int, loc: np.ndarray, vlo: np.ndarray,
                 vhi: np.ndarray, ccum: np.ndarray, ring: np.ndarray, lo: int, mid: int, hi: int,
                 n_left: int, state: np.ndarray, ntries: int, coarsen_to: int, runs: int,
                 par_runs: bool) -> np.ndarray:
    """Side of each of `members` (owner[v] == task and loc[v] = index for exactly those)."""
    ns = len(members)
    dims = len(ring)
    sx = np.zeros(ns + 1, dtype=np.int64)
    for i in range(ns):
        v = members[i]
        cnt = 0
        for e in range(xadj[v], xadj[v + 1]):
            if owner[adj[e]] == task:
                cnt += 1
        sx[i + 1] = sx[i] + cnt
    sa = np.empty(sx[ns], dtype=np.int64)
    se = np.empty(sx[ns], dtype=np.float64)
    sbias = np.zeros(ns, dtype=np.float64)
    c_left = (ccum[mid] - ccum[lo]) / (mid - lo)
    c_right = (ccum[hi] - ccum[mid]) / (hi - mid)
    for i in range(ns):
        v = members[i]
        j = sx[i]
        for e in range(xadj[v], xadj[v + 1]):
            u = adj[e]
            if owner[u] == task:
                sa[j] = loc[u]
                se[j] = ew[e]
                j += 1
            elif dims > 0:
                cu = (ccum[vhi[u]] - ccum[vlo[u]]) / (vhi[u] - vlo[u])
                sbias[i] += ew[e] * (_ring_dist(c_right, cu, ring)
                                     - _ring_dist(c_left, cu, ring))
    if par_runs and runs > 1:
        return _runs_parallel(sx, sa, se, sbias, float(n_left), state[0], ntries, coarsen_to,
                              runs)
    return _runs_serial(sx, sa, se, sbias, float(n_left), state[0], ntries, coarsen_to, runs)


@njit(cache=True)
def _one_run(sx: np.ndarray, sa: np.ndarray, se: np.ndarray, sbias: np.ndarray,
             target0: float, seed0: int, run: int, ntries: int, coarsen_to: int
             ) -> np.ndarray:
    """Run `run` of a bisection, on its own random stream (so runs may go in parallel)."""
    state = np.array([(seed0 + 104_729 * run) % (_MOD - 1) + 1], dtype=np.int64)
    svw = np.ones(len(sx) - 1, dtype=np.float64)
    return multilevel_bisect(sx, sa, se, svw, sbias, target0, state, ntries, coarsen_to)


@njit(cache=True)
def _runs_serial(sx: np.ndarray, sa: np.ndarray, se: np.ndarray, sbias: np.ndarray,
                 target0: float, seed0: int, ntries: int, coarsen_to: int, runs: int
                 ) -> np.ndarray:
    """Best of `runs` runs (lowest objective, first on ties)."""
    side = _one_run(sx, sa, se, sbias, target0, seed0, 0, ntries, coarsen_to)
    best = objective(sx, sa, se, sbias, side)
    for r in range(1, runs):
        other = _one_run(sx, sa, se, sbias, target0, seed0, r, ntries, coarsen_to)
        obj = objective(sx, sa, se, sbias, other)
        if obj < best:
            best = obj
            side = other
    return side


@njit(cache=True, parallel=True)
def _runs_parallel(sx: np.ndarray, sa: np.ndarray, se: np.ndarray, sbias: np.ndarray,
                   target0: float, seed0: int, ntries: int, coarsen_to: int, runs: int
                   ) -> np.ndarray:
    """`_runs_serial` with the runs in parallel; the same result."""
    ns = len(sx) - 1
    out = np.empty((runs, ns), dtype=np.int8)
    objs = np.empty(runs, dtype=np.float64)
    for r in prange(runs):
        side = _one_run(sx, sa, se, sbias, target0, seed0, r, ntries, coarsen_to)
        out[r] = side
        objs[r] = objective(sx, sa, se, sbias, side)
    best = 0
    for r in range(1, runs):
        if objs[r] < objs[best]:
            best = r
    return out[best].copy()


@njit(cache=True)
def _run_task(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, perm: np.ndarray,
              sides: np.ndarray, owner: np.ndarray, loc: np.ndarray, vlo: np.ndarray,
              vhi: np.ndarray, ccum: np.ndarray, ring: np.ndarray, capcum: np.ndarray,
              start: int, end: int, lo: int, hi: int, mid: int, task: int, base: int,
              ntries: int, coarsen_to: int, runs: int, par_runs: bool) -> None:
    """One task of a level: write the side of perm[start:end] into sides[start:end]."""
    if mid < 0:
        return
    ns = end - start
    n_left = min(ns, capcum[mid] - capcum[lo])
    if n_left == ns or n_left == 0:
        sides[start:end] = 0 if n_left == ns else 1
        return
    state = np.array([(base + 1_000_003 * lo + 7919 * hi) % (_MOD - 1) + 1], dtype=np.int64)
    side = _bisect_task(xadj, adj, ew, perm[start:end].copy(), owner, task, loc, vlo, vhi,
                        ccum, ring, lo, mid, hi, n_left, state, ntries, coarsen_to, runs,
                        par_runs)
    sides[start:end] = side


@njit(cache=True, parallel=True)
def _run_level(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, perm: np.ndarray,
               sides: np.ndarray, owner: np.ndarray, loc: np.ndarray, vlo: np.ndarray,
               vhi: np.ndarray, ccum: np.ndarray, ring: np.ndarray, capcum: np.ndarray,
               qs: np.ndarray, qe: np.ndarray, ql: np.ndarray, qh: np.ndarray,
               mids: np.ndarray, base: int, ntries: int, coarsen_to: int, nruns: int,
               runs_above: int) -> None:
    """The tasks of one level in parallel (they write disjoint ranges of `sides`)."""
    for t in prange(len(qs)):
        runs = nruns if qe[t] - qs[t] > runs_above else 1
        _run_task(xadj, adj, ew, perm, sides, owner, loc, vlo, vhi, ccum, ring, capcum,
                  qs[t], qe[t], ql[t], qh[t], mids[t], t, base, ntries, coarsen_to, runs,
                  False)


@njit(cache=True)
def recursive_bisection(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, caps: np.ndarray,
                        keys: np.ndarray, ccum: np.ndarray, ring: np.ndarray, seed: int,
                        ntries: int, coarsen_to: int, nruns: int, runs_above: int
                        ) -> np.ndarray:
    """Position (index into the topology order) of every rank; `caps` are slots per position.

    `ccum` is the (M+1, D) cumulative sum of torus coordinates along the order (D = 0 for
    hierarchical machines); `ring` holds the torus extents as floats. A subgraph of more than
    `runs_above` ranks is bisected `nruns` times (best kept); a smaller one once (its
    `ntries` initial bisections on a graph that coarsens little already cover it).

    Level by level: the tasks of one level are independent (each reads where the other ranks
    were placed by the previous levels only) and run in parallel (`prange`); each has its own
    random stream seeded from (seed, its node range), so the result does not depend on the
    number of threads, nor on NUMBA_DISABLE_JIT.
    """
    n = len(xadj) - 1
    m = len(caps)
    capcum = np.zeros(m + 1, dtype=np.int64)
    for p in range(m):
        capcum[p + 1] = capcum[p] + caps[p]
    perm = np.arange(n)
    vlo = np.zeros(n, dtype=np.int64)
    vhi = np.full(n, m, dtype=np.int64)
    pos = np.full(n, -1, dtype=np.int64)
    loc = np.zeros(n, dtype=np.int64)
    owner = np.full(n, -1, dtype=np.int64)
    sides = np.zeros(n, dtype=np.int8)
    base = seed % (_MOD - 1)
    qs = np.zeros(1, dtype=np.int64)
    qe = np.full(1, n, dtype=np.int64)
    ql = np.zeros(1, dtype=np.int64)
    qh = np.full(1, m, dtype=np.int64)
    while len(qs) > 0:
        nt = len(qs)
        mids = np.full(nt, -1, dtype=np.int64)
        for t in range(nt):
            if qh[t] - ql[t] > 1 and qe[t] > qs[t]:
                mids[t] = _split_point(keys, capcum, ql[t], qh[t])
            for k in range(qs[t], qe[t]):
                loc[perm[k]] = k - qs[t]
                owner[perm[k]] = t
        if len(ring) == 0:  # a tree's tasks are independent: the level in parallel
            _run_level(xadj, adj, ew, perm, sides, owner, loc, vlo, vhi, ccum, ring, capcum,
                       qs, qe, ql, qh, mids, base, ntries, coarsen_to, nruns, runs_above)
            for t in range(nt):
                _apply_task(perm, sides, vlo, vhi, qs[t], qe[t], ql[t], mids[t], qh[t])
        else:  # torus: a task sees where the tasks before it put their ranks (orientation),
            for t in range(nt):  # so tasks in turn, each one's runs in parallel
                runs = nruns if qe[t] - qs[t] > runs_above else 1
                _run_task(xadj, adj, ew, perm, sides, owner, loc, vlo, vhi, ccum, ring,
                          capcum, qs[t], qe[t], ql[t], qh[t], mids[t], t, base, ntries,
                          coarsen_to, runs, True)
                _apply_task(perm, sides, vlo, vhi, qs[t], qe[t], ql[t], mids[t], qh[t])
        nxt = _next_level(perm, sides, pos, qs, qe, ql, qh, mids)
        qs, qe, ql, qh = nxt[0], nxt[1], nxt[2], nxt[3]
    return pos


@njit(cache=True)
def _apply_task(perm: np.ndarray, sides: np.ndarray, vlo: np.ndarray, vhi: np.ndarray,
                start: int, end: int, lo: int, mid: int, hi: int) -> None:
    """Order a bisected task's ranks side 0 first and narrow their node ranges."""
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
    for k in range(start, end):
        vlo[perm[k]] = lo if k < a else mid
        vhi[perm[k]] = mid if k < a else hi
        sides[k] = 0 if k < a else 1


@njit(cache=True)
def _next_level(perm: np.ndarray, sides: np.ndarray, pos: np.ndarray, qs: np.ndarray,
                qe: np.ndarray, ql: np.ndarray, qh: np.ndarray, mids: np.ndarray) -> np.ndarray:
    """Record leaves in `pos`; returns the next level's tasks as rows (start, end, lo, hi)."""
    nt = len(qs)
    cnt = 0
    for t in range(nt):
        if mids[t] >= 0:
            cnt += 2
        else:
            for k in range(qs[t], qe[t]):
                pos[perm[k]] = ql[t]
    out = np.empty((4, cnt), dtype=np.int64)
    c = 0
    for t in range(nt):
        start, end, lo, hi, mid = qs[t], qe[t], ql[t], qh[t], mids[t]
        if mid < 0:
            continue
        a = start
        while a < end and sides[a] == 0:
            a += 1
        out[0, c], out[1, c], out[2, c], out[3, c] = start, a, lo, mid
        out[0, c + 1], out[1, c + 1], out[2, c + 1], out[3, c + 1] = a, end, mid, hi
        c += 2
    return out


__all__ = ["multilevel_bisect", "objective", "recursive_bisection"]
