"""Traffic matrices: the HDF5 file format, validation, and the symmetric rank graph.

Design note: this module owns reading and writing ``/comm`` and checking it; it must not
decide anything about placement. A traffic matrix is N x N, entry (i, j) = bytes rank i sends
to rank j. Two HDF5 layouts are accepted:

* dense (default for small N): dataset ``/comm``, shape (N, N), float64;
* sparse CSR (for large N -- a dense 65,536-rank matrix is 32 GiB): group ``/comm`` with
  datasets ``data`` (float64), ``indices`` (int64, column of each entry), ``indptr``
  (int64, N+1 row starts) and attribute ``shape`` = (N, N); attribute ``format`` = "csr".

In memory matrices are ``scipy.sparse.csr_array`` (float64). Entries must be finite and
non-negative; the diagonal (rank to itself) is ignored by every metric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from hpcmig.errors import UsageError

DENSE_LIMIT = 4096  # write_comm's default: dense up to this many ranks, CSR above


def as_csr(matrix: npt.ArrayLike | sp.sparray | sp.spmatrix, what: str = "traffic matrix"
           ) -> sp.csr_array:
    """Validate a traffic matrix (square, finite, >= 0) and return it as float64 CSR."""
    if sp.issparse(matrix):
        csr = sp.csr_array(matrix, dtype=np.float64)
    else:
        arr = np.asarray(matrix, dtype=np.float64)
        if arr.ndim != 2:
            raise UsageError(f"{what} must be 2-dimensional, got shape {arr.shape}")
        csr = sp.csr_array(arr)
    rows, cols = csr.shape
    if rows != cols:
        raise UsageError(f"{what} must be square (N x N), got {rows} x {cols}")
    if rows == 0:
        raise UsageError(f"{what} is empty")
    if csr.data.size:  # two reductions, no temporary arrays (NaN makes min and max NaN)
        lo, hi = float(csr.data.min()), float(csr.data.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise UsageError(f"{what} has NaN or infinite entries")
        if lo < 0:
            raise UsageError(f"{what} has negative entries (bytes cannot be negative)")
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def rank_graph(comm: sp.csr_array) -> sp.csr_array:
    """Undirected rank graph: weight(i, j) = bytes i->j + bytes j->i, no self loops."""
    sym = sp.csr_array(comm + comm.T)
    sym.setdiag(0.0)
    sym.eliminate_zeros()
    sym.sort_indices()
    return sym


def read_comm(path: str | Path) -> sp.csr_array:
    """Read ``/comm`` (dense or CSR layout) from an HDF5 file."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"traffic matrix file {p} does not exist")
    try:
        with h5py.File(p, "r") as f:
            if "comm" not in f:
                raise UsageError(f"{p} has no /comm dataset", hint="see docs/topology.md")
            node = f["comm"]
            if isinstance(node, h5py.Dataset):
                if node.ndim != 2:
                    raise UsageError(f"{p}: /comm must be 2-dimensional, got shape {node.shape}")
                if node.shape[0] != node.shape[1]:
                    raise UsageError(f"{p}: /comm must be square (N x N), got "
                                     f"{node.shape[0]} x {node.shape[1]}")
                return as_csr(np.asarray(node[()], dtype=np.float64), f"{p}: /comm")
            return _read_csr_group(node, p)
    except OSError as exc:
        raise UsageError(f"cannot read {p} as HDF5: {exc}") from None


def _read_csr_group(group: object, p: Path) -> sp.csr_array:
    import h5py

    assert isinstance(group, h5py.Group)
    missing = [k for k in ("data", "indices", "indptr") if k not in group]
    if missing or "shape" not in group.attrs:
        what = ", ".join(missing + ([] if "shape" in group.attrs else ["attr shape"]))
        raise UsageError(f"{p}: /comm group is missing {what}", hint="see docs/topology.md")
    shape = tuple(int(s) for s in np.asarray(group.attrs["shape"]).ravel())
    if len(shape) != 2 or shape[0] != shape[1]:
        raise UsageError(f"{p}: /comm must be square (N x N), got shape {shape}")
    data = np.asarray(group["data"][()], dtype=np.float64)
    indices = np.asarray(group["indices"][()], dtype=np.int64)
    indptr = np.asarray(group["indptr"][()], dtype=np.int64)
    n = shape[0]
    if (indptr.shape != (n + 1,) or indptr[0] != 0 or indptr[-1] != len(data)
            or len(indices) != len(data) or np.any(np.diff(indptr) < 0)):
        raise UsageError(f"{p}: /comm CSR arrays are inconsistent with shape {shape}")
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise UsageError(f"{p}: /comm/indices has a column outside 0..{n - 1}")
    return as_csr(sp.csr_array((data, indices, indptr), shape=(n, n)), f"{p}: /comm")


def write_comm(path: str | Path, matrix: npt.ArrayLike | sp.sparray | sp.spmatrix,
               layout: str = "auto") -> None:
    """Write a traffic matrix; `layout` is "dense", "csr" or "auto" (dense up to DENSE_LIMIT)."""
    import h5py

    csr = as_csr(matrix)
    n = csr.shape[0]
    if layout == "auto":
        layout = "dense" if n <= DENSE_LIMIT else "csr"
    if layout not in ("dense", "csr"):
        raise ValueError(f"layout must be dense, csr or auto, not {layout!r}")
    with h5py.File(Path(path), "w") as f:
        if layout == "dense":
            f.create_dataset("comm", data=csr.toarray(), dtype=np.float64)
            return
        g = f.create_group("comm")
        g.attrs["shape"] = np.array([n, n], dtype=np.int64)
        g.attrs["format"] = "csr"
        g.create_dataset("data", data=csr.data.astype(np.float64))
        g.create_dataset("indices", data=csr.indices.astype(np.int64))
        g.create_dataset("indptr", data=csr.indptr.astype(np.int64))
