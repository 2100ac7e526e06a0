"""Map N ranks onto nodes with capacities so the network carries the fewest hop-bytes.

Design note: this module owns the public mapping call: it validates input, runs the private
numba kernels and guarantees the result is never worse than Slurm's block placement in
natural order (it falls back to a refined block placement if it would be). It does no I/O.

Algorithm (dual recursive bipartitioning, as in Scotch): the machine's split order
(`Topology.order` / `split_key`) is cut recursively at its highest level, the ranks' graph is
bisected with exact capacities by a multilevel scheme (heavy-edge matching, greedy growing,
Fiduccia-Mattheyses refinement, best of several runs on large sparse subgraphs); on a torus
the ranks already placed pull each vertex towards the nearer half. Dense graphs (more than
DENSE_DEGREE partners per rank, e.g. all-to-all in rows and columns) are coarsened once for
the whole recursion: a task is bisected as clusters while it holds MIN_COARSE of them, so no
level walks all entries of every rank again. When ranks are numbered along the communication
(most partners within LOCAL_RADIUS sqrt(N) ranks, as in grids in natural order) one run of
each bisection, and the one-time coarsening, match in rank order, which keeps coarse vertices
aligned. On a tree all runs of all bisections of one level run in parallel (numba threads);
the mapping does not depend on their number. A final pass swaps ranks between nodes while the
true hop-bytes (full distance, every level at once) improve. Same seed, same mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from hpcmig.topology.comm import as_csr
from hpcmig.topology.metrics import (
    _rank_graph_arrays,
    _topo_arrays,
    block_placement,
    check_fits,
    slot_array,
)
from hpcmig.topology.model import IntArray, Topology

COARSEN_TO = 80
INITIAL_TRIES = 8
MIN_RUNS = 4
MAX_RUNS = 6
RUN_WORK = 50_000  # small graphs: up to RUN_WORK / edge entries runs per bisection
DENSE_DEGREE = 32
TORUS_RUNS = 2
ROOT_RUNS = 3  # sparse graphs: a tree's first cut (costliest, made once) gets 3x the runs
RUNS_ABOVE = 2 * COARSEN_TO  # smaller subgraphs: 2 runs of half the tries, or SMALL_TRIES
REFINE_PASSES = 4
SWAP_CANDIDATES = 4
SMALL_TRIES = 4  # subgraphs of at most COARSEN_TO ranks: best of this many tries
MIN_COARSE = 32  # dense graphs: a task is bisected as clusters while it has this many
MAX_LEVELS = 40
FIRST_SHRINK = 0.5  # dense graphs keep the hierarchy if pairing halves the entries
LOCAL_RADIUS = 2.0  # ranks numbered along the grid: most partners within 2 sqrt(N)


@dataclass(frozen=True, eq=False)
class Mapping:
    """Where each rank goes, and how it compares with block placement."""

    topology: Topology
    node_of: IntArray  # node index (into topology.names) of every rank
    hop_bytes: float
    block_hop_bytes: float
    method: str  # "recursive-bisection" or "block" (when block was not beaten)
    graph: sp.csr_array = field(repr=False)  # rank graph C + C^T / graph_scale (for bounds)
    graph_scale: float = field(default=1.0, repr=False)

    @property
    def hosts(self) -> list[str]:
        names = self.topology.names
        return [names[i] for i in self.node_of]


def bisection_runs(n: int, nnz: int, tree: bool = True) -> int:
    """Independent multilevel runs per coarsened bisection (best kept).

    Sparse graphs on a tree: MIN_RUNS, more on small graphs where they are cheap (an unlucky
    coarsening of a grid costs a few percent), and ROOT_RUNS times as many for the first cut
    (the costliest per byte, made once: an unlucky one spoils every level below). On a
    torus TORUS_RUNS, run in parallel (the pull of placed ranks and the final swaps matter
    more there). Dense graphs (all-to-all in rows/columns): one run, as their runs agree and
    each costs O(edges) per level.
    """
    if nnz > DENSE_DEGREE * n:
        return 1
    if not tree:
        return TORUS_RUNS
    return max(MIN_RUNS, min(MAX_RUNS, RUN_WORK // max(nnz, 1)))


def map_ranks(comm: npt.ArrayLike | sp.sparray | sp.spmatrix, topology: Topology,
              slots: int | npt.ArrayLike, seed: int = 0) -> Mapping:
    """Place the ranks of traffic matrix `comm` on `topology` with `slots` per node."""
    from numba import get_num_threads

    from hpcmig.topology import _kernels_cost, _kernels_level, _kernels_rb

    c = as_csr(comm)
    n = c.shape[0]
    caps = slot_array(topology, slots)
    check_fits(n, topology, caps)
    # w: the rank graph / scale (C itself when C is symmetric): every decision is the same
    # on it (sums scale exactly by a power of two), only hop-bytes are scaled back
    xadj, adj, w, near, scale = _rank_graph_arrays(c, LOCAL_RADIUS * np.sqrt(n))
    graph = sp.csr_array((w, adj, xadj), shape=(n, n))
    dense = len(adj) > DENSE_DEGREE * n
    local = near / max(len(adj), 1) >= 0.5
    if dense:
        hx, ha, he, hv, vofs, eofs, anc = _kernels_rb.build_hierarchy(
            xadj, adj, w, seed, MIN_COARSE, MAX_LEVELS, local, FIRST_SHRINK,
            get_num_threads())
    else:  # no coarse levels: every bisection starts from the ranks
        hx, ha, he, hv = (np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64),
                          np.zeros(1), np.zeros(1))
        vofs, eofs = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
        anc = np.arange(n, dtype=np.int64).reshape(1, n)
    groups, half, coords, ring = _topo_arrays(topology)
    runs = bisection_runs(n, len(adj), topology.hierarchical)
    order = topology.order
    dims = coords.shape[1]
    ccum = np.zeros((topology.n_nodes + 1, dims), dtype=np.float64)
    ccum[1:] = np.cumsum(coords[order].astype(np.float64), axis=0)
    pos = _kernels_rb.recursive_bisection(
        xadj, adj, w, hx, ha, he, hv, vofs, eofs, anc, caps[order],
        np.ascontiguousarray(topology.split_key), ccum, ring.astype(np.float64), seed,
        INITIAL_TRIES, SMALL_TRIES, COARSEN_TO, runs, runs if dense else ROOT_RUNS * runs,
        RUNS_ABOVE, MIN_COARSE, local)
    node_of = order[pos].astype(np.int64)
    _kernels_cost.swap_refine(xadj, adj, w, node_of, caps, groups, half, coords, ring,
                              REFINE_PASSES, seed, SWAP_CANDIDATES)
    block = block_placement(n, topology, caps)

    def cost(where: IntArray) -> float:
        """Hop-bytes of a placement, read on the hierarchy level where that is cheapest."""
        lev, at = (_kernels_level.cheapest_level(anc, where, xadj, vofs, eofs) if dense
                   else (0, anc[0]))
        if lev == 0:
            return 0.5 * scale * _kernels_cost.hop_bytes(xadj, adj, w, where, groups, half,
                                                         coords, ring)
        x, a, e, _ = _kernels_rb._level(lev, xadj, adj, w, hx, ha, he, hv, vofs, eofs, hv)
        return 0.5 * scale * _kernels_level.mixed_hop_bytes(x, a, e, at, anc[lev], xadj, adj, w,
                                                           where, groups, half, coords, ring)

    ours = cost(node_of)
    base = cost(block)
    if ours <= base:
        return Mapping(topology, node_of, ours, base, "recursive-bisection", graph, scale)
    refined = block.copy()
    gain = _kernels_cost.swap_refine(xadj, adj, w, refined, caps, groups, half, coords, ring,
                                     REFINE_PASSES, seed, SWAP_CANDIDATES)
    if gain <= 0.0:
        return Mapping(topology, block, base, base, "block", graph, scale)
    refined_hb = cost(refined)
    if refined_hb > base:
        return Mapping(topology, block, base, base, "block", graph, scale)
    return Mapping(topology, refined, refined_hb, base, "block", graph, scale)
