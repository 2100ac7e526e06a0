"""The mapping kernels against their plain-Python references (also with NUMBA_DISABLE_JIT=1).

The kernels that measure (link loads, heaviest partners) are in `test_kernels_metrics.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hpcmig.topology import _kernels, _kernels_cost, _kernels_graph, _kernels_rb
from hpcmig.topology.generate import dragonfly, fat_tree, torus
from hpcmig.topology.model import Topology

from . import reference as ref
from .conftest import csr_arrays, random_graph


def test_permutation_matches_reference() -> None:
    state = np.array([12345], dtype=np.int64)
    got = _kernels._permutation(20, state)
    rstate = [12345]
    assert got.tolist() == ref.permutation(20, rstate)
    assert state[0] == rstate[0]


def test_heavy_edge_matching_matches_reference(small_graph: sp.csr_array) -> None:
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    vw = np.arange(1, n + 1, dtype=np.float64) % 3 + 1
    visit = np.random.default_rng(0).permutation(n)
    got = _kernels.heavy_edge_matching(xadj, adj, ew, vw, 4.0, visit)
    want = ref.heavy_edge_matching(ref.dense(xadj, adj, ew), vw.tolist(), 4.0, visit.tolist())
    assert got.tolist() == want
    assert all(got[got[v]] == v for v in range(n))


def test_contract_matches_reference(small_graph: sp.csr_array) -> None:
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    vw = np.ones(n)
    bias = np.linspace(-1, 1, n)
    match = _kernels.heavy_edge_matching(xadj, adj, ew, vw, 2.0, np.arange(n))
    cmap, cx, ca, ce, cvw, cbias = _kernels.contract(xadj, adj, ew, vw, bias, match)
    rmap, rmat, rvw = ref.contract(ref.dense(xadj, adj, ew), vw.tolist(), match.tolist())
    assert cmap.tolist() == rmap
    assert ref.dense(cx, ca, ce) == rmat
    assert cvw.tolist() == rvw
    want_bias = np.zeros(len(rvw))
    np.add.at(want_bias, cmap, bias)
    np.testing.assert_allclose(cbias, want_bias)


@pytest.mark.parametrize("chunks", [1, 2, 3, 50])
def test_contract_parallel_equals_contract_into(chunks: int) -> None:
    # blocks of coarse vertices contracted apart give the same arrays, entry order included
    for seed, visit_seq in ((0, True), (1, False), (2, True)):
        g = random_graph(40, 0.3, seed)
        xadj, adj, ew = csr_arrays(g)
        n = len(xadj) - 1
        vw = np.arange(1.0, n + 1.0)
        visit = np.arange(n) if visit_seq else np.random.default_rng(seed).permutation(n)
        match = _kernels.heavy_edge_matching(xadj, adj, ew, vw, 1e9, visit)
        outs = []
        for parallel in (False, True):
            cmap, cx = np.empty(n, dtype=np.int64), np.empty(n + 1, dtype=np.int64)
            ca, ce = np.empty(len(adj), dtype=np.int64), np.empty(len(adj))
            cvw = np.empty(n)
            if parallel:
                nc, ne = _kernels.contract_parallel(xadj, adj, ew, vw, match, cmap, cx, ca, ce,
                                                    cvw, chunks)
            else:
                nc, ne = _kernels.contract_into(xadj, adj, ew, vw, match, cmap, cx, ca, ce, cvw,
                                                np.empty(n, dtype=np.int64))
            outs.append((cmap.tolist(), cx[:nc + 1].tolist(), ca[:ne].tolist(),
                         ce[:ne].tolist(), cvw[:nc].tolist()))
        assert outs[0] == outs[1]
        rmap, rmat, rvw = ref.contract(ref.dense(xadj, adj, ew), vw.tolist(), match.tolist())
        assert outs[1][0] == rmap and outs[1][4] == rvw


def test_objective_matches_reference(small_graph: sp.csr_array) -> None:
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    side = (np.arange(n) % 3 == 0).astype(np.int8)
    bias = np.linspace(-2, 3, n)
    got = _kernels.objective(xadj, adj, ew, bias, side)
    assert got == pytest.approx(ref.objective(ref.dense(xadj, adj, ew), bias.tolist(),
                                              side.tolist()))


def test_fm_refine_reports_true_objective_and_never_worsens(small_graph: sp.csr_array) -> None:
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    mat = ref.dense(xadj, adj, ew)
    bias = np.zeros(n)
    side = (np.arange(n) >= n // 2).astype(np.int8)  # balanced start: 6 / 6
    before = ref.objective(mat, bias.tolist(), side.tolist())
    got = _kernels.fm_refine(xadj, adj, ew, np.ones(n), bias, side, n / 2, 0.0, 1.0, 10)
    assert got == pytest.approx(ref.objective(mat, bias.tolist(), side.tolist()))
    assert got <= before + 1e-9
    assert int((side == 0).sum()) == n // 2


def test_multilevel_bisect_finds_the_optimum_of_two_cliques() -> None:
    # two 6-cliques joined by one light edge: the optimum cuts exactly that edge
    blocks = sp.block_diag([np.ones((6, 6)) * 5 - np.eye(6) * 5] * 2).tolil()
    blocks[0, 6] = blocks[6, 0] = 1
    xadj, adj, ew = csr_arrays(sp.csr_array(blocks))
    state = np.array([7], dtype=np.int64)
    side = _kernels_rb.multilevel_bisect(xadj, adj, ew, np.ones(12), np.zeros(12), 6.0, state,
                                         4, 4, False)
    mat = ref.dense(xadj, adj, ew)
    assert ref.objective(mat, [0.0] * 12, side.tolist()) == ref.best_bisection(mat, [0.0] * 12, 6)


@pytest.mark.parametrize("size0", [3, 6])
@pytest.mark.parametrize("seq", [False, True])
def test_multilevel_bisect_exact_size_and_near_optimum(small_graph: sp.csr_array,
                                                       size0: int, seq: bool) -> None:
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    bias = np.linspace(-3, 3, n)
    state = np.array([3], dtype=np.int64)
    side = _kernels_rb.multilevel_bisect(xadj, adj, ew, np.ones(n), bias, float(size0), state,
                                         8, 4, seq)
    assert int((side == 0).sum()) == size0
    mat = ref.dense(xadj, adj, ew)
    got = ref.objective(mat, bias.tolist(), side.tolist())
    best = ref.best_bisection(mat, bias.tolist(), size0)
    total = sum(map(sum, mat)) / 2 + float(np.abs(bias).sum())
    assert best <= got <= best + 0.25 * total  # a heuristic: optimal-ish, never infeasible


def _topologies() -> list[Topology]:
    return [fat_tree([2, 2, 2]), torus([3, 4]), torus([2, 2, 3]), dragonfly(3, 2, 2)]


@pytest.mark.parametrize("topo", _topologies(), ids=lambda t: t.kind + str(t.n_nodes))
def test_node_distance_matches_reference(topo: Topology) -> None:
    for a in range(topo.n_nodes):
        for b in range(topo.n_nodes):
            got = _kernels_cost.node_distance(a, b, topo.groups, topo.half, topo.coords,
                                              topo.ring)
            assert got == ref.distance(topo.groups, topo.half, topo.coords, topo.ring, a, b)


@pytest.mark.parametrize("topo", _topologies(), ids=lambda t: t.kind + str(t.n_nodes))
def test_hop_bytes_matches_reference(topo: Topology) -> None:
    g = random_graph(16, 0.3, 5)
    xadj, adj, ew = csr_arrays(g)
    node_of = np.arange(16) % topo.n_nodes
    got = _kernels_cost.hop_bytes(xadj, adj, ew, node_of, topo.groups, topo.half, topo.coords,
                                  topo.ring)
    dist = [[ref.distance(topo.groups, topo.half, topo.coords, topo.ring, a, b)
             for b in range(topo.n_nodes)] for a in range(topo.n_nodes)]
    assert got == pytest.approx(ref.hop_bytes(ref.dense(xadj, adj, ew), node_of.tolist(), dist))


@pytest.mark.parametrize("topo", _topologies(), ids=lambda t: t.kind + str(t.n_nodes))
def test_swap_refine_gain_is_real_and_capacities_hold(topo: Topology) -> None:
    g = random_graph(2 * topo.n_nodes, 0.3, 11)
    xadj, adj, ew = csr_arrays(g)
    caps = np.full(topo.n_nodes, 2, dtype=np.int64)
    caps[0] = 3  # one free slot somewhere
    node_of = np.repeat(np.arange(topo.n_nodes), 2)
    dist = [[ref.distance(topo.groups, topo.half, topo.coords, topo.ring, a, b)
             for b in range(topo.n_nodes)] for a in range(topo.n_nodes)]
    mat = ref.dense(xadj, adj, ew)
    before = ref.hop_bytes(mat, node_of.tolist(), dist)
    gain = _kernels_cost.swap_refine(xadj, adj, ew, node_of, caps, topo.groups, topo.half,
                                     topo.coords, topo.ring, 10, 1, 4)
    after = ref.hop_bytes(mat, node_of.tolist(), dist)
    assert gain >= 0
    # w is the symmetric graph C + C^T, so its ordered sum counts every pair twice; the gain is
    # in hop-bytes of C (every pair once)
    assert (before - after) / 2 == pytest.approx(gain, rel=1e-9, abs=1e-9)
    assert np.all(np.bincount(node_of, minlength=topo.n_nodes) <= caps)


def _no_hierarchy(n: int) -> tuple[np.ndarray, ...]:
    return (np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros(1),
            np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64),
            np.arange(n, dtype=np.int64).reshape(1, n))


def _rb(xadj: np.ndarray, adj: np.ndarray, ew: np.ndarray, topo: Topology, caps: np.ndarray,
        hier: tuple[np.ndarray, ...] | None = None, seed: int = 1, min_coarse: int = 4,
        seq: bool = False) -> np.ndarray:
    """Node of every rank by `recursive_bisection` (as `map_ranks` calls it)."""
    order = topo.order
    ccum = np.zeros((topo.n_nodes + 1, len(topo.ring)))
    ccum[1:] = np.cumsum(topo.coords[order], axis=0)
    pos = _kernels_rb.recursive_bisection(
        xadj, adj, ew, *(hier or _no_hierarchy(len(xadj) - 1)), caps[order], topo.split_key,
        ccum, topo.ring.astype(np.float64), seed, 4, 4, 4, 2, 3, 0, min_coarse, seq)
    return order[pos]


def test_recursive_bisection_respects_capacities_and_is_optimal_on_tiny_tree() -> None:
    topo = fat_tree([2, 2])  # 4 nodes, 2 per leaf switch
    # 8 ranks in 4 tight pairs; pairs 0-1 and 2-3 also talk: optimum puts each pair on a node
    # and the talking pairs under one switch
    mat = np.zeros((8, 8))
    for i in range(0, 8, 2):
        mat[i, i + 1] = mat[i + 1, i] = 100
    mat[1, 2] = mat[2, 1] = mat[5, 6] = mat[6, 5] = 10
    perm = np.random.default_rng(4).permutation(8)
    mat = mat[perm][:, perm]
    xadj, adj, ew = csr_arrays(sp.csr_array(mat))
    caps = np.full(4, 2, dtype=np.int64)
    node_of = _rb(xadj, adj, ew, topo, caps)
    assert np.all(np.bincount(node_of, minlength=4) == 2)
    dist = topo.distance_matrix().tolist()
    got = ref.hop_bytes(mat.tolist(), node_of.tolist(), dist)
    assert got == ref.best_mapping(mat.tolist(), caps.tolist(), dist)


@pytest.mark.parametrize("topo", [fat_tree([3, 2, 2]), torus([3, 4])],
                         ids=lambda t: t.kind)
@pytest.mark.parametrize("seq", [False, True])
def test_recursive_bisection_on_clusters_fills_every_node_exactly(topo: Topology,
                                                                  seq: bool) -> None:
    # dense traffic coarsened once: bisections of clusters must still give exact node counts
    g = random_graph(40, 0.6, 9)
    xadj, adj, ew = csr_arrays(g)
    hier = _kernels_rb.build_hierarchy(xadj, adj, ew, 3, 4, 10, seq, 1.0)
    assert len(hier[4]) > 2  # at least two coarse levels
    caps = np.full(topo.n_nodes, 4, dtype=np.int64)
    caps[0] = 2  # uneven capacities, and two free slots in all
    node_of = _rb(xadj, adj, ew, topo, caps, hier, seq=seq)
    counts = np.bincount(node_of, minlength=topo.n_nodes)
    assert np.all(counts <= caps) and counts.sum() == 40
    # filled in split order: only the last nodes of the order have free slots
    filled = counts[topo.order] == caps[topo.order]
    assert filled[:np.argmin(filled)].all() if not filled.all() else True
    again = _rb(xadj, adj, ew, topo, caps, hier, seq=seq)
    np.testing.assert_array_equal(node_of, again)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_point_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 3, 15).astype(np.int64)
    capcum = np.concatenate([[0], np.cumsum(rng.integers(0, 5, 16))]).astype(np.int64)
    for lo in range(0, 14):
        for hi in range(lo + 2, 17):
            got = _kernels_rb._split_point(keys, capcum, lo, hi)
            assert got == ref.split_point(keys.tolist(), capcum.tolist(), lo, hi)


def test_parallel_jobs_are_independent_runs(small_graph: sp.csr_array) -> None:
    # two tasks (the graph twice, with and without bias) with 3 runs each: every job must
    # equal its run made alone, on the run's own random stream
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    bx = np.concatenate([xadj, xadj])
    ba = np.concatenate([adj, adj])
    be = np.concatenate([ew, ew])
    bw = np.ones(2 * n)
    bb = np.concatenate([np.linspace(-3.0, 3.0, n), np.zeros(n)])
    tv = np.array([0, n, 2 * n])
    te = np.array([0, len(adj), 2 * len(adj)])
    target = np.array([n / 2, 5.0])
    seeds = np.array([12345, 777])
    tries = np.array([4, 2])
    jt = np.repeat(np.arange(2), 3)
    jr = np.tile(np.arange(3), 2)
    jseq = jr == 0
    jo = np.arange(7) * n
    out, objs = np.empty(6 * n, dtype=np.int8), np.empty(6)
    _kernels_rb._run_jobs(bx, ba, be, bw, bb, tv, te, target, seeds, tries, jt, jr, jseq, jo,
                          out, objs, 4)
    mat = ref.dense(xadj, adj, ew)
    for j in range(6):
        t = jt[j]
        bias = bb[tv[t]:tv[t + 1]]
        state = np.array([(seeds[t] + 104_729 * jr[j]) % (2**31 - 2) + 1], dtype=np.int64)
        alone = _kernels_rb.multilevel_bisect(xadj, adj, ew, np.ones(n), bias, target[t], state,
                                              tries[t], 4, bool(jseq[j]))
        assert out[jo[j]:jo[j + 1]].tolist() == alone.tolist()
        assert int((alone == 0).sum()) == target[t]
        assert objs[j] == pytest.approx(ref.objective(mat, bias.tolist(), alone.tolist()))


def _matrix(n: int, seed: int, symmetric: bool, diagonal: bool, zeros: bool) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    mat = (rng.random((n, n)) < 0.3) * rng.integers(1, 9, (n, n)).astype(np.float64)
    if symmetric:
        mat = np.triu(mat, 1) + np.triu(mat, 1).T
    np.fill_diagonal(mat, 5.0 if diagonal else 0.0)
    csr = sp.csr_array(mat)
    if zeros:  # explicit zero entries, kept by scipy
        csr.data[::4] = 0.0
    csr.sort_indices()
    return csr


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("diagonal", "zeros"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("radius", [0.5, 2.0, 6.0])
def test_symmetrize_matches_reference(symmetric: bool, diagonal: bool, zeros: bool,
                                      radius: float) -> None:
    csr = _matrix(11, 4, symmetric, diagonal, zeros)
    xadj, adj, w, near, scale = _kernels_graph.symmetrize(*csr_arrays_raw(csr), 2, radius)
    assert scale == (2.0 if np.array_equal(csr.toarray(), csr.toarray().T) else 1.0)
    w = scale * w
    assert _kernels_graph._symmetric_drops(*csr_arrays_raw(csr), 3, radius)[0] == (
        np.array_equal(csr.toarray(), csr.toarray().T))
    want = ref.symmetrize(csr.toarray().tolist())
    assert ref.dense(xadj, adj, w) == want
    assert near / len(adj) == pytest.approx(ref.near_fraction(want, radius))
    # sorted rows, no zero entries, nothing on the diagonal
    for i in range(11):
        row = adj[xadj[i]:xadj[i + 1]]
        assert row.tolist() == sorted(set(row.tolist())) and i not in row.tolist()
    assert np.all(w != 0)


@pytest.mark.parametrize("chunks", [1, 2, 3, 20])
def test_symmetric_check_and_drops_match_reference(chunks: int) -> None:
    # chunks of rows checked apart (more chunks than rows too) must give one answer
    for seed in range(6):
        for symmetric, diagonal, zeros in ((True, True, False), (True, False, True),
                                           (False, False, False)):
            csr = _matrix(11, seed, symmetric, diagonal, zeros)
            dense = csr.toarray()
            sym, drops, _ = _kernels_graph._symmetric_drops(*csr_arrays_raw(csr), chunks, 2.0)
            assert sym == np.array_equal(dense, dense.T)
            if sym:
                want = [sum(1 for k in range(csr.indptr[i], csr.indptr[i + 1])
                            if csr.indices[k] == i or csr.data[k] == 0.0) for i in range(11)]
                assert drops.tolist() == want
    # one mirrored value off, in the last row / one entry without its mirror
    csr = _matrix(11, 1, True, False, False)
    for change in ("value", "missing"):
        bad = csr.copy()
        if change == "value":
            bad.data[-1] += 1.0
        else:
            bad = sp.csr_array(bad.toarray() + np.eye(11, k=10) * 3.0)
        assert not _kernels_graph._symmetric_drops(*csr_arrays_raw(bad), chunks, 2.0)[0]
    # equal row and column sums, equal values, not symmetric: a directed cycle, and a
    # matrix whose mirror is the same set of values on other pairs
    for dense in (np.roll(np.eye(7), 1, axis=1) * 3.0,
                  np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0]], dtype=np.float64)):
        c = sp.csr_array(dense)
        assert not _kernels_graph._symmetric_drops(*csr_arrays_raw(c), chunks, 2.0)[0]
        xadj, adj, w, _, scale = _kernels_graph.symmetrize(*csr_arrays_raw(c), chunks, 2.0)
        assert scale == 1.0 and ref.dense(xadj, adj, w) == ref.symmetrize(dense.tolist())


def csr_arrays_raw(csr: sp.csr_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays as they are, explicit zeros and diagonal included."""
    return csr.indptr.astype(np.int64), csr.indices.astype(np.int64), csr.data


