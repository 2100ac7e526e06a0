"""A job's virtual-cluster plan: the same inputs give every node the same plan."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from hpcmig import vcluster
from hpcmig.errors import UsageError
from hpcmig.vcluster import VCluster, parse_options, plan

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


@pytest.mark.parametrize(("opts", "want"), [
    ({"ckpt": "600"}, {"ckpt": "600"}), ({"ckpt": "auto"}, {"ckpt": "auto"}),
    ({"ckpt": "010"}, {"ckpt": "10"}), ({"engine": "dmtcp"}, {"engine": "dmtcp"}),
])
def test_checkpoint_options_as_the_spank_plugin_takes_them(opts: dict[str, str],
                                                          want: dict[str, str]) -> None:
    assert parse_options(opts) == want


@pytest.mark.parametrize("opts", [{"ckpt": "0"}, {"ckpt": "-5"}, {"ckpt": "soon"},
                                  {"ckpt": ""}, {"engine": "blcr"}])
def test_bad_checkpoint_options_are_refused(opts: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        parse_options(opts)


def test_the_checkpoint_options_travel_with_the_vcluster() -> None:
    vc = plan(job_id="7", restart=0, user="u", uid=1000, gid=1000, nodes=["a", "b"],
              node_addrs={"a": "10.0.0.1", "b": "10.0.0.2"},
              block=IPv4Network("10.252.0.64/26"), ckpt="10", engine="criu")
    back = VCluster.from_json(vc.to_json())
    assert (back.ckpt, back.engine) == ("10", "criu")
    old = vc.to_json()
    del old["ckpt"], old["engine"]  # a record written before these options existed
    assert VCluster.from_json(old).ckpt == ""
