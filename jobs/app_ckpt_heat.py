"""A 1D heat equation over MPI ranks that checkpoints itself with hpcmig.ckpt.

    mpiexec -n 4 python3 jobs/app_ckpt_heat.py [--cells N] [--steps S] [--every K]
                                               [--save-every M] [--sleep SECONDS]

Rank r owns a block of the rod's cells. Each step it swaps one ghost cell with each neighbour
and applies u += ALPHA * (left - 2u + right), the rod's ends held at 0. Every K steps it calls
`ckpt.maybe_save` (a save when hpcmigd asked for one, or every $HPCMIG_APP_CKPT_INTERVAL
seconds), and every M steps `ckpt.save`. Started again after a crash or a requeue it resumes
from the newest complete generation, prints `lost work: <steps>` (the steps the killed run had
done past that checkpoint, computed again now), and ends with the checksum an uninterrupted
run prints: the sha256 of the final field, which `expected()` computes serially, bit for bit
(every cell sees the same floating-point operations in the same order).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import numpy as np

from hpcmig.ckpt import Checkpointer

ALPHA = 0.25
PROGRESS = "heat-progress"  # rank 0's last finished step, beside the checkpoints


def initial(lo: int, hi: int) -> np.ndarray:
    return ((np.arange(lo, hi, dtype=np.int64) * 7919) % 1000) / 1000.0


def advance(u: np.ndarray, left: float, right: float) -> np.ndarray:
    ext = np.concatenate(([left], u, [right]))
    return ext[1:-1] + ALPHA * (ext[:-2] - 2.0 * ext[1:-1] + ext[2:])


def checksum(field: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(field, dtype="<f8").tobytes()).hexdigest()[:16]


def expected(cells: int, steps: int) -> str:
    """The checksum any number of ranks must print, computed serially."""
    u = initial(0, cells)
    for _ in range(steps):
        u = advance(u, 0.0, 0.0)
    return checksum(u)


def _record(directory: str, step: int) -> None:
    tmp = os.path.join(directory, f".{PROGRESS}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(str(step))
    os.replace(tmp, os.path.join(directory, PROGRESS))


def _reached(directory: str) -> int | None:
    try:
        with open(os.path.join(directory, PROGRESS)) as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app_ckpt_heat", description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=10, help="call maybe_save every K steps")
    parser.add_argument("--save-every", type=int, default=0, help="save every M steps (0: no)")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step (demos)")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    lo, hi = rank * args.cells // size, (rank + 1) * args.cells // size
    left = rank - 1 if rank > 0 else MPI.PROC_NULL
    right = rank + 1 if rank < size - 1 else MPI.PROC_NULL
    t0 = time.monotonic()

    ckpt = Checkpointer(comm)
    start, resumed = 0, False
    u = initial(lo, hi)
    if ckpt.restarted():
        start, state = ckpt.load()
        if (state["lo"], state["hi"]) != (lo, hi):
            raise SystemExit(f"rank {rank}: checkpoint holds cells {state['lo']}..{state['hi']}"
                             f", this run owns {lo}..{hi}")
        u, resumed = state["u"], True
        if rank == 0:
            reached = _reached(ckpt.directory)
            print(f"heat: resuming at step {start} from {ckpt.directory}", flush=True)
            print(f"lost work: {max((reached or start) - start, 0)} steps (the previous run "
                  f"reached step {reached if reached is not None else 'unknown'})", flush=True)
    elif rank == 0:
        print(f"heat: fresh start, {size} ranks, checkpoints in {ckpt.directory}", flush=True)

    ghost_l, ghost_r = np.zeros(1), np.zeros(1)
    for step in range(start, args.steps):
        ghost_l[0] = ghost_r[0] = 0.0
        comm.Sendrecv(u[-1:], dest=right, recvbuf=ghost_l, source=left)
        comm.Sendrecv(u[:1], dest=left, recvbuf=ghost_r, source=right)
        u = advance(u, float(ghost_l[0]), float(ghost_r[0]))
        done = step + 1
        if rank == 0:
            _record(ckpt.directory, done)
        if args.save_every and done % args.save_every == 0:
            gen: int | None = ckpt.save(done, u=u, lo=lo, hi=hi)
        elif args.every and done % args.every == 0:
            gen = ckpt.maybe_save(done, u=u, lo=lo, hi=hi)
        else:
            gen = None
        if gen is not None and rank == 0:
            print(f"heat: checkpoint generation {gen} at step {done}", flush=True)
        if args.sleep:
            time.sleep(args.sleep)

    blocks = comm.gather(u, root=0)
    if rank != 0:
        return 0
    assert blocks is not None
    got, want = checksum(np.concatenate(blocks)), expected(args.cells, args.steps)
    status = "PASS" if got == want else "FAIL"
    print(f"heat: {status} checksum={got} expected={want} ranks={size} steps={args.steps} "
          f"resumed={'yes' if resumed else 'no'} seconds={time.monotonic() - t0:.2f}",
          flush=True)
    return 0 if status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
