"""MPI ping-pong between ranks 0 and 1: one-way latency and bandwidth per message size.

`python -m hpcmig.workloads.pingpong [--sizes 1,8,...] [--iterations N] [--warmup W]`

Rank 0 sends a buffer of `size` bytes to rank 1, which sends it straight back; one round
trip is one sample, timed with `MPI.Wtime` on rank 0. After `settle` untimed 8-byte round
trips (start-up noise), every size gets `warmup` untimed round trips, then
`iterations_for(size)` timed ones (fewer for large messages, so each size moves a bounded
number of bytes). Reported per size: the one-way latency (half a round trip) as the median,
mean and minimum of the samples, and the bandwidth `size / median one-way latency`
(ping-pong bandwidth, as in NetPIPE / IMB PingPong; 1 MB = 10**6 bytes). Rank 0 fills the
buffer with a known pattern and checks the echo of the last round trip of every size, so a
run passes or fails explicitly. Ranks other than 0 and 1 only join the barriers.

Rank 0 prints one JSON line (`{"workload": "pingpong", "ok": ..., "sizes": [...], ...}`);
`parse_output` finds it in a launcher's output. Only rank 0 and 1's buffers touch memory, no
file is written.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

MiB = 1024 * 1024
DEFAULT_SIZES = tuple(2**k for k in range(23))  # 1 B ... 4 MiB
BYTES_PER_SIZE = 128 * MiB  # timed traffic budget per size and direction (large messages)


def iterations_for(size: int, iterations: int, minimum: int = 50) -> int:
    """Timed round trips for `size`: `iterations`, fewer once that would move more than
    BYTES_PER_SIZE one way, but never fewer than `minimum`."""
    if iterations < 1 or minimum < 1:
        raise ValueError("iterations and minimum must be >= 1")
    return max(min(iterations, BYTES_PER_SIZE // max(size, 1)), min(minimum, iterations))


def pattern(size: int, salt: int) -> np.ndarray:
    return ((np.arange(size, dtype=np.uint32) * 31 + salt) % 251).astype(np.uint8)


def summarize(size: int, round_trips: Sequence[float]) -> dict[str, Any]:
    """Per-size record from round-trip times in seconds (one-way = half a round trip)."""
    if not round_trips:
        raise ValueError("no samples")
    half = [t / 2 for t in round_trips]
    median = statistics.median(half)
    return {
        "size": size,
        "iterations": len(half),
        "latency_us": median * 1e6,
        "latency_us_mean": statistics.fmean(half) * 1e6,
        "latency_us_min": min(half) * 1e6,
        "bandwidth_MBps": size / median / 1e6 if median > 0 else float("inf"),
    }


def parse_output(text: str) -> dict[str, Any]:
    """The ping-pong record in a launcher's output (the last JSON line naming this workload)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"pingpong"' in line:
            data = json.loads(line)
            if data.get("workload") == "pingpong":
                return dict(data)
    raise ValueError("no pingpong result line in the output")


def _parse_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def _settle(comm: Any, rank: int, round_trips: int) -> None:
    """Untimed 8-byte round trips before the first size: start-up (the other rank still
    importing, lazy connection set-up) must not land in the first size's samples."""
    buf = np.zeros(8, dtype=np.uint8)
    for _ in range(round_trips):
        if rank == 0:
            comm.Send(buf, dest=1, tag=3)
            comm.Recv(buf, source=1, tag=4)
        elif rank == 1:
            comm.Recv(buf, source=0, tag=3)
            comm.Send(buf, dest=0, tag=4)
    comm.Barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pingpong", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_parse_sizes, default=list(DEFAULT_SIZES),
                        help="comma-separated message sizes in bytes (default 1 B..4 MiB)")
    parser.add_argument("--iterations", type=int, default=1000,
                        help="timed round trips per small size (default 1000)")
    parser.add_argument("--min-iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20, help="untimed round trips per size")
    parser.add_argument("--settle", type=int, default=1000,
                        help="untimed 8-byte round trips before the first size")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        if rank == 0:
            print("pingpong: needs at least 2 ranks", file=sys.stderr)
        return 2
    hosts = comm.gather(socket.gethostname(), root=0)
    _settle(comm, rank, args.settle)
    records: list[dict[str, Any]] = []
    ok = True
    for n in args.sizes:
        iters = iterations_for(n, args.iterations, args.min_iterations)
        if rank == 0:
            buf = pattern(n, n)
            back = np.empty(n, dtype=np.uint8)
            times = np.empty(iters)
            for _ in range(args.warmup):
                comm.Send(buf, dest=1, tag=1)
                comm.Recv(back, source=1, tag=2)
            back[:] = 0
            for i in range(iters):
                t0 = MPI.Wtime()
                comm.Send(buf, dest=1, tag=1)
                comm.Recv(back, source=1, tag=2)
                times[i] = MPI.Wtime() - t0
            same = bool(np.array_equal(buf, back))
            ok = ok and same
            records.append({**summarize(n, times.tolist()), "echo_ok": same})
        elif rank == 1:
            buf = np.empty(n, dtype=np.uint8)
            for _ in range(args.warmup + iters):
                comm.Recv(buf, source=0, tag=1)
                comm.Send(buf, dest=0, tag=2)
    comm.Barrier()
    if rank == 0:
        print(json.dumps({
            "workload": "pingpong",
            "ok": ok,
            "ranks": size,
            "hosts": hosts,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "warmup": args.warmup,
            "sizes": records,
        }), flush=True)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
