"""A hostfile written by `hpcmig map` drives a real `srun --distribution=arbitrary`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.topology.comm import write_comm

pytestmark = pytest.mark.integration

TOPOLOGY = """\
# two leaf switches under one root: node1,node2 share a switch, node3 is one hop further
SwitchName=leaf1 Nodes=node[1-2]
SwitchName=leaf2 Nodes=node3
SwitchName=root Switches=leaf[1-2]
"""


def test_mapped_ranks_land_where_the_hostfile_says(testbed: Plan, slurm: Slurm,
                                                  job_dir: Path) -> None:
    # 6 ranks; heavy pairs (0,3), (1,4), (2,5): block placement splits every pair.
    comm = np.zeros((6, 6))
    for a, b in ((0, 3), (1, 4), (2, 5)):
        comm[a, b] = comm[b, a] = 1e9
    comm[0, 1] = comm[1, 0] = 1.0  # a little traffic elsewhere
    (job_dir / "topology.conf").write_text(TOPOLOGY)
    write_comm(job_dir / "comm.h5", comm)
    hostfile = job_dir / "hosts"
    out = subprocess.run(
        [sys.executable, "-m", "hpcmig", "map", "--topology", str(job_dir / "topology.conf"),
         "--comm", str(job_dir / "comm.h5"), "--ranks-per-node", "2",
         "--nodes", "node[1-3]", "-o", str(hostfile)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    hosts = hostfile.read_text().split()
    assert len(hosts) == 6 and sorted(set(hosts)) == ["node1", "node2", "node3"]
    for a, b in ((0, 3), (1, 4), (2, 5)):
        assert hosts[a] == hosts[b]  # every heavy pair shares a node
    result = job_dir / "ranks.out"
    job_id = slurm.submit(
        # no -N: Slurm 24.11 refuses --nodes with --distribution=arbitrary (the hostfile
        # says which nodes)
        ["-n6", "--distribution=arbitrary", f"--output={result}", "--wrap",
         "srun --distribution=arbitrary sh -c 'echo $SLURM_PROCID $(hostname)'"],
        user=testbed.user, cwd=str(job_dir),
        env={"SLURM_HOSTFILE": str(hostfile)},
    )
    job = slurm.wait(job_id, timeout=120)
    assert job.state == "COMPLETED", result.read_text()
    landed = dict(line.split() for line in result.read_text().splitlines() if line.strip())
    assert [landed[str(rank)] for rank in range(6)] == hosts
