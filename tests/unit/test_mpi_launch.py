"""`hpcmig run`'s launch plan: block placement, hostfiles, launcher argv, environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcmig import mpi_launch
from hpcmig.errors import UsageError
from hpcmig.mpi import flavour


def test_block_slots() -> None:
    assert mpi_launch.block_slots(6, 3, None) == [2, 2, 2]
    assert mpi_launch.block_slots(5, 3, None) == [2, 2, 1]
    assert mpi_launch.block_slots(4, 3, 4) == [4, 0, 0]
    with pytest.raises(UsageError, match="do not fit"):
        mpi_launch.block_slots(7, 3, 2)


def test_hostfiles_in_each_launchers_format() -> None:
    addrs = ["10.252.0.1", "10.252.0.2", "10.252.0.3"]
    assert mpi_launch.hostfile(flavour("mpich"), addrs, [2, 2, 0]) == \
        "10.252.0.1:2\n10.252.0.2:2\n"
    assert mpi_launch.hostfile(flavour("openmpi"), addrs, [1, 1, 1]).splitlines()[2] == \
        "10.252.0.3 slots=1"


def test_launchers_start_daemons_through_hpcmig_rsh() -> None:
    mpich = mpi_launch.launcher_argv(flavour("mpich"), rsh="/v/hpcmig-rsh",
                                     hostfile_path="/h", n=6, env_names=[], program=["a"])
    assert mpich[:5] == ["mpiexec.mpich", "-launcher", "rsh", "-launcher-exec", "/v/hpcmig-rsh"]
    ompi = mpi_launch.launcher_argv(flavour("openmpi"), rsh="/v/hpcmig-rsh", hostfile_path="/h",
                                    n=6, env_names=["B", "A"], program=["a", "b"])
    assert "plm_rsh_agent" in ompi and ompi[ompi.index("plm_rsh_agent") + 1] == "/v/hpcmig-rsh"
    assert ompi[-6:] == ["-x", "A", "-x", "B", "a", "b"]


def test_open_mpi_5_launches_through_prrtes_ssh_component() -> None:
    """Open MPI 5 (Debian 13): PRRTE's names; ORTE's `plm rsh` would not be found."""
    ompi = mpi_launch.launcher_argv(flavour("openmpi"), rsh="/v/hpcmig-rsh", hostfile_path="/h",
                                    n=6, env_names=["A"], program=["a"], prrte=True)
    i = ompi.index("plm_ssh_agent")
    assert ompi[i - 1] == "--prtemca" and ompi[i + 1] == "/v/hpcmig-rsh"
    assert ompi[1:4] == ["--prtemca", "plm", "ssh"] and "rsh" not in ompi
    assert ompi[ompi.index("--bind-to") + 1] == "none"
    assert ompi[-3:] == ["-x", "A", "a"]


def test_slurm_and_pmi_variables_stay_out_of_the_containers() -> None:
    env = mpi_launch.launch_env({"SLURM_JOB_ID": "1", "PMI_FD": "3", "PATH": "/bin",
                                 "PYTHONPATH": "/x", "HOSTNAME": "node1"}, {"UCX_TLS": "tcp"})
    assert env == {"PATH": "/bin", "PYTHONPATH": "/x", "UCX_TLS": "tcp"}


def test_a_placement_becomes_one_segment_per_run_of_ranks() -> None:
    placement = ["A", "B", "B", "A"]
    assert mpi_launch.segments(placement) == [("A", 1), ("B", 2), ("A", 1)]
    assert mpi_launch.placed_slots(["A", "B", "C"], placement) == [2, 2, 0]
    with pytest.raises(UsageError, match="not a container"):
        mpi_launch.placed_slots(["A"], placement)
    # MPICH: Hydra numbers ranks in hostfile entry order, one proxy per entry
    assert mpi_launch.hostfile(flavour("mpich"), ["A", "B"], [2, 2], placement) == \
        "A:1\nB:2\nA:1\n"
    mpich = mpi_launch.launcher_argv(flavour("mpich"), rsh="/r", hostfile_path="/h", n=4,
                                     env_names=[], program=["p", "x"], placement=placement)
    assert mpich[mpich.index("/h") + 1:] == ["-n", "4", "p", "x"]
    # Open MPI: MPMD segments; a segment's --host sets the node's slots: its total
    assert mpi_launch.hostfile(flavour("openmpi"), ["A", "B"], [2, 2], placement) == \
        "A slots=2\nB slots=2\n"
    ompi = mpi_launch.launcher_argv(flavour("openmpi"), rsh="/r", hostfile_path="/h", n=4,
                                    env_names=["E"], program=["p"], placement=placement)
    assert ompi[ompi.index("/h") + 1:] == ["-x", "E", "-np", "1", "--host", "A:2", "p", ":",
                                           "-np", "2", "--host", "B:2", "p", ":",
                                           "-np", "1", "--host", "A:2", "p"]
    # Open MPI 5 (PRRTE): one hostfile line per rank and its sequential mapper (PRRTE ranks
    # MPMD segments by node and refused the segments above: "not enough slots")
    assert mpi_launch.hostfile(flavour("openmpi"), ["A", "B"], [2, 2], placement,
                               prrte=True) == "A\nB\nB\nA\n"
    prte = mpi_launch.launcher_argv(flavour("openmpi"), rsh="/r", hostfile_path="/h", n=4,
                                    env_names=["E"], program=["p"], prrte=True,
                                    placement=placement)
    assert prte[prte.index("/h") + 1:] == ["--map-by", "seq", "-np", "4", "-x", "E", "p"]
    assert "--host" not in prte
    with pytest.raises(UsageError, match="lists 4 ranks, not 5"):
        mpi_launch.launcher_argv(flavour("mpich"), rsh="/r", hostfile_path="/h", n=5,
                                 env_names=[], program=["p"], placement=placement)


def test_ucx_is_warned_about_a_node_without_the_containers_device(tmp_path: Path) -> None:
    """UCX lists its devices from the node's /sys/class/net (shared mount namespace)."""
    (tmp_path / "ens3").mkdir()
    mpich, openmpi = flavour("mpich"), flavour("openmpi")
    why = mpich.unlisted_device("eth0", sysfs=str(tmp_path))
    assert why and "has no eth0" in why and "net.ifnames=0" in why and "mpi=openmpi" in why
    assert openmpi.unlisted_device("eth0", sysfs=str(tmp_path)) is None  # getifaddrs
    (tmp_path / "eth0").mkdir()
    assert mpich.unlisted_device("eth0", sysfs=str(tmp_path)) is None
