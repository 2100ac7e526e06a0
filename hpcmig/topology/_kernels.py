"""numba kernels of the partitioner: coarsening, FM bisection, recursive bisection driver.

Design note: private. Arrays and scalars in, arrays out; no validation (callers in
`mapper.py` validate), no Python objects, no I/O. Every kernel is deterministic: randomness
comes from a Park-Miller generator (`_rand`) whose state is a one-element int64 array, so the
same seed gives the same result compiled or with NUMBA_DISABLE_JIT=1. Graphs are CSR
(`xadj`, `adj`, `ew`) of the symmetric rank graph without self loops; `vw` are vertex weights
(slots used) and `bias[v]` is the extra cost of putting v on side 1 rather than side 0 (pull
from already-placed neighbours on a torus). The bisection minimises cut + sum of bias over
side 1 with side 0 holding exactly `target0` weight.
"""

from __future__ import annotations

from hpcmig.topology._jit import configure_cache

configure_cache()

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

_MOD = 2147483647
_MUL = 48271
FM_PATIENCE = 25  # moves tried past the best state before a pass stops (at least)


@njit(cache=True)
def _rand(state: np.ndarray) -> int:
    state[0] = (state[0] * _MUL) % _MOD
    return int(state[0])


@njit(cache=True)
def _permutation(n: int, state: np.ndarray) -> np.ndarray:
    a = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = _rand(state) % (i + 1)
        t = a[i]
        a[i] = a[j]
        a[j] = t
    return a


@njit(cache=True)
def heavy_edge_matching(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
                        maxvw: float, visit: np.ndarray) -> np.ndarray:
    """Match each vertex (in `visit` order) with its best unmatched neighbour.

    Best = highest ew^2 / (vw_u vw_v) (KaHIP's expansion*^2 rating): heavy edges between light
    vertices, which keeps coarse graphs even.
    """
    n = len(xadj) - 1
    match = np.full(n, -1, dtype=np.int64)
    for k in range(n):
        v = visit[k]
        if match[v] != -1:
            continue
        best = -1
        bw = -1.0
        for e in range(xadj[v], xadj[v + 1]):
            u = adj[e]
            if match[u] == -1 and u != v and vw[u] + vw[v] <= maxvw:
                rating = ew[e] * ew[e] / (vw[u] * vw[v])  # KaHIP's expansion*^2
                if rating > bw:
                    bw = rating
                    best = u
        if best == -1:
            match[v] = v
        else:
            match[v] = best
            match[best] = v
    return match


@njit(cache=True)
def number_pairs(match: np.ndarray, cmap: np.ndarray, reps: np.ndarray) -> int:
    """Coarse ids of matched pairs, in the order of each pair's smaller vertex: cmap[v] for
    every vertex, reps[c] the smaller vertex of pair c; returns the number of pairs."""
    nc = 0
    for v in range(len(match)):
        u = match[v]
        if u >= v:
            cmap[v] = nc
            cmap[u] = nc
            reps[nc] = v
            nc += 1
    return nc


@njit(cache=True)
def contract_into(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
                  match: np.ndarray, cmap: np.ndarray, cxadj: np.ndarray, cadj: np.ndarray,
                  cew: np.ndarray, cvw: np.ndarray, mark: np.ndarray) -> tuple[int, int]:
    """Merge matched pairs into the caller's buffers; returns (coarse vertices, entries).

    Coarse ids follow the smaller vertex of each pair. `cmap` (n), `cxadj` (n + 1), `cvw`
    and `mark` (n) and `cadj`/`cew` (len(adj)) are large enough for any matching; only
    their first nc (+1) / ne entries are written.
    """
    nc = number_pairs(match, cmap, mark)  # representatives, overwritten below by the marks
    reps = mark[:nc].copy()
    mark[:nc] = -1
    cxadj[0] = 0
    ne = 0
    for c in range(nc):
        start = ne
        v0 = reps[c]
        cvw[c] = 0.0
        for k in range(2):
            v = v0 if k == 0 else match[v0]
            if k == 1 and v == v0:
                break
            cvw[c] += vw[v]
            for e in range(xadj[v], xadj[v + 1]):
                cu = cmap[adj[e]]
                if cu == c:
                    continue
                if mark[cu] >= start:
                    cew[mark[cu]] += ew[e]
                else:
                    mark[cu] = ne
                    cadj[ne] = cu
                    cew[ne] = ew[e]
                    ne += 1
        cxadj[c + 1] = ne
    return nc, ne


