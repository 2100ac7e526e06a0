#!/bin/bash
# A 1D heat equation over 4 ranks in hpcmig's virtual cluster that checkpoints itself with
# hpcmig.ckpt (application level: no CRIU). Submit from this directory:
#     cd jobs && sbatch app_ckpt_heat.sh
# hpcmigd asks it for a checkpoint every 30 s (engine=app,ckpt=30); when a node of the job
# dies, hpcmigd requeues it (same job id) off that node and the run started again resumes from
# its newest generation: it prints `lost work: <steps>` and ends with `heat: PASS checksum=...`,
# the checksum of an uninterrupted run (docs/app-checkpoint.md). By hand, as hpcmigd would:
#     python3 -c "import hpcmig.ckpt; hpcmig.ckpt.request('hpcmig-ckpt-<jobid>')"
#     scontrol requeue <jobid>
#SBATCH --job-name=app-ckpt-heat
#SBATCH --nodes=2
#SBATCH --ntasks=4
#SBATCH --comment=hpcmig:engine=app,ckpt=30
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
# `hpcmig run` names the checkpoint directory for an engine=app job (HPCMIG_APP_CKPT_DIR,
# $SLURM_SUBMIT_DIR/hpcmig-ckpt-$SLURM_JOB_ID: storage every node sees, found again by the
# requeued job, which keeps its id) and registers it with hpcmigd.
echo "app-ckpt-heat: run $((${SLURM_RESTART_COUNT:-0} + 1)) of job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"
hpcmig run -n "$SLURM_NTASKS" -- /opt/hpcmig/venv/bin/python "$SLURM_SUBMIT_DIR/app_ckpt_heat.py" \
    --cells 65536 --steps 20000 --every 50 --sleep 0.002
