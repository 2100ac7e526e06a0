import pytest

from hpcmig.errors import UsageError
from hpcmig.slurm.parse import keyvalues
from hpcmig.testbed.plan import MARKER, Plan


def test_node_count_is_validated() -> None:
    for bad in (0, 1, 9, -3):
        with pytest.raises(UsageError, match="between 2 and 8"):
            Plan(nodes_count=bad, controller_host="ctl")


def test_names_and_addresses_are_distinct() -> None:
    plan = Plan(nodes_count=8, controller_host="ctl")
    assert [n.name for n in plan.nodes] == [f"node{i}" for i in range(1, 9)]
    addrs = [n.address for n in plan.nodes] + [plan.bridge_address]
    assert len(set(addrs)) == 9
    assert all(len(n.host_veth) <= 15 for n in plan.nodes)  # Linux interface name limit


def test_slurm_conf_describes_every_node() -> None:
    plan = Plan(nodes_count=3, controller_host="ctl")
    conf = plan.slurm_conf()
    assert conf.startswith(MARKER)
    lines = dict(line.split("=", 1) for line in conf.splitlines()[1:] if "=" in line
                 and not line.startswith(("NodeName", "PartitionName")))
    assert lines["SlurmctldHost"] == f"ctl({plan.bridge_address})"
    assert lines["AuthInfo"].startswith(f"socket={plan.munge_socket},")
    assert lines["PrologFlags"] == "Alloc"  # no extern step: see docs/admin.md
    node_line = next(line for line in conf.splitlines() if line.startswith("NodeName="))
    kv = keyvalues(node_line)
    assert kv["NodeName"] == "node1,node2,node3"
    assert kv["NodeAddr"] == ",".join(n.address for n in plan.nodes)


def test_unknown_node_is_a_usage_error() -> None:
    plan = Plan(nodes_count=2, controller_host="ctl")
    assert plan.node("node2").index == 2
    with pytest.raises(UsageError, match="node1, node2"):
        plan.node("node3")


def test_hosts_file_keeps_the_original_and_names_nodes() -> None:
    plan = Plan(nodes_count=2, controller_host="ctl")
    text = plan.hosts("127.0.0.1 localhost\n")
    assert text.splitlines()[0] == "127.0.0.1 localhost"
    assert f"{plan.nodes[1].address}\tnode2" in text


def test_leaves_split_the_nodes_in_order_and_give_slurm_the_tree() -> None:
    from hpcmig.testbed.plan import Plan

    flat = Plan(nodes_count=3, controller_host="vm")
    assert {flat.bridge_of(n) for n in flat.nodes} == {flat.bridge}
    assert "TopologyPlugin" not in flat.slurm_conf()
    plan = Plan(nodes_count=5, controller_host="vm", leaves=2, spine_rate="200mbit")
    assert [plan.leaf_of(n) for n in plan.nodes] == [1, 1, 1, 2, 2]
    assert [plan.bridge_of(n) for n in plan.nodes][2:4] == ["hpcmig-tbl1", "hpcmig-tbl2"]
    assert plan.uplink(2) == ("hpcmig-tbu2", "hpcmig-tbs2")
    assert "TopologyPlugin=topology/tree" in plan.slurm_conf().splitlines()
    from hpcmig.topology.slurmconf import parse_topology_conf

    topo = parse_topology_conf(plan.topology_conf())  # the mapper reads what Slurm reads
    assert topo.distance(0, 2) < topo.distance(0, 3) == topo.distance(1, 4)
    for bad in ({"leaves": 0}, {"leaves": 6}, {"spine_rate": "fast"}, {"spine_rate": "0gbit"}):
        with pytest.raises(UsageError):
            Plan(nodes_count=5, controller_host="vm", **bad)  # type: ignore[arg-type]
