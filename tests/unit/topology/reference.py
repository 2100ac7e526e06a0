"""Slow plain-Python references for the numba kernels (no numpy tricks, no numba).

Each function states the same contract as its kernel in the simplest way: loops over dense
matrices, exhaustive search on tiny inputs. Tests compare kernel and reference outputs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

MOD, MUL = 2147483647, 48271


def rand(state: list[int]) -> int:
    state[0] = state[0] * MUL % MOD
    return state[0]


def permutation(n: int, state: list[int]) -> list[int]:
    a = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rand(state) % (i + 1)
        a[i], a[j] = a[j], a[i]
    return a


def dense(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray) -> list[list[float]]:
    n = len(xadj) - 1
    mat = [[0.0] * n for _ in range(n)]
    for v in range(n):
        for e in range(int(xadj[v]), int(xadj[v + 1])):
            mat[v][int(adj[e])] += float(ew[e])
    return mat


def heavy_edge_matching(mat: list[list[float]], vw: list[float], maxvw: float,
                        visit: list[int]) -> list[int]:
    n = len(mat)
    match = [-1] * n
    for v in visit:
        if match[v] != -1:
            continue
        best, rating_best = -1, -1.0
        for u in range(n):  # adjacency order = increasing u in sorted CSR
            if mat[v][u] > 0 and u != v and match[u] == -1 and vw[u] + vw[v] <= maxvw:
                rating = mat[v][u] ** 2 / (vw[u] * vw[v])
                if rating > rating_best:
                    best, rating_best = u, rating
        if best == -1:
            match[v] = v
        else:
            match[v], match[best] = best, v
    return match


def contract(mat: list[list[float]], vw: list[float], match: list[int]
             ) -> tuple[list[int], list[list[float]], list[float]]:
    """Coarse ids in order of each pair's smaller vertex; coarse matrix = P^T A P minus diag."""
    n = len(mat)
    cmap = [-1] * n
    nc = 0
    for v in range(n):
        if match[v] >= v:
            cmap[v] = cmap[match[v]] = nc
            nc += 1
    cmat = [[0.0] * nc for _ in range(nc)]
    cvw = [0.0] * nc
    for v in range(n):
        cvw[cmap[v]] += vw[v]
        for u in range(n):
            if cmap[u] != cmap[v]:
                cmat[cmap[v]][cmap[u]] += mat[v][u]
    return cmap, cmat, cvw


def objective(mat: list[list[float]], bias: list[float], side: list[int]) -> float:
    n = len(mat)
    cut = sum(mat[v][u] for v in range(n) for u in range(v + 1, n) if side[v] != side[u])
    return cut + sum(b for b, s in zip(bias, side, strict=True) if s == 1)


def best_bisection(mat: list[list[float]], bias: list[float], size0: int) -> float:
    """Exhaustive optimum of objective() with exactly size0 unit vertices on side 0."""
    n = len(mat)
    best = math.inf
    for zero in itertools.combinations(range(n), size0):
        side = [1] * n
        for v in zero:
            side[v] = 0
        best = min(best, objective(mat, bias, side))
    return best


def distance(topo_groups: np.ndarray, half: np.ndarray, coords: np.ndarray, ring: np.ndarray,
             a: int, b: int) -> float:
    d = 0.0
    for lvl in range(topo_groups.shape[1]):
        if topo_groups[a][lvl] != topo_groups[b][lvl]:
            d += float(half[a][lvl] + half[b][lvl])
    for k in range(len(ring)):
        x = abs(int(coords[a][k]) - int(coords[b][k]))
        d += min(x, int(ring[k]) - x)
    return d


def hop_bytes(mat: list[list[float]], node_of: list[int], dist: list[list[float]]) -> float:
    n = len(mat)
    return sum(mat[i][j] * dist[node_of[i]][node_of[j]] for i in range(n) for j in range(n))


