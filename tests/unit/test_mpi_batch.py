import os

import pytest

from hpcmig import mpi
from hpcmig.errors import UsageError
from hpcmig.workloads import batch, ring


def test_unknown_flavour_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="mpich, openmpi"):
        mpi.flavour("lam")


def test_ring_script_runs_srun_with_the_flavours_pmi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mpi.Flavour, "libmpi_path", lambda self: f"/lib/{self.libmpi}")
    monkeypatch.setattr(os.path, "isdir", lambda p: True)
    text = batch.ring_script("openmpi", nodes=3, ntasks=6, args=["--rounds", "5"])
    assert "#SBATCH --nodes=3" in text and "#SBATCH --ntasks=6" in text
    assert "export MPI4PY_LIBMPI=/lib/libmpi.so.40" in text
    assert "export OMPI_MCA_btl_tcp_if_include=eth0" in text
    assert text.rstrip().splitlines()[-1].startswith("srun --mpi=pmix ")
    assert text.rstrip().endswith("-m hpcmig.workloads.ring --rounds 5")
    mpich = batch.ring_script("mpich", nodes=2, ntasks=2)
    assert "srun --mpi=pmi2 " in mpich and "LD_LIBRARY_PATH=" in mpich


def test_expected_checksum_matches_a_direct_simulation() -> None:
    # Two ranks, two rounds, by hand: v0=[0,1], v1=[7919,7920]
    v0, v1 = [0, 1], [7919, 7920]
    for _ in range(2):
        v0, v1 = (
            [a + b for a, b in zip(v0, v1, strict=True)],
            [a + b for a, b in zip(v1, v0, strict=True)],
        )
    assert ring.expected(2, 2, 2) == sum(v0) + sum(v1)
    assert ring.expected(3, 16, 4) != ring.expected(4, 16, 4)
