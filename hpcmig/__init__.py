"""hpcmig: keep MPI jobs alive on Slurm clusters when nodes degrade."""

__version__ = "0.1.0"
