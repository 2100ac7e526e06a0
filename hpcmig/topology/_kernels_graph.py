"""numba kernels on the traffic matrix: the rank graph, and whether ranks are numbered locally.

Design note: private, arrays and scalars only, no validation (see `_kernels.py` for the
conventions). Input matrices are CSR with sorted, unique column indices per row (what
`comm.as_csr` returns). `symmetrize` turns the traffic matrix C into the undirected rank graph
C + C^T (no diagonal, no zero entries) in O(entries): a parallel check and a parallel copy
when C is symmetric (stencils, all-to-all), a counting-sort transpose otherwise; scipy's
`C + C.T` costs seconds at 33 million entries. It also counts the entries between ranks
close in rank (the symmetric case in the check's pass), which tells the mapper whether the
rank numbering follows the communication and matching may go in rank order.
`beyond_heaviest` gives the heaviest-partner lower bound of `bounds.py` for several group
sizes in one parallel pass (a row is sorted only when it has more partners than a group
keeps; scipy's lexsort of all entries took seconds at 33 million).
"""

from __future__ import annotations

from hpcmig.topology._jit import configure_cache

configure_cache()

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402


@njit(cache=True)
def _merge_row(i: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
               tptr: np.ndarray, tind: np.ndarray, tdat: np.ndarray, out_adj: np.ndarray,
               out_w: np.ndarray, at: int, write: bool) -> int:
    """Merge row i of C and of C^T (both sorted); returns the entries kept (from `at`)."""
    a = indptr[i]
    ae = indptr[i + 1]
    b = tptr[i]
    be = tptr[i + 1]
    k = at
    while a < ae or b < be:
        if b >= be or (a < ae and indices[a] < tind[b]):
            j = indices[a]
            x = data[a]
            a += 1
        elif a >= ae or tind[b] < indices[a]:
            j = tind[b]
            x = tdat[b]
            b += 1
        else:
            j = indices[a]
            x = data[a] + tdat[b]
            a += 1
            b += 1
        if j != i and x != 0.0:
            if write:
                out_adj[k] = j
                out_w[k] = x
            k += 1
    return k - at


@njit(cache=True)
def _first_at_least(indices: np.ndarray, lo: int, hi: int, col: int) -> int:
    """First entry of the sorted row indices[lo:hi] with column >= col (hi if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if indices[mid] < col:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, parallel=True)
def _symmetric_drops(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, chunks: int,
                     radius: float) -> tuple[bool, np.ndarray, int]:
    """(C == C^T exactly?, entries of each row on the diagonal or zero, entries kept near).

    Kept entries are off the diagonal and non-zero; near ones have |i - j| <= radius.

    Rows go in `chunks` parallel blocks. A block walks its rows in order; entry (i, j) below
    the diagonal must be the next unmet entry of row j at or after the block's first row
    (`cur`, found by binary search), with the same value; at the end every entry (j, i) of
    the block's rows i above the diagonal must have been met. The answer does not depend on
    `chunks`. The counts are complete only for a symmetric C.
    """
    n = len(indptr) - 1
    drops = np.zeros(n, dtype=np.int64)
    near = np.zeros(n, dtype=np.int64)
    ok = np.ones(chunks, dtype=np.bool_)
    for t in prange(chunks):
        r0 = n * t // chunks
        r1 = n * (t + 1) // chunks
        cur = np.empty(r1, dtype=np.int64)  # rows j < r1 meet this block's rows
        for j in range(r1):
            cur[j] = _first_at_least(indices, indptr[j], indptr[j + 1], max(r0, j + 1))
        good = True
        for i in range(r0, r1):
            d = 0
            close = 0
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                if j == i or data[e] == 0.0:
                    d += 1
                elif abs(j - i) <= radius:
                    close += 1
                if j < i:
                    k = cur[j]
                    if k >= indptr[j + 1] or indices[k] != i or data[k] != data[e]:
                        good = False
                        break
                    cur[j] = k + 1
            drops[i] = d
            near[i] = close
            if not good:
                break
        if good:
            for j in range(r1):
                if cur[j] != _first_at_least(indices, indptr[j], indptr[j + 1], max(r1, j + 1)):
                    good = False
                    break
        ok[t] = good
    return bool(ok.all()), drops, int(near.sum())


@njit(cache=True, parallel=True)
def _doubled_rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, xadj: np.ndarray,
                  adj: np.ndarray, w: np.ndarray) -> None:
    """Row by row in parallel: C's entries off the diagonal and non-zero, weights doubled."""
    for i in prange(len(indptr) - 1):
        k = xadj[i]
        for e in range(indptr[i], indptr[i + 1]):
            if indices[e] != i and data[e] != 0.0:
                adj[k] = indices[e]
                w[k] = 2.0 * data[e]
                k += 1


