"""A job's virtual-cluster plan: the same inputs give every node the same plan."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from hpcmig import vcluster
from hpcmig.errors import UsageError

ADDRS = {"node1": "10.251.0.1", "node2": "10.251.0.2", "node3": "10.251.0.3"}


def make(spares: int = 0) -> vcluster.VCluster:
    return vcluster.plan(job_id="42", restart=1, user="u", uid=1001, gid=1001,
                         nodes=["node1", "node2", "node3"], node_addrs=ADDRS,
                         block=IPv4Network("10.252.0.64/26"), spares=spares)


def test_one_container_per_node_in_slurm_order() -> None:
    vc = make()
    assert [(m.index, m.node, m.address) for m in vc.members] == [
        (0, "node1", "10.252.0.65"), (1, "node2", "10.252.0.66"), (2, "node3", "10.252.0.67")]
    assert vc.name(2) == "hpcmig-42-1-2"
    assert vc.hosts_text().splitlines()[0] == "10.252.0.65 hpcmig-42-1-0"
    assert vcluster.VCluster.from_json(vc.to_json()) == vc


def test_spares_host_no_container_and_moving_keeps_the_address() -> None:
    vc = make(spares=1)
    assert [m.node for m in vc.members] == ["node1", "node2"] and vc.spares == ("node3",)
    moved = vc.moved(1, "node3", "10.251.0.3")
    assert moved.member(1).address == vc.member(1).address
    assert moved.member(1).node == "node3" and moved.spares == ("node2",)
    assert moved.nodes() == ["node1", "node3", "node2"]


def test_bad_plans_and_options_are_refused() -> None:
    with pytest.raises(UsageError, match="spare"):
        make(spares=3)
    with pytest.raises(UsageError, match="unknown hpcmig option"):
        vcluster.parse_options({"imgae": "x.sif"})
    with pytest.raises(UsageError, match="spares"):
        vcluster.parse_options({"spares": "two"})
    assert vcluster.parse_options({"image": "/a.sif", "spares": "1", "mpi": "openmpi"}) == {
        "image": "/a.sif", "spares": 1, "mpi": "openmpi"}
