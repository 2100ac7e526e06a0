"""Application-level checkpoints for mpi4py programs, and the controller's view of them.

Design note: a program that can save its own state (a few numpy arrays and scalars per rank)
restarts from it after a requeue without CRIU: `Checkpointer` saves and loads collectively,
one HDF5 file per generation, published by an atomic rename of a small index
(hpcmig.ckpt.store). hpcmigd uses the MPI-free side, `request()` and `latest()`, to ask a job
for a checkpoint and see what it has. Importing this package must not import mpi4py or h5py:
the controller imports it. Guide: docs/app-checkpoint.md.

    from hpcmig.ckpt import Checkpointer

    ckpt = Checkpointer()                      # MPI.COMM_WORLD, $HPCMIG_APP_CKPT_DIR, keep=2
    step, state = ckpt.load() if ckpt.restarted() else (0, {"u": initial()})
    for step in range(step, steps):
        ...
        ckpt.maybe_save(step + 1, u=u, t=t)   # when hpcmigd asks, or every $..._INTERVAL s
"""

from __future__ import annotations

from hpcmig.ckpt.checkpointer import Checkpointer, default_directory
from hpcmig.ckpt.store import (
    CheckpointError,
    Generation,
    NoCheckpoint,
    generations,
    latest,
    request,
)

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "Generation",
    "NoCheckpoint",
    "default_directory",
    "generations",
    "latest",
    "request",
]
