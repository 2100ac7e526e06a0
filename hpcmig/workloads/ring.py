"""Ring + allreduce: every rank passes a vector around the ring, then all reduce a checksum.

`python -m hpcmig.workloads.ring [--elements N] [--rounds R] [--memory-mb M] [--seconds S]
[--progress] [--report] [--linger S]`

Rank r starts with v_r[k] = (r * 7919 + k) mod 65521. Each round, every rank sends its vector
to rank r+1 and adds what it receives from rank r-1, element-wise modulo 2**31-1. After R
rounds rank r holds a known sum of the starting vectors; the checksum is the sum over ranks of
every held element, reduced with MPI_SUM. `expected()` computes the same number without MPI.
`--memory-mb` keeps that much touched, verified ballast per rank (for migration tests) and
`--seconds` stretches the run to at least that long. `--report`: rank 0 also prints, per rank,
the payload bytes its ring messages carried to its right neighbour and both hosts (what
`hpcmig traffic` should measure); `--linger` keeps every rank alive that long after the result.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

import numpy as np

MOD = 2**31 - 1


def start_vector(rank: int, elements: int) -> np.ndarray:
    return (rank * 7919 + np.arange(elements, dtype=np.int64)) % 65521


def expected(size: int, elements: int, rounds: int) -> int:
    """The checksum `size` ranks must print, computed serially."""
    vecs = [start_vector(r, elements) for r in range(size)]
    for _ in range(rounds):
        vecs = [(vecs[r] + vecs[(r - 1) % size]) % MOD for r in range(size)]
    return int(sum(int(v.sum()) for v in vecs))


def ballast(rank: int, megabytes: int) -> np.ndarray:
    n = megabytes * 1024 * 1024 // 8
    return (np.arange(n, dtype=np.int64) * (rank + 3)) % 1000003


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ring", description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--progress", action="store_true",
                        help="rank 0 prints `ring: round N` after every round (a restarted "
                        "job prints the rounds it does again twice: its lost work)")
    parser.add_argument("--report", action="store_true",
                        help="print the bytes each rank sent to its right neighbour")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds every rank stays alive after the result")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    extra = ballast(rank, args.memory_mb) if args.memory_mb else None
    extra_sum = int(extra.sum()) if extra is not None else 0
    vec = start_vector(rank, args.elements)
    recv = np.empty_like(vec)
    right, left = (rank + 1) % size, (rank - 1) % size
    pause = args.seconds / max(args.rounds, 1)
    t0 = time.monotonic()
    for i in range(args.rounds):
        comm.Sendrecv(vec, dest=right, recvbuf=recv, source=left)
        vec = (vec + recv) % MOD
        if args.progress and rank == 0:
            print(f"ring: round {i + 1} of {args.rounds}", flush=True)
        if pause:
            time.sleep(pause)
    total = comm.allreduce(int(vec.sum()), op=MPI.SUM)
    ballast_ok = extra is None or int(extra.sum()) == extra_sum
    ok = comm.allreduce(1 if ballast_ok else 0, op=MPI.MIN)
    hosts = comm.gather(socket.gethostname(), root=0)
    status = "PASS"
    if rank == 0 and args.report and hosts:
        for r in range(size):
            print(f"ring: rank {r} ({hosts[r]}) sent {args.rounds * vec.nbytes} bytes to "
                  f"rank {(r + 1) % size} ({hosts[(r + 1) % size]})", flush=True)
    if rank == 0:
        want = expected(size, args.elements, args.rounds)
        status = "PASS" if total == want and ok else "FAIL"
        print(
            f"ring: {status} checksum={total} expected={want} ranks={size} "
            f"nodes={','.join(sorted(set(hosts or [])))} seconds={time.monotonic() - t0:.2f} "
            f"mpi={MPI.Get_library_version().splitlines()[0].strip()}",
            flush=True,
        )
    if args.linger:
        time.sleep(args.linger)
    return 0 if status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
