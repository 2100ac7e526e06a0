"""MPI ping-pong between ranks 0 and 1: one-way latency and bandwidth per message size.

`python -m hpcmig.workloads.pingpong [--sizes 1,8,...] [--iterations N] [--warmup W]
[--seconds S] [--pin] [--trace]`

Rank 0 sends a buffer of `size` bytes to rank 1, which sends it straight back; one round
trip is one sample, timed on rank 0 (`time.perf_counter`). After `settle` untimed 8-byte
round trips (start-up noise), every size gets `warmup` untimed round trips, then
`iterations_for(size)` timed ones (fewer for large messages, so each size moves a bounded
number of bytes), or, with `--seconds S`, as many as fit in S seconds (rank 0 decides and
ends rank 1's loop with a message of its own tag). Reported per size: the one-way latency
(half a round trip) as the median, mean and minimum of the samples, and the bandwidth
`size / median one-way latency` (ping-pong bandwidth, as in NetPIPE / IMB PingPong;
1 MB = 10**6 bytes). Rank 0 fills the buffer with a known pattern and checks the echo of
the last round trip of every size, so a run passes or fails explicitly. Ranks other than 0
and 1 only join the barriers. `--trace` adds every sample to the record: its start on the
machine's monotonic clock (ns, the clock `time.monotonic_ns` reads outside the container
too) and its round trip, both base64 of little-endian int64 / float64 arrays, so a
benchmark can sort samples by what it changed on the nodes at that moment
(benchmarks/network/counting_bandwidth.py). `--pin` runs rank r, all its threads, on the
r-th CPU it may use: "nodes" that share one machine then each get a core of their own, as
real nodes would, instead of ranks that the scheduler sometimes puts on one core.

Rank 0 prints one JSON line (`{"workload": "pingpong", "ok": ..., "sizes": [...], ...}`);
`parse_output` finds it in a launcher's output. Only rank 0 and 1's buffers touch memory, no
file is written.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

MiB = 1024 * 1024
DEFAULT_SIZES = tuple(2**k for k in range(23))  # 1 B ... 4 MiB
BYTES_PER_SIZE = 128 * MiB  # timed traffic budget per size and direction (large messages)
PING, PONG, SETTLE_PING, SETTLE_PONG, STOP = 1, 2, 3, 4, 5  # message tags


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
            comm.Send(buf, dest=1, tag=SETTLE_PING)
            comm.Recv(buf, source=1, tag=SETTLE_PONG)
        elif rank == 1:
            comm.Recv(buf, source=0, tag=SETTLE_PING)
            comm.Send(buf, dest=0, tag=SETTLE_PONG)
    comm.Barrier()


def encode(values: np.ndarray) -> str:
    return base64.b64encode(values.astype(values.dtype.newbyteorder("<")).tobytes()).decode()


def decode(text: str, dtype: str) -> np.ndarray:
    """`encode`'s inverse: dtype "int64" or "float64"."""
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


def _ping(comm: Any, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Rank 0's side of one size: warm-up, timed round trips, echo check, record."""
    buf, back = pattern(n, n), np.empty(n, dtype=np.uint8)
    for _ in range(args.warmup):
        comm.Send(buf, dest=1, tag=PING)
        comm.Recv(back, source=1, tag=PONG)
    back[:] = 0
    timed = args.seconds > 0
    cap = iterations_for(n, args.iterations, args.min_iterations) if not timed else 1 << 21
    starts, times = np.empty(cap, dtype=np.int64), np.empty(cap)
    deadline = time.monotonic_ns() + int(args.seconds * 1e9)
    count = 0
    while count < cap:
        starts[count] = time.monotonic_ns()
        if timed and count and starts[count] >= deadline:
            break
        t0 = time.perf_counter()
        comm.Send(buf, dest=1, tag=PING)
        comm.Recv(back, source=1, tag=PONG)
        times[count] = time.perf_counter() - t0
        count += 1
    if timed:
        comm.Send(buf[:0], dest=1, tag=STOP)
    same = bool(np.array_equal(buf, back))
    record = {**summarize(n, times[:count].tolist()), "echo_ok": same}
    if args.trace:
        record["trace"] = {"start_ns": encode(starts[:count]),
                           "round_trip_s": encode(times[:count])}
    return record


def _pong(comm: Any, n: int, args: argparse.Namespace) -> None:
    """Rank 1's side: echo until rank 0's count (or, timed, its STOP message) is reached."""
    from mpi4py import MPI

    buf = np.empty(n, dtype=np.uint8)
    status = MPI.Status()
    for _ in range(args.warmup):
        comm.Recv(buf, source=0, tag=PING)
        comm.Send(buf, dest=0, tag=PONG)
    left = iterations_for(n, args.iterations, args.min_iterations) if args.seconds <= 0 else -1
    while left != 0:
        comm.Recv(buf, source=0, tag=MPI.ANY_TAG, status=status)
        if status.Get_tag() == STOP:
            break
        comm.Send(buf, dest=0, tag=PONG)
        left -= 1


def pin(rank: int) -> int:
    """Run every thread of this process (the MPI library's progress threads too, started in
    MPI_Init) on the rank-th CPU it may use, modulo their number; return that CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[rank % len(cpus)]
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), {cpu})
    return cpu


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
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="time each size for this long instead of a count of round trips")
    parser.add_argument("--pin", action="store_true",
                        help="run rank r on the r-th CPU this process may use (ranks of "
                             "'nodes' that share one machine each get a core of their own)")
    parser.add_argument("--trace", action="store_true",
                        help="include every sample's start and round trip in the record")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        if rank == 0:
            print("pingpong: needs at least 2 ranks", file=sys.stderr)
        return 2
    cpus = comm.gather(pin(rank) if args.pin else None, root=0)
    hosts = comm.gather(socket.gethostname(), root=0)
    _settle(comm, rank, args.settle)
    records: list[dict[str, Any]] = []
    ok = True
    for n in args.sizes:
        if rank == 0:
            record = _ping(comm, n, args)
            ok = ok and record["echo_ok"]
            records.append(record)
        elif rank == 1:
            _pong(comm, n, args)
    comm.Barrier()
    if rank == 0:
        print(json.dumps({
            "workload": "pingpong",
            "ok": ok,
            "ranks": size,
            "hosts": hosts,
            "cpus": cpus,
            "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "warmup": args.warmup,
            "sizes": records,
        }), flush=True)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
