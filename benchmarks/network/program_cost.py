"""What the fast path's program itself costs a message, and what would be left without it.

Design note: goal 3 of issue 13 asks for 1 B latency at most 1.10x native. By the fast path a
message makes two program runs (the sender's node at its container's veth, the receiver's
node at its uplink) and one veth crossing more than natively (the sender's container veth).
This script separates the two: the kernel's BPF run-time statistics
(`kernel.bpf_stats_enabled`, `run_time_ns`/`run_cnt` of the pinned program) give the
program's time per run, measured on the same ping-pong as the latency. In each round, per
MPI: a native run, a container run with the statistics off (the latency), and a container
run with them on (the program's ns per run; the statistics add two clock reads per run, so
this overstates the program). `floor` = container latency - 2 runs x ns per run: what the
container path would take with a program that costs nothing, a lower bound. If the floor
is above 1.10x native, no program on this path meets the goal: what is left is the veth
crossing. `--size S` (S > 1 B) asks the same of a larger message, whose packets (its
segments, their ACKs) each make their program runs: the programs' whole time on both nodes
is divided by that run's messages (2 per round trip; it skips the 8-byte settling ones), and the
ratios are read as bandwidth (native latency / container latency: ping-pong bandwidth is
size / latency). The same two nodes and containers as run.py (`nodes.bench_nodes`). Root;
run it under the integration lock:

    flock /run/lock/hpcmig-integration.lock /opt/hpcmig/venv/bin/python \\
        benchmarks/network/program_cost.py --out benchmarks/network/program-cost.json

Another version's programs (what they cost before a change): the same command with that
version's tree first on PYTHONPATH (`git worktree add /tmp/old REV`, then
`PYTHONPATH=/tmp/old ... benchmarks/network/program_cost.py`); the programs are found by
listing the node's pins.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import counting_bandwidth as cb  # noqa: E402
import nodes  # noqa: E402
import run  # noqa: E402

from hpcmig import mpi  # noqa: E402
from hpcmig.errors import HpcmigError  # noqa: E402
from hpcmig.network import NodeNet  # noqa: E402

STATS = "/proc/sys/kernel/bpf_stats_enabled"
# program runs a message makes: the sender's node and the receiver's node; on the L2 data
# path the sender's guard (egress), the receiver's uplink (hpcmig_link's hold lookup) and
# the receiver's guard (ingress)
RUNS_PER_MESSAGE = {"container": 2, "container-l2": 3}


@contextmanager
def bpf_stats() -> Iterator[None]:
    before = Path(STATS).read_text().strip()
    Path(STATS).write_text("1")
    try:
        yield
    finally:
        Path(STATS).write_text(before)


def program_stats(bench: nodes.Bench) -> dict[str, tuple[int, int]]:
    """Per node: its pinned programs' (run_time_ns, run_cnt), summed."""
    out = {}
    for ns in bench.nodes:
        pins = NodeNet(ns).fast.pins()
        if pins is None:
            raise HpcmigError(f"{ns}: the fast path is not loaded")
        # every program pinned there (another hpcmig version's too: the docstring)
        listed = (nodes.sh("bpftool", "-j", "prog", "show", "pinned", f"{pins}/{name}",
                           check=False) for name in sorted(os.listdir(pins)))
        shown = [json.loads(res.stdout) for res in listed if res.returncode == 0]
        out[ns] = (sum(int(p.get("run_time_ns", 0)) for p in shown),
                   sum(int(p.get("run_cnt", 0)) for p in shown))
    return out


def one_round(bench: nodes.Bench, flavour: mpi.Flavour, args: argparse.Namespace,
              rnd: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"round": rnd, "flavour": flavour.name, "mode": args.mode}
    order = ("native", "container", "stats") if rnd % 2 == 0 else ("stats", "container",
                                                                     "native")
    for kind in order:
        mode = "native" if kind == "native" else args.mode
        if kind != "stats":
            rec[f"{kind}_us"] = run.measure(bench, flavour, mode, args)["sizes"][0][
                "latency_us"]
            continue
        with bpf_stats():  # measure() loads the program afresh: its totals are this run's
            counted = argparse.Namespace(**{**vars(args), "settle": 0 if args.size > 1 else None})
            timed = run.measure(bench, flavour, mode, counted)["sizes"][0]["iterations"]
            after = program_stats(bench)
        if min(count for _, count in after.values()) < 2 * timed:
            raise HpcmigError(f"the program ran {after} times: fewer than the round trips")
        rec["ns_per_run"] = {ns: ns_total / count for ns, (ns_total, count) in after.items()}
        rec["messages"] = 2 * (args.warmup + timed)
        rec["runs_per_message"] = sum(c for _, c in after.values()) / rec["messages"]
        rec["program_ns_total"] = sum(t for t, _ in after.values())
    if args.size == 1:
        program_us = RUNS_PER_MESSAGE[args.mode] * statistics.mean(rec["ns_per_run"].values()
                                                                     ) / 1000
    else:
        program_us = rec["program_ns_total"] / rec["messages"] / 1000
    rec["program_us"] = program_us
    rec["floor_us"] = rec["container_us"] - program_us
    rec["ratio"] = rec["container_us"] / rec["native_us"]
    rec["floor_ratio"] = rec["floor_us"] / rec["native_us"]
    if args.size > 1:  # ping-pong bandwidth, container / native
        rec["bandwidth_ratio"] = 1 / rec["ratio"]
        rec["floor_bandwidth_ratio"] = 1 / rec["floor_ratio"]
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mpi", default="mpich,openmpi")
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--out", default="")
    parser.add_argument("--mode", default="container", choices=sorted(RUNS_PER_MESSAGE),
                        help="the container path measured (container-l2: the L2 data path, "
                             "whose guard programs are counted)")
    parser.add_argument("--pin", action="store_true",
                        help="each rank on a core of its own (run.py --pin)")
    parser.add_argument("--size", type=int, default=1,
                        help="message size in bytes (above 1: read the ratios as bandwidth)")
    args = parser.parse_args(argv)
    args.sizes, args.warmup = str(args.size), 20
    nodes.ready("program cost benchmark")
    started = time.time()
    rounds: list[dict[str, Any]] = []
    with nodes.bench_nodes() as bench:
        run.write_nbrsh(f"{nodes.WORK}/nbrsh")  # container runs load the fast path
        for rnd in range(args.rounds):
            for name in args.mpi.split(","):
                rec = one_round(bench, mpi.flavour(name.strip()), args, rnd)
                rounds.append(rec)
                print(f"round {rnd} {rec['flavour']:8} native {rec['native_us']:.2f} us, "
                      f"container {rec['container_us']:.2f} us ({rec['ratio']:.3f}x), "
                      f"program {rec['program_us']:.2f} us a message, floor "
                      f"{rec['floor_us']:.2f} us ({rec['floor_ratio']:.3f}x)", flush=True)
    summary = {}
    for name in sorted({r["flavour"] for r in rounds}):
        mine = [r for r in rounds if r["flavour"] == name]
        summary[name] = {key: statistics.median(r[key] for r in mine) for key in (
            "native_us", "container_us", "program_us", "floor_us", "ratio", "floor_ratio",
            "bandwidth_ratio", "floor_bandwidth_ratio", "runs_per_message") if key in mine[0]}
        summary[name]["floor_ratio_range"] = [min(r["floor_ratio"] for r in mine),
                                              max(r["floor_ratio"] for r in mine)]
    print(json.dumps(summary, indent=1))
    if args.out:
        cb.write_record(args.out, "program_cost.py", argv, started, args, rounds=rounds,
                        summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
