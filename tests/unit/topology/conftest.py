"""Small graphs shared by the topology tests."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp


def csr_arrays(mat: sp.csr_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = sp.csr_array(mat)
    m.sort_indices()
    return m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data.astype(np.float64)


def random_graph(n: int, density: float, seed: int) -> sp.csr_array:
    """Symmetric graph with integer weights 1..9 and no self loops."""
    rng = np.random.default_rng(seed)
    upper = np.triu((rng.random((n, n)) < density) * rng.integers(1, 10, (n, n)), 1)
    return sp.csr_array((upper + upper.T).astype(np.float64))


@pytest.fixture(params=[0, 1, 2])
def small_graph(request: pytest.FixtureRequest) -> sp.csr_array:
    return random_graph(12, 0.35, request.param)
