"""The MPI implementations hpcmig launches, and the environment each needs.

Debian ships Open MPI (PMIx, `srun --mpi=pmix`) and MPICH (ch4:ucx, PMI via `srun --mpi=pmi2`).
mpi4py's wheel carries a module for each ABI and picks one from `MPI4PY_LIBMPI`. Transports
are TCP on the node's (or container's) eth0: the settings PLATFORM.md verified. Debian 12 has
Open MPI 4.1 (ORTE: OMPI_MCA_* for everything), Debian 13 Open MPI 5.0, whose mpirun is
PRRTE's (its own PRTE_MCA_* names; `openmpi_on_prrte` tells them apart). Pure data, and one
look at PATH.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from dataclasses import dataclass, field

from hpcmig.errors import MissingDependency, UsageError

PREFIX = os.environ.get("HPCMIG_PREFIX", "/opt/hpcmig")


def _libdirs() -> list[str]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return [f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib"]


@dataclass(frozen=True)
class Flavour:
    name: str
    libmpi: str  # soname mpi4py should load
    srun_mpi: str  # value for `srun --mpi=`
    mpiexec: str  # this implementation's own launcher
    env: dict[str, str] = field(default_factory=dict)
    shim: str | None = None  # a directory with the soname mpi4py's module links against
    preload: str | None = None  # a library of hpcmig's (native/) every rank preloads

    def libmpi_path(self) -> str:
        for d in _libdirs():
            path = os.path.join(d, self.libmpi)
            if os.path.exists(path):
                return path
        raise MissingDependency(
            f"{self.name}: {self.libmpi} not found",
            "install it (as root) with: bash scripts/bootstrap.sh install",
        )

    def environment(self, interface: str = "eth0") -> dict[str, str]:
        """Variables a rank of this flavour needs (mpi4py's ABI choice and TCP transports)."""
        env = {k: v.replace("{if}", interface) for k, v in self.env.items()}
        env["MPI4PY_LIBMPI"] = self.libmpi_path()
        if self.shim:
            env["LD_LIBRARY_PATH"] = self._installed(self.shim)
        if self.preload:
            env["LD_PRELOAD"] = self._installed(self.preload)
        return env

    def unlisted_device(self, interface: str = "eth0", sysfs: str = "/sys/class/net"
                        ) -> str | None:
        """Why this flavour's ranks in a container may not find `interface`, or None.

        UCX (MPICH's transport) takes the names of its TCP devices from /sys/class/net and
        then opens them in the rank's own network namespace. That directory lists the
        devices of the namespace sysfs was mounted in: a container that shares its node's
        mount namespace (runtimes ns and .sif) sees the node's devices, so its own eth0
        counts only where the node has a device of that name too. Without one, MPI_Init
        fails with "Destination is unreachable" (docs/platforms.md)."""
        if "UCX_NET_DEVICES" not in self.env or os.path.exists(os.path.join(sysfs, interface)):
            return None
        return (f"{self.name}'s transport (UCX) lists network devices from {sysfs}, which "
                f"shows this node's devices, and this node has no {interface}: the "
                f"containers' {interface} will not be found, and MPI_Init will likely fail "
                "with \"Destination is unreachable\". Boot the nodes with their network "
                f"device named {interface} (kernel parameter net.ifnames=0), or run the job "
                "with Open MPI (`#SBATCH --comment=hpcmig:mpi=openmpi`)")

    def _installed(self, relpath: str) -> str:
        path = os.path.join(PREFIX, relpath)
        if not os.path.exists(path):
            raise MissingDependency(f"{self.name}: {path} is missing",
                                    "install it (as root) with: bash scripts/bootstrap.sh install")
        return path


FLAVOURS: dict[str, Flavour] = {
    "openmpi": Flavour(
        name="openmpi",
        libmpi="libmpi.so.40",
        srun_mpi="pmix",
        mpiexec="mpiexec.openmpi",
        env={
            "OMPI_MCA_btl": "self,tcp",
            "OMPI_MCA_btl_tcp_if_include": "{if}",
            "OMPI_MCA_oob_tcp_if_include": "{if}",
            "OMPI_MCA_pml": "ob1",
            "PMIX_MCA_gds": "hash",
            # mpirun binds each node's first rank to core 0; testbed "nodes" share the cores
            # (and containers do not enforce it): no binding, or two ranks fight for one core
            "OMPI_MCA_hwloc_base_binding_policy": "none",
        },
    ),
    "mpich": Flavour(
        name="mpich",
        libmpi="libmpich.so.12",
        srun_mpi="pmi2",
        mpiexec="mpiexec.mpich",
        env={
            "UCX_TLS": "tcp,self",
            "UCX_NET_DEVICES": "{if}",
        },
        shim="lib/mpich",
        # MPI_Finalize over UCX 1.13's TCP hangs about one job in four without it
        # (native/ucx_finalize.c says why)
        preload="lib/libhpcmig-ucx-finalize.so",
    ),
}


def openmpi_on_prrte() -> bool:
    """Open MPI 5 (launcher options differ, mpi_launch.openmpi_rsh_options): its mpirun is
    PRRTE's, installed as `prterun` beside it."""
    return shutil.which("prterun") is not None


def preloads() -> list[str]:
    """Every library a flavour preloads into its ranks (image containers carry copies)."""
    return [os.path.join(PREFIX, f.preload) for f in FLAVOURS.values() if f.preload]


def flavour(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise UsageError(
            f"unknown MPI '{name}' (choose from {', '.join(sorted(FLAVOURS))})"
        ) from None
