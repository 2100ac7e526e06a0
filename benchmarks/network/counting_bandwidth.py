"""What traffic counting costs MPI bandwidth: one long ping-pong run between two containers,
with the nodes' counting switched on and off under it every quarter second.

Design note: separate MPI runs per mode (run.py's `container-uncounted`) could not resolve a
few per cent: on this shared 2-core machine their per-round ratios spanned 0.56-1.76. Here
one run of `hpcmig.workloads.pingpong --seconds S --trace` per MPI times each size for S
seconds while this script swaps the nodes' forward chain between the counting ruleset and
the same ruleset without the counting rule (`nft -f`, one atomic transaction per node,
job isolation in force all the time), recording when each swap began and ended on the
monotonic clock the workload also reads. Each round trip that lies wholly inside one phase
(and `--guard` clear of a swap) is that phase's sample; each counted phase is compared with
the mean of its two uncounted neighbours (median round trip against median round trip), so
load that drifts over seconds cancels. Reported per size: the median of those paired ratios
as bandwidth counted/uncounted, a bootstrap 95% interval of that median, and the phase
counts. The node counters are checked to have counted the counted phases' messages.

    flock /run/lock/hpcmig-integration.lock /opt/hpcmig/venv/bin/python \\
        benchmarks/network/counting_bandwidth.py --out benchmarks/network/counting-bandwidth.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nodes  # noqa: E402
import run  # noqa: E402

from hpcmig import mpi  # noqa: E402
from hpcmig.errors import CommandError, HpcmigError  # noqa: E402
from hpcmig.network import NodeNet, plan  # noqa: E402
from hpcmig.workloads import pingpong  # noqa: E402

Phase = tuple[int, int, bool]  # (swap ended ns, next swap began ns, counted)


def ruleset(counted: bool) -> str:
    script = plan.isolation_script(IPv4Network(nodes.POOL))
    return script if counted else nodes.uncounted(script)


def switching(done: threading.Event, period: float, switch: Callable[[bool], None],
              on: bool) -> list[Phase]:
    """Call `switch(not on)`, `switch(on)`, ... every `period` s until `done` (starting in
    state `on`); the phases between the switches."""
    phases: list[Phase] = []
    started = 0
    while True:
        began = time.monotonic_ns()
        if started:
            phases.append((started, began, on))
        if done.is_set():
            return phases
        on = not on
        switch(on)
        started = time.monotonic_ns()
        done.wait(period)


def toggle(bench: nodes.Bench, done: threading.Event, period: float) -> list[Phase]:
    """Swap counting on and off on both nodes every `period` s until `done`; the phases."""
    scripts = {c: ruleset(c) for c in (True, False)}

    def switch(counted: bool) -> None:
        for ns in bench.nodes:
            NodeNet(ns).run(["nft", "-f", "-"], input=scripts[counted])

    return switching(done, period, switch, False)


def phase_medians(starts: np.ndarray, trips: np.ndarray, phases: list[Phase],
                  guard_ns: int, minimum: int = 5) -> list[tuple[float, bool] | None]:
    """Per phase: (median round trip, counted) of the samples wholly inside it, or None."""
    ends = starts + (trips * 1e9).astype(np.int64)
    out: list[tuple[float, bool] | None] = []
    for lo, hi, counted in phases:
        inside = (starts >= lo + guard_ns) & (ends <= hi - guard_ns)
        out.append((float(np.median(trips[inside])), counted)
                   if int(inside.sum()) >= minimum else None)
    return out


def paired_ratios(medians: list[tuple[float, bool] | None]) -> list[float]:
    """Bandwidth counted/uncounted per counted phase between two measured uncounted ones."""
    ratios = []
    for k in range(1, len(medians) - 1):
        before, here, after = medians[k - 1], medians[k], medians[k + 1]
        if here is None or before is None or after is None or not here[1]:
            continue
        if before[1] or after[1]:
            continue
        ratios.append((before[0] + after[0]) / 2 / here[0])
    return ratios


def bootstrap_median(values: list[float], draws: int = 2000, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values)
    meds = np.median(rng.choice(arr, size=(draws, len(arr)), replace=True), axis=1)
    return [float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))]


def switched_run(bench: nodes.Bench, flavour: mpi.Flavour, args: argparse.Namespace,
                 toggle: Callable[[nodes.Bench, threading.Event, float], list[Phase]],
                 ) -> tuple[dict[str, Any], list[Phase]]:
    """One traced ping-pong run while `toggle` switches under it; its record and phases."""
    prog = [sys.executable, "-m", "hpcmig.workloads.pingpong", "--sizes", args.sizes,
            "--seconds", str(args.seconds), "--warmup", "50", "--trace"]
    done = threading.Event()
    phases: list[Phase] = []
    swapper = threading.Thread(
        target=lambda: phases.extend(toggle(bench, done, args.period)), daemon=True)
    swapper.start()
    try:
        budget = run.RUN_TIMEOUT + 4 * args.seconds * len(args.sizes.split(","))
        res = run.container_run(bench, flavour, prog, timeout=budget)
    finally:
        done.set()
        swapper.join()
    if res.returncode != 0:
        raise CommandError(res.argv, res.returncode, res.stdout, res.stderr)
    record = pingpong.parse_output(res.stdout)
    if not record["ok"] or len(set(record["hosts"])) != 2:
        raise HpcmigError(f"{flavour.name}: echo check failed or ranks share a host")
    if len(phases) < 3:
        raise HpcmigError(f"{flavour.name}: the switch did not run (see above)")
    return record, phases


def measure(bench: nodes.Bench, flavour: mpi.Flavour, args: argparse.Namespace,
            ) -> dict[str, Any]:
    for ns in bench.nodes:  # a fresh table: counts of earlier runs gone
        NodeNet(ns).remove_isolation()
    bench.set_filter(True)
    record, phases = switched_run(bench, flavour, args, toggle)
    counted_bytes = NodeNet(next(iter(bench.nodes))).traffic(bench.block).get(
        (bench.addresses[0], bench.addresses[1]), (0, 0))[0]
    sizes, counted_payload, total_payload = [], 0, 0
    for s in record["sizes"]:
        starts = pingpong.decode(s["trace"]["start_ns"], "int64")
        trips = pingpong.decode(s["trace"]["round_trip_s"], "float64")
        medians = phase_medians(starts, trips, phases, int(args.guard * 1e9))
        ratios = paired_ratios(medians)
        n_counted = sum(1 for m in medians if m is not None and m[1])
        total_payload += s["size"] * len(starts)
        counted_payload += s["size"] * int(sum(
            ((starts >= lo) & (starts <= hi)).sum() for lo, hi, c in phases if c))
        sizes.append({
            "size": s["size"], "samples": len(starts), "phases_counted": n_counted,
            "phases_uncounted": sum(1 for m in medians if m is not None and not m[1]),
            "pairs": len(ratios),
            "bandwidth_ratio": float(np.median(ratios)) if ratios else None,
            "ratio_ci95": bootstrap_median(ratios) if len(ratios) >= 3 else None,
            "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "bandwidth_MBps_all": s["bandwidth_MBps"]})
    check_counted(flavour.name, counted_bytes, counted_payload, total_payload)
    return {"flavour": flavour.name, "mpi": record["mpi"], "phases": len(phases),
            "counted_bytes": counted_bytes, "counted_phase_payload": counted_payload,
            "payload": total_payload, "sizes": sizes}


def check_counted(name: str, counted: int, counted_payload: int, total_payload: int) -> None:
    """Node 1 counted rank 0's messages of the counted phases (headers on top), and not
    those of the uncounted ones (the phases are about half the run)."""
    if not 0.95 * counted_payload <= counted <= 0.75 * total_payload * 1.05:
        raise HpcmigError(f"{name}: node 1 counted {counted} bytes; the counted phases "
                          f"carried {counted_payload} of {total_payload}")


def switched_arguments(parser: argparse.ArgumentParser, sizes: str, seconds: float) -> None:
    """The options of a run with a switch under it (this script, fastpath_switched.py)."""
    parser.add_argument("--mpi", default="mpich,openmpi")
    parser.add_argument("--sizes", default=sizes)
    parser.add_argument("--seconds", type=float, default=seconds, help="per size")
    parser.add_argument("--period", type=float, default=0.25, help="seconds per phase")
    parser.add_argument("--guard", type=float, default=0.02,
                        help="seconds of samples dropped on each side of a swap")


def print_sizes(rec: dict[str, Any], label: str) -> None:
    for s in rec["sizes"]:
        ci = s["ratio_ci95"] or [float("nan")] * 2
        ratio = s["bandwidth_ratio"] if s["bandwidth_ratio"] is not None else float("nan")
        print(f"{rec['flavour']:8} {s['size']:>8} B  bandwidth {label} "
              f"{ratio:.4f} (95% {ci[0]:.4f}-{ci[1]:.4f}, "
              f"{s['pairs']} pairs, {s['samples']} samples)", flush=True)


def write_record(path: str, script: str, argv: list[str] | None, started: float,
                 args: argparse.Namespace, **data: Any) -> None:
    Path(path).write_text(json.dumps({
        "command": f"benchmarks/network/{script} "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "loadavg_after": run.loadavg()},
        "settings": vars(args), **data}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    switched_arguments(parser, "4096,65536,1048576,4194304", 30.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    nodes.ready("counting benchmark")
    started = time.time()
    runs = []
    with nodes.bench_nodes() as bench:
        for name in args.mpi.split(","):
            rec = measure(bench, mpi.flavour(name.strip()), args)
            runs.append(rec)
            print_sizes(rec, "counted/uncounted")
    if args.out:
        write_record(args.out, "counting_bandwidth.py", argv, started, args, runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
