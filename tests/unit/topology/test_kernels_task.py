"""One task of the recursive bisection (`_kernels_task`) against plain-Python references.

`_extract` is checked on a small task (one core) and on a dense one whose entries go to both
cores (`_edges_parallel`, then packed); both must give the reference's subgraph and bias.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hpcmig.topology import _kernels_rb, _kernels_task

from . import reference as ref
from .conftest import csr_arrays, random_graph


def test_apply_task_and_next_level_match_reference() -> None:
    rng = np.random.default_rng(3)
    perm = rng.permutation(10).astype(np.int64)
    sides = rng.integers(0, 2, 10).astype(np.int8)
    want = ref.level_order(perm.tolist(), sides.tolist(), 2, 9)
    n0 = int((sides[2:9] == 0).sum())
    ccum = np.zeros((5, 1))
    ccum[1:, 0] = np.cumsum([0.0, 1.0, 2.0, 3.0])  # torus coordinates 0..3 along the order
    rlo = np.zeros(10, dtype=np.int64)  # every rank starts in the range of nodes 0..3
    lpos = np.array([[1.5], [-7.0], [-7.0], [-7.0]])  # its centroid (from node 0 on)
    anc = np.stack([np.arange(10), np.arange(10) // 2]).astype(np.int64)  # pairs at level 1
    vofs = np.array([0, 5], dtype=np.int64)
    csum = np.full((5, 1), 2 * 1.5)  # every pair starts at the centroid of nodes 0..3
    _kernels_task._apply_task(perm, sides, rlo, lpos, 2, 9, 0, 2, 4, ccum, anc, vofs, csum,
                              1)
    assert perm[2:9].tolist() == want
    cen = {0: 1.5, 1: 0.5, 2: 2.5}  # whole range, left half, right half
    where = {v: 1 if v in want[:n0] else 2 if v in want else 0 for v in range(10)}
    assert rlo.tolist() == [2 if where[v] == 2 else 0 for v in range(10)]
    assert lpos[:, 0].tolist() == [0.5, -7.0, 2.5, -7.0]  # ranges 0..1 and 2..3
    for c in range(5):
        assert csum[c, 0] == pytest.approx(cen[where[2 * c]] + cen[where[2 * c + 1]])
    pos = np.full(10, -1, dtype=np.int64)
    qs, qe, ql, qh = (np.array([0, 2]), np.array([2, 9]), np.array([0, 0]), np.array([1, 4]))
    qv = np.array([0, 1], dtype=np.int64)
    avgw = np.array([1.0, 2.0])
    nxt = _kernels_rb._next_level(perm, sides, pos, qs, qe, ql, qh, np.array([-1, 2]), qv, avgw,
                                  3)
    # children keep level 1 while they have >= 3 clusters of 2 ranks, else go to level 0
    levels = [1 if size >= 6 else 0 for size in (n0, 7 - n0)]
    assert nxt.tolist() == [[2, 2 + n0], [2 + n0, 9], [0, 2], [2, 4], levels]
    assert pos[perm[:2]].tolist() == [0, 0]


@pytest.mark.parametrize("target0", [3, 5, 7, 10])
def test_finish_matches_reference(target0: int) -> None:
    g = random_graph(6, 0.6, 2)
    xadj, adj, ew = csr_arrays(g)
    weight = np.array([3.0, 1.0, 2.0, 4.0, 1.0, 2.0])  # 13 ranks in 6 clusters
    bias = np.array([0.5, -1.0, 0.0, 2.0, -0.5, 1.0])
    side = np.array([0, 1, 0, 0, 1, 1], dtype=np.int8)  # side 0 holds 9 ranks
    local = np.repeat(np.arange(6), weight.astype(int))
    rl = np.random.default_rng(1).permutation(local)  # the local vertex of each rank
    sides = np.full(13, 9, dtype=np.int8)
    _kernels_task._finish(side.copy(), xadj, adj, ew, weight, bias, float(target0), rl, 0, 13,
                          sides)
    want = ref.finish(side.tolist(), ref.dense(xadj, adj, ew), weight.tolist(), bias.tolist(),
                      target0, rl.tolist())
    assert sides.tolist() == want
    assert int((sides == 0).sum()) == target0


@pytest.mark.parametrize(("n", "density", "parallel"), [(12, 0.4, False), (500, 0.5, True)])
@pytest.mark.parametrize("lev", [0, 1])
@pytest.mark.parametrize("spare", [0, 1000])
def test_extract_matches_reference(n: int, density: float, parallel: bool, lev: int,
                                   spare: int) -> None:
    # n ranks on a ring of 4 torus nodes (rank r on node r % 4); the task holds half of them
    # (whole pairs at level 1), bisected between nodes 0..1 and 2..3; the other ranks are
    # outside, on their node (level 0) or in clusters at their ranks' mean position (level 1).
    # `spare` stale range starts: more of them than entries, the pull is computed per entry
    # rather than once per range (`_range_pulls`)
    g = random_graph(n, density, 8)
    xadj, adj, ew = csr_arrays(g)
    pairs = np.arange(n) // 2
    if lev == 0:
        anc = np.arange(n, dtype=np.int64).reshape(1, n)
        x, a, e, ihw = xadj, adj, ew, np.ones(n)
    else:
        anc = np.stack([np.arange(n), pairs]).astype(np.int64)
        quot = sp.csr_array(np.array(ref.quotient(ref.dense(xadj, adj, ew), pairs.tolist())))
        x, a, e = csr_arrays(quot)
        ihw = np.full(n // 2, 0.5)
    rng = np.random.default_rng(5)
    inside = np.sort(rng.permutation(n // 2)[:n // 4])  # pairs in the task
    ranks = np.concatenate([2 * inside, 2 * inside + 1])
    if lev == 0:
        ranks = rng.permutation(n)[:n // 2]
    rest = np.setdiff1d(np.arange(n), ranks)
    perm = np.concatenate([rng.permutation(ranks), rest]).astype(np.int64)
    start, end = 0, len(ranks)
    ring = np.array([4.0])
    ccum = np.zeros((5, 1))
    ccum[1:, 0] = np.cumsum([0.0, 1.0, 2.0, 3.0])
    rlo = (np.arange(n) % 4).astype(np.int64)  # one node each: ranges start at the node
    lpos = np.full((4 + spare, 1), 99.0)
    lpos[:4, 0] = [0.0, 1.0, 2.0, 3.0]
    csum = np.array([[float(rlo[2 * c] + rlo[2 * c + 1])] for c in range(n // 2)])
    base = 0 if lev == 0 else n
    size = n + n // 2
    mark, lid = np.full(size, -1, dtype=np.int64), np.zeros(size, dtype=np.int64)
    clus, rl = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    bx = np.zeros(n + 1, dtype=np.int64)
    ba, be = np.zeros(len(a), dtype=np.int64), np.zeros(len(a))
    bw, bb = np.zeros(n), np.zeros(n)
    members = [int(anc[lev, perm[i]]) for i in range(start, end)]
    verts = list(dict.fromkeys(members))  # first appearance
    room = sum(int(x[c + 1] - x[c]) for c in verts)
    assert (room >= _kernels_task.PARALLEL_ENTRIES) == parallel
    nv, ne = _kernels_task._extract(perm, start, end, lev, x, a, e, anc, base, mark, lid, 1,
                                    clus, rl, bx, ba, be, bw, bb, 0, 0, 0, rlo, lpos, ccum,
                                    csum, ihw, ring, 0, 2, 4)
    assert nv == len(verts) and rl[start:end].tolist() == [verts.index(c) for c in members]
    assert bw[:nv].tolist() == [float(members.count(c)) for c in verts]
    full = ref.dense(x, a, e)
    assert ref.dense(bx[:nv + 1], ba[:ne], be[:ne]) == [[full[c][u] for u in verts]
                                                         for c in verts]
    for i in range(nv):  # rows in CSR order: the order of the cluster's own entries
        row = ba[bx[i]:bx[i + 1]].tolist()
        assert row == [verts.index(u) for u in a[x[verts[i]]:x[verts[i] + 1]] if u in verts]

    def where(u: int) -> float:  # position of a vertex outside the task
        return float(rlo[u]) if lev == 0 else float(csum[u, 0] / 2)

    def d(p: float, q: float) -> float:
        return min(abs(p - q), 4 - abs(p - q))

    inset = set(verts)
    for i, c in enumerate(verts):
        want = sum(full[c][u] * (d(2.5, where(u)) - d(0.5, where(u)))
                   for u in range(len(full)) if u not in inset and full[c][u])
        assert bb[i] == pytest.approx(want)
