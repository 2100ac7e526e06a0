"""What the fast path gives MPI: one long ping-pong run between two containers, with the
nodes' fast path switched on and off under it every quarter second; before it, flood pings
natively, by the fast path and forwarded.

Design note: the method of counting_bandwidth.py (whose phase and ratio helpers this
imports), with another switch. The nodes load the fast path as the agent does
(`NodeNet.install_isolation`: the program pinned, the job's block and counted pairs in its
maps); this script then attaches and detaches its tc filter on every port of both nodes
(`tc -batch`, one process per node) every `--period` seconds, recording when each swap began
and ended on the monotonic clock the workload also reads. Detached, each node's kernel
forwards and nft isolates and counts, exactly as with `network_fastpath = false`. Each
fast phase is compared with the mean of its two forwarded neighbours: reported per size is
the median of those paired ratios as bandwidth fast/forwarded (above 1: the fast path is
faster), with a bootstrap 95% interval. Checked afterwards: node 1 counted rank 0's messages
in every phase, by the program's map in the fast phases and by the nft set in the others.

    flock /run/lock/hpcmig-integration.lock /opt/hpcmig/venv/bin/python \\
        benchmarks/network/fastpath_switched.py --out benchmarks/network/fastpath-switched.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import counting  # noqa: E402
import counting_bandwidth as cb  # noqa: E402
import nodes  # noqa: E402

from hpcmig import mpi  # noqa: E402
from hpcmig.errors import HpcmigError  # noqa: E402
from hpcmig.network import NodeNet, fastpath, traffic  # noqa: E402
from hpcmig.workloads import pingpong  # noqa: E402


def switch_scripts(ns: str) -> dict[bool, str]:
    """`tc -batch` input that attaches (True) or detaches (False) the node's filters."""
    node = NodeNet(ns)
    pins = node.fast.pins()
    if pins is None:
        raise HpcmigError(f"{ns}: the fast path is not loaded")
    ports = fastpath.ports(node.run(["ip", "-j", "-d", "addr", "show"]))
    on = [step for dev, (_, kind) in ports.items()
          for step in fastpath.attach_plan(dev, kind, pins)]
    off = [step for dev in ports for step in fastpath.detach_plan(dev)]
    return {True: "".join(" ".join(s[1:]) + "\n" for s in on),
            False: "".join(" ".join(s[1:]) + "\n" for s in off)}


def toggle(bench: nodes.Bench, done: threading.Event, period: float) -> list[cb.Phase]:
    """Detach and attach the fast path on both nodes every `period` s until `done`."""
    scripts = {ns: switch_scripts(ns) for ns in bench.nodes}

    def switch(fast: bool) -> None:
        for ns in bench.nodes:
            NodeNet(ns).run(["tc", "-force", "-batch", "-"], input=scripts[ns][fast])

    return cb.switching(done, period, switch, True)


def counts(bench: nodes.Bench) -> tuple[int, int]:
    """Bytes node 1 counted of rank 0's pair: (by the nft set, by the program's map)."""
    node, pair = NodeNet(next(iter(bench.nodes))), (bench.addresses[0], bench.addresses[1])
    total = node.traffic(bench.block).get(pair, (0, 0))[0]
    nft = traffic.parse_counts(node.run(["nft", "-j", "list", "set", "ip", "hpcmig",
                                         traffic.TRAFFIC_SET]), bench.block)
    return nft.get(pair, (0, 0))[0], total - nft.get(pair, (0, 0))[0]


