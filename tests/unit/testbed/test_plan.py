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
