"""Kernels that measure rather than map: link loads of a mapping, heaviest-partner sums.

Each is compared with a plain-Python reference, here and once more with NUMBA_DISABLE_JIT=1
(`test_nojit.py`).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hpcmig.topology import _kernels_cost, _kernels_graph, _kernels_level, _kernels_rb
from hpcmig.topology.generate import dragonfly, fat_tree, torus
from hpcmig.topology.metrics import uplink_ids
from hpcmig.topology.model import Topology

from . import reference as ref
from .conftest import csr_arrays, random_graph


def _topologies() -> list[Topology]:
    return [fat_tree([2, 2, 2]), torus([3, 4]), torus([2, 2, 3]), dragonfly(3, 2, 2)]


def _reference_loads(mat: np.ndarray, node_of: list[int], topo: Topology) -> np.ndarray:
    """Every entry routed on its own, from the lower node index to the higher."""
    link_of, n_hier = uplink_ids(topo)
    dims = len(topo.ring)
    want = np.zeros(n_hier + (int(np.prod(topo.ring)) * dims if dims else 0))
    for i, row in enumerate(mat.tolist()):
        for j, x in enumerate(row):
            a, b = sorted((node_of[i], node_of[j]))
            if a == b or x == 0:
                continue
            for lvl in range(topo.groups.shape[1]):
                if topo.groups[a][lvl] != topo.groups[b][lvl]:
                    for node in (a, b):
                        if link_of[node][lvl] >= 0:
                            want[link_of[node][lvl]] += x
            for point, k in ref.torus_route(topo.coords[a].tolist(), topo.coords[b].tolist(),
                                            topo.ring.tolist()):
                want[n_hier + int(np.ravel_multi_index(point, tuple(topo.ring))) * dims + k] += x
    return want


@pytest.mark.parametrize("topo", _topologies(), ids=lambda t: t.kind + str(t.n_nodes))
def test_link_loads_match_reference(topo: Topology) -> None:
    rng = np.random.default_rng(2)
    n = 3 * topo.n_nodes
    mat = (rng.random((n, n)) < 0.3) * rng.integers(1, 100, (n, n)).astype(np.float64)
    node_of = rng.permutation(np.repeat(np.arange(topo.n_nodes), 3))
    link_of, n_hier = uplink_ids(topo)
    indptr, indices, data = csr_arrays(sp.csr_array(mat))
    got = [_kernels_cost.link_loads(indptr, indices, data, node_of, topo.groups, link_of,
                                    n_hier, topo.coords, topo.ring, chunks)
           for chunks in (1, 2, 5, 100)]  # blocks of nodes summed apart: the same loads
    np.testing.assert_allclose(got[0], _reference_loads(mat, node_of.tolist(), topo))
    for other in got[1:]:
        assert other.tolist() == got[0].tolist()


def _reference_beyond(mat: list[list[float]], keep: int) -> float:
    total = 0.0
    for row in mat:
        partners = sorted((x for x in row if x != 0), reverse=True)
        total += sum(partners[keep:])
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beyond_heaviest_matches_reference(seed: int) -> None:
    g = random_graph(20, 0.4, seed)
    xadj, adj, ew = csr_arrays(g)
    keeps = np.array([0, 1, 3, 7, 19, 25], dtype=np.int64)
    got = _kernels_graph.beyond_heaviest(xadj, ew, keeps)
    mat = ref.dense(xadj, adj, ew)
    np.testing.assert_allclose(got, [_reference_beyond(mat, int(k)) for k in keeps])


def test_beyond_heaviest_keeps_ties_and_skips_short_rows() -> None:
    # row 0: partners 5, 5, 1; row 1: one partner; row 2: none
    mat = sp.csr_array(np.array([[0, 5, 5, 1], [5, 0, 0, 0], [5, 0, 0, 0], [1, 0, 0, 0.0]]))
    xadj, _, ew = csr_arrays(mat)
    got = _kernels_graph.beyond_heaviest(xadj, ew, np.array([1, 2], dtype=np.int64))
    np.testing.assert_allclose(got, [5 + 1, 1])


@pytest.mark.parametrize("seq", [False, True])
def test_hop_bytes_read_on_any_level_equal_those_on_ranks(seq: bool) -> None:
    # 32 ranks, 4 per node of a 2x2x2 fat-tree: hop-bytes read on a hierarchy level (whole
    # clusters as the level's entries, split ones on the ranks) equal those on the ranks,
    # for placements keeping a level's clusters whole, splitting a few, or random ones
    g = random_graph(32, 0.4, 3)
    xadj, adj, ew = csr_arrays(g)
    hx, ha, he, hv, vofs, eofs, anc = _kernels_rb.build_hierarchy(xadj, adj, ew, 5, 4, 10, seq,
                                                                  1.0)
    assert anc.shape[0] >= 3
    topo = fat_tree([2, 2, 2])
    arrays = (np.ascontiguousarray(topo.groups), np.ascontiguousarray(topo.half),
              np.ascontiguousarray(topo.coords), np.ascontiguousarray(topo.ring))
    dist = [[ref.distance(topo.groups, topo.half, topo.coords, topo.ring, a, b)
             for b in range(topo.n_nodes)] for a in range(topo.n_nodes)]
    rng = np.random.default_rng(0)
    seen_whole = seen_split = 0
    for lev in range(anc.shape[0]):
        nc = int(anc[lev].max()) + 1
        for moved in (0, 1, 3, 32):  # clusters of `lev` on random nodes, then ranks moved
            node_of = rng.integers(0, topo.n_nodes, nc)[anc[lev]]
            node_of[rng.choice(32, moved, replace=False)] = rng.integers(0, topo.n_nodes, moved)
            want = ref.hop_bytes(ref.dense(xadj, adj, ew), node_of.tolist(), dist)
            for at_lev in range(1, anc.shape[0]):
                cl = anc[at_lev]
                at = _kernels_level.cluster_at(cl, node_of, int(cl.max()) + 1)
                split = {int(c) for c in range(len(at))
                         if len({int(node_of[v]) for v in range(32) if cl[v] == c}) > 1}
                assert {int(c) for c in np.flatnonzero(at < 0)} == split
                seen_whole += int((at >= 0).sum())
                seen_split += len(split)
                x, a, e, _ = _kernels_rb._level(at_lev, xadj, adj, ew, hx, ha, he, hv, vofs,
                                                eofs, hv)
                got = _kernels_level.mixed_hop_bytes(x, a, e, at, cl, xadj, adj, ew, node_of,
                                                    *arrays)
                assert got == pytest.approx(want)
            best, at = _kernels_level.cheapest_level(anc, node_of, xadj, vofs, eofs)
            if best == 0:
                got = _kernels_cost.hop_bytes(xadj, adj, ew, node_of, *arrays)
            else:
                x, a, e, _ = _kernels_rb._level(best, xadj, adj, ew, hx, ha, he, hv, vofs,
                                                eofs, hv)
                got = _kernels_level.mixed_hop_bytes(x, a, e, at, anc[best], xadj, adj, ew,
                                                    node_of, *arrays)
            assert got == pytest.approx(want)
            if moved == 0 and lev > 0:  # whole clusters: a coarse level reads fewer entries
                assert best > 0
    assert seen_whole and seen_split