def measure(bench: nodes.Bench, flavour: mpi.Flavour, args: argparse.Namespace,
            ) -> dict[str, Any]:
    bench.set_filter(True, fast=True)  # fresh: the counts of earlier runs gone
    record, phases = cb.switched_run(bench, flavour, args, toggle)
    by_nft, by_map = counts(bench)
    sizes, fast_payload, total_payload = [], 0, 0
    for s in record["sizes"]:
        starts = pingpong.decode(s["trace"]["start_ns"], "int64")
        trips = pingpong.decode(s["trace"]["round_trip_s"], "float64")
        medians = cb.phase_medians(starts, trips, phases, int(args.guard * 1e9))
        ratios = cb.paired_ratios(medians)
        total_payload += s["size"] * len(starts)
        fast_payload += s["size"] * int(sum(
            ((starts >= lo) & (starts <= hi)).sum() for lo, hi, on in phases if on))
        sizes.append({
            "size": s["size"], "samples": len(starts),
            "phases_fast": sum(1 for m in medians if m is not None and m[1]),
            "phases_forwarded": sum(1 for m in medians if m is not None and not m[1]),
            "pairs": len(ratios),
            "bandwidth_ratio": float(np.median(ratios)) if ratios else None,
            "ratio_ci95": cb.bootstrap_median(ratios) if len(ratios) >= 3 else None,
            "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "bandwidth_MBps_all": s["bandwidth_MBps"]})
    # rank 0 sends one message per round trip: node 1 counted it in every phase, by the
    # program in the fast ones (headers and ACKs on top: at most a quarter more)
    if not (0.95 * fast_payload <= by_map and
            0.95 * total_payload <= by_nft + by_map <= 1.25 * total_payload):
        raise HpcmigError(f"{flavour.name}: node 1 counted {by_map} B by the program and "
                          f"{by_nft} B by nft; rank 0 sent {total_payload} B, "
                          f"{fast_payload} B of it in fast phases")
    return {"flavour": flavour.name, "mpi": record["mpi"], "phases": len(phases),
            "counted_bytes_map": by_map, "counted_bytes_nft": by_nft,
            "fast_phase_payload": fast_payload, "payload": total_payload, "sizes": sizes}


def flood_ping(bench: nodes.Bench, mode: str, count: int) -> float:
    """Average round trip (us) of a flood ping: node 1 to node 2 natively, or container 0
    to container 1 (resolved by the run's total time, as counting.py does)."""
    src, dst = ((next(iter(bench.nodes)), list(bench.nodes.values())[1]) if mode == "native"
                else (nodes.CONTAINERS[0], bench.addresses[1]))
    res = nodes.sh("nsenter", f"--net=/run/netns/{src}", "ping", "-f", "-q", "-c", str(count),
                   dst, timeout=600)
    total = counting.TOTAL.search(res.stdout)
    if total is None or int(total.group(1)) != count:
        raise HpcmigError(f"ping did not come back whole:\n{res.stdout}{res.stderr}")
    return int(total.group(2)) * 1000 / count


def pings(bench: nodes.Bench, rounds: int, count: int) -> dict[str, Any]:
    """Flood-ping round trips natively, by the fast path and forwarded, alternating."""
    modes = ("native", "fast", "forwarded")
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            if mode != "native":
                bench.set_filter(True, fast=mode == "fast")
            runs.append({"round": r, "mode": mode, "avg_us": flood_ping(bench, mode, count)})
    med = {m: float(np.median([x["avg_us"] for x in runs if x["mode"] == m])) for m in modes}
    ratio = {m: [x["avg_us"] / y["avg_us"] for x in runs for y in runs
                 if x["mode"] == m and y["mode"] == "native" and x["round"] == y["round"]]
             for m in ("fast", "forwarded")}
    return {"runs": runs, "avg_rtt_us": med,
            "ratio_to_native": {m: {"median": float(np.median(v)), "range": [min(v), max(v)]}
                                for m, v in ratio.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cb.switched_arguments(parser, "1,4096,65536,262144,1048576,4194304", 20.0)
    parser.add_argument("--ping-rounds", type=int, default=10,
                        help="rounds of flood pings native/fast/forwarded (0: none)")
    parser.add_argument("--ping-count", type=int, default=100000, help="round trips per ping")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    nodes.ready("fast path benchmark")
    started = time.time()
    ping: dict[str, Any] = {}
    runs = []
    with nodes.bench_nodes() as bench:
        if args.ping_rounds:
            ping = pings(bench, args.ping_rounds, args.ping_count)
            print(json.dumps({k: v for k, v in ping.items() if k != "runs"}), flush=True)
        for name in args.mpi.split(","):
            runs.append(measure(bench, mpi.flavour(name.strip()), args))
            cb.print_sizes(runs[-1], "fast/forwarded")
    if args.out:
        cb.write_record(args.out, "fastpath_switched.py", argv, started, args, ping=ping,
                        runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