@njit(cache=True, parallel=True)
def contract_parallel(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
                      match: np.ndarray, cmap: np.ndarray, cxadj: np.ndarray,
                      cadj: np.ndarray, cew: np.ndarray, cvw: np.ndarray, chunks: int
                      ) -> tuple[int, int]:
    """`contract_into` by `chunks` blocks of coarse vertices in parallel, same output.

    Each block counts its vertices' distinct coarse neighbours, then (after a prefix sum)
    writes them in the same order of first appearance with the same sums; every block has
    its own marks. Two passes over the entries, on all cores.
    """
    reps = np.empty(len(xadj) - 1, dtype=np.int64)
    nc = number_pairs(match, cmap, reps)
    cnt = np.zeros(nc + 1, dtype=np.int64)
    for t in prange(chunks):
        c0 = nc * t // chunks
        c1 = nc * (t + 1) // chunks
        seen = np.full(nc, -1, dtype=np.int64)
        for c in range(c0, c1):
            k = 0
            for h in range(2):
                v = reps[c] if h == 0 else match[reps[c]]
                if h == 1 and v == reps[c]:
                    break
                for e in range(xadj[v], xadj[v + 1]):
                    cu = cmap[adj[e]]
                    if cu != c and seen[cu] != c:
                        seen[cu] = c
                        k += 1
            cnt[c + 1] = k
    cxadj[0] = 0
    for c in range(nc):
        cxadj[c + 1] = cxadj[c] + cnt[c + 1]
    for t in prange(chunks):
        c0 = nc * t // chunks
        c1 = nc * (t + 1) // chunks
        seen = np.full(nc, -1, dtype=np.int64)
        at = np.empty(nc, dtype=np.int64)
        for c in range(c0, c1):
            k = cxadj[c]
            cvw[c] = 0.0
            for h in range(2):
                v = reps[c] if h == 0 else match[reps[c]]
                if h == 1 and v == reps[c]:
                    break
                cvw[c] += vw[v]
                for e in range(xadj[v], xadj[v + 1]):
                    cu = cmap[adj[e]]
                    if cu == c:
                        continue
                    if seen[cu] == c:
                        cew[at[cu]] += ew[e]
                    else:
                        seen[cu] = c
                        at[cu] = k
                        cadj[k] = cu
                        cew[k] = ew[e]
                        k += 1
    return nc, cxadj[nc]


