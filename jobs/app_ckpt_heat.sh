#!/bin/bash
# A 1D heat equation over 4 ranks in hpcmig's virtual cluster that checkpoints itself with
# hpcmig.ckpt (application level: no CRIU). Submit from this directory:
#     cd jobs && sbatch app_ckpt_heat.sh
# Ask it for a checkpoint as hpcmigd would, then requeue it (or lose a node):
#     python3 -c "import hpcmig.ckpt; hpcmig.ckpt.request('hpcmig-ckpt-<jobid>')"
#     scontrol requeue <jobid>
# The requeued run (same job id, same directory) prints `lost work: <steps>` and ends with
# `heat: PASS checksum=...`, the checksum of an uninterrupted run (docs/app-checkpoint.md).
#SBATCH --job-name=app-ckpt-heat
#SBATCH --nodes=2
#SBATCH --ntasks=4
#SBATCH --comment=hpcmig
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
# `hpcmig run` passes no SLURM_* variable into the containers, so name the directory here. It
# must be on storage every node sees (rank 0 may run elsewhere after a requeue); the submit
# directory is, and a requeued job keeps its id, so the run finds its own checkpoints.
export HPCMIG_APP_CKPT_DIR="${HPCMIG_APP_CKPT_DIR:-$SLURM_SUBMIT_DIR/hpcmig-ckpt-$SLURM_JOB_ID}"
export HPCMIG_APP_CKPT_INTERVAL="${HPCMIG_APP_CKPT_INTERVAL:-60}"  # seconds; hpcmigd may ask sooner
echo "app-ckpt-heat: run $((${SLURM_RESTART_COUNT:-0} + 1)) of job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"
hpcmig run -n "$SLURM_NTASKS" -- /opt/hpcmig/venv/bin/python "$SLURM_SUBMIT_DIR/app_ckpt_heat.py" \
    --cells 65536 --steps 20000 --every 50 --sleep 0.002
