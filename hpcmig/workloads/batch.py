"""sbatch scripts that run a workload under one MPI flavour: text only, no submission.

The script runs this same Python (`sys.executable`) so ranks import the installed hpcmig; when
PYTHONPATH is set (a developer running from a checkout) it is carried into the job.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from hpcmig.mpi import flavour


def ring_script(
    mpi: str,
    nodes: int,
    ntasks: int,
    args: Sequence[str] = (),
    job_name: str = "hpcmig-ring",
    output: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """A batch script for `hpcmig.workloads.ring` under `srun` with the flavour's PMI."""
    fl = flavour(mpi)
    env = dict(fl.environment())
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra_env or {})
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks={ntasks}",
    ]
    if output:
        lines.append(f"#SBATCH --output={output}")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    cmd = [sys.executable, "-m", "hpcmig.workloads.ring", *args]
    lines.append(f"srun --mpi={fl.srun_mpi} {shlex.join(cmd)}")
    return "\n".join(lines) + "\n"
