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


def vcluster_script(
    nodes: int,
    steps: Sequence[Sequence[str]],
    *,
    mpi: str | None = None,
    ntasks: int | None = None,
    options: Mapping[str, str] | None = None,
    job_name: str = "hpcmig-vc",
    output: str | None = None,
    python: str = sys.executable,
    run_args: Sequence[str] = (),
) -> str:
    """A batch script for a job in hpcmig's virtual cluster: one `hpcmig run` per step.

    A step is a module of hpcmig.workloads plus its arguments, run with `python` (this one;
    `python3` for an image, which brings its own)."""
    opts = ",".join(f"{k}={v}" for k, v in (options or {}).items())
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --comment=hpcmig{':' + opts if opts else ''}",
        "#SBATCH --open-mode=append",
    ]
    if output:
        lines.append(f"#SBATCH --output={output}")
    if os.environ.get("PYTHONPATH"):
        lines.append(f"export PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])}")
    hpcmig = os.path.join(os.path.dirname(sys.executable), "hpcmig")
    run = [hpcmig, "run"]
    if ntasks:
        run += ["-n", str(ntasks)]
    if mpi:
        run += ["--mpi", mpi]
    run += list(run_args)
    for step in steps:
        lines.append(shlex.join([*run, "--", python, "-m", *step]))
    return "\n".join(lines) + "\n"
