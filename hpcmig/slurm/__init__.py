"""hpcmig.slurm."""
