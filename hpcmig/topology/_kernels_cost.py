"""numba kernels on true hop distances: hop-bytes, swap refinement, link loads.

Design note: private, arrays and scalars only, no validation (see `_kernels.py` for the
conventions). The distance between nodes a and b is evaluated on the fly from the
`Topology` arrays (`groups`, `half`, `coords`, `ring`; see `model.py`), so no dense node x node
matrix is ever built: 65,536 nodes cost nothing extra. Mappings are `node_of[rank]` = node
index; capacities are `caps[node]` slots.
"""

from __future__ import annotations

from hpcmig.topology._jit import configure_cache

configure_cache()

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from hpcmig.topology._kernels import _MOD, _permutation  # noqa: E402

DENSE_DEGREE = 64


@njit(cache=True, inline="always")
def node_distance(a: int, b: int, groups: np.ndarray, half: np.ndarray, coords: np.ndarray,
                  ring: np.ndarray) -> float:
    d = 0.0
    for lvl in range(groups.shape[1]):
        if groups[a, lvl] != groups[b, lvl]:
            d += half[a, lvl] + half[b, lvl]
    for k in range(ring.shape[0]):
        x = abs(coords[a, k] - coords[b, k])
        y = ring[k] - x
        d += x if x < y else y
    return d


@njit(cache=True, parallel=True)
def hop_bytes(xadj: np.ndarray, adj: np.ndarray, w: np.ndarray, node_of: np.ndarray,
              groups: np.ndarray, half: np.ndarray, coords: np.ndarray, ring: np.ndarray
              ) -> float:
    """sum over CSR entries (i, j) of w[i, j] * hops(node_of[i], node_of[j])."""
    total = 0.0
    for i in prange(len(xadj) - 1):
        total += _rank_cost(i, node_of[i], xadj, adj, w, node_of, groups, half, coords, ring)
    return total


@njit(cache=True)
def _rank_cost(v: int, at: int, xadj: np.ndarray, adj: np.ndarray, w: np.ndarray,
               node_of: np.ndarray, groups: np.ndarray, half: np.ndarray, coords: np.ndarray,
               ring: np.ndarray) -> float:
    c = 0.0
    for e in range(xadj[v], xadj[v + 1]):
        b = node_of[adj[e]]
        if b != at:
            c += w[e] * node_distance(at, b, groups, half, coords, ring)
    return c


@njit(cache=True)
def _moved(u: int, a: int, b: int, skip: int, xadj: np.ndarray, adj: np.ndarray,
           w: np.ndarray, node_of: np.ndarray, cost: np.ndarray, groups: np.ndarray,
           half: np.ndarray, coords: np.ndarray, ring: np.ndarray) -> None:
    """Rank u went from node a to b: update its partners' costs (except `skip`'s)."""
    for e in range(xadj[u], xadj[u + 1]):
        x = adj[e]
        if x != skip:
            nx = node_of[x]
            cost[x] += w[e] * (node_distance(nx, b, groups, half, coords, ring)
                               - node_distance(nx, a, groups, half, coords, ring))


@njit(cache=True, inline="always")
def _partner_nodes(lo: int, hi: int, adj: np.ndarray, w: np.ndarray, node_of: np.ndarray,
                   a: int, stamp: int, mark: np.ndarray, acc: np.ndarray,
                   touched: np.ndarray, count: int) -> int:
    """Sum entries lo..hi per partner node other than `a` into acc: a node first met under
    `stamp` (mark[b] != stamp) starts at 0 and is listed in touched. The new count."""
    for e in range(lo, hi):
        b = node_of[adj[e]]
        if b == a:
            continue
        if mark[b] != stamp:
            mark[b] = stamp
            acc[b] = 0.0
            touched[count] = b
            count += 1
        acc[b] += w[e]
    return count


