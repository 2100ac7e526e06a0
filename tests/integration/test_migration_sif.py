"""Issue 4 acceptance on the real testbed: a `.sif` job's container moves live.

A 3-node job with `--comment=hpcmig:spares=1,image=<sif>` runs the ring (MPICH, the image's
python3) in image containers on node1 (the batch host) and node2, node3 free. Container 1
moves node2 -> node3 (shared images), then back node3 -> node2 (streamed images): its image
root is rebuilt on the target with the writable layer from the dump (a file written into the
container's /tmp before the first move is still there after both), and the source's image
mounts are released. The ring prints the exact checksum. When the job has ended, nothing of
it is left on any node: no mount of its containers in any node's mount namespace (nor this
one), no container netns, no state directory, no record, no image.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from tests.integration import hpcmigd
from tests.integration.hpcmigd import host_of
from tests.integration.test_migration import finish, submit_ring
from tests.integration.test_vcluster import agent, in_node, slurm_wait_idle

pytestmark = pytest.mark.integration

CONTAINERS = "/run/hpcmig/containers"  # inside a node's mount namespace


def submit_sif_ring(plan: Plan, slurm: Slurm, job_dir: Path, image: Path,
                    name: str) -> tuple[int, Path]:
    return submit_ring(plan, slurm, job_dir, name, seconds=25, options={"image": str(image)},
                       python="python3")  # the image's own


def mounts(plan: Plan, node: str | None, under: str) -> list[str]:
    """Mount points at or below `under` in the node's mount namespace (None: ours)."""
    argv = ["cat", "/proc/self/mountinfo"]
    text = in_node(plan, node, *argv) if node else Path("/proc/self/mountinfo").read_text()
    points = [line.split()[4] for line in text.splitlines()]
    return [p for p in points if p == under or p.startswith(under.rstrip("/") + "/")]


def test_a_sif_jobs_container_moves_live_and_leaves_nothing(
        testbed: Plan, slurm: Slurm, job_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcmig.runtime import sifbuild

    sif = sifbuild.build_test_image(job_dir / "app.sif")  # on the shared home
    job_id, out = submit_sif_ring(testbed, slurm, job_dir, sif, "mig-sif")
    name = f"hpcmig-{job_id}-0-1"
    base = f"{CONTAINERS}/{name}"
    assert host_of(job_id, 1) == "node2"
    assert {f"{base}/image", f"{base}/root"} <= set(mounts(testbed, "node2", base))
    in_node(testbed, "node2", "sh", "-c", f"echo before the move > {base}/root/tmp/marker")

    pauses = []
    for source, target, transport in (("node2", "node3", "shared"),
                                      ("node3", "node2", "stream")):
        row = hpcmigd.migrate(job_id, source, transport=transport)
        assert row["pause"] is not None, row
        pauses.append((transport, row["pause"]))
        assert host_of(job_id, 1) == target
        # the source released the image root; the target rebuilt it, writable layer included
        assert mounts(testbed, source, base) == []
        left = in_node(testbed, source, "ls", "-A", CONTAINERS)
        assert left == "", in_node(testbed, source, "find", CONTAINERS, "-ls")
        assert {f"{base}/image", f"{base}/root"} <= set(mounts(testbed, target, base))
        assert in_node(testbed, target, "cat", f"{base}/root/tmp/marker") == "before the move\n"
        assert not list((testbed.base / "ckpt" / str(job_id)).rglob("*.img"))
    assert slurm.job(job_id).state == "RUNNING", "the job ended before both moves: lengthen it"
    finish(slurm, job_id, out)

    slurm_wait_idle(slurm, testbed)
    for node in testbed.nodes:
        assert mounts(testbed, node.name, CONTAINERS) == [], node.name
        assert in_node(testbed, node.name, "ls", "-A", CONTAINERS, check=False) == ""
        assert agent(testbed, node.name).call("job.list") == []
        assert not (testbed.node_dir(node) / "run-hpcmig" / "spool" / str(job_id)).exists()
    assert not [p for p in mounts(testbed, None, "/") if f"hpcmig-{job_id}-" in p]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"hpcmig-{job_id}-" not in netns, netns
    assert not (testbed.base / "ckpt" / str(job_id)).exists()
    deadline = time.monotonic() + 10  # mount(8)'s loop devices clear themselves on umount
    while subprocess.run(["losetup", "-j", str(sif)], capture_output=True,
                         text=True).stdout.strip():
        assert time.monotonic() < deadline, "a loop device on the image is left"
        time.sleep(0.2)
    with capsys.disabled():
        for transport, pause in pauses:
            print(f"\nsif migration ({transport}): pause {pause:.2f} s")
