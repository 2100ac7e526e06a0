"""Issue 11 acceptance on the real testbed: an LXC job's container moves live.

A 3-node job with `--comment=hpcmig:spares=1,runtime=lxc` runs the ring (MPICH) in LXC
containers on the node's root, node1 (the batch host) and node2, node3 free. Container 1
moves node2 -> node3 (shared images: LXC's container, CRIU dumps its mount namespace), then
back node3 -> node2 (streamed images: a copy CRIU restored, without an LXC monitor); then
`hpcmig drain node2` moves it to node3 again and leaves node2 drained and out of the job, and
the ring prints the exact checksum. The copy on node3 sees node3's own mounts at the node's paths
(its /run/hpcmig is node3's, not the source's backing directory). When the job has ended,
nothing of it is left: no init, no state directory, no LXC cgroup, no netns, no image.
An LXC container on a `.sif` image cannot move yet: refused before anything is touched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcmig import _procfs
from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from tests.integration import hpcmigd
from tests.integration.hpcmigd import host_of
from tests.integration.test_migration import finish, submit_ring
from tests.integration.test_vcluster import agent, in_node, slurm_wait_idle

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v lxc-start"],
                                                capture_output=True).returncode != 0,
                                 reason="LXC is missing (lxc-start)")]

CONTAINERS = "/run/hpcmig/containers"  # inside a node's mount namespace


def init_of(plan: Plan, node: str, name: str) -> int:
    """pid of the container's init on `node` (found by its spec path)."""
    out = in_node(plan, node, "pgrep", "-f", f"hpcmig.runtime.init serve {CONTAINERS}/{name}/")
    [pid] = [int(p) for p in out.split()]
    return pid


def payload_cgroups(job_id: int) -> list[str]:
    found = []
    for top in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.isdir(top):
            found += [e for e in os.listdir(top) if e.startswith(f"lxc.payload.hpcmig-{job_id}-")]
    return found


def test_an_lxc_jobs_container_moves_live_and_leaves_nothing(
        testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    job_id, out = submit_ring(testbed, slurm, job_dir, "mig-lxc", seconds=35,
                              options={"runtime": "lxc"})
    name = f"hpcmig-{job_id}-0-1"
    assert host_of(job_id, 1) == "node2"
    first = init_of(testbed, "node2", name)
    assert os.readlink(f"/proc/{first}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

    for source, target, transport in (("node2", "node3", "shared"),
                                      ("node3", "node2", "stream")):
        row = hpcmigd.migrate(job_id, source, target, transport=transport)
        assert row["pause"] is not None, row
        assert host_of(job_id, 1) == target
        assert in_node(testbed, source, "ls", "-A", CONTAINERS) == ""
        pid = init_of(testbed, target, name)
        table = _procfs.mounts(pid)
        roots = {m.point: m.root for m in table}
        assert roots["/run/hpcmig"].endswith(f"/{target}/run-hpcmig"), roots
        assert [m.point for m in table if m.fstype == "nsfs"] == []
        assert not list((testbed.base / "ckpt" / str(job_id)).rglob("*.img"))
    try:
        done = subprocess.run(["hpcmig", "drain", "node2", "--reason", "lxc"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert host_of(job_id, 1) == "node3"
        init_of(testbed, "node3", name)
        assert in_node(testbed, "node2", "ls", "-A", CONTAINERS) == ""
        assert "node2" not in slurm.job(job_id).nodes
        assert "DRAIN" in slurm.node("node2").flags
        assert slurm.job(job_id).state == "RUNNING", "the job ended before the drain: lengthen it"
        finish(slurm, job_id, out)
    finally:
        slurm.resume("node2")

    slurm_wait_idle(slurm, testbed)
    for node in testbed.nodes:
        assert in_node(testbed, node.name, "ls", "-A", CONTAINERS, check=False) == ""
        assert agent(testbed, node.name).call("job.list") == []
    inits = subprocess.run(["pgrep", "-f", f"init serve {CONTAINERS}/hpcmig-{job_id}-"],
                           capture_output=True, text=True).stdout
    assert inits == "", inits
    assert payload_cgroups(job_id) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"hpcmig-{job_id}-" not in netns, netns
    assert not (testbed.base / "ckpt" / str(job_id)).exists()


def test_an_lxc_container_on_an_image_is_refused_before_anything_is_touched(
        testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    """`migrate` says why and the job never pauses (the refusal comes before the network
    lock and the freeze)."""
    from hpcmig.runtime import sifbuild

    sif = sifbuild.build_test_image(job_dir / "app.sif")
    job_id, out = submit_ring(testbed, slurm, job_dir, "mig-lxc-sif", seconds=10,
                              options={"runtime": "lxc", "image": str(sif)}, python="python3")
    report = hpcmigd.call("migrate", job_id=str(job_id), source="node2", target=None,
                          transport="shared")
    [row] = report.rows
    assert not report.ok and row["result"] == "refused", report.to_json()
    assert "lxc runtime on an image cannot move" in row["detail"], row
    assert row["pause"] is None, row  # never locked, never frozen
    assert hpcmigd.host_of(job_id, 1) == "node2"
    finish(slurm, job_id, out)
