"""`hpcmig restore JOBID [--exclude NODES]`: let a checkpointed job run again.

The job (stopped and requeued held by `hpcmig checkpoint`) is released, optionally kept off
some nodes; when Slurm starts it, on whatever nodes it gets, its prologs prepare the virtual
cluster and its first `hpcmig run` restores every container from the checkpoint, then
reattaches to the step that was running (docs/checkpoint.md, "Whole jobs").
"""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="release a checkpointed job to run again from its "
                                       "checkpoint")
    p.add_argument("job_id", metavar="JOBID")
    p.add_argument("--exclude", default="", metavar="NODES",
                   help="nodes the restored job must not use (Slurm hostlist)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcmig import config as site_config
    from hpcmig.controller import restart
    from hpcmig.errors import PermissionDenied, UsageError
    from hpcmig.slurm import Slurm
    from hpcmig.slurm.hostlist import expand

    if os.geteuid() != 0:
        raise PermissionDenied("restoring whole jobs is for root and the Slurm admin")
    cfg = site_config.load()
    if restart.pending(cfg.checkpoint_dir, args.job_id) is None:
        raise UsageError(f"job {args.job_id} has no checkpoint waiting to be restored",
                         hint=f"make one with: hpcmig checkpoint {args.job_id}")
    slurm = Slurm()
    job = slurm.job(int(args.job_id))
    if job.state == "COMPLETING":  # the requeue's epilogs still run
        job = slurm.wait(int(args.job_id), timeout=120, states={"PENDING"})
    if job.state != "PENDING":
        raise UsageError(f"job {args.job_id} is {job.state}; only a requeued (pending) job "
                         "can be restored")
    excluded = sorted(set(job.excluded) | set(expand(args.exclude))) if args.exclude else []
    if excluded:
        slurm.set_excluded(int(args.job_id), excluded)
    slurm.release(int(args.job_id))
    print(f"job {args.job_id}: released" + (f", not on {','.join(excluded)}" if excluded
                                             else "") + "; it restores when Slurm starts it")
    return 0