def torus_route(a: list[int], b: list[int], ring: list[int]) -> list[tuple[tuple[int, ...], int]]:
    """Links (lower point, dimension) on the dimension-order route from a to b."""
    cur = list(a)
    links = []
    for k, size in enumerate(ring):
        fwd = (b[k] - cur[k]) % size
        back = (cur[k] - b[k]) % size
        while cur[k] != b[k]:
            if fwd <= back:
                links.append((tuple(cur), k))
                cur[k] = (cur[k] + 1) % size
            else:
                cur[k] = (cur[k] - 1) % size
                links.append((tuple(cur), k))
    return links


def best_mapping(mat: list[list[float]], caps: list[int], dist: list[list[float]]) -> float:
    """Exhaustive minimum hop-bytes over all placements respecting capacities (tiny N)."""
    n = len(mat)
    slots = [node for node, c in enumerate(caps) for _ in range(c)]
    best = math.inf
    for perm in set(itertools.permutations(slots, n)):
        best = min(best, hop_bytes(mat, list(perm), dist))
    return best


def split_point(keys: list[int], capcum: list[int], lo: int, hi: int) -> int:
    """Boundary (position) of the highest key in lo..hi nearest half the capacity."""
    kmax = max(keys[lo:hi - 1])
    half = 0.5 * (capcum[hi] + capcum[lo])
    cands = [p + 1 for p in range(lo, hi - 1) if keys[p] == kmax]
    return min(cands, key=lambda b: (abs(capcum[b] - half), b))


def level_order(perm: list[int], sides: list[int], start: int, end: int) -> list[int]:
    """A bisected task's ranks, side 0 first, each side in its previous order."""
    seg = list(zip(perm[start:end], sides[start:end], strict=True))
    return [v for v, s in seg if s == 0] + [v for v, s in seg if s == 1]


def symmetrize(mat: list[list[float]]) -> list[list[float]]:
    """Rank graph: C + C^T with a zero diagonal."""
    n = len(mat)
    return [[0.0 if i == j else mat[i][j] + mat[j][i] for j in range(n)] for i in range(n)]


def near_fraction(mat: list[list[float]], radius: float) -> float:
    entries = [(i, j) for i, row in enumerate(mat) for j, x in enumerate(row) if x != 0]
    return sum(abs(i - j) <= radius for i, j in entries) / max(len(entries), 1)


def quotient(mat: list[list[float]], cluster: list[int]) -> list[list[float]]:
    """Coarse graph of `cluster[v]` (ids 0..k-1): summed weights between clusters, no loops."""
    k = max(cluster) + 1
    out = [[0.0] * k for _ in range(k)]
    for v, row in enumerate(mat):
        for u, x in enumerate(row):
            if cluster[u] != cluster[v]:
                out[cluster[v]][cluster[u]] += x
    return out


def finish(side: list[int], mat: list[list[float]], weight: list[float], bias: list[float],
           target0: int, local: list[int]) -> list[int]:
    """Rank sides with exactly target0 ranks on side 0 (see `_kernels_rb._finish`).

    The heavy side gives up whole vertices in order of gain (stable on ties) while they fit,
    then the ranks of the best remaining one are moved one by one, in rank order.
    """
    side = list(side)
    n = len(side)
    w0 = sum(weight[v] for v in range(n) if side[v] == 0)
    need = round(abs(w0 - target0))
    s = 0 if w0 > target0 else 1
    split = -1
    if need:
        def gain(v: int) -> float:
            g = bias[v] if s == 1 else -bias[v]
            return g + sum(x if side[u] != s else -x for u, x in enumerate(mat[v]) if x)

        gains = {v: gain(v) for v in range(n) if side[v] == s}
        order = sorted(gains, key=lambda v: -gains[v])
        for v in order:
            if need and weight[v] <= need:
                side[v] = 1 - s
                need -= int(weight[v])
        split = next((v for v in order if side[v] == s), -1) if need else -1
    out = []
    for c in local:
        if c == split and need:
            out.append(1 - s)
            need -= 1
        else:
            out.append(side[c])
    return out
