"""numba kernels: multilevel bisection and the recursive bisection that follows the topology.

Design note: private, arrays and scalars only, no validation (see `_kernels.py` for the
conventions and the random generator). `recursive_bisection` walks the machine's split order
breadth first: a task is (ranks, range of node positions); it splits the range at its highest
`split_key` nearest the capacity midpoint, bisects the ranks' subgraph with exact sizes (left
side filled to capacity first), and queues both halves for the next level. A level goes in
three steps: extract the tasks' subgraphs (serial), run every run of every bisection as a
job (`_run_jobs`, the one parallel kernel: `prange` over jobs), keep each task's best run
and even out its sides (serial). On a torus the ranks already placed elsewhere pull each
vertex towards the nearer half (`bias`), which orients the halves, so a torus level runs
task after task (each task's runs in parallel); a tree's tasks are independent and a level
is one batch. Each task and each run has its own random stream.

`build_hierarchy` coarsens a dense rank graph once; a task holding enough clusters of some
level is then bisected as those clusters (`_extract` at that level, `_finish` to exact
sizes), so the recursion stops walking every rank's entries at every level. The kernels are
few and flat on purpose: numba re-optimises every callee inside each caller it is linked
into, so each extra layer above `multilevel_bisect` costs seconds of cold compilation.
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
    contract_into,
    contract_parallel,
    fm_refine,
    grow_bisection,
    heavy_edge_matching,
    objective,
)
from hpcmig.topology._kernels_task import (  # noqa: E402
    _apply_task,
    _centroid,
    _extract,
    _finish,
    range_position,
)

DENSE_TRIES = 16  # coarsest graphs with more entries per vertex get one initial try
INIT_PASSES = 6  # FM passes after each initial bisection of the coarsest graph
PARALLEL_CONTRACT = 1_000_000  # levels with this many entries are contracted on all cores


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
                      coarsen_to: int, seq: bool) -> np.ndarray:
    """Bisection with side-0 weight exactly target0 (when vertex weights allow it).

    Matching visits vertices in random order, or in their given order when `seq` (ranks in
    natural order often number a grid row by row: coarse vertices then stay aligned).
    """
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
        visit = np.arange(n) if seq else _permutation(n, state)
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
    # initial tries are cheap on sparse coarse graphs; on dense ones (near cliques) they cost
    # O(n^2) each and agree: one
    tries = ntries if len(ga[top]) <= DENSE_TRIES * nc else 1
    for _ in range(tries):
        side = grow_bisection(gx[top], ga[top], ge[top], gv[top], gb[top], target0,
                              _rand(state) % nc)
        obj = fm_refine(gx[top], ga[top], ge[top], gv[top], gb[top], side, target0, tol_c,
                        search_c, INIT_PASSES)
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
def _grow_i(a: np.ndarray, need: int) -> np.ndarray:
    if need <= len(a):
        return a
    b = np.empty(max(need, len(a) + len(a) // 2), dtype=a.dtype)
    b[:len(a)] = a
    return b


@njit(cache=True)
def _grow_f(a: np.ndarray, need: int) -> np.ndarray:
    if need <= len(a):
        return a
    b = np.empty(max(need, len(a) + len(a) // 2), dtype=a.dtype)
    b[:len(a)] = a
    return b


@njit(cache=True)
def build_hierarchy(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, seed: int,
                    min_vertices: int, max_levels: int, seq: bool, first_shrink: float,
                    chunks: int = 1) -> tuple[np.ndarray, ...]:
    """Coarsen the whole rank graph once by heavy-edge matching: levels 1..L.

    Returns (hx, ha, he, hv, vofs, eofs, anc). Level l >= 1 is the CSR graph
    hx[vofs[l-1] + l-1 : vofs[l] + l], ha/he[eofs[l-1] : eofs[l]] with vertex weights (ranks
    per cluster) hv[vofs[l-1] : vofs[l]]; anc[l, v] is the level-l cluster of rank v (anc[0]
    is the identity). Coarsening stops at `min_vertices` vertices, `max_levels` levels, or
    when a level shrinks by less than 10%. With `seq`, matching visits vertices in order
    (ranks numbered along a grid give aligned clusters, so coarse levels stay sparse). No
    level is kept when the first one still has more than `first_shrink` of the entries: the
    pairs then cut across the structure (all-to-all in rows and columns with ranks numbered
    at random pairs row with column partners), and clusters fixed once would spoil every cut.
    Levels of PARALLEL_CONTRACT entries or more are contracted by `chunks` parallel blocks
    (the same levels for any number).
    """
    n = len(xadj) - 1
    state = np.array([seed % (_MOD - 1) + 1], dtype=np.int64)
    maxvw = max(2.0, 1.5 * n / max(min_vertices, 1))
    anc = np.empty((max_levels + 1, n), dtype=np.int64)
    anc[0] = np.arange(n)
    vofs = np.zeros(max_levels + 1, dtype=np.int64)
    eofs = np.zeros(max_levels + 1, dtype=np.int64)
    hx = np.empty(n + 1, dtype=np.int64)
    hv = np.empty(n, dtype=np.float64)
    ha = np.empty(len(adj) + 1, dtype=np.int64)
    he = np.empty(len(adj) + 1, dtype=np.float64)
    cmap = np.empty(n, dtype=np.int64)
    mark = np.empty(n, dtype=np.int64)
    cx, ca, ce, cv = xadj, adj, ew, np.ones(n, dtype=np.float64)
    levels = 0
    while levels < max_levels and len(cx) - 1 > min_vertices:
        nl = len(cx) - 1
        visit = np.arange(nl) if seq else _permutation(nl, state)
        match = heavy_edge_matching(cx, ca, ce, cv, maxvw, visit)
        v0 = vofs[levels]
        e0 = eofs[levels]
        hx = _grow_i(hx, v0 + levels + nl + 1)
        hv = _grow_f(hv, v0 + nl)
        ha = _grow_i(ha, e0 + len(ca))
        he = _grow_f(he, e0 + len(ca))
        cxo = hx[v0 + levels:v0 + levels + nl + 1]
        if chunks > 1 and len(ca) >= PARALLEL_CONTRACT:
            nc, ne = contract_parallel(cx, ca, ce, cv, match, cmap, cxo, ha[e0:e0 + len(ca)],
                                       he[e0:e0 + len(ca)], hv[v0:v0 + nl], chunks)
        else:
            nc, ne = contract_into(cx, ca, ce, cv, match, cmap, cxo, ha[e0:e0 + len(ca)],
                                   he[e0:e0 + len(ca)], hv[v0:v0 + nl], mark)
        if nc > 0.9 * nl or (levels == 0 and ne > first_shrink * len(adj)):
            break
        vofs[levels + 1] = v0 + nc
        eofs[levels + 1] = e0 + ne
        for v in range(n):
            anc[levels + 1, v] = cmap[anc[levels, v]]
        levels += 1
        cx = hx[v0 + levels - 1:v0 + nc + levels]
        ca = ha[e0:e0 + ne]
        ce = he[e0:e0 + ne]
        cv = hv[v0:v0 + nc]
    return hx, ha, he, hv, vofs[:levels + 1].copy(), eofs[:levels + 1].copy(), anc[:levels + 1]


@njit(cache=True)
def _level(lev: int, xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, hx: np.ndarray,
           ha: np.ndarray, he: np.ndarray, hv: np.ndarray, vofs: np.ndarray, eofs: np.ndarray,
           ones: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(xadj, adj, ew, vertex weights) of hierarchy level `lev` (0 = the rank graph)."""
    if lev == 0:
        return xadj, adj, ew, ones
    k = lev - 1
    return (hx[vofs[k] + k:vofs[k + 1] + k + 1], ha[eofs[k]:eofs[k + 1]],
            he[eofs[k]:eofs[k + 1]], hv[vofs[k]:vofs[k + 1]])