@njit(cache=True)
def contract(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
             bias: np.ndarray, match: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge matched pairs: returns (cmap, cxadj, cadj, cew, cvw, cbias)."""
    n = len(xadj) - 1
    cmap = np.empty(n, dtype=np.int64)
    cxadj = np.empty(n + 1, dtype=np.int64)
    cadj = np.empty(len(adj), dtype=np.int64)
    cew = np.empty(len(adj), dtype=np.float64)
    cvw = np.empty(n, dtype=np.float64)
    mark = np.empty(n, dtype=np.int64)
    nc, ne = contract_into(xadj, adj, ew, vw, match, cmap, cxadj, cadj, cew, cvw, mark)
    cbias = np.zeros(nc, dtype=np.float64)
    for v in range(n):
        cbias[cmap[v]] += bias[v]
    return (cmap, cxadj[:nc + 1].copy(), cadj[:ne].copy(), cew[:ne].copy(), cvw[:nc].copy(),
            cbias)


@njit(cache=True)
def objective(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, bias: np.ndarray,
              side: np.ndarray) -> float:
    """cut weight (each undirected edge once) + sum of bias over side 1."""
    total = 0.0
    for v in range(len(xadj) - 1):
        if side[v] == 1:
            total += bias[v]
        for e in range(xadj[v], xadj[v + 1]):
            if side[adj[e]] != side[v]:
                total += 0.5 * ew[e]
    return total


@njit(cache=True)
def _sift_up(hv: np.ndarray, hk: np.ndarray, pos: np.ndarray, i: int) -> None:
    while i > 0:
        p = (i - 1) // 2
        if hk[p] >= hk[i]:
            break
        hv[p], hv[i] = hv[i], hv[p]
        hk[p], hk[i] = hk[i], hk[p]
        pos[hv[p]] = p
        pos[hv[i]] = i
        i = p


@njit(cache=True)
def _sift_down(hv: np.ndarray, hk: np.ndarray, pos: np.ndarray, size: int, i: int) -> None:
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and hk[c + 1] > hk[c]:
            c += 1
        if hk[i] >= hk[c]:
            break
        hv[c], hv[i] = hv[i], hv[c]
        hk[c], hk[i] = hk[i], hk[c]
        pos[hv[c]] = c
        pos[hv[i]] = i
        i = c


@njit(cache=True)
def _heap_remove(hv: np.ndarray, hk: np.ndarray, pos: np.ndarray, size: int, v: int) -> int:
    i = pos[v]
    last = size - 1
    pos[v] = -1
    if i != last:
        moved = hv[last]
        hv[i] = moved
        hk[i] = hk[last]
        pos[moved] = i
        _sift_up(hv, hk, pos, i)
        _sift_down(hv, hk, pos, last, pos[moved])
    return last


@njit(cache=True)
def _flip(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, side: np.ndarray,
          gain: np.ndarray, ext: np.ndarray, v: int) -> None:
    """Move v to the other side, keeping every vertex's gain and external weight exact."""
    s = side[v]
    side[v] = 1 - s
    own = 0.0
    for e in range(xadj[v], xadj[v + 1]):
        u = adj[e]
        if side[u] == s:  # u was on v's side: the edge is now cut
            own += ew[e]
            ext[u] += ew[e]
            gain[u] += 2.0 * ew[e]
        else:
            ext[u] -= ew[e]
            gain[u] -= 2.0 * ew[e]
    ext[v] = own
    gain[v] = -gain[v]


@njit(cache=True)
def fm_refine(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
              bias: np.ndarray, side: np.ndarray, target0: float, tol_accept: float,
              tol_search: float, max_passes: int) -> float:
    """Fiduccia-Mattheyses passes on `side` (in place); returns the final objective.

    A state is acceptable when |weight(side 0) - target0| <= tol_accept; each pass keeps the
    best prefix of moves ordered by (excess imbalance, objective) and rolls back the rest.
    Gains and external weights are computed once and kept exact through moves and rollbacks,
    so a pass costs O(n) plus the moves (dense graphs: no O(edges) rescan per pass).
    """
    n = len(xadj) - 1
    hv = np.empty((2, n), dtype=np.int64)
    hk = np.empty((2, n), dtype=np.float64)
    pos = np.full(n, -1, dtype=np.int64)
    gain = np.empty(n, dtype=np.float64)
    ext = np.zeros(n, dtype=np.float64)
    locked = np.zeros(n, dtype=np.bool_)
    moves = np.empty(n, dtype=np.int64)
    limit = min(max(n // 50, FM_PATIENCE), 150)
    obj = 0.0
    w0 = 0.0
    for v in range(n):
        own = 0.0
        for e in range(xadj[v], xadj[v + 1]):
            if side[adj[e]] == side[v]:
                own += ew[e]
            else:
                ext[v] += ew[e]
        gain[v] = ext[v] - own + (bias[v] if side[v] == 1 else -bias[v])
        obj += 0.5 * ext[v] + (bias[v] if side[v] == 1 else 0.0)
        if side[v] == 0:
            w0 += vw[v]
    for _ in range(max_passes):
        size = np.zeros(2, dtype=np.int64)
        for v in range(n):
            locked[v] = False
            pos[v] = -1
            if ext[v] > 0.0 or gain[v] > 0.0:
                s = side[v]
                i = size[s]
                hv[s, i] = v
                hk[s, i] = gain[v]
                pos[v] = i
                size[s] += 1
                _sift_up(hv[s], hk[s], pos, i)
        start_obj = obj
        start_excess = max(abs(w0 - target0) - tol_accept, 0.0)
        best_obj = obj
        best_excess = start_excess
        best_k = 0
        best_w0 = w0
        nmoves = 0
        since = 0
        while True:
            imb = w0 - target0
            first = 0 if imb > 0 else 1
            if imb == 0 and size[0] > 0 and size[1] > 0:
                first = 0 if hk[0, 0] >= hk[1, 0] else 1
            v = -1
            for attempt in range(2):
                s = first if attempt == 0 else 1 - first
                if size[s] == 0:
                    continue
                cand = hv[s, 0]
                new_imb = imb - vw[cand] if s == 0 else imb + vw[cand]
                if abs(new_imb) <= tol_search or abs(new_imb) < abs(imb):
                    v = cand
                    break
            if v == -1:
                break
            s = side[v]
            size[s] = _heap_remove(hv[s], hk[s], pos, size[s], v)
            obj -= gain[v]
            w0 += -vw[v] if s == 0 else vw[v]
            locked[v] = True
            _flip(xadj, adj, ew, side, gain, ext, v)
            for e in range(xadj[v], xadj[v + 1]):
                u = adj[e]
                if locked[u]:
                    continue
                su = side[u]
                if pos[u] >= 0:
                    i = pos[u]
                    old = hk[su, i]
                    hk[su, i] = gain[u]
                    if gain[u] > old:
                        _sift_up(hv[su], hk[su], pos, i)
                    else:
                        _sift_down(hv[su], hk[su], pos, size[su], i)
                else:
                    i = size[su]
                    hv[su, i] = u
                    hk[su, i] = gain[u]
                    pos[u] = i
                    size[su] += 1
                    _sift_up(hv[su], hk[su], pos, i)
            moves[nmoves] = v
            nmoves += 1
            excess = max(abs(w0 - target0) - tol_accept, 0.0)
            if excess < best_excess or (excess == best_excess and obj < best_obj - 1e-9):
                best_obj = obj
                best_excess = excess
                best_k = nmoves
                best_w0 = w0
                since = 0
            else:
                since += 1
                if since > limit:
                    break
        for k in range(nmoves - 1, best_k - 1, -1):
            _flip(xadj, adj, ew, side, gain, ext, moves[k])
        obj = best_obj
        w0 = best_w0
        if not (best_excess < start_excess or best_obj < start_obj - 1e-9):
            break
    return obj


@njit(cache=True)
def grow_bisection(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, vw: np.ndarray,
                   bias: np.ndarray, target0: float, start: int) -> np.ndarray:
    """Greedy graph growing: side 0 grows from `start` by best gain until it holds target0."""
    n = len(xadj) - 1
    side = np.ones(n, dtype=np.int8)
    gain = bias.copy()  # moving v from side 1 to side 0: to0 - to1 + bias
    for v in range(n):
        for e in range(xadj[v], xadj[v + 1]):
            gain[v] -= ew[e]
    w0 = 0.0
    v = start
    while v >= 0:
        side[v] = 0
        w0 += vw[v]
        for e in range(xadj[v], xadj[v + 1]):
            gain[adj[e]] += 2.0 * ew[e]
        v = -1
        if w0 >= target0:
            break
        best = -np.inf
        for u in range(n):
            if side[u] == 1 and w0 + vw[u] <= target0 + 0.5 * vw[u] and gain[u] > best:
                best = gain[u]
                v = u
    return side
