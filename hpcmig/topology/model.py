"""The machine model every mapper input is reduced to: node names, hop distances, a split order.

Design note: this module owns `Topology`, an immutable description of a set of compute nodes
and the hop distance between any two of them. It does no file parsing (see `slurmconf.py`)
and no generation (see `generate.py`); both build a `Topology` from the two distance terms
below, which cover Slurm trees, fat-trees, tori and dragonflies:

* a hierarchical term, ``sum over levels l of (half[a,l] + half[b,l]) * (groups[a,l] !=
  groups[b,l])``: a tree costs one hop per link climbed on each side of the lowest common
  switch, so ``half`` is 1 for every level a node actually has;
* a torus term, ``sum over dimensions d of min(|xa - xb|, ring[d] - |xa - xb|)``.

``order`` lists the nodes so that every subtree (or torus sub-box) is contiguous, and
``split_key[i]`` ranks the boundary between ``order[i]`` and ``order[i+1]``: a higher key
separates a larger part of the machine. Recursive bisection splits a range at its highest
key, which is how the mapper follows the topology level by level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hpcmig.errors import UsageError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Topology:
    """Compute nodes and the hop distance between them (see the module docstring)."""

    kind: str
    names: tuple[str, ...]
    groups: IntArray  # (M, L) group id of each node at each hierarchy level, top level first
    half: FloatArray  # (M, L) hops charged on each side when two nodes differ at a level
    coords: IntArray  # (M, D) torus coordinates
    ring: IntArray  # (D,) torus extents
    order: IntArray  # (M,) node indices, every subtree / sub-box contiguous
    split_key: IntArray  # (M-1,) priority of the boundary after each position of `order`

    def __post_init__(self) -> None:
        m = len(self.names)
        if m == 0:
            raise UsageError("topology has no nodes")
        if len(set(self.names)) != m:
            raise UsageError("topology lists a node name twice")
        if self.groups.shape != self.half.shape or self.groups.shape[0] != m:
            raise ValueError("groups and half must both be (nodes, levels)")
        if self.coords.shape[0] != m or self.coords.shape[1] != self.ring.shape[0]:
            raise ValueError("coords must be (nodes, len(ring))")
        if sorted(self.order.tolist()) != list(range(m)) or self.split_key.shape != (m - 1,):
            raise ValueError("order must be a permutation and split_key have nodes-1 entries")

    @property
    def n_nodes(self) -> int:
        return len(self.names)

    @property
    def hierarchical(self) -> bool:
        """True when distances come from a tree of groups only (no torus term)."""
        return self.ring.shape[0] == 0

    def index(self, names: Sequence[str]) -> IntArray:
        """Node indices of `names`; an unknown name is a `UsageError` naming it."""
        where = {n: i for i, n in enumerate(self.names)}
        unknown = [n for n in names if n not in where]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise UsageError(
                f"{len(unknown)} node(s) not in the topology: {shown}",
                hint="check --nodes against the topology's node names",
            )
        return np.array([where[n] for n in names], dtype=np.int64)

    def distance(self, a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
        """Hop distance between node indices `a` and `b` (broadcasting like numpy)."""
        ia = np.asarray(a, dtype=np.int64)
        ib = np.asarray(b, dtype=np.int64)
        out = np.zeros(np.broadcast(ia, ib).shape, dtype=np.float64)
        for lvl in range(self.groups.shape[1]):
            differ = self.groups[ia, lvl] != self.groups[ib, lvl]
            out += (self.half[ia, lvl] + self.half[ib, lvl]) * differ
        for d in range(self.ring.shape[0]):
            delta = np.abs(self.coords[ia, d] - self.coords[ib, d])
            out += np.minimum(delta, self.ring[d] - delta)
        return out

    def distance_matrix(self, nodes: npt.ArrayLike | None = None) -> FloatArray:
        """Dense hop matrix among `nodes` (all nodes by default); mind the size for big sets."""
        idx = np.arange(self.n_nodes) if nodes is None else np.asarray(nodes, dtype=np.int64)
        return self.distance(idx[:, None], idx[None, :])

    def subset(self, names: Sequence[str]) -> Topology:
        """The same machine restricted to `names`, kept in the given order."""
        idx = self.index(names)
        if len(set(idx.tolist())) != len(idx):
            raise UsageError("--nodes lists a node twice")
        rank_in_order = np.empty(self.n_nodes, dtype=np.int64)
        rank_in_order[self.order] = np.arange(self.n_nodes)
        positions = np.sort(rank_in_order[idx])
        # The key between two kept neighbours is the highest key skipped between them.
        keys = np.array(
            [self.split_key[positions[i] : positions[i + 1]].max() for i in range(len(idx) - 1)],
            dtype=np.int64,
        )
        local = np.empty(self.n_nodes, dtype=np.int64)
        local[idx] = np.arange(len(idx))
        return Topology(
            kind=self.kind,
            names=tuple(names),
            groups=self.groups[idx],
            half=self.half[idx],
            coords=self.coords[idx],
            ring=self.ring,
            order=local[self.order[positions]],
            split_key=keys,
        )


def hierarchy_order(groups: IntArray) -> tuple[IntArray, IntArray]:
    """Order nodes by their group ids level by level; key = how high the first difference is."""
    m, levels = groups.shape
    if levels == 0:
        return np.arange(m, dtype=np.int64), np.zeros(max(m - 1, 0), dtype=np.int64)
    order = np.lexsort(tuple(groups[:, lvl] for lvl in reversed(range(levels)))).astype(np.int64)
    g = groups[order]
    differ = g[1:] != g[:-1]  # (M-1, L)
    first = np.where(differ.any(axis=1), differ.argmax(axis=1), levels)
    return order, (levels - first).astype(np.int64)


def from_tree(
    kind: str, names: Sequence[str], ancestors: Sequence[Sequence[int]], level_hops: Sequence[float]
) -> Topology:
    """Build a hierarchical topology.

    `ancestors[i]` lists node i's groups from the top level down (e.g. root switch, pod switch,
    leaf switch); nodes may sit at different depths. `level_hops[l]` is the hops added when two
    nodes first differ at level l (a tree charges 2: one link on each side; the node level is
    appended automatically with `level_hops[-1]`, so pass one more entry than group levels).
    """
    m = len(names)
    depth = max((len(a) for a in ancestors), default=0)
    levels = depth + 1
    groups = np.empty((m, levels), dtype=np.int64)
    half = np.zeros((m, levels), dtype=np.float64)
    for i, anc in enumerate(ancestors):
        for lvl in range(levels):
            if lvl < len(anc):
                groups[i, lvl] = anc[lvl]
                half[i, lvl] = level_hops[lvl] / 2.0
            elif lvl == len(anc):
                groups[i, lvl] = -1 - i  # the node itself
                half[i, lvl] = level_hops[min(lvl, len(level_hops) - 1)] / 2.0
            else:
                groups[i, lvl] = -1 - i
    order, keys = hierarchy_order(groups)
    return Topology(
        kind=kind,
        names=tuple(names),
        groups=groups,
        half=half,
        coords=np.zeros((m, 0), dtype=np.int64),
        ring=np.zeros(0, dtype=np.int64),
        order=order,
        split_key=keys,
    )
