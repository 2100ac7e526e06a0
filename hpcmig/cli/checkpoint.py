"""`hpcmig checkpoint JOBID [--resume]`: checkpoint a whole running job.

Every container of the job is frozen behind a network lock, dumped and verified (a consistent
cut; journaled, crash-safe). By default the job then stops and is requeued held: it keeps its
id, addresses and files, and `hpcmig restore JOBID` lets it run again, on any nodes, from the
checkpoint. `--resume` keeps the job running instead (a restart point). Root and the Slurm
admin only (the images and the journal are root's).
"""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint a whole job; stop and requeue it held")
    p.add_argument("job_id", metavar="JOBID")
    p.add_argument("--resume", action="store_true",
                   help="keep the job running after the checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hpcmig.controller import restart
    from hpcmig.controller.agentops import AgentOps
    from hpcmig.controller.evacuate import Controller
    from hpcmig.controller.journal import Journal
    from hpcmig.errors import PermissionDenied

    if os.geteuid() != 0:
        raise PermissionDenied("whole-job checkpoints are for root and the Slurm admin")
    console = Console(stderr=True)
    ctl = Controller(progress=lambda m: console.print(f"hpcmig: {m}"))
    vc = ctl.vcluster(args.job_id)
    then = "resume" if args.resume else "stop"
    ops = AgentOps(vc, ctl.node_addrs(), ctl.cfg.agent_port, ctl.munge)
    with console.status(f"checkpointing job {vc.job_id}: {len(vc.members)} container(s)"), \
            ctl.job_lock(vc.job_id), Journal(ctl.journal_path) as journal:  # `recover` waits
        rec = restart.checkpoint(journal, ops, vc, ctl.cfg.checkpoint_dir, then)
    where = os.path.dirname(os.path.dirname(rec.containers[min(rec.containers)]["image_dir"]))
    if then == "resume":
        print(f"job {vc.job_id}: checkpointed ({len(rec.containers)} containers, {where}); "
              "it keeps running")
        return 0
    ctl.slurm.requeue(int(vc.job_id), hold=True)
    print(f"job {vc.job_id}: checkpointed and stopped ({len(rec.containers)} containers, "
          f"{where}); requeued held: hpcmig restore {vc.job_id} [--exclude NODES]")
    return 0