@njit(cache=True, parallel=True)
def _run_jobs(bx: np.ndarray, ba: np.ndarray, be: np.ndarray, bw: np.ndarray, bb: np.ndarray,
              tv: np.ndarray, te: np.ndarray, ttarget: np.ndarray, tseed: np.ndarray,
              tries: np.ndarray, jt: np.ndarray, jr: np.ndarray, jseq: np.ndarray,
              jo: np.ndarray, out: np.ndarray, objs: np.ndarray, coarsen_to: int) -> None:
    """Every job in parallel: run jr[j] of the bisection of extracted task jt[j].

    Task t is the CSR graph bx[tv[t] + t : tv[t+1] + t + 1], ba/be[te[t] : te[t+1]] with
    vertex weights bw and bias bb[tv[t] : tv[t+1]]. Each run draws from its own random stream
    (task seed, run), so jobs may go in any order; they write disjoint parts of out/objs.
    """
    for j in prange(len(jt)):
        t = jt[j]
        v0 = tv[t]
        v1 = tv[t + 1]
        x = bx[v0 + t:v1 + t + 1]
        a = ba[te[t]:te[t + 1]]
        e = be[te[t]:te[t + 1]]
        b = bb[v0:v1]
        state = np.array([(tseed[t] + 104_729 * jr[j]) % (_MOD - 1) + 1], dtype=np.int64)
        side = multilevel_bisect(x, a, e, bw[v0:v1], b, ttarget[t], state, tries[t],
                                 coarsen_to, jseq[j])
        out[jo[j]:jo[j] + v1 - v0] = side
        objs[j] = objective(x, a, e, b, side)


