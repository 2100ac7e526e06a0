"""Pairs: given pairs of ranks exchange many bytes, every other rank stays quiet.

`python -m hpcmig.workloads.pairs --pairs 0:2[,1:3...] [--mib M] [--phases K] [--gap S]`

In each of K phases (default 1) each rank of a pair sends M MiB to its partner in 1 MiB
messages (and receives as many), checking every message it receives; then all ranks meet in
a barrier, and rank 0 prints `pairs: phase k of K in T s` (T: the slowest rank's exchange)
when there are several, then waits S seconds. Rank 0 ends with `pairs: PASS` (or FAIL). A
known traffic pattern for `hpcmig traffic`, `hpcmig run --map` and the remap benchmark.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

CHUNK = 1 << 20


def partners(spec: str, size: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for item in filter(None, spec.split(",")):
        a, b = (int(x) for x in item.split(":"))
        if not (0 <= a < size and 0 <= b < size) or a == b or a in out or b in out:
            raise SystemExit(f"pairs: bad pair {item!r} for {size} ranks")
        out[a], out[b] = b, a
    return out


def exchange(comm: object, partner: int, rank: int, mib: int, send: np.ndarray,
             recv: np.ndarray) -> bool:
    """`mib` 1 MiB messages both ways with `partner`; whether every one came intact."""
    ok = True
    for i in range(mib):
        send.fill((rank * 31 + i) % 251)
        comm.Sendrecv(send, dest=partner, recvbuf=recv, source=partner)  # type: ignore[attr-defined]
        ok &= bool(np.all(recv == (partner * 31 + i) % 251))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, help="a:b[,c:d...]")
    parser.add_argument("--mib", type=int, default=16, help="MiB each rank sends its partner")
    parser.add_argument("--phases", type=int, default=1, help="exchanges, timed one by one")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between phases")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    partner = partners(args.pairs, size).get(rank)
    ok = True
    send = np.empty(CHUNK, dtype=np.uint8)
    recv = np.empty_like(send)
    for phase in range(1, args.phases + 1):
        t0 = time.monotonic()
        if partner is not None:
            ok &= exchange(comm, partner, rank, args.mib, send, recv)
        slowest = comm.reduce(time.monotonic() - t0, op=MPI.MAX, root=0)
        if rank == 0 and args.phases > 1:
            print(f"pairs: phase {phase} of {args.phases} in {slowest:.3f} s", flush=True)
        if args.gap and phase < args.phases:
            time.sleep(args.gap)
    comm.Barrier()
    ok = bool(comm.allreduce(1 if ok else 0, op=MPI.MIN))
    if rank == 0:
        print(f"pairs: {'PASS' if ok else 'FAIL'} pairs={args.pairs} "
              f"sent={args.mib * CHUNK} bytes per paired rank", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
