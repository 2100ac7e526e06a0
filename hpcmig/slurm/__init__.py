"""Slurm adapter: `Slurm` reads and changes the cluster through its commands."""

from hpcmig.slurm.adapter import Slurm
from hpcmig.slurm.parse import JobInfo, NodeInfo

__all__ = ["Slurm", "JobInfo", "NodeInfo"]