@njit(cache=True)
def swap_refine(xadj: np.ndarray, adj: np.ndarray, w: np.ndarray, node_of: np.ndarray,
                caps: np.ndarray, groups: np.ndarray, half: np.ndarray, coords: np.ndarray,
                ring: np.ndarray, max_passes: int, seed: int, candidates: int) -> float:
    """Improve `node_of` in place by moves to free slots and pairwise swaps; returns the gain.

    `w` is the symmetric rank graph, so the hop-bytes it measures are those of the traffic
    matrix. A rank is only offered the `candidates` nodes it sends most to; a swap is taken
    when the exact change of hop-bytes (partner between the two ranks counted once) is an
    improvement. Ranks' current costs, once computed, are kept up to date: they skip ranks
    with no off-node partner and swap partners that cannot pay (gain <= gain of u + cost of
    v). Ranks with many partners only move to free slots: with none, they are not looked at.
    """
    n = len(xadj) - 1
    m = len(caps)
    start = np.zeros(m + 1, dtype=np.int64)
    for k in range(m):
        start[k + 1] = start[k] + caps[k]
    free = start[m] - n
    slot = np.full(start[m], -1, dtype=np.int64)
    fill = start[:m].copy()
    for v in range(n):
        slot[fill[node_of[v]]] = v
        fill[node_of[v]] += 1
    cost = np.full(n, np.nan)  # current cost of each rank, computed when first needed
    seen = np.full(m, -1, dtype=np.int64)
    conn = np.zeros(m, dtype=np.float64)
    touched = np.empty(max(m, 1), dtype=np.int64)
    wmark = np.zeros(n, dtype=np.float64)
    state = np.array([seed % (_MOD - 1) + 1], dtype=np.int64)
    total_gain = 0.0
    for _ in range(max_passes):
        pass_gain = 0.0
        seen[:] = -1
        visit = _permutation(n, state)
        for k in range(n):
            u = visit[k]
            # swaps of ranks with many partners cost deg^2 per node and rarely pay
            # (all-to-all): they only move to free slots, if there are any
            dense = xadj[u + 1] - xadj[u] > DENSE_DEGREE
            if cost[u] <= 0.0 or (dense and free == 0):
                continue
            a = node_of[u]
            cost_a = _rank_cost(u, a, xadj, adj, w, node_of, groups, half, coords, ring)
            cost[u] = cost_a
            if cost_a <= 0.0:
                continue
            for e in range(xadj[u], xadj[u + 1]):
                wmark[adj[e]] = w[e]
            ntouch = _partner_nodes(xadj[u], xadj[u + 1], adj, w, node_of, a, u, seen, conn,
                                    touched, 0)
            # offer only the `candidates` nodes u talks to most (cost stays linear on dense
            # patterns such as all-to-all).
            ncand = min(ntouch, candidates)
            for i in range(ncand):
                top = i
                for j in range(i + 1, ntouch):
                    if conn[touched[j]] > conn[touched[top]]:
                        top = j
                touched[i], touched[top] = touched[top], touched[i]
            done = False
            for i in range(ncand):
                b = touched[i]
                gu = cost_a - _rank_cost(u, b, xadj, adj, w, node_of, groups, half, coords,
                                         ring)
                if gu <= 1e-12:
                    continue
                dab = node_distance(a, b, groups, half, coords, ring)
                best = 1e-9 * (cost_a + 1.0)
                best_s = -1
                for s in range(start[b], start[b + 1]):
                    v = slot[s]
                    if v == -1:
                        g = gu
                    elif dense:
                        continue
                    else:
                        if np.isnan(cost[v]):
                            cost[v] = _rank_cost(v, b, xadj, adj, w, node_of, groups, half,
                                                 coords, ring)
                        if gu + cost[v] * (1.0 + 1e-9) + 1e-9 <= best:
                            continue
                        g = (gu - 2.0 * wmark[v] * dab
                             + _rank_cost(v, b, xadj, adj, w, node_of, groups, half, coords, ring)
                             - _rank_cost(v, a, xadj, adj, w, node_of, groups, half, coords, ring))
                    if g > best:
                        best = g
                        best_s = s
                if best_s >= 0:
                    v = slot[best_s]
                    for s in range(start[a], start[a + 1]):
                        if slot[s] == u:
                            slot[s] = v
                            break
                    slot[best_s] = u
                    node_of[u] = b
                    _moved(u, a, b, v, xadj, adj, w, node_of, cost, groups, half, coords, ring)
                    cost[u] = _rank_cost(u, b, xadj, adj, w, node_of, groups, half, coords,
                                         ring)
                    if v >= 0:
                        node_of[v] = a
                        _moved(v, b, a, u, xadj, adj, w, node_of, cost, groups, half, coords,
                               ring)
                        cost[v] = _rank_cost(v, a, xadj, adj, w, node_of, groups, half, coords,
                                             ring)
                        cost[u] = _rank_cost(u, b, xadj, adj, w, node_of, groups, half,
                                             coords, ring)
                    pass_gain += best
                    done = True
                if done:
                    break
            for e in range(xadj[u], xadj[u + 1]):
                wmark[adj[e]] = 0.0
        total_gain += pass_gain
        if pass_gain <= 0.0 or pass_gain < 0.002 * total_gain:
            break
    return total_gain


@njit(cache=True, inline="always")
def _route(a: int, b: int, t: float, loads: np.ndarray, groups: np.ndarray,
           link_of: np.ndarray, n_hier: int, coords: np.ndarray, ring: np.ndarray,
           stride: np.ndarray, cur: np.ndarray) -> None:
    """Add t bytes to the links between nodes a and b (a -> b on the torus)."""
    dims = ring.shape[0]
    for lvl in range(groups.shape[1]):
        if groups[a, lvl] != groups[b, lvl]:
            if link_of[a, lvl] >= 0:
                loads[link_of[a, lvl]] += t
            if link_of[b, lvl] >= 0:
                loads[link_of[b, lvl]] += t
    for k in range(dims):
        cur[k] = coords[a, k]
    for k in range(dims):
        delta = (coords[b, k] - coords[a, k]) % ring[k]
        forward = delta <= ring[k] - delta
        steps = delta if forward else ring[k] - delta
        for _ in range(steps):
            if not forward:
                cur[k] = (cur[k] - 1) % ring[k]
            lin = 0
            for q in range(dims):
                lin += cur[q] * stride[q]
            loads[n_hier + lin * dims + k] += t
            if forward:
                cur[k] = (cur[k] + 1) % ring[k]


