"""`hpcmig run --map FILE`: the container each rank runs in, chosen by the topology mapper.

Design note: pure placement between the command line and `hpcmig.topology`. The job's
containers are the mapper's nodes (one container per node, as the prolog plans them), each
with room for `capacity` ranks; the distances between them come from Slurm's topology.conf
next to slurm.conf when the cluster has one (a tree of switches), otherwise every pair of
containers is equally far. Ranks that talk most end up in one container (shared memory), then
under one switch. The answer is never worse than block placement (`map_ranks` guarantees it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcmig.errors import UsageError

if TYPE_CHECKING:
    import numpy.typing as npt
    import scipy.sparse as sp

    from hpcmig.topology.model import Topology

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"


@dataclass(frozen=True)
class RankMap:
    container_of: list[int]  # position (in the job's container order) of every rank
    hop_bytes: float
    block_hop_bytes: float
    topology: str  # where the distances came from


def topology_conf(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where Slurm keeps topology.conf: beside slurm.conf ($SLURM_CONF or the default)."""
    return Path(environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF).parent / "topology.conf"


def container_topology(nodes: Sequence[str], conf: Path | None) -> tuple[Topology, str]:
    """The job's nodes as a Topology, and where its distances come from."""
    from hpcmig.topology.model import from_tree
    from hpcmig.topology.slurmconf import read_topology_conf

    if len(set(nodes)) != len(nodes):
        raise UsageError("--map needs one container per node; this job has "
                         f"{len(nodes)} containers on {len(set(nodes))} nodes")
    if conf is not None and conf.is_file():
        site = read_topology_conf(conf)
        if set(nodes) <= set(site.names):
            return site.subset(list(nodes)), str(conf)
    return from_tree("flat", list(nodes), [[0]] * len(nodes), [2.0, 2.0]), "one switch"


def place(comm: npt.ArrayLike | sp.sparray | str, n: int, nodes: Sequence[str],
          capacity: Sequence[int], conf: Path | None, seed: int = 0,
          what: str | None = None) -> RankMap:
    """Map the `n` ranks of traffic matrix `comm` (or the HDF5 file it names) onto the
    containers hosted on `nodes` (in container order), at most `capacity[i]` ranks in
    container i. `what` names the matrix in messages."""
    import numpy as np

    from hpcmig.topology.comm import as_csr, read_comm
    from hpcmig.topology.mapper import map_ranks

    what = what or (comm if isinstance(comm, str) else "the traffic matrix")
    matrix = read_comm(comm) if isinstance(comm, str) else as_csr(comm, what)
    if matrix.shape[0] != n:
        raise UsageError(f"{what} has a {matrix.shape[0]} x {matrix.shape[0]} traffic "
                         f"matrix, but {n} ranks are to run",
                         hint=f"give -n {matrix.shape[0]}, or a matrix of the run's ranks")
    if sum(capacity) < n:
        raise UsageError(f"{n} ranks do not fit in {len(capacity)} containers of "
                         f"{max(capacity)}", hint="raise --ppn")
    topo, source = container_topology(nodes, conf)
    mapping = map_ranks(matrix, topo, np.asarray(capacity, dtype=np.int64), seed)
    return RankMap([int(i) for i in mapping.node_of], float(mapping.hop_bytes),
                   float(mapping.block_hop_bytes), source)
