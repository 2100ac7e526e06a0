"""The L2 data path's plans (hpcmig.network.l2): addresses, devices, the frame it announces."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from hpcmig.agent.node import data_path
from hpcmig.config import Config
from hpcmig.network import NodeNet, container_net, fastpath, hold, l2

DP = l2.DataPath(IPv4Network("10.252.0.0/16"), IPv4Network("10.250.0.0/16"), "eth1")
NET = container_net("10.252.3.5", "hpcmig-x")


def test_a_data_address_is_the_containers_address_moved_into_the_data_pool() -> None:
    assert DP.address("10.252.3.5") == IPv4Address("10.250.3.5")
    assert DP.container("10.250.3.5") == IPv4Address("10.252.3.5")
    assert DP.container("10.252.3.5") is None  # not a data address
    assert DP.block(IPv4Network("10.252.0.64/26")) == IPv4Network("10.250.0.64/26")
    with pytest.raises(ValueError, match="not in the pool"):
        DP.address("10.9.0.1")
    assert l2.data_mac(IPv4Address("10.250.3.5")) == "02:64:0a:fa:03:05"


def test_the_configuration_turns_it_on() -> None:
    assert data_path(Config()) is None
    dp = data_path(Config(network_l2=True, network_l2_pool="10.9.0.0/16",
                          network_l2_uplink="eth1"))
    assert dp == l2.DataPath(IPv4Network("10.252.0.0/16"), IPv4Network("10.9.0.0/16"), "eth1")


def test_eth0_is_made_down_guarded_then_woken_with_its_route_and_an_announcement() -> None:
    steps = l2.create_steps(NET, DP)
    assert steps[0] == ["ip", "link", "add", "hmd0afa0305", "link", "eth1", "address",
                        "02:64:0a:fa:03:05", "type", "macvlan", "mode", "bridge"]
    assert ["ip", "-n", "hpcmig-x", "addr", "add", "10.250.3.5/32", "dev", "eth0"] in steps
    assert not any("up" in s for s in steps)  # up only at wake (a move's target waits)
    attach = l2.attach_steps(NET, "/sys/fs/bpf/hpcmig/net-1/v")
    # nsenter, not `tc -n`, which mounts a /sys without bpffs
    assert all(s[:3] == ["nsenter", "--net=/run/netns/hpcmig-x", "tc"] for s in attach)
    assert [s[7] for s in attach[1:]] == ["egress", "ingress"]
    assert attach[1][-1] == "/sys/fs/bpf/hpcmig/net-1/v/hpcmig_l2_out"
    wake = l2.wake_steps(NET, DP)
    assert wake[0][-1] == "up"
    assert wake[1] == ["ip", "-n", "hpcmig-x", "route", "replace", "10.250.0.0/16", "dev",
                       "eth0", "scope", "link", "src", "10.250.3.5"]
    assert wake[2] == [l2.GARP_STEP, "/run/netns/hpcmig-x", "eth0", "10.250.3.5",
                       "02:64:0a:fa:03:05"]


def test_the_gratuitous_arp_frame() -> None:
    frame = l2.garp_frame(IPv4Address("10.250.3.5"), "02:64:0a:fa:03:05")
    assert len(frame) == 60  # the Ethernet minimum
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("02640afa0305")
    assert frame[12:14] == b"\x08\x06"
    arp = frame[14:42]
    assert arp[:8] == bytes.fromhex("0001080006040001")  # Ethernet, IPv4, request
    assert arp[14:18] == arp[24:28] == IPv4Address("10.250.3.5").packed  # sender = target


def test_the_freeze_quiets_both_devices_of_the_copy() -> None:
    node = NodeNet("node1", data_path=DP)
    argv = node.quiet_command(NET)
    assert argv[:2] == ["sh", "-c"]
    assert argv[2] == ("nsenter --net=/run/netns/node1 ip link set hmv0afc0305 down ; "
                       "nsenter --net=/run/netns/node1 ip -n hpcmig-x link set eth0 down")
    assert NodeNet("node1").quiet_command(NET) == [
        "nsenter", "--net=/run/netns/node1", "ip", "link", "set", "hmv0afc0305", "down"]


def test_a_move_holds_the_data_address_with_the_32_and_routes_it_on_at_l3() -> None:
    out, _ = hold.devices("10.252.3.5")
    assert l2.hold_steps("10.252.3.5", DP) == [
        ["ip", "route", "replace", "10.250.3.5/32", "via", hold.NEXT_HOP, "dev", out,
         "onlink"]]
    assert l2.release_steps("10.252.3.5", DP, ["via", "10.253.1.2"]) == [
        ["ip", "route", "replace", "10.250.3.5/32", "via", "10.253.1.2"]]
    assert l2.local_steps(NET, DP) == [
        ["ip", "route", "replace", "10.250.3.5/32", "dev", NET.host_veth],
        ["ip", "neigh", "replace", "10.250.3.5", "lladdr", NET.container_mac, "dev",
         NET.host_veth, "nud", "permanent"]]
    assert l2.unroute_steps("10.252.3.5", DP) == [["ip", "route", "del", "10.250.3.5/32"]]
    # the program's map: the data MAC, then two zero bytes -> ifindex, the MAC to write
    line = fastpath.held_entry("/p", "02:64:0a:fa:03:05", 7, "02:6b:0a:fc:03:05")
    assert line == ("map update pinned /p/hpcmig_held key 2 100 10 250 3 5 0 0 value "
                    "7 0 0 0 2 107 10 252 3 5 0 0\n")
