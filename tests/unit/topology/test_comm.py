"""Traffic matrices: HDF5 layouts, validation, pattern generators."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from hpcmig.errors import UsageError
from hpcmig.topology import patterns
from hpcmig.topology.comm import as_csr, rank_graph, read_comm, write_comm


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_roundtrip(tmp_path: Path, layout: str) -> None:
    mat = patterns.random_sparse(30, degree=3, seed=2)
    write_comm(tmp_path / "m.h5", mat, layout=layout)
    with h5py.File(tmp_path / "m.h5") as f:
        assert isinstance(f["comm"], h5py.Dataset if layout == "dense" else h5py.Group)
    back = read_comm(tmp_path / "m.h5")
    np.testing.assert_array_equal(back.toarray(), mat.toarray())


def _write_raw(path: Path, data: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("comm", data=data)


@pytest.mark.parametrize(("data", "message"), [
    (np.ones((3, 4)), "square"),
    (np.ones(3), "2-dimensional"),
    (-np.ones((3, 3)), "negative"),
    (np.full((2, 2), np.nan), "NaN"),
    # one bad entry among good ones, anywhere in the range of the others
    (np.array([[0, 5.0, np.nan], [1, 0, 2], [3, 4, 0]]), "NaN or infinite"),
    (np.array([[0, 5.0, np.inf], [1, 0, 2], [3, 4, 0]]), "NaN or infinite"),
    (np.array([[0, 5.0, -np.inf], [1, 0, 2], [3, 4, 0]]), "NaN or infinite"),
    (np.array([[0, 5.0, -1e-300], [1, 0, 2], [3, 4, 0]]), "negative"),
])
def test_bad_dense_matrices(tmp_path: Path, data: np.ndarray, message: str) -> None:
    _write_raw(tmp_path / "m.h5", data)
    with pytest.raises(UsageError, match=message):
        read_comm(tmp_path / "m.h5")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_comm(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UsageError, match="HDF5"):
        read_comm(tmp_path / "text.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_dataset("other", data=[1])
    with pytest.raises(UsageError, match="no /comm"):
        read_comm(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "csr.h5", "w") as f:
        g = f.create_group("comm")
        g.attrs["shape"] = [3, 3]
        g["data"], g["indices"], g["indptr"] = [1.0], [5], [0, 1, 1, 1]
    with pytest.raises(UsageError, match="outside"):
        read_comm(tmp_path / "csr.h5")


def test_rank_graph_is_symmetric_without_diagonal() -> None:
    mat = as_csr(np.array([[5.0, 1, 0], [2, 0, 0], [0, 3, 1]]))
    w = rank_graph(mat).toarray()
    np.testing.assert_array_equal(w, [[0, 3, 0], [3, 0, 3], [0, 3, 0]])


def test_stencil_neighbours() -> None:
    mat = patterns.stencil((4, 5), nbytes=10)
    deg = np.diff(mat.indptr)
    assert deg.min() == 2 and deg.max() == 4  # corners, interior
    assert (mat != mat.T).nnz == 0
    periodic = patterns.stencil((4, 4, 4), periodic=True)
    assert set(np.diff(periodic.indptr).tolist()) == {6}
    full = patterns.stencil((3, 3), diagonals=True)
    assert np.diff(full.indptr)[4] == 8


def test_pencil_fft_partners() -> None:
    mat = patterns.pencil_fft(4, 8, nbytes=1024)
    # rank 0 talks to its row (7 others) and its column (3 others)
    assert set(mat[[0]].indices.tolist()) == set(range(1, 8)) | {8, 16, 24}
    assert mat[0, 1] == 1024 / 8 and mat[0, 8] == 1024 / 4


def test_other_patterns() -> None:
    assert patterns.all_to_all(5).nnz == 20
    mesh = patterns.unstructured_mesh(200, seed=1)
    assert (mesh != mesh.T).nnz == 0 and mesh.nnz > 3 * 200
    perm_mat, perm = patterns.permute(mesh, seed=1)
    np.testing.assert_array_equal(perm_mat.toarray(), mesh.toarray()[perm][:, perm])
    assert patterns.grid_dims(4096, 3) == (16, 16, 16)
    assert sp.issparse(patterns.random_sparse(10))
