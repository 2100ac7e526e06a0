"""Synthetic machines (fat-tree, 2D/3D torus, dragonfly) and the TOPO spec the CLI accepts.

Design note: this module owns the generator spec syntax and turns a spec into a `Topology`;
it does not read files other than by delegating a path to `slurmconf.read_topology_conf`.

TOPO spec (``hpcmig map --topology TOPO``):

* a path to a Slurm ``topology.conf`` (anything that is an existing file);
* ``fattree:A,B,C`` -- A nodes per leaf switch, B leaf switches per level-2 switch, C level-2
  switches under the root, and so on (any number of levels). Modelled as Slurm does, as a
  tree: 2 hops under one leaf switch, 4 under one level-2 switch, 6 across the root.
* ``torus:X`` / ``torus:XxY`` / ``torus:XxYxZ`` -- one node per torus point, dimension-order
  routing, hop distance = sum over dimensions of the shorter way round the ring.
* ``dragonfly:G,A,P`` -- G groups of A routers with P nodes each; 2 hops on one router, 3
  inside a group (all-to-all local links), 5 across groups (local, global, local).

Any spec may end in ``:PREFIX`` to name the nodes (default ``n``): names are PREFIX plus the
node index, zero-padded to a common width (``n0000`` ... ``n4095``), in hierarchy order.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from hpcmig.errors import UsageError
from hpcmig.topology.model import Topology, from_tree
from hpcmig.topology.slurmconf import read_topology_conf

SPEC_HELP = (
    "a topology.conf path, or fattree:A,B[,C...], torus:XxY[xZ], dragonfly:G,A,P "
    "(optionally :PREFIX for node names)"
)
MAX_GENERATED_NODES = 1 << 20


def _names(prefix: str, count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def _check_size(count: int, spec: str) -> None:
    if count > MAX_GENERATED_NODES:
        raise UsageError(f"topology {spec!r} has {count} nodes; at most {MAX_GENERATED_NODES}")


def fat_tree(arity: list[int], prefix: str = "n") -> Topology:
    """Fat-tree as a tree of switches: `arity[0]` nodes per leaf switch, then switch fan-ins."""
    if not arity or any(a < 1 for a in arity):
        raise UsageError("fattree needs positive integers, e.g. fattree:16,16,16")
    count = math.prod(arity)
    _check_size(count, "fattree")
    idx = np.arange(count)
    ancestors: list[list[int]] = [[] for _ in range(count)]
    # Level l switch of node i (top level first): i // prod(arity[:levels-l]).
    levels = len(arity)
    offset = 0
    for lvl in range(levels):
        span = math.prod(arity[: levels - lvl])
        gid = idx // span + offset
        offset += count // span
        for i in range(count):
            ancestors[i].append(int(gid[i]))
    return from_tree("fattree", _names(prefix, count), ancestors, [2.0] * (levels + 1))


def dragonfly(groups: int, routers: int, per_router: int, prefix: str = "n") -> Topology:
    """Dragonfly: 2 hops on a router, 3 inside a group, 5 across groups."""
    if min(groups, routers, per_router) < 1:
        raise UsageError("dragonfly needs positive integers, e.g. dragonfly:9,4,4")
    count = groups * routers * per_router
    _check_size(count, "dragonfly")
    ancestors = [[i // (routers * per_router), groups + i // per_router] for i in range(count)]
    topo = from_tree("dragonfly", _names(prefix, count), ancestors, [2.0, 1.0, 2.0])
    return topo


def torus(dims: list[int], prefix: str = "n") -> Topology:
    """Torus with one node per point; node i has coordinates unravel_index(i, dims)."""
    if not 1 <= len(dims) <= 3 or any(d < 1 for d in dims):
        raise UsageError("torus needs 1 to 3 positive extents, e.g. torus:16x16x16")
    count = math.prod(dims)
    _check_size(count, "torus")
    coords = np.stack(np.unravel_index(np.arange(count), dims), axis=1).astype(np.int64)
    order, keys = _box_order(np.array(dims, dtype=np.int64))
    return Topology(
        kind="torus",
        names=tuple(_names(prefix, count)),
        groups=np.zeros((count, 0), dtype=np.int64),
        half=np.zeros((count, 0), dtype=np.float64),
        coords=coords,
        ring=np.array(dims, dtype=np.int64),
        order=order,
        split_key=keys,
    )


def _box_order(dims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recursive coordinate bisection order of a box and the key of each boundary.

    Each round halves every dimension at least half as long as the longest one, so a 3D cube
    splits into 8 sub-cubes per round; boundaries between those children share one key.
    """
    order: list[int] = []
    keys: list[int] = []
    depth_max = 3 * int(np.ceil(np.log2(max(int(dims.max()), 2)))) + 2

    def visit(lo: np.ndarray, hi: np.ndarray, depth: int) -> None:
        ext = hi - lo
        if int(ext.max()) <= 1:
            order.append(int(np.ravel_multi_index(tuple(lo), tuple(dims))))
            return
        cut = [d for d in range(len(dims)) if ext[d] > 1 and 2 * ext[d] >= ext.max()]
        ranges: list[list[tuple[int, int]]] = [[(int(lo[d]), int(hi[d]))] for d in range(len(dims))]
        for d in cut:
            mid = int(lo[d] + ext[d] // 2)
            ranges[d] = [(int(lo[d]), mid), (mid, int(hi[d]))]
        first = True
        for combo in np.ndindex(*[len(r) for r in ranges]):
            if not first:
                keys.append(depth_max - depth)
            first = False
            clo = np.array([ranges[d][c][0] for d, c in enumerate(combo)], dtype=np.int64)
            chi = np.array([ranges[d][c][1] for d, c in enumerate(combo)], dtype=np.int64)
            visit(clo, chi, depth + 1)

    visit(np.zeros(len(dims), dtype=np.int64), dims.astype(np.int64), 0)
    return np.array(order, dtype=np.int64), np.array(keys, dtype=np.int64)


def _ints(text: str, sep: str, spec: str) -> list[int]:
    try:
        return [int(t) for t in text.split(sep)]
    except ValueError:
        raise UsageError(f"bad topology spec {spec!r}", hint=SPEC_HELP) from None


def load_topology(spec: str) -> Topology:
    """A topology.conf path or a generator spec (see the module docstring)."""
    if Path(spec).is_file():
        return read_topology_conf(spec)
    m = re.fullmatch(r"(fattree|torus|dragonfly):([0-9x,]+)(?::([A-Za-z][A-Za-z0-9_.\-]*))?",
                     spec.strip())
    if m is None:
        if "/" in spec or spec.endswith(".conf"):
            raise UsageError(f"topology file {spec} does not exist")
        raise UsageError(f"bad topology spec {spec!r}", hint=SPEC_HELP)
    kind, params, prefix = m.group(1), m.group(2), m.group(3) or "n"
    if kind == "fattree":
        return fat_tree(_ints(params, ",", spec), prefix)
    if kind == "torus":
        return torus(_ints(params, "x", spec), prefix)
    values = _ints(params, ",", spec)
    if len(values) != 3:
        raise UsageError(f"bad topology spec {spec!r}: dragonfly takes G,A,P", hint=SPEC_HELP)
    return dragonfly(values[0], values[1], values[2], prefix)