@njit(cache=True, parallel=True)
def _node_partners(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                   node_of: np.ndarray, first: np.ndarray, ranks: np.ndarray, chunks: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every node's traffic summed per partner node, by `chunks` blocks of nodes in parallel.

    Returns (base, count, partner, acc): node a's partners are partner[base[a] : base[a] +
    count[a]] in order of first appearance over its ranks' entries, with the bytes acc. A
    block writes from its own upper bound of pairs (entries, or nodes x (m - 1)), so only
    the pairs written touch memory.
    """
    m = len(first) - 1
    seg = np.zeros(chunks + 1, dtype=np.int64)
    for t in range(chunks):
        a0 = m * t // chunks
        a1 = m * (t + 1) // chunks
        ent = 0
        for r in range(first[a0], first[a1]):
            ent += indptr[ranks[r] + 1] - indptr[ranks[r]]
        seg[t + 1] = seg[t] + min(ent, (a1 - a0) * max(m - 1, 0))
    partner = np.empty(seg[chunks], dtype=np.int64)
    acc = np.empty(seg[chunks], dtype=np.float64)
    base = np.zeros(m, dtype=np.int64)
    count = np.zeros(m, dtype=np.int64)
    for t in prange(chunks):
        a0 = m * t // chunks
        a1 = m * (t + 1) // chunks
        sums = np.zeros(m, dtype=np.float64)
        touched = np.empty(max(m, 1), dtype=np.int64)
        mark = np.full(m, -1, dtype=np.int64)
        at = seg[t]
        for a in range(a0, a1):
            k = 0
            for r in range(first[a], first[a + 1]):
                i = ranks[r]
                k = _partner_nodes(indptr[i], indptr[i + 1], indices, data, node_of, a, a,
                                   mark, sums, touched, k)
            base[a] = at
            count[a] = k
            for c in range(k):
                partner[at + c] = touched[c]
                acc[at + c] = sums[touched[c]]
            at += k
    return base, count, partner, acc


@njit(cache=True)
def link_loads(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, node_of: np.ndarray,
               groups: np.ndarray, link_of: np.ndarray, n_hier: int, coords: np.ndarray,
               ring: np.ndarray, chunks: int) -> np.ndarray:
    """Bytes on each link when rank i (on node node_of[i]) sends data[i, j] to rank j.

    Hierarchical links are group uplinks (`link_of[node, level]`, -1 where a node has no
    such level); torus links are (point, dimension) pairs after them. Traffic between two
    nodes, both ways, takes one route: from the lower node index to the higher, in
    dimension order the shorter way round each ring (ties go the positive way). Ranks are
    taken node by node and each node's traffic summed per partner node before it is
    routed, so a route is walked once per pair of nodes that talk, not once per entry; the
    sums go in `chunks` parallel blocks of nodes (`_node_partners`), the routes in node
    order, so the loads do not depend on `chunks`.
    """
    n = len(indptr) - 1
    m = groups.shape[0]
    dims = ring.shape[0]
    points = 1
    for k in range(dims):
        points *= ring[k]
    loads = np.zeros(n_hier + (points * dims if dims > 0 else 0), dtype=np.float64)
    stride = np.ones(max(dims, 1), dtype=np.int64)
    for k in range(dims - 2, -1, -1):
        stride[k] = stride[k + 1] * ring[k + 1]
    cur = np.zeros(max(dims, 1), dtype=np.int64)
    first = np.zeros(m + 1, dtype=np.int64)  # ranks grouped by node (counting sort)
    for i in range(n):
        first[node_of[i] + 1] += 1
    for a in range(m):
        first[a + 1] += first[a]
    ranks = np.empty(n, dtype=np.int64)
    fill = first[:m].copy()
    for i in range(n):
        ranks[fill[node_of[i]]] = i
        fill[node_of[i]] += 1
    base, count, partner, acc = _node_partners(indptr, indices, data, node_of, first, ranks,
                                               max(1, min(chunks, m)))
    for a in range(m):
        for q in range(base[a], base[a] + count[a]):
            b = partner[q]
            if acc[q] != 0.0:
                lo = min(a, b)
                hi = max(a, b)
                _route(lo, hi, acc[q], loads, groups, link_of, n_hier, coords, ring, stride,
                       cur)
    return loads
