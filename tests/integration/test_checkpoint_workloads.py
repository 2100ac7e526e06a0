"""The C ring (jobs/src/ring.c) prints exactly the checksum hpcmig.workloads.ring predicts,
under MPICH and under Open MPI (built with jobs/Makefile into a scratch directory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcmig.workloads.ring import expected

JOBS = Path(__file__).resolve().parents[2] / "jobs"
FLAVOURS = {
    # all ranks on this one host: UCX needs sm here; with tcp,self only, MPICH 4.0.2 ch4:ucx
    # hangs in MPI_Finalize (ucp_worker_progress in a flush) in about half of the runs
    "mpich": (["mpicc.mpich"], ["mpiexec.mpich"], {"UCX_TLS": "self,sm,tcp"}),
    "openmpi": (["mpicc.openmpi"], ["mpiexec.openmpi", "--allow-run-as-root", "--oversubscribe",
                                    "--mca", "btl", "self,tcp", "--mca", "pml", "ob1"], {}),
}
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = tmp_path_factory.mktemp("jobs-build")
    subprocess.run(["make", "-C", str(JOBS), f"BUILD={out}"], check=True, capture_output=True,
                   timeout=300)
    return out


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("ranks,args", [(3, []), (4, ["--elements", "999", "--rounds", "31",
                                                      "--memory-mb", "8", "--seconds", "0.3"])])
def test_c_ring_checksum_equals_the_python_prediction(build: Path, flavour: str, ranks: int,
                                                      args: list[str]) -> None:
    cc, mpiexec, env = FLAVOURS[flavour]
    if shutil.which(cc[0]) is None or shutil.which(mpiexec[0]) is None:
        pytest.skip(f"{flavour} is not installed")
    r = subprocess.run([*mpiexec, "-n", str(ranks), str(build / f"ring.{flavour}"), *args],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **env},
                       stdin=subprocess.DEVNULL)  # Hydra waits on an open stdin
    assert r.returncode == 0, r.stdout + r.stderr
    elements = int(args[args.index("--elements") + 1]) if args else 4096
    rounds = int(args[args.index("--rounds") + 1]) if args else 50
    m = re.search(r"ring: PASS checksum=(\d+) expected=(\d+) ranks=(\d+)", r.stdout)
    assert m, r.stdout
    assert int(m.group(1)) == int(m.group(2)) == expected(ranks, elements, rounds)
    assert int(m.group(3)) == ranks


def test_c_ring_rejects_bad_flags(build: Path) -> None:
    r = subprocess.run([str(build / "ring.mpich"), "--rounds", "x"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "non-negative integer" in r.stderr
