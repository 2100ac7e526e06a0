"""`hpcmig map`: place MPI ranks on nodes so the interconnect carries the fewest hop-bytes.

Design note: this module owns the command line of the topology mapper: argument parsing,
reading inputs, writing the hostfile/rankfile and the report. All work is done by
`hpcmig.topology`; numpy, numba, h5py and matplotlib are imported inside `run` so that
`hpcmig --help` stays fast. Bad input raises `UsageError` (one line, exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from hpcmig import _cmdline

EPILOG = """\
TOPO is a Slurm topology.conf path, or a generator spec:
  fattree:A,B[,C...]  A nodes per leaf switch, B leaves per level-2 switch, ...
  torus:XxY[xZ]       2D/3D torus, one node per point
  dragonfly:G,A,P     G groups of A routers with P nodes each
  (append :PREFIX to name the nodes PREFIX0000...; default prefix "n")
The traffic matrix is HDF5 /comm: a dense N x N float64 dataset, or a CSR group
(/comm/data, /comm/indices, /comm/indptr, attribute shape) for large N.
Use the hostfile with: SLURM_HOSTFILE=FILE srun --distribution=arbitrary -n N ...
"""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "map",
        help="map ranks onto nodes to minimise hop-bytes",
        description="Map the ranks of a traffic matrix onto nodes, minimising hop-bytes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--topology", required=True, metavar="TOPO",
                   help="topology.conf path or generator spec (see below)")
    p.add_argument("--comm", required=True, metavar="FILE", help="traffic matrix (HDF5 /comm)")
    p.add_argument("--ranks-per-node", required=True, type=_cmdline.count(1), metavar="K",
                   help="slots on every node")
    p.add_argument("--nodes", metavar="LIST", type=_cmdline.hostlist,
                   help="use only these nodes, in this order (Slurm hostlist, e.g. n[00-15])")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="mapping to write")
    p.add_argument("--format", choices=("hostfile", "rankfile"), default="hostfile",
                   help="hostfile: line i = node of rank i (SLURM_HOSTFILE); "
                        "rankfile: Open MPI rankfile")
    p.add_argument("--plot", metavar="PNG", help="draw the traffic matrix and the mapping")
    p.add_argument("--seed", type=_cmdline.count(-2**63, 2**63 - 1), default=0,
                   help="random seed, a 64-bit integer (same seed, same mapping)")
    p.add_argument("--no-bound", action="store_true", help="skip the lower bound")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The bound's dense algebra is on blocks of about ten vectors, where OpenBLAS threads
    # only contend with numba's and with other work (up to 0.1 s per call on a loaded
    # 2-core machine); the mapping itself uses no BLAS. Set before numpy loads OpenBLAS.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from hpcmig.errors import UsageError
    from hpcmig.hostlist import expand
    from hpcmig.topology.bounds import lower_bound
    from hpcmig.topology.comm import read_comm
    from hpcmig.topology.generate import load_topology
    from hpcmig.topology.hostfile import write_mapping
    from hpcmig.topology.mapper import map_ranks
    from hpcmig.topology.metrics import block_placement, max_link_load

    for option, path in (("--output", args.output), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder is not None and not os.path.isdir(folder):
            raise UsageError(f"{option}: cannot write {path}: no directory {folder}")
    topo = load_topology(args.topology)
    if args.nodes:
        names = expand(args.nodes)  # its syntax was checked while parsing
        if not names:
            raise UsageError("--nodes is empty")
        topo = topo.subset(names)
    comm = read_comm(args.comm)
    t0 = time.perf_counter()
    mapping = map_ranks(comm, topo, args.ranks_per_node, seed=args.seed)
    secs = time.perf_counter() - t0
    try:
        write_mapping(args.output, mapping.hosts, args.format)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    block = block_placement(comm.shape[0], topo, args.ranks_per_node)
    out = sys.stdout
    n, used = comm.shape[0], len(set(mapping.node_of.tolist()))
    print(f"mapped {n} ranks onto {used} of {topo.n_nodes} nodes ({topo.kind}) in {secs:.2f} s"
          f" -> {args.output} ({args.format})", file=out)
    ratio = mapping.hop_bytes / mapping.block_hop_bytes if mapping.block_hop_bytes else 1.0
    print(f"hop-bytes   mapping {mapping.hop_bytes:.6g}   block {mapping.block_hop_bytes:.6g}"
          f"   (mapping/block = {ratio:.3f})", file=out)
    print(f"max link load (bytes)   mapping {max_link_load(comm, topo, mapping.node_of):.6g}"
          f"   block {max_link_load(comm, topo, block):.6g}", file=out)
    if not args.no_bound:
        t0 = time.perf_counter()
        bound = lower_bound(comm, topo, args.ranks_per_node, graph=mapping.graph,
                            graph_scale=mapping.graph_scale)
        secs = time.perf_counter() - t0
        gap = mapping.hop_bytes / bound.total if bound.total else float("inf")
        print(f"lower bound {bound.total:.6g}   (mapping/bound = {gap:.3f}) in {secs:.2f} s",
              file=out)
        for lv in bound.levels:
            spec = "n/a" if lv.spectral is None else f"{lv.spectral:.4g}"
            print(f"  {lv.level:<14} {lv.hops:g} hop(s) x crossing bytes >= "
                  f"max(partner {lv.partner:.4g}, spectral {spec})  [groups <= {lv.slots} slots]",
                  file=out)
    if args.plot:
        from hpcmig.topology.plot import plot_mapping

        try:
            plot_mapping(args.plot, comm, mapping.node_of, block,
                         title=f"{n} ranks on {args.topology}, {args.ranks_per_node} per node")
        except OSError as exc:
            raise UsageError(f"cannot write {args.plot}: {exc.strerror or exc}") from None
        print(f"plot -> {args.plot}", file=out)
    return 0
