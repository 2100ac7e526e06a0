"""Pairs: given pairs of ranks exchange many bytes, every other rank stays quiet.

`python -m hpcmig.workloads.pairs --pairs 0:2[,1:3...] [--mib M]`

Each rank of a pair sends M MiB to its partner in 1 MiB messages (and receives as many),
checking every message it receives; then all ranks meet in a barrier. Rank 0 prints
`pairs: PASS` (or FAIL) and the bytes each rank sent to its partner. A known traffic pattern
for `hpcmig traffic` and `hpcmig run --map`.
"""

from __future__ import annotations

import argparse
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, help="a:b[,c:d...]")
    parser.add_argument("--mib", type=int, default=16, help="MiB each rank sends its partner")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    partner = partners(args.pairs, size).get(rank)
    ok = True
    if partner is not None:
        send = np.empty(CHUNK, dtype=np.uint8)
        recv = np.empty_like(send)
        for i in range(args.mib):
            send.fill((rank * 31 + i) % 251)
            comm.Sendrecv(send, dest=partner, recvbuf=recv, source=partner)
            ok &= bool((recv == (partner * 31 + i) % 251).all())
    comm.Barrier()
    ok = bool(comm.allreduce(1 if ok else 0, op=MPI.MIN))
    if rank == 0:
        print(f"pairs: {'PASS' if ok else 'FAIL'} pairs={args.pairs} "
              f"sent={args.mib * CHUNK} bytes per paired rank", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
