"""The virtual-network plans: exact commands, names and isolation rules."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hpcmig.network import plan
from hpcmig.network.plan import GATEWAY, container_net


def test_names_and_macs_fit_linux_limits_and_are_stable() -> None:
    net = container_net("10.252.255.254")
    assert len(net.host_veth) <= 15 and len(net.peer_veth) <= 15
    assert net.host_veth != net.peer_veth
    assert net.host_mac == "02:68:0a:fc:ff:fe" and net.container_mac == "02:63:0a:fc:ff:fe"
    assert container_net("10.252.255.254") == net  # same address -> same identity elsewhere
    assert container_net("10.252.0.1").host_veth != container_net("10.252.0.2").host_veth
    assert net.netns == "hpcmig-10.252.255.254"
    assert container_net("10.252.0.1", "custom").netns_path == "/run/netns/custom"


def test_create_plan_gives_the_host_side_no_address() -> None:
    net = container_net("10.252.0.5", "c5")
    steps = plan.create_plan(net)
    inside = [s for s in steps if s[:3] == ["ip", "-n", "c5"]]
    outside = [s for s in steps if s[:3] != ["ip", "-n", "c5"]]
    assert ["ip", "-n", "c5", "addr", "add", "10.252.0.5/32", "dev", "eth0"] in inside
    assert ["ip", "-n", "c5", "neigh", "replace", GATEWAY, "lladdr", net.host_mac, "dev",
            "eth0", "nud", "permanent"] in inside
    assert ["ip", "-n", "c5", "route", "replace", "default", "via", GATEWAY, "dev", "eth0",
            "onlink"] in inside
    assert not any("addr" in s and "add" in s for s in outside)  # host veth: no address
    assert steps[-1] == ["ip", "route", "replace", "10.252.0.5/32", "dev", net.host_veth]
    assert steps[0] == ["ip", "netns", "add", "c5"]
    # the address is configured before the default route that needs the interface up
    flat = [" ".join(s) for s in steps]
    assert flat.index(" ".join(inside[2])) < flat.index(
        "ip -n c5 route replace default via 169.254.1.1 dev eth0 onlink")


def test_a_migration_target_starts_blackholed() -> None:
    net = container_net("10.252.0.5", "c5")
    steps = plan.create_plan(net, routed=False)
    assert steps[-1] == ["ip", "route", "replace", "blackhole", "10.252.0.5/32"]
    assert ["ip", "route", "replace", "10.252.0.5/32", "dev", net.host_veth] not in steps


def test_remove_blackhole_and_remote_route_plans() -> None:
    net = container_net("10.252.0.5", "c5")
    assert plan.remove_plan(net) == [
        ["ip", "route", "del", "10.252.0.5/32"],
        ["ip", "link", "del", net.host_veth],
        ["ip", "netns", "del", "c5"],
    ]
    assert plan.blackhole_plan("10.252.0.5") == [
        ["ip", "route", "replace", "blackhole", "10.252.0.5/32"]]
    assert plan.remote_route_plan("10.252.0.5", "10.253.0.2") == [
        ["ip", "route", "replace", "10.252.0.5/32", "via", "10.253.0.2"]]
    assert plan.local_route_plan(net) == [
        ["ip", "route", "replace", "10.252.0.5/32", "dev", net.host_veth]]


def test_isolation_accepts_same_block_and_drops_the_rest_of_the_pool() -> None:
    script = plan.isolation_script(IPv4Network("10.252.0.0/16"))
    lines = script.splitlines()
    accept = lines.index("add rule ip hpcmig forward ip saddr . ip daddr @intra accept")
    drop_s = lines.index("add rule ip hpcmig forward ip saddr 10.252.0.0/16 drop")
    drop_d = lines.index("add rule ip hpcmig forward ip daddr 10.252.0.0/16 drop")
    assert accept < drop_s and accept < drop_d
    assert "flush chain ip hpcmig forward" in lines  # re-install does not duplicate rules
    assert not any(line.startswith("delete") for line in lines)  # keeps the job set
    block = IPv4Network("10.252.0.64/26")
    assert plan.allow_job_plan(block) == [
        ["nft", "add", "element", "ip", "hpcmig", "intra",
         "{ 10.252.0.64/26 . 10.252.0.64/26 }"]]
    assert plan.forbid_job_plan(block)[0][1] == "delete"


def test_hosts_file() -> None:
    text = plan.hosts_file([(IPv4Address("10.252.0.1"), "node1"), ("10.252.0.2", "node2")])
    assert text == "10.252.0.1 node1\n10.252.0.2 node2\n"
