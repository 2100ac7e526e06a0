"""Every numba kernel against its plain-Python reference (also run with NUMBA_DISABLE_JIT=1)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hpcmig.topology import _kernels, _kernels_cost, _kernels_rb
from hpcmig.topology.generate import dragonfly, fat_tree, torus
from hpcmig.topology.metrics import uplink_ids
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
                                         4, 4)
    mat = ref.dense(xadj, adj, ew)
    assert ref.objective(mat, [0.0] * 12, side.tolist()) == ref.best_bisection(mat, [0.0] * 12, 6)


@pytest.mark.parametrize("size0", [3, 6])
def test_multilevel_bisect_exact_size_and_near_optimum(small_graph: sp.csr_array,
                                                       size0: int) -> None:
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    bias = np.linspace(-3, 3, n)
    state = np.array([3], dtype=np.int64)
    side = _kernels_rb.multilevel_bisect(xadj, adj, ew, np.ones(n), bias, float(size0), state,
                                         8, 4)
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


@pytest.mark.parametrize("topo", _topologies(), ids=lambda t: t.kind + str(t.n_nodes))
def test_link_loads_match_reference(topo: Topology) -> None:
    rng = np.random.default_rng(2)
    pa = rng.integers(0, topo.n_nodes, 25)
    pb = rng.integers(0, topo.n_nodes, 25)
    t = rng.integers(1, 100, 25).astype(np.float64)
    link_of, n_hier = uplink_ids(topo)
    got = _kernels_cost.link_loads(pa, pb, t, topo.groups, link_of, n_hier, topo.coords,
                                   topo.ring)
    want = np.zeros_like(got)
    dims = len(topo.ring)
    for a, b, x in zip(pa.tolist(), pb.tolist(), t.tolist(), strict=True):
        if a == b:
            continue
        for lvl in range(topo.groups.shape[1]):
            if topo.groups[a][lvl] != topo.groups[b][lvl]:
                for node in (a, b):
                    if link_of[node][lvl] >= 0:
                        want[link_of[node][lvl]] += x
        route = ref.torus_route(topo.coords[a].tolist(), topo.coords[b].tolist(),
                                topo.ring.tolist())
        for point, k in route:
            lin = int(np.ravel_multi_index(point, tuple(topo.ring)))
            want[n_hier + lin * dims + k] += x
    np.testing.assert_allclose(got, want)


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
    pos = _kernels_rb.recursive_bisection(xadj, adj, ew, caps[topo.order], topo.split_key,
                                          np.zeros((5, 0)), np.zeros(0), 1, 4, 4, 2, 0)
    node_of = topo.order[pos]
    assert np.all(np.bincount(node_of, minlength=4) == 2)
    dist = topo.distance_matrix().tolist()
    got = ref.hop_bytes(mat.tolist(), node_of.tolist(), dist)
    assert got == ref.best_mapping(mat.tolist(), caps.tolist(), dist)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_point_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 3, 15).astype(np.int64)
    capcum = np.concatenate([[0], np.cumsum(rng.integers(0, 5, 16))]).astype(np.int64)
    for lo in range(0, 14):
        for hi in range(lo + 2, 17):
            got = _kernels_rb._split_point(keys, capcum, lo, hi)
            assert got == ref.split_point(keys.tolist(), capcum.tolist(), lo, hi)


def test_apply_task_and_next_level_match_reference() -> None:
    rng = np.random.default_rng(3)
    perm = rng.permutation(10).astype(np.int64)
    sides = rng.integers(0, 2, 10).astype(np.int8)
    want = ref.level_order(perm.tolist(), sides.tolist(), 2, 9)
    n0 = int((sides[2:9] == 0).sum())
    vlo, vhi = np.zeros(10, dtype=np.int64), np.full(10, 4, dtype=np.int64)
    _kernels_rb._apply_task(perm, sides, vlo, vhi, 2, 9, 0, 2, 4)
    assert perm[2:9].tolist() == want
    assert vlo[want].tolist() == [0] * n0 + [2] * (7 - n0)
    assert vhi[want].tolist() == [2] * n0 + [4] * (7 - n0)
    pos = np.full(10, -1, dtype=np.int64)
    qs, qe, ql, qh = (np.array([0, 2]), np.array([2, 9]), np.array([0, 0]), np.array([1, 4]))
    nxt = _kernels_rb._next_level(perm, sides, pos, qs, qe, ql, qh, np.array([-1, 2]))
    assert nxt.tolist() == [[2, 2 + n0], [2 + n0, 9], [0, 2], [2, 4]]
    assert pos[perm[:2]].tolist() == [0, 0]


def test_parallel_runs_match_serial_runs(small_graph: sp.csr_array) -> None:
    xadj, adj, ew = csr_arrays(small_graph)
    n = len(xadj) - 1
    bias = np.linspace(-3.0, 3.0, n)
    serial = _kernels_rb._runs_serial(xadj, adj, ew, bias, n / 2, 12345, 4, 4, 3)
    parallel = _kernels_rb._runs_parallel(xadj, adj, ew, bias, n / 2, 12345, 4, 4, 3)
    assert serial.tolist() == parallel.tolist()
    assert int((serial == 0).sum()) == n // 2
