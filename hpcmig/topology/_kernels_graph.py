"""numba kernels on the traffic matrix: the rank graph, and whether ranks are numbered locally.

Design note: private, arrays and scalars only, no validation (see `_kernels.py` for the
conventions). Input matrices are CSR with sorted, unique column indices per row (what
`comm.as_csr` returns). `symmetrize` turns the traffic matrix C into the undirected rank graph
C + C^T (no diagonal, no zero entries) in O(entries): a parallel check (a multiset
fingerprint of the entries against that of their mirrors) when C is symmetric (stencils,
all-to-all; the graph is then C itself at scale 2), a counting-sort transpose otherwise; scipy's
`C + C.T` costs seconds at 33 million entries. It also counts the entries between ranks
close in rank (the symmetric case in the check's pass), which tells the mapper whether the
rank numbering follows the communication and matching may go in rank order.
`beyond_heaviest` gives the heaviest-partner lower bound of `bounds.py` for several group
sizes in one parallel pass (a row is partitioned once per group size it exceeds, never
sorted; scipy's lexsort of all entries took seconds at 33 million).
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


# Keys of the symmetry fingerprint (any fixed odd constants do; fixed, so a run is repeatable).
_ROW_KEY = np.uint64(0x9E3779B97F4A7C15)
_COL_KEY = np.uint64(0xC2B2AE3D27D4EB4F)
_VAL_KEY = np.uint64(0x165667B19E3779F9)


@njit(cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """MurmurHash3's 64-bit finalizer: a bijection of the 64-bit integers that spreads
    every input bit over the output."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@njit(cache=True, parallel=True)
def _symmetric_drops(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, chunks: int,
                     radius: float) -> tuple[bool, np.ndarray, int]:
    """(C == C^T?, entries of each row on the diagonal or zero, entries kept near).

    Kept entries are off the diagonal and non-zero; near ones have |i - j| <= radius.

    One streaming pass, rows in `chunks` parallel blocks. C is symmetric when its entries
    (i, j, value) and their mirrors (j, i, value) are the same multiset, so the check
    compares two sums modulo 2^64 over all entries, of h(i, j, value) and of h(j, i, value),
    h a keyed mix of the row's and column's keys and the value's bits (multiset hashing).
    A symmetric C always passes. A C that is not passes only if the two sums collide
    (about 2^-64), or if a mirror's mixed input equals another entry's with the same value
    (at most entries x 2^-64: below 2^-39 at 33 million entries); it would then be mapped as
    2C instead of C + C^T (a valid placement, planned on the wrong weights). The answer does
    not depend on `chunks`. Values are compared bit for bit (an entry -0.0 against 0.0
    counts as not symmetric, which only sends C to the exact merge). Reading each entry
    once, in order, takes a fraction of the time of looking every mirror up (cache misses).
    """
    n = len(indptr) - 1
    drops = np.zeros(n, dtype=np.int64)
    near = np.zeros(n, dtype=np.int64)
    bits = data.view(np.uint64)
    rkey = np.empty(n, dtype=np.uint64)
    ckey = np.empty(n, dtype=np.uint64)
    for i in prange(n):
        rkey[i] = _mix(np.uint64(i) ^ _ROW_KEY)
        ckey[i] = _mix(np.uint64(i) ^ _COL_KEY)
    sums = np.zeros((chunks, 2), dtype=np.uint64)
    for t in prange(chunks):
        forward = np.uint64(0)
        mirror = np.uint64(0)
        for i in range(n * t // chunks, n * (t + 1) // chunks):
            d = 0
            close = 0
            ri = rkey[i]
            ci = ckey[i]
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                if j == i or data[e] == 0.0:
                    d += 1
                elif abs(j - i) <= radius:
                    close += 1
                v = bits[e] * _VAL_KEY
                forward += _mix(ri + ckey[j] + v)
                mirror += _mix(rkey[j] + ci + v)
            drops[i] = d
            near[i] = close
        sums[t, 0] = forward
        sums[t, 1] = mirror
    forward = np.uint64(0)
    mirror = np.uint64(0)
    for t in range(chunks):
        forward += sums[t, 0]
        mirror += sums[t, 1]
    return forward == mirror, drops, int(near.sum())


@njit(cache=True, parallel=True)
def _kept_rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, xadj: np.ndarray,
               adj: np.ndarray, w: np.ndarray) -> None:
    """Row by row in parallel: C's entries off the diagonal and non-zero."""
    for i in prange(len(indptr) - 1):
        k = xadj[i]
        for e in range(indptr[i], indptr[i + 1]):
            if indices[e] != i and data[e] != 0.0:
                adj[k] = indices[e]
                w[k] = data[e]
                k += 1


