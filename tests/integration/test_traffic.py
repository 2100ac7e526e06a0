"""Issue 14 on the real testbed: `hpcmig traffic` names a ring's pairs; `hpcmig run --map`
places ranks by a traffic matrix.

A 3-node MPICH job runs one rank per container in a ring of 1 MiB messages and reports what
each rank sent to its right neighbour. `hpcmig traffic` (through hpcmigd, which sums the
nodes' nft counters) must give, for each container, its right neighbour as the heavy pair
with a byte count within 10% of the payload (IP and TCP headers and MPI's own messages
ride on top), the reverse pairs (acknowledgements) far lighter, a `/comm` file the mapper
reads and a heat map. Another user is refused; after the job nothing of its counts is left.

`hpcmig run -n 6 --map FILE` over 3 containers, with a matrix whose heavy pairs are ranks
(0, 3), (1, 4) and (2, 5) (block placement splits every one of them), must put each pair in
one container, for MPICH and Open MPI, and the ring run the same way keeps its exact checksum.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.topology.comm import read_comm, write_comm
from hpcmig.workloads import batch, ring
from tests.integration.test_vcluster import in_node, run_job, slurm_wait_idle

pytestmark = pytest.mark.integration

HPCMIG = os.path.join(os.path.dirname(sys.executable), "hpcmig")
ELEMENTS, ROUNDS = 131072, 30  # int64: 1 MiB per message, 30 MiB per pair


def hpcmig(*args: str, user: int | None = None, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    """The CLI as root, or as `user` (uid) when given."""
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run([*prefix, HPCMIG, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_traffic_of_a_ring_names_its_pairs(testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    script = batch.vcluster_script(
        3, [["hpcmig.workloads.ring", "--elements", str(ELEMENTS), "--rounds", str(ROUNDS),
             "--report", "--linger", "120"]], mpi="mpich", ntasks=3, job_name="traffic")
    (job_dir / "job.sh").write_text(script)
    out = job_dir / "job.out"
    job_id = slurm.submit([f"--output={out}", str(job_dir / "job.sh")], user=testbed.user,
                          cwd=str(job_dir))
    try:
        deadline = time.monotonic() + 120
        while "ring: PASS" not in (text := out.read_text() if out.exists() else ""):
            assert time.monotonic() < deadline and slurm.job(job_id).state in (
                "PENDING", "RUNNING", "CONFIGURING"), f"{slurm.job(job_id)}\n{text}"
            time.sleep(0.5)
        sent = {(int(a), int(b)): int(n) for a, n, b in re.findall(
            r"^ring: rank (\d+) \(\S+\) sent (\d+) bytes to rank (\d+)", text, re.M)}
        assert sent == {(i, (i + 1) % 3): ROUNDS * ELEMENTS * 8 for i in range(3)}, text

        h5, png = job_dir / "traffic.h5", job_dir / "traffic.png"
        res = hpcmig("traffic", str(job_id), "-o", str(h5), "--plot", str(png), "--json")
        assert res.returncode == 0, res.stderr
        answer = json.loads(res.stdout)
        assert answer["missing"] == {}
        assert [c["index"] for c in answer["containers"]] == [0, 1, 2]
        matrix = answer["bytes"]
        print("\nmeasured bytes (row: from container, column: to):",
              *(f"  {row}" for row in matrix), sep="\n")
        for (i, j), payload in sent.items():  # one rank per container: rank i = container i
            assert payload <= matrix[i][j] <= 1.10 * payload, (i, j, matrix[i][j], payload)
            assert matrix[j][i] < 0.10 * payload, ("reverse", j, i, matrix[j][i])
            assert answer["packets"][i][j] > 0
        assert (read_comm(h5).toarray() == matrix).all()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        table = hpcmig("traffic", str(job_id), "--top", "3")
        assert table.returncode == 0, table.stderr
        assert len(re.findall(r"^│ [012] \(node\d\) ", table.stdout, re.M)) == 3, table.stdout

        stranger = hpcmig("traffic", str(job_id), user=65534)
        assert stranger.returncode != 0 and "not yours" in stranger.stderr, stranger
    finally:
        slurm.cancel(job_id)
    slurm.wait(job_id, timeout=60)
    slurm_wait_idle(slurm, testbed)
    for node in testbed.nodes:  # the epilogs took the job's counts off the nodes
        nft = in_node(testbed, node.name, "nft", "list", "set", "ip", "hpcmig", "traffic")
        assert "10.252." not in nft, (node.name, nft)
    saved = testbed.base / "shared" / "traffic" / str(job_id)
    deadline = time.monotonic() + 60  # hpcmigd's sweep of ended jobs (every 30 s)
    while saved.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert not saved.exists(), "the ended job's saved counts must be removed"


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_run_map_places_heavy_pairs_in_one_container(testbed: Plan, slurm: Slurm,
                                                     job_dir: Path, mpi: str) -> None:
    comm = np.zeros((6, 6))
    for a, b in ((0, 3), (1, 4), (2, 5)):
        comm[a, b] = comm[b, a] = 1e9
    for r in range(5):  # a light chain, so block placement is not simply as good
        comm[r, r + 1] += 1e3
    matrix = job_dir / "comm.h5"
    write_comm(matrix, comm)
    os.chmod(matrix, 0o644)
    script = batch.vcluster_script(
        3, [["hpcmig.workloads.whereami"],
            ["hpcmig.workloads.ring", "--rounds", "20", "--elements", "1000"]],
        mpi=mpi, ntasks=6, job_name=f"map-{mpi}", run_args=["--map", str(matrix)])
    job_id, out = run_job(testbed, slurm, job_dir, script, f"map-{mpi}")
    assert "hpcmig run: ranks placed by" in out and "(one switch)" in out, out
    assert f"ring: PASS checksum={ring.expected(6, 1000, 20)} " in out, out
    ranks = json.loads(re.search(r"^whereami: (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
    hosts = [r["host"] for r in ranks]
    print(f"\n{mpi}: rank -> container {hosts}")
    assert len(set(hosts)) == 3, hosts  # two ranks in each of the three containers
    for a, b in ((0, 3), (1, 4), (2, 5)):
        assert hosts[a] == hosts[b], (a, b, hosts)


def test_run_map_auto_places_by_the_last_measured_run(testbed: Plan, slurm: Slurm,
                                                      job_dir: Path) -> None:
    """A first run (one rank per container) measures that ranks 0 and 2 talk; once it ended,
    `--map auto` in the next run of the same name puts them in one container (block
    placement with 2 ranks per container would pair 0 with 1)."""
    from hpcmig.controller.traffic import history_path

    measured = batch.vcluster_script(
        3, [["hpcmig.workloads.pairs", "--pairs", "0:2", "--mib", "32"]], mpi="mpich",
        ntasks=3, job_name="auto-pairs")
    first, out = run_job(testbed, slurm, job_dir, measured, "auto-1")
    assert "pairs: PASS" in out, out
    uid = int(subprocess.run(["id", "-u", testbed.user], capture_output=True, text=True,
                             check=True).stdout)
    kept = history_path(str(testbed.base / "shared"), uid, "auto-pairs")
    deadline = time.monotonic() + 90  # hpcmigd's sweep keeps ended jobs' matrices
    while not kept.exists():
        assert time.monotonic() < deadline, "the ended job's matrix was not kept"
        time.sleep(1)
    history = json.loads(kept.read_text())
    print(f"\nkept from job {history['job_id']}: {history['bytes']}")
    assert history["job_id"] == str(first)
    assert history["bytes"][0][2] >= 32 << 20 and history["bytes"][2][0] >= 32 << 20
    assert history["bytes"][0][1] < 1 << 20  # rank 1 only met the others in a barrier

    placed = batch.vcluster_script(
        3, [["hpcmig.workloads.whereami"]], mpi="mpich", ntasks=3, job_name="auto-pairs",
        run_args=["--ppn", "2", "--map", "auto"])
    _, out = run_job(testbed, slurm, job_dir, placed, "auto-2")
    assert f"ranks placed by the traffic measured in job {first}" in out, out
    ranks = json.loads(re.search(r"^whereami: (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
    hosts = [r["host"] for r in ranks]
    assert hosts[0] == hosts[2] != hosts[1], hosts
