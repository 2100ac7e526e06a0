"""Lower bounds: never above the hop-bytes of any mapping, and the spectral one still tight.

The eigenvalue estimates are checked against dense `eigvalsh` on graphs just above the dense
limit, so the sparse solvers run: each solver on every kind of graph (also the one it is not
chosen for), and stopped after one iteration (a loose but still valid estimate).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hpcmig.topology import patterns, spectrum
from hpcmig.topology.bounds import (
    lower_bound,
    partner_bound,
    partner_bounds,
    rank_graph_of,
    spectral_bound,
)
from hpcmig.topology.generate import dragonfly, fat_tree, torus
from hpcmig.topology.mapper import map_ranks
from hpcmig.topology.metrics import (
    block_placement,
    cyclic_placement,
    hop_bytes,
    random_placement,
)
from hpcmig.topology.model import Topology

from . import reference as ref
from .conftest import random_graph


def _split_graph() -> sp.csr_array:
    """Two grids and three ranks that talk to nobody: five zero eigenvalues."""
    a = patterns.stencil((20, 12))
    return sp.csr_array(sp.block_diag([a, a, sp.csr_array((3, 3))]))


GRAPHS = {
    "fft": lambda: patterns.pencil_fft(24, 24),  # lambda_2 has multiplicity 46
    "grid2d": lambda: patterns.stencil((24, 24)),
    "grid3d": lambda: patterns.stencil((9, 9, 9)),  # triple eigenvalues
    "random": lambda: patterns.random_sparse(600, 6, seed=3),
    "mesh": lambda: patterns.unstructured_mesh(500, seed=2),
    "split": _split_graph,
}


def _graph(name: str) -> sp.csr_array:
    return rank_graph_of(GRAPHS[name]())


def _exact(w: sp.csr_array, count: int = 8) -> np.ndarray:
    return np.linalg.eigvalsh(spectrum.laplacian(w).toarray())[:count]


def _assert_below(est: np.ndarray, exact: np.ndarray) -> None:
    assert est.shape == exact.shape
    assert np.all(np.diff(est) >= 0) and est.min() >= 0
    assert np.all(est <= exact + 1e-9 * exact.max()), (est, exact)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_estimates_never_exceed_the_eigenvalues_and_are_close(name: str) -> None:
    w = _graph(name)
    assert w.shape[0] > spectrum.DENSE_LIMIT
    est = spectrum.smallest_eigenvalues(w, 8)
    exact = _exact(w)
    _assert_below(est, exact)
    assert np.all(est >= 0.99 * exact - 1e-9 * exact.max())
    if name == "split":
        assert np.count_nonzero(est == 0) == 5


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("name", ["fft", "grid3d", "random", "mesh"])
def test_either_solver_is_valid_on_any_graph(monkeypatch: pytest.MonkeyPatch, name: str,
                                             separable: bool) -> None:
    monkeypatch.setattr(spectrum, "separable", lambda w: separable)
    w = _graph(name)
    _assert_below(spectrum.smallest_eigenvalues(w, 8), _exact(w))


@pytest.mark.parametrize("name", ["fft", "grid3d", "random"])
def test_a_solver_stopped_early_only_loosens_the_estimate(monkeypatch: pytest.MonkeyPatch,
                                                          name: str) -> None:
    for const in ("PROBE_ITERS", "MORE_ITERS", "SHIFTED_ITERS", "SHIFTED_ROUNDS"):
        monkeypatch.setattr(spectrum, const, 1)
    w = _graph(name)
    _assert_below(spectrum.smallest_eigenvalues(w, 8), _exact(w))


def test_separable_tells_grids_from_expanders() -> None:
    assert [spectrum.separable(_graph(n)) for n in ("grid2d", "grid3d", "mesh")] == [True] * 3
    assert [spectrum.separable(_graph(n)) for n in ("fft", "random")] == [False] * 2


def test_corrected_ritz_brackets_the_eigenvalues() -> None:
    w = _graph("grid3d")
    lap = spectrum.laplacian(w)
    vals, vecs = np.linalg.eigh(lap.toarray())
    y = spectrum.component_vectors(w)
    theta, rho = spectrum.corrected_ritz(lap, y, vecs[:, 1:8], 7)
    np.testing.assert_allclose(theta, vals[1:8], rtol=1e-9)
    assert rho < 1e-9 * vals[7]
    noisy = vecs[:, 1:8] + 1e-3 * np.random.default_rng(0).standard_normal((w.shape[0], 7))
    theta, rho = spectrum.corrected_ritz(lap, y, noisy, 7)
    assert np.all(theta - rho <= vals[1:8]) and np.all(vals[1:8] <= theta)


def _tiny_cases() -> list[tuple[str, Topology, sp.csr_array]]:
    disconnected = random_graph(8, 0.5, 4).toarray()
    disconnected[:4, 4:] = disconnected[4:, :4] = 0
    return [
        *[(f"fattree-{s}", fat_tree([2, 2]), random_graph(8, 0.5, s)) for s in range(3)],
        ("torus", torus([2, 2]), random_graph(8, 0.5, 7)),
        ("dragonfly", dragonfly(2, 1, 2), random_graph(8, 0.6, 8)),
        ("one-way", fat_tree([2, 2]), sp.csr_array(np.triu(random_graph(8, 0.7, 9).toarray()))),
        ("disconnected", fat_tree([2, 2]), sp.csr_array(disconnected)),
    ]


@pytest.mark.parametrize(("name", "topo", "comm"), _tiny_cases(), ids=lambda c: str(c)[:12])
def test_lower_bound_below_the_brute_force_optimum(name: str, topo: Topology,
                                                   comm: sp.csr_array) -> None:
    bound = lower_bound(comm, topo, 2)
    best = ref.best_mapping(comm.toarray().tolist(), [2] * topo.n_nodes,
                            topo.distance_matrix().tolist())
    assert 0 <= bound.total <= best * (1 + 1e-12)
    assert bound.levels and all(lv.spectral is not None for lv in bound.levels[:1])


def _larger_cases() -> list[tuple[str, Topology, sp.csr_array]]:
    return [
        ("fft-fattree", fat_tree([8, 8]), patterns.pencil_fft(32, 32)),
        ("fft-torus", torus([4, 4, 4]), patterns.permute(patterns.pencil_fft(32, 32), 1)[0]),
        ("grid-torus", torus([4, 4, 4]), patterns.stencil((32, 32))),
        ("grid3d-fattree", fat_tree([4, 4, 4]), patterns.permute(patterns.stencil((10, 10, 8)),
                                                                 2)[0]),
        ("random-dragonfly", dragonfly(4, 4, 4), patterns.random_sparse(1024, 6, seed=1)),
        ("mesh-fattree", fat_tree([8, 8]), patterns.unstructured_mesh(1000, seed=3)),
    ]


@pytest.mark.parametrize(("name", "topo", "comm"), _larger_cases(), ids=lambda c: str(c)[:16])
def test_lower_bound_below_every_mapping(name: str, topo: Topology,
                                         comm: sp.csr_array) -> None:
    n = comm.shape[0]
    bound = lower_bound(comm, topo, 16)
    assert bound.levels[0].spectral is not None  # the sparse eigensolvers ran
    mapping = map_ranks(comm, topo, 16, seed=0)
    for node_of in (mapping.node_of, block_placement(n, topo, 16),
                    cyclic_placement(n, topo, 16), random_placement(n, topo, 16, seed=5)):
        assert bound.total <= hop_bytes(comm, topo, node_of) * (1 + 1e-12)
    # the mapper's graph (C itself for a symmetric C, at scale 2) gives the same bound
    reused = lower_bound(comm, topo, 16, graph=mapping.graph, graph_scale=mapping.graph_scale)
    assert reused.total == pytest.approx(bound.total, rel=1e-9)
    assert reused.total <= mapping.hop_bytes * (1 + 1e-12)


def test_spectral_bound_as_tight_as_with_exact_eigenvalues() -> None:
    comm = patterns.pencil_fft(32, 32)
    topo = fat_tree([8, 8])
    bound = lower_bound(comm, topo, 16)
    exact = _exact(rank_graph_of(comm))
    for lv in bound.levels:
        best = spectral_bound(exact, 1024, lv.slots)
        assert lv.spectral is not None and 0.999 * best <= lv.spectral <= best * (1 + 1e-12)
    # all-to-all in rows and columns: the spectral bound makes the bound tight
    assert map_ranks(comm, topo, 16).hop_bytes <= 1.02 * bound.total


def test_partner_bounds_match_one_by_one() -> None:
    w = rank_graph_of(patterns.random_sparse(300, 8, seed=2))
    sizes = [16, 1, 64, 4, 400]
    assert partner_bounds(w, sizes) == pytest.approx([partner_bound(w, s) for s in sizes])
    assert partner_bound(w, 400) == 0.0  # everybody fits in one group
    assert partner_bound(w, 1) == pytest.approx(0.5 * w.sum())  # nobody shares a node