@pytest.mark.parametrize("seq", [False, True])
def test_build_hierarchy_levels_are_quotients_of_the_rank_graph(seq: bool) -> None:
    g = random_graph(30, 0.3, 5)
    xadj, adj, ew = csr_arrays(g)
    hx, ha, he, hv, vofs, eofs, anc = _kernels_rb.build_hierarchy(xadj, adj, ew, 7, 3, 10, seq,
                                                                  1.0)
    mat = ref.dense(xadj, adj, ew)
    levels = len(vofs) - 1
    assert levels >= 2 and anc.shape == (levels + 1, 30)
    assert anc[0].tolist() == list(range(30))
    for lev in range(1, levels + 1):
        x, a, e, w = _kernels_rb._level(lev, xadj, adj, ew, hx, ha, he, hv, vofs, eofs,
                                        np.ones(30))
        nc = len(x) - 1
        assert sorted(set(anc[lev].tolist())) == list(range(nc))
        # each cluster merges whole clusters of the level below, and weighs its ranks
        for v in range(30):
            assert len(set(anc[lev, anc[lev - 1] == anc[lev - 1, v]].tolist())) == 1
        assert w.tolist() == np.bincount(anc[lev], minlength=nc).astype(float).tolist()
        np.testing.assert_allclose(ref.dense(x, a, e), ref.quotient(mat, anc[lev].tolist()))
        assert nc < len(_kernels_rb._level(lev - 1, xadj, adj, ew, hx, ha, he, hv, vofs, eofs,
                                           np.ones(30))[0]) - 1


def test_build_hierarchy_keeps_no_level_when_pairing_does_not_shrink_the_graph() -> None:
    g = random_graph(30, 0.3, 5)
    xadj, adj, ew = csr_arrays(g)
    full = _kernels_rb.build_hierarchy(xadj, adj, ew, 7, 3, 10, False, 1.0)
    ratio = full[5][1] / len(adj)  # entries of level 1 / of the rank graph
    kept = _kernels_rb.build_hierarchy(xadj, adj, ew, 7, 3, 10, False, ratio + 0.01)
    assert len(kept[4]) == len(full[4])
    dropped = _kernels_rb.build_hierarchy(xadj, adj, ew, 7, 3, 10, False, ratio - 0.01)
    assert len(dropped[4]) == 1 and dropped[6].shape == (1, 30)
    assert dropped[6][0].tolist() == list(range(30))
