"""Generators of standard traffic patterns, for tests, benchmarks and `hpcmig map` demos.

Design note: this module owns synthetic traffic only (pure numpy/scipy, deterministic for a
seed); it writes no files (see `comm.write_comm`). Every generator returns an N x N float64
CSR matrix of bytes sent from rank i (row) to rank j (column), with integer byte counts so the
matrices can be handed unchanged to METIS/KaHIP/Scotch, which need integer edge weights.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp


def _from_pairs(n: int, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray) -> sp.csr_array:
    keep = src != dst
    mat = sp.coo_array((nbytes[keep].astype(np.float64), (src[keep], dst[keep])), shape=(n, n))
    csr = sp.csr_array(mat)
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


def stencil(dims: tuple[int, ...], nbytes: float = 65536.0, periodic: bool = False,
            diagonals: bool = False) -> sp.csr_array:
    """Halo exchange on a 2D/3D process grid in row-major (natural) rank order.

    Face neighbours get `nbytes`; with `diagonals`, edge/corner neighbours (9/27-point)
    get `nbytes` divided by 8 per extra dimension of the offset.
    """
    n = math.prod(dims)
    coords = np.stack(np.unravel_index(np.arange(n), dims), axis=1)
    offsets = [o for o in np.ndindex(*(3,) * len(dims)) if any(v != 1 for v in o)]
    src_l, dst_l, b_l = [], [], []
    for off in offsets:
        delta = np.array(off) - 1
        order = int(np.abs(delta).sum())
        if order > 1 and not diagonals:
            continue
        nb = coords + delta
        if periodic:
            nb %= np.array(dims)
            ok = np.ones(n, dtype=bool)
        else:
            ok = np.all((nb >= 0) & (nb < np.array(dims)), axis=1)
        dst = np.ravel_multi_index(tuple(nb[ok].T), dims)
        src_l.append(np.arange(n)[ok])
        dst_l.append(dst)
        b_l.append(np.full(int(ok.sum()), float(round(nbytes / 8 ** (order - 1)))))
    return _from_pairs(n, np.concatenate(src_l), np.concatenate(dst_l), np.concatenate(b_l))


def grid_dims(n: int, ndim: int) -> tuple[int, ...]:
    """Most cubic factorisation of `n` into `ndim` factors, largest first (MPI_Dims_create)."""
    if ndim == 1:
        return (n,)
    best: tuple[int, ...] = ()
    for d in range(1, n + 1):
        if n % d:
            continue
        rest = grid_dims(n // d, ndim - 1)
        cand = tuple(sorted((d, *rest), reverse=True))
        if not best or cand[0] / cand[-1] < best[0] / best[-1]:
            best = cand
    return best


def pencil_fft(rows: int, cols: int, nbytes: float = 1 << 20) -> sp.csr_array:
    """3D FFT with a 2D pencil decomposition: all-to-all inside each process row and column.

    Rank r = i * cols + j; each transpose sends `nbytes` per rank, split evenly over the
    partners of that sub-communicator.
    """
    n = rows * cols
    r = np.arange(n)
    i, j = r // cols, r % cols
    src_l, dst_l, b_l = [], [], []
    if cols > 1:  # row communicator: same i
        s = np.repeat(r, cols)
        d = (i[:, None] * cols + np.arange(cols)[None, :]).ravel()
        src_l.append(s)
        dst_l.append(d)
        b_l.append(np.full(len(s), float(round(nbytes / cols))))
    if rows > 1:  # column communicator: same j
        s = np.repeat(r, rows)
        d = (np.arange(rows)[None, :] * cols + j[:, None]).ravel()
        src_l.append(s)
        dst_l.append(d)
        b_l.append(np.full(len(s), float(round(nbytes / rows))))
    if not src_l:
        return sp.csr_array((n, n), dtype=np.float64)
    return _from_pairs(n, np.concatenate(src_l), np.concatenate(dst_l), np.concatenate(b_l))


def all_to_all(n: int, nbytes: float = 4096.0) -> sp.csr_array:
    """Every rank sends `nbytes` to every other rank."""
    src = np.repeat(np.arange(n), n)
    dst = np.tile(np.arange(n), n)
    return _from_pairs(n, src, dst, np.full(n * n, float(nbytes)))


def random_sparse(n: int, degree: int = 6, nbytes: float = 65536.0, seed: int = 0
                  ) -> sp.csr_array:
    """Each rank talks to `degree` random partners; byte counts uniform in [nbytes/2, 3nbytes/2]."""
    rng = np.random.default_rng(seed)
    src = np.repeat(np.arange(n), degree)
    dst = rng.integers(0, n, size=n * degree)
    b = np.round(rng.uniform(0.5, 1.5, size=n * degree) * nbytes)
    mat = _from_pairs(n, src, dst, b)
    return sp.csr_array(mat + mat.T)  # replies: traffic both ways


def unstructured_mesh(n: int, dim: int = 2, nbytes: float = 65536.0, seed: int = 0
                      ) -> sp.csr_array:
    """Delaunay mesh of `n` random points, ranks in x-sorted order; halo bytes vary by +-50%."""
    from scipy.spatial import Delaunay

    rng = np.random.default_rng(seed)
    pts = rng.random((n, dim))
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    simplices = Delaunay(pts).simplices
    pairs = [simplices[:, [a, b]] for a in range(dim + 1) for b in range(a + 1, dim + 1)]
    edges = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)
    b = np.round(rng.uniform(0.5, 1.5, size=len(edges)) * nbytes)
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    return _from_pairs(n, src, dst, np.concatenate([b, b]))


def permute(matrix: sp.csr_array, seed: int = 0) -> tuple[sp.csr_array, np.ndarray]:
    """Relabel ranks randomly: returns (P M P^T, perm) with new rank k = old rank perm[k]."""
    n = matrix.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    out = sp.csr_array(matrix[perm][:, perm])
    out.sort_indices()
    return out, perm
