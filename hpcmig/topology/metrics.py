"""Placement metrics (hop-bytes, link loads) and Slurm's own placements (block, cyclic).

Design note: this module owns measuring a mapping and the baselines it is compared with; it
validates its inputs and calls the private numba kernels. It does not optimise anything (see
`mapper.py`). A mapping is `node_of[rank]` = index into `Topology.names`; slots are a per-node
capacity array (or one int for every node).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from hpcmig.errors import UsageError
from hpcmig.topology.comm import as_csr
from hpcmig.topology.model import IntArray, Topology


def slot_array(topology: Topology, slots: int | npt.ArrayLike) -> IntArray:
    """Per-node capacities; one int means the same for every node."""
    arr = np.asarray(slots, dtype=np.int64)
    if arr.ndim == 0:
        arr = np.full(topology.n_nodes, int(arr), dtype=np.int64)
    if arr.shape != (topology.n_nodes,):
        raise UsageError(f"slots must be one int or one per node ({topology.n_nodes})")
    if np.any(arr < 0):
        raise UsageError("slots per node cannot be negative")
    return arr


def check_fits(n_ranks: int, topology: Topology, caps: IntArray) -> None:
    total = int(caps.sum())
    if n_ranks > total:
        raise UsageError(
            f"too few slots: {n_ranks} ranks but {topology.n_nodes} node(s) offer {total} slots",
            hint="raise --ranks-per-node or give more --nodes",
        )


def check_mapping(node_of: npt.ArrayLike, n_ranks: int, topology: Topology,
                  caps: IntArray | None = None) -> IntArray:
    arr = np.asarray(node_of, dtype=np.int64)
    if arr.shape != (n_ranks,):
        raise UsageError(f"mapping has {arr.shape[0] if arr.ndim else 0} entries for "
                         f"{n_ranks} ranks")
    if n_ranks and (arr.min() < 0 or arr.max() >= topology.n_nodes):
        raise UsageError("mapping names a node outside the topology")
    if caps is not None and np.any(np.bincount(arr, minlength=topology.n_nodes) > caps):
        raise UsageError("mapping puts more ranks on a node than it has slots")
    return arr


def block_placement(n_ranks: int, topology: Topology, slots: int | npt.ArrayLike) -> IntArray:
    """Slurm block distribution: fill the nodes in their listed order."""
    caps = slot_array(topology, slots)
    check_fits(n_ranks, topology, caps)
    return np.repeat(np.arange(topology.n_nodes), caps)[:n_ranks].astype(np.int64)


def cyclic_placement(n_ranks: int, topology: Topology, slots: int | npt.ArrayLike) -> IntArray:
    """Slurm cyclic distribution: deal ranks round robin over the nodes that still have room."""
    caps = slot_array(topology, slots)
    check_fits(n_ranks, topology, caps)
    out = np.empty(n_ranks, dtype=np.int64)
    left = caps.copy()
    r = 0
    while r < n_ranks:
        live = np.flatnonzero(left > 0)
        take = live[: n_ranks - r]
        out[r : r + len(take)] = take
        left[take] -= 1
        r += len(take)
    return out


def random_placement(n_ranks: int, topology: Topology, slots: int | npt.ArrayLike,
                     seed: int = 0) -> IntArray:
    block = block_placement(n_ranks, topology, slots)
    return block[np.random.default_rng(seed).permutation(n_ranks)]


def _topo_arrays(topology: Topology) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.ascontiguousarray(topology.groups), np.ascontiguousarray(topology.half),
            np.ascontiguousarray(topology.coords), np.ascontiguousarray(topology.ring))


def _csr_int64(c: sp.csr_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSR arrays as the kernels take them, without copies when already int64."""
    return (np.asarray(c.indptr, dtype=np.int64), np.asarray(c.indices, dtype=np.int64),
            c.data)


def _rank_graph_arrays(c: sp.csr_array, radius: float = 0.0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """CSR arrays (xadj, adj, w) and `scale` of the rank graph C + C^T = scale * w of a
    validated `c` (numba pass; w may be c's own data), and how many of its entries (i, j)
    have |i - j| <= radius."""
    from numba import get_num_threads

    from hpcmig.topology import _kernels_graph

    return _kernels_graph.symmetrize(*_csr_int64(c), get_num_threads(), radius)


def hop_bytes(comm: npt.ArrayLike | sp.sparray | sp.spmatrix, topology: Topology,
              node_of: npt.ArrayLike) -> float:
    """sum over rank pairs of bytes(i -> j) * hops(node of i, node of j)."""
    from hpcmig.topology import _kernels_cost

    c = as_csr(comm)
    nodes = check_mapping(node_of, c.shape[0], topology)
    return float(_kernels_cost.hop_bytes(*_csr_int64(c), nodes, *_topo_arrays(topology)))


def uplink_ids(topology: Topology) -> tuple[IntArray, int]:
    """Id of each node's uplink bundle at each level (-1 where the node has no such level)."""
    m, levels = topology.groups.shape
    link_of = np.full((m, levels), -1, dtype=np.int64)
    count = 0
    for lvl in range(levels):
        has = topology.half[:, lvl] > 0
        uniq, inv = np.unique(topology.groups[has, lvl], return_inverse=True)
        link_of[has, lvl] = inv + count
        count += len(uniq)
    return link_of, count


def link_loads(comm: npt.ArrayLike | sp.sparray | sp.spmatrix, topology: Topology,
               node_of: npt.ArrayLike) -> np.ndarray:
    """Bytes carried by every link (tree: each group's uplink bundle; torus: each ring link)."""
    from numba import get_num_threads

    from hpcmig.topology import _kernels_cost

    c = as_csr(comm)
    nodes = check_mapping(node_of, c.shape[0], topology)
    link_of, n_hier = uplink_ids(topology)
    groups, _, coords, ring = _topo_arrays(topology)
    return np.asarray(_kernels_cost.link_loads(
        *_csr_int64(c), nodes, groups, link_of, n_hier, coords, ring, get_num_threads()))


def max_link_load(comm: npt.ArrayLike | sp.sparray | sp.spmatrix, topology: Topology,
                  node_of: npt.ArrayLike) -> float:
    loads = link_loads(comm, topology, node_of)
    return float(loads.max()) if loads.size else 0.0