@njit(cache=True)
def _child_level(ranks: int, parent: int, avgw: np.ndarray, min_coarse: int) -> int:
    """Coarsest level, not above the parent's, where `ranks` make >= min_coarse clusters."""
    for lev in range(parent, 0, -1):
        if ranks >= min_coarse * avgw[lev]:
            return lev
    return 0


@njit(cache=True)
def recursive_bisection(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, hx: np.ndarray,
                        ha: np.ndarray, he: np.ndarray, hv: np.ndarray, vofs: np.ndarray,
                        eofs: np.ndarray, anc: np.ndarray, caps: np.ndarray, keys: np.ndarray,
                        ccum: np.ndarray, ring: np.ndarray, seed: int, ntries: int,
                        small_tries: int, coarsen_to: int, nruns: int, root_runs: int,
                        runs_above: int, min_coarse: int, seq_run: bool) -> np.ndarray:
    """Position (index into the topology order) of every rank; `caps` are slots per position.

    `ccum` is the (M+1, D) cumulative sum of torus coordinates along the order (D = 0 for
    hierarchical machines); `ring` holds the torus extents as floats. The hierarchy
    (`build_hierarchy`; no levels for sparse graphs) lets a task of many ranks be bisected as
    clusters: at the coarsest level where it still has `min_coarse` of them. A bisection of
    more than `runs_above` ranks keeps the best of `nruns` runs (`root_runs` for the first
    cut of a tree; run 0 in rank order when `seq_run`) with `ntries` initial bisections
    each (half below 4 runs_above ranks); smaller ones make two runs of half the tries, or,
    when they are not coarsened at all (at most `coarsen_to` vertices), `small_tries` runs of
    one try.

    Level by level: a tree's tasks are independent (each reads where the other ranks were
    placed by the previous levels only), so all runs of all tasks of a level go in parallel;
    on a torus tasks go in turn (placed ranks orient the next) with their runs in parallel.
    Every task has a random stream seeded from (seed, its node range), every run its own:
    the result does not depend on the number of threads, nor on NUMBA_DISABLE_JIT.
    """
    n = len(xadj) - 1
    m = len(caps)
    nlev = anc.shape[0]
    dims = len(ring)
    capcum = np.zeros(m + 1, dtype=np.int64)
    for p in range(m):
        capcum[p + 1] = capcum[p] + caps[p]
    ones = np.ones(n, dtype=np.float64)
    nflat = n + vofs[nlev - 1]
    mark = np.full(nflat, -1, dtype=np.int64)
    lid = np.zeros(nflat, dtype=np.int64)
    avgw = np.ones(nlev, dtype=np.float64)
    for lev in range(1, nlev):
        avgw[lev] = n / (vofs[lev] - vofs[lev - 1])
    csum = np.zeros((max(nflat - n, 1) if dims > 0 else 1, max(dims, 1)), dtype=np.float64)
    if dims > 0:
        c0 = np.empty(dims)
        _centroid(ccum, 0, m, c0)
        for f in range(nflat - n):
            for d in range(dims):
                csum[f, d] = hv[f] * c0[d]
    ihv = np.ones(max(nflat - n, 1), dtype=np.float64)  # 1 / ranks of each cluster
    for f in range(nflat - n):
        ihv[f] = 1.0 / hv[f]
    perm = np.arange(n)
    rlo = np.zeros(n, dtype=np.int64)  # start of each rank's node range
    lpos = np.zeros((m, dims), dtype=np.float64)  # torus: centroid of the range from there
    if dims > 0:
        range_position(ccum, 0, m, lpos[0])
    pos = np.full(n, -1, dtype=np.int64)
    sides = np.zeros(n, dtype=np.int8)
    rl = np.zeros(n, dtype=np.int64)
    clus = np.zeros(n, dtype=np.int64)
    bx = np.zeros(n + m + 2, dtype=np.int64)  # a task's xadj: its vertices + 1, tasks <= m
    bw = np.zeros(n + 1, dtype=np.float64)
    bb = np.zeros(n + 1, dtype=np.float64)
    # a level's subgraphs, grown as needed: every rank's entries (zeroed) would cost 0.5 GB
    # of page faults on a dense graph, whose tasks only keep their internal entries
    ba = np.empty(n + 1, dtype=np.int64)
    be = np.empty(n + 1, dtype=np.float64)
    base = seed % (_MOD - 1)
    stamp = 0
    qs = np.zeros(1, dtype=np.int64)
    qe = np.full(1, n, dtype=np.int64)
    ql = np.zeros(1, dtype=np.int64)
    qh = np.full(1, m, dtype=np.int64)
    qv = np.full(1, _child_level(n, nlev - 1, avgw, min_coarse), dtype=np.int64)
    while len(qs) > 0:
        nt = len(qs)
        top = qv.max()  # coarsest level any task bisects at, from now on
        mids = np.full(nt, -1, dtype=np.int64)
        for t in range(nt):
            if qh[t] - ql[t] > 1 and qe[t] > qs[t]:
                mids[t] = _split_point(keys, capcum, ql[t], qh[t])
        # a tree's tasks are independent: one batch. On a torus each task reads where the
        # tasks before it put their ranks (it orients the halves): one task per batch
        tord = np.arange(nt)
        bnd = np.array([0, nt], dtype=np.int64) if dims == 0 else np.arange(nt + 1)
        for bi in range(len(bnd) - 1):
            b0, b1 = bnd[bi], bnd[bi + 1]
            # 1) extract the bisections of the batch's tasks (serial), count their runs
            tv = np.zeros(b1 - b0 + 1, dtype=np.int64)
            te = np.zeros(b1 - b0 + 1, dtype=np.int64)
            ttarget = np.zeros(b1 - b0, dtype=np.float64)
            tseed = np.zeros(b1 - b0, dtype=np.int64)
            tries = np.zeros(b1 - b0, dtype=np.int64)
            truns = np.zeros(b1 - b0, dtype=np.int64)
            for k in range(b1 - b0):
                t = tord[b0 + k]
                tv[k + 1] = tv[k]
                te[k + 1] = te[k]
                ns = qe[t] - qs[t]
                if mids[t] < 0:
                    continue
                lo, mid, hi = ql[t], mids[t], qh[t]
                n_left = min(ns, capcum[mid] - capcum[lo])
                if n_left == ns or n_left == 0:
                    sides[qs[t]:qe[t]] = 0 if n_left == ns else 1
                    continue
                lev = qv[t]
                x, a, e, _ = _level(lev, xadj, adj, ew, hx, ha, he, hv, vofs, eofs, ones)
                ihw = ones if lev == 0 else ihv[vofs[lev - 1]:vofs[lev]]
                fbase = 0 if lev == 0 else n + vofs[lev - 1]
                room = 0
                for i in range(qs[t], qe[t]):
                    c = anc[lev, perm[i]]
                    if mark[fbase + c] != -2 - stamp:
                        mark[fbase + c] = -2 - stamp
                        room += x[c + 1] - x[c]
                ba = _grow_i(ba, te[k] + room)
                be = _grow_f(be, te[k] + room)
                stamp += 1
                nv, ne = _extract(perm, qs[t], qe[t], lev, x, a, e, anc, fbase, mark, lid,
                                  stamp, clus, rl, bx, ba, be, bw, bb, tv[k], tv[k] + k,
                                  te[k], rlo, lpos, ccum, csum, ihw, ring, lo, mid, hi)
                stamp += 1
                tv[k + 1] = tv[k] + nv
                te[k + 1] = te[k] + ne
                ttarget[k] = n_left
                tseed[k] = (base + 1_000_003 * lo + 7919 * hi) % (_MOD - 1) + 1
                if ns > runs_above:  # runs of a full multilevel bisection (fewer initial
                    truns[k] = nruns  # tries on the lower levels: cheap cuts, many tasks)
                    if dims == 0 and 2 * ns > n:  # a tree's first cut: its costliest
                        truns[k] = max(nruns, root_runs)
                    tries[k] = ntries if ns > 4 * runs_above else max(1, ntries // 2)
                elif nv > coarsen_to:  # coarsened once or twice: two runs, half the tries
                    truns[k] = min(2, nruns)
                    tries[k] = max(1, ntries // truns[k])
                elif ne <= DENSE_TRIES * nv:  # not coarsened: its tries are the runs
                    truns[k] = small_tries
                    tries[k] = 1
                else:  # a small near clique: one try (see multilevel_bisect)
                    truns[k] = 1
                    tries[k] = 1
            # 2) all runs of those bisections, in parallel
            nj = 0
            for k in range(b1 - b0):
                if tv[k + 1] > tv[k]:
                    nj += truns[k]
            jt = np.zeros(nj, dtype=np.int64)
            jr = np.zeros(nj, dtype=np.int64)
            jseq = np.zeros(nj, dtype=np.bool_)
            jo = np.zeros(nj + 1, dtype=np.int64)
            j = 0
            for k in range(b1 - b0):
                if tv[k + 1] == tv[k]:
                    continue
                big = qe[tord[b0 + k]] - qs[tord[b0 + k]] > runs_above
                for r in range(truns[k]):
                    jt[j] = k
                    jr[j] = r
                    jseq[j] = seq_run and r == 0 and big
                    jo[j + 1] = jo[j] + tv[k + 1] - tv[k]
                    j += 1
            out = np.empty(jo[nj], dtype=np.int8)
            objs = np.empty(nj, dtype=np.float64)
            if nj > 0:
                _run_jobs(bx, ba, be, bw, bb, tv, te, ttarget, tseed, tries, jt, jr, jseq, jo,
                          out, objs, coarsen_to)
            # 3) best run of each task, exact side sizes, ranks' sides; then place them
            j = 0
            for k in range(b1 - b0):
                if tv[k + 1] == tv[k]:
                    continue
                best = j
                for r in range(1, truns[k]):
                    if objs[j + r] < objs[best]:
                        best = j + r
                j += truns[k]
                v0, v1 = tv[k], tv[k + 1]
                _finish(out[jo[best]:jo[best + 1]].copy(), bx[v0 + k:v1 + k + 1],
                        ba[te[k]:te[k + 1]], be[te[k]:te[k + 1]], bw[v0:v1], bb[v0:v1],
                        ttarget[k], rl, qs[tord[b0 + k]], qe[tord[b0 + k]], sides)
            for k in range(b1 - b0):
                t = tord[b0 + k]
                _apply_task(perm, sides, rlo, lpos, qs[t], qe[t], ql[t], mids[t], qh[t], ccum,
                            anc, vofs, csum, top)
        nxt = _next_level(perm, sides, pos, qs, qe, ql, qh, mids, qv, avgw, min_coarse)
        qs, qe, ql, qh, qv = nxt[0], nxt[1], nxt[2], nxt[3], nxt[4]
    return pos


@njit(cache=True)
def _next_level(perm: np.ndarray, sides: np.ndarray, pos: np.ndarray, qs: np.ndarray,
                qe: np.ndarray, ql: np.ndarray, qh: np.ndarray, mids: np.ndarray,
                qv: np.ndarray, avgw: np.ndarray, min_coarse: int) -> np.ndarray:
    """Record leaves in `pos`; next level's tasks as rows (start, end, lo, hi, level)."""
    nt = len(qs)
    cnt = 0
    for t in range(nt):
        if mids[t] >= 0:
            cnt += 2
        else:
            for k in range(qs[t], qe[t]):
                pos[perm[k]] = ql[t]
    out = np.empty((5, cnt), dtype=np.int64)
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
        out[4, c] = _child_level(a - start, qv[t], avgw, min_coarse)
        out[4, c + 1] = _child_level(end - a, qv[t], avgw, min_coarse)
        c += 2
    return out


__all__ = ["build_hierarchy", "multilevel_bisect", "objective", "recursive_bisection"]
