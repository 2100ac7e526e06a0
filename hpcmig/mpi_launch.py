"""How `hpcmig run` launches MPI inside a job's containers: placement, hostfile, argv, env.

Design note: pure functions. MPICH's Hydra and Open MPI's mpirun both run in container 0 and
start their daemons in the other containers through `hpcmig-rsh` (Hydra: `-launcher rsh
-launcher-exec`; Open MPI 4 (ORTE): `--mca plm_rsh_agent`; Open MPI 5, whose mpirun is PRRTE's:
`--prtemca plm_ssh_agent`), so every MPI process and connection lives in the virtual cluster.
Ranks go to containers in blocks (rank r on container r // ppn) unless a
per-rank placement is given (`hpcmig run --map`): then each run of consecutive ranks in one
container is one entry of MPICH's hostfile (`ADDR:K` lines, a container named again later gets
one more Hydra proxy: Hydra numbers ranks in entry order and merges nothing; its `-host` is
global only); Open MPI 4 (ORTE) gets one MPMD segment per run (`-np K --host ADDR:T PROG : ...`,
T the container's total ranks, since a segment's `--host` sets the node's slots); Open MPI 5
(PRRTE) gets a hostfile of one line per rank and `--map-by seq`, since PRRTE ranks MPMD
segments by node, not in segment order, and adds up a node's slots from every `--host`, so
it refused such a command line ("not enough slots") on Debian 13. Slurm's
variables are removed from the launcher's environment: inside the containers MPI must not
believe it runs under Slurm (it would try srun/PMI from the batch step).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from hpcmig.errors import UsageError
from hpcmig.mpi import Flavour

# never passed from the batch script into the containers
DROP_PREFIXES = ("SLURM_", "SLURMD_", "PMI_", "PMIX_", "OMPI_COMM_", "SBATCH_", "SRUN_",
                 "HYDRA_", "MPIR_", "I_MPI_")
DROP_NAMES = {"HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_", "TMPDIR", "HPCMIG_HOSTS"}


def block_slots(n: int, containers: int, ppn: int | None) -> list[int]:
    """Ranks per container for n ranks in blocks of ppn (default: as even as possible)."""
    if n < 1:
        raise UsageError("-n must be at least 1")
    if containers < 1:
        raise UsageError("the job has no containers")
    per = ppn or math.ceil(n / containers)
    if per * containers < n:
        raise UsageError(f"{n} ranks do not fit in {containers} containers of {per} "
                         f"(--ppn {per})", hint="raise --ppn or ask Slurm for more nodes")
    slots, left = [], n
    for _ in range(containers):
        take = min(per, left)
        slots.append(take)
        left -= take
    return slots


def hostfile(flavour: Flavour, addresses: Sequence[str], slots: Sequence[int],
             placement: Sequence[str] | None = None, *, prrte: bool = False) -> str:
    """Hostfile in the launcher's own format; containers with no rank are left out. With a
    `placement`: MPICH one entry per run of consecutive ranks in one container, PRRTE
    (`prrte`, Open MPI 5) one line per rank, for its sequential mapper."""
    if placement is not None and flavour.name == "mpich":
        return "".join(f"{addr}:{k}\n" for addr, k in segments(placement))
    if placement is not None and prrte:
        return "".join(f"{addr}\n" for addr in placement)
    lines = []
    for addr, k in zip(addresses, slots, strict=True):
        if k:
            lines.append(f"{addr}:{k}" if flavour.name == "mpich" else f"{addr} slots={k}")
    return "\n".join(lines) + "\n"


def launch_env(environ: Mapping[str, str], flavour_env: Mapping[str, str]) -> dict[str, str]:
    """The user's environment for the launcher, minus Slurm's and MPI's, plus the flavour's."""
    env = {k: v for k, v in environ.items()
           if not k.startswith(DROP_PREFIXES) and k not in DROP_NAMES}
    env.update(flavour_env)
    return env


def openmpi_rsh_options(rsh: str, prrte: bool) -> list[str]:
    """Open MPI's options that start one daemon per container through `rsh`, no tree spawn.

    Open MPI 5 launches with PRRTE, whose rsh launcher is the `ssh` component, and binds by
    its own defaults (OMPI_MCA_hwloc_base_binding_policy is ORTE's): `--bind-to none`."""
    if prrte:
        return ["--prtemca", "plm", "ssh", "--prtemca", "plm_ssh_agent", rsh,
                "--prtemca", "plm_ssh_no_tree_spawn", "1", "--bind-to", "none"]
    return ["--mca", "plm", "rsh", "--mca", "plm_rsh_agent", rsh,
            "--mca", "plm_rsh_no_tree_spawn", "1"]


def segments(placement: Sequence[str]) -> list[tuple[str, int]]:
    """Runs of consecutive ranks on one host: [(host, count), ...] in rank order."""
    out: list[tuple[str, int]] = []
    for host in placement:
        if out and out[-1][0] == host:
            out[-1] = (host, out[-1][1] + 1)
        else:
            out.append((host, 1))
    return out


def placed_slots(addresses: Sequence[str], placement: Sequence[str]) -> list[int]:
    """Ranks per container (in `addresses` order) of a per-rank placement."""
    unknown = sorted(set(placement) - set(addresses))
    if unknown:
        raise UsageError(f"placement names {', '.join(unknown)}: not a container of the job")
    per = Counter(placement)
    return [per[a] for a in addresses]


def launcher_argv(flavour: Flavour, *, rsh: str, hostfile_path: str, n: int,
                  env_names: Sequence[str], program: Sequence[str],
                  prrte: bool = False, placement: Sequence[str] | None = None) -> list[str]:
    """The launcher's command line; `prrte`: Open MPI 5 (`mpi.openmpi_on_prrte()`);
    `placement`: the container address of every rank (else blocks, from the hostfile)."""
    if not program:
        raise UsageError("nothing to run", hint="hpcmig run -n 6 -- python3 app.py")
    if placement is not None and len(placement) != n:
        raise UsageError(f"the placement lists {len(placement)} ranks, not {n}")
    if flavour.name == "mpich":  # a placement is in the hostfile
        return [flavour.mpiexec, "-launcher", "rsh", "-launcher-exec", rsh, "-iface", "eth0",
                "-f", hostfile_path, "-n", str(n), *program]
    forwarded: list[str] = []
    for name in sorted(env_names):
        forwarded += ["-x", name]
    head = [flavour.mpiexec, *openmpi_rsh_options(rsh, prrte), "--hostfile", hostfile_path]
    if placement is None:
        return [*head, "-np", str(n), *forwarded, *program]
    if prrte:  # rank r on the hostfile's line r
        return [*head, "--map-by", "seq", "-np", str(n), *forwarded, *program]
    total = Counter(placement)
    apps = [["-np", str(k), "--host", f"{host}:{total[host]}", *program]
            for host, k in segments(placement)]
    joined = [arg for i, app in enumerate(apps) for arg in ([":"] if i else []) + app]
    return [*head, *forwarded, *joined]  # -x before the first segment: for all of them