@njit(cache=True, parallel=True)
def _doubled(data: np.ndarray) -> np.ndarray:
    w = np.empty(len(data), dtype=np.float64)
    for e in prange(len(data)):
        w[e] = 2.0 * data[e]
    return w


@njit(cache=True)
def symmetrize(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, chunks: int,
               radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """CSR (xadj, adj, w) of C + C^T without diagonal and zero entries, and how many of its
    entries (i, j) have |i - j| <= radius (does the rank numbering follow locality?).

    A symmetric C (the usual case) costs two parallel passes (check, copy) and keeps its
    index arrays when it has no diagonal or zero entries; otherwise C^T is built by a
    counting sort and merged row by row. `chunks`: blocks of rows checked in parallel (the
    number of threads; the result does not depend on it).
    """
    n = len(indptr) - 1
    nnz = indptr[n]
    sym, drops, near = _symmetric_drops(indptr, indices, data, max(1, chunks), radius)
    if sym:
        if drops.sum() == 0:
            return indptr, indices, _doubled(data), near
        xadj = np.zeros(n + 1, dtype=np.int64)
        for i in range(n):
            xadj[i + 1] = xadj[i] + (indptr[i + 1] - indptr[i]) - drops[i]
        adj = np.empty(xadj[n], dtype=np.int64)
        w = np.empty(xadj[n], dtype=np.float64)
        _doubled_rows(indptr, indices, data, xadj, adj, w)
        return xadj, adj, w, near
    tptr = np.zeros(n + 1, dtype=np.int64)
    for e in range(nnz):
        tptr[indices[e] + 1] += 1
    for i in range(n):
        tptr[i + 1] += tptr[i]
    tind = np.empty(nnz, dtype=np.int64)
    tdat = np.empty(nnz, dtype=np.float64)
    fill = tptr[:n].copy()
    for i in range(n):  # rows in order: every row of C^T comes out sorted
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            k = fill[j]
            tind[k] = i
            tdat[k] = data[e]
            fill[j] = k + 1
    xadj = np.zeros(n + 1, dtype=np.int64)
    none_i = np.empty(0, dtype=np.int64)
    none_f = np.empty(0, dtype=np.float64)
    for i in range(n):
        xadj[i + 1] = xadj[i] + _merge_row(i, indptr, indices, data, tptr, tind, tdat, none_i,
                                           none_f, 0, False)
    adj = np.empty(xadj[n], dtype=np.int64)
    w = np.empty(xadj[n], dtype=np.float64)
    for i in range(n):
        _merge_row(i, indptr, indices, data, tptr, tind, tdat, adj, w, xadj[i], True)
    return xadj, adj, w, _near_count(xadj, adj, radius)


@njit(cache=True)
def _near_count(xadj: np.ndarray, adj: np.ndarray, radius: float) -> int:
    """Entries (i, j) with |i - j| <= radius."""
    near = 0
    for i in range(len(xadj) - 1):
        for e in range(xadj[i], xadj[i + 1]):
            if abs(adj[e] - i) <= radius:
                near += 1
    return near


@njit(cache=True, parallel=True)
def beyond_heaviest(xadj: np.ndarray, w: np.ndarray, keeps: np.ndarray) -> np.ndarray:
    """out[q] = sum over rows of the weight beyond the row's keeps[q] heaviest entries.

    `keeps` ascending. Rows with at most keeps[0] entries add nothing; the others sort only
    their max(keeps) heaviest entries (after a partition).
    """
    n = len(xadj) - 1
    nk = len(keeps)
    per = np.zeros((n, nk), dtype=np.float64)
    for i in prange(n):
        a = xadj[i]
        deg = xadj[i + 1] - a
        if deg <= keeps[0]:
            continue
        row = w[a:a + deg]
        total = 0.0
        for e in range(deg):
            total += row[e]
        kmax = min(keeps[nk - 1], deg)
        top = np.zeros(0, dtype=np.float64)
        if kmax > 0:
            top = np.sort(np.partition(row, deg - kmax)[deg - kmax:])  # ascending
        acc = 0.0
        taken = 0
        for q in range(nk):
            k = min(keeps[q], deg)
            while taken < k:
                acc += top[kmax - 1 - taken]
                taken += 1
            per[i, q] = max(total - acc, 0.0)
    out = np.zeros(nk, dtype=np.float64)
    for i in range(n):
        for q in range(nk):
            out[q] += per[i, q]
    return out