@njit(cache=True)
def symmetrize(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, chunks: int,
               radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """CSR (xadj, adj, w) and `scale` of the rank graph C + C^T = scale * w, without
    diagonal and zero entries, and how many of its entries (i, j) have |i - j| <= radius
    (does the rank numbering follow locality?).

    A symmetric C (the usual case) is its own rank graph at scale 2: one parallel check,
    then C's own arrays when it has no diagonal or zero entries, else a parallel copy of the
    kept ones. Scaling every weight by a power of two changes no comparison the mapper makes
    (the sums are exactly scaled), so it maps on w and scales the hop-bytes. Otherwise
    (scale 1) C^T is built by a counting sort and merged row by row. `chunks`: blocks of
    rows checked in parallel (the number of threads; the result does not depend on it).
    """
    n = len(indptr) - 1
    nnz = indptr[n]
    sym, drops, near = _symmetric_drops(indptr, indices, data, max(1, chunks), radius)
    if sym:
        if drops.sum() == 0:
            return indptr, indices, data, near, 2.0
        xadj = np.zeros(n + 1, dtype=np.int64)
        for i in range(n):
            xadj[i + 1] = xadj[i] + (indptr[i + 1] - indptr[i]) - drops[i]
        adj = np.empty(xadj[n], dtype=np.int64)
        w = np.empty(xadj[n], dtype=np.float64)
        _kept_rows(indptr, indices, data, xadj, adj, w)
        return xadj, adj, w, near, 2.0
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
    return xadj, adj, w, _near_count(xadj, adj, radius), 1.0


@njit(cache=True)
def _near_count(xadj: np.ndarray, adj: np.ndarray, radius: float) -> int:
    """Entries (i, j) with |i - j| <= radius."""
    near = 0
    for i in range(len(xadj) - 1):
        for e in range(xadj[i], xadj[i + 1]):
            if abs(adj[e] - i) <= radius:
                near += 1
    return near


@njit(cache=True)
def _beyond_row(row: np.ndarray, keeps: np.ndarray, out: np.ndarray) -> None:
    """out[q] = the weight of `row` beyond its keeps[q] heaviest entries (`keeps` ascending)."""
    top = row  # the entries still kept, heaviest last after each partition
    rest = 0.0
    for q in range(len(keeps) - 1, -1, -1):
        k = keeps[q]
        if k >= len(top):
            continue
        if k > 0:
            top = np.partition(top, len(top) - k)
        for e in range(len(top) - k):
            rest += top[e]
        top = top[len(top) - k:]
        out[q] = rest


@njit(cache=True, parallel=True)
def beyond_heaviest(xadj: np.ndarray, w: np.ndarray, keeps: np.ndarray) -> np.ndarray:
    """out[q] = sum over rows of the weight beyond the row's keeps[q] heaviest entries.

    `keeps` ascending. A row adds nothing for keeps of at least its length. Otherwise, from
    the largest such keep down, a partition splits the row's part still kept into its
    lightest entries (summed into the rest) and the keep's heaviest: each keep costs a pass
    over the part kept by the previous one, no sort.
    """
    n = len(xadj) - 1
    nk = len(keeps)
    per = np.zeros((n, nk), dtype=np.float64)
    for i in prange(n):
        _beyond_row(w[xadj[i]:xadj[i + 1]], keeps, per[i])
    out = np.zeros(nk, dtype=np.float64)
    for i in range(n):
        for q in range(nk):
            out[q] += per[i, q]
    return out
