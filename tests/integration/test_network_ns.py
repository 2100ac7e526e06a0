"""The virtual network for real: two node namespaces, containers' netns, routes, nft isolation.

Node namespaces hpcmig-rt-n1/-n2 (10.253.0.1/.2 on a veth pair, no route out); container
network namespaces hpcmig-rtc*. Job 1 holds 10.252.0.0/26, job 2 holds 10.252.0.64/26.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from hpcmig.network import NodeNet, container_net, fastpath, hold, traffic
from hpcmig.network.plan import ContainerNet
from tests.integration import rt_support as S

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing()))]

POOL = IPv4Network("10.252.0.0/16")
JOB1 = IPv4Network("10.252.0.0/26")
JOB2 = IPv4Network("10.252.0.64/26")


def pings(netns: str, address: str) -> bool:
    return S.in_ns(netns, "ping", "-c1", "-W1", address, check=False).returncode == 0


@pytest.fixture(scope="module")
def net() -> Iterator[dict[str, object]]:
    with S.nodes() as nodes:
        n1, n2 = (NodeNet(name) for name in nodes)
        c1 = container_net("10.252.0.1", "hpcmig-rtc1")
        c2 = container_net("10.252.0.2", "hpcmig-rtc2")
        c3 = container_net("10.252.0.65", "hpcmig-rtc3")  # job 2, on node 2
        made: list[tuple[NodeNet, ContainerNet]] = []
        try:
            for node, c in ((n1, c1), (n2, c2), (n2, c3)):
                node.create_container_net(c)
                made.append((node, c))
            n1.route_via(c2.address, S.NODES["hpcmig-rt-n2"])
            n1.route_via(c3.address, S.NODES["hpcmig-rt-n2"])
            n2.route_via(c1.address, S.NODES["hpcmig-rt-n1"])
            for node in (n1, n2):
                node.install_isolation(POOL)
                node.allow_job(JOB1)
                node.allow_job(JOB2)
            yield {"n1": n1, "n2": n2, "c1": c1, "c2": c2, "c3": c3}
        finally:
            for node, c in made:
                node.remove_container_net(c)
            for node in (n1, n2):
                node.remove_isolation()


def test_containers_of_a_job_reach_each_other_across_nodes(net: dict) -> None:
    c1, c2 = net["c1"], net["c2"]
    assert pings(c1.netns, "10.252.0.2")
    assert pings(c2.netns, "10.252.0.1")
    # the host side of the veth has no address; the container's default is the fake gateway
    addrs = json.loads(S.in_ns("hpcmig-rt-n1", "ip", "-j", "addr", "show", "dev",
                               c1.host_veth).stdout)
    assert [a for a in addrs[0]["addr_info"] if a["family"] == "inet"] == []
    routes = S.in_ns(c1.netns, "ip", "route").stdout
    assert "default via 169.254.1.1 dev eth0 onlink" in routes
    assert net["n1"].route_of("10.252.0.1")["dev"] == c1.host_veth
    assert net["n1"].route_of("10.252.0.2")["gateway"] == "10.253.0.2"


def test_another_jobs_container_is_unreachable(net: dict) -> None:
    c1, c3 = net["c1"], net["c3"]
    assert not pings(c1.netns, "10.252.0.65")  # other job, other node
    assert not pings(c3.netns, "10.252.0.2")  # other job, same node
    assert not pings(c3.netns, "10.252.0.1")
    assert pings(c1.netns, "10.252.0.2")  # while the job's own traffic flows (and is cached)
    net["n2"].forbid_job(JOB1)
    try:
        assert not pings(c1.netns, "10.252.0.2")  # proves the set is what lets it through
    finally:
        net["n2"].allow_job(JOB1)
    assert pings(c1.netns, "10.252.0.2")


def test_a_container_is_refused_outside_the_pool_at_once(net: dict) -> None:
    """Dropped, a DNS query from a container would hang its resolver for 5 s; refused, it
    fails at once."""
    c1 = net["c1"]
    for address in (S.NODES["hpcmig-rt-n2"], "192.0.2.53"):  # routed; no route on the node
        t0 = time.monotonic()
        out = S.in_ns(c1.netns, "ping", "-c1", "-W5", address, check=False)
        assert out.returncode != 0 and "Packet filtered" in out.stdout, out.stdout
        assert time.monotonic() - t0 < 2.0
    t0 = time.monotonic()  # a UDP query as a resolver sends it: an error, not a timeout
    query = S.in_ns(c1.netns, sys.executable, "-c", UDP_QUERY, check=False)
    assert "EHOSTUNREACH" in query.stdout and time.monotonic() - t0 < 2.0, query.stdout
    assert pings(c1.netns, S.NODES["hpcmig-rt-n1"])  # its own node answers
    assert pings(c1.netns, "10.252.0.2")  # the job's own traffic is unaffected


UDP_QUERY = """
import errno, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("192.0.2.53", 53))
s.send(b"query")
try:
    s.recv(512)
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc))
"""


def nft_counts(node: str) -> traffic.Counts:
    return traffic.parse_counts(S.in_ns(node, "nft", "-j", "list", "set", "ip", "hpcmig",
                                        traffic.TRAFFIC_SET).stdout)


def test_the_fast_path_forwards_a_jobs_packets_and_counts_them(net: dict) -> None:
    """The tc program, not the kernel's forwarding, carries the job's packets: the nft
    counter of the pair stays still while the program's count grows by what was sent."""
    n1, c1, c2 = net["n1"], net["c1"], net["c2"]
    path = n1.fast.path()
    assert path.kind == "bpf", path
    assert "eth0" in path.detail and c1.host_veth in path.detail
    pair = (str(c1.address), str(c2.address))
    n1.count_from(c1.address, [str(c2.address)])
    before, nft_before = n1.traffic(JOB1).get(pair, (0, 0)), nft_counts("hpcmig-rt-n1")
    S.in_ns(c1.netns, "ping", "-c5", "-i0.05", "-W1", "10.252.0.2")
    after = n1.traffic(JOB1)[pair]
    assert after[1] - before[1] == 5 and after[0] - before[0] == 5 * 84  # IP bytes
    assert nft_counts("hpcmig-rt-n1").get(pair) == nft_before.get(pair)
    n1.forget_traffic([pair])
    assert pair not in n1.traffic(JOB1)


def test_an_upgrade_replaces_the_older_program(net: dict) -> None:
    """Another hpcmig version's pins on the node: the agent's start attaches its own program
    in their place and removes them; the job's traffic flows on."""
    n2 = net["n2"]
    node_dir = fastpath.pin_dir(os.stat("/run/netns/hpcmig-rt-n2").st_ino)
    os.mkdir(f"{node_dir}/000000000000")  # what an older version left (its maps and program)
    assert n2.install_isolation(POOL).kind == "bpf"
    assert os.listdir(node_dir) == [fastpath.version(fastpath.source())]
    assert pings(net["c2"].netns, "10.252.0.1")


def test_reinstalling_isolation_keeps_blocks_and_does_not_duplicate_rules(net: dict) -> None:
    n2 = net["n2"]
    n2.install_isolation(POOL)
    n2.install_isolation(POOL)
    assert set(n2.allowed_blocks()) == {JOB1, JOB2}
    chain = json.loads(S.in_ns("hpcmig-rt-n2", "nft", "-j", "list", "chain", "ip", "hpcmig",
                               "forward").stdout)
    # the counting pair accept, the job-block accept, the refusal out of the pool, two drops
    assert sum(1 for item in chain["nftables"] if "rule" in item) == 5


def test_the_network_lock_holds_packets_without_an_answer_and_delivers_them(net: dict) -> None:
    """A ping sent while its address is locked gets no answer (no RST, no ICMP error) and
    is not lost: it is answered once the address points at a container again."""
    n2, c1, c2 = net["n2"], net["c1"], net["c2"]
    assert pings(c1.netns, "10.252.0.2")  # the fast path has the pair's decision cached
    assert n2.hold(c2.address) == "hold"
    out, _ = hold.devices(c2.address)
    try:
        assert n2.route_of(c2.address)["dev"] == out
        ping = subprocess.Popen(["nsenter", f"--net={c1.netns_path}", "ping", "-c1", "-W5",
                                 "10.252.0.2"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.6)
        assert ping.poll() is None  # still waiting: held, not refused
        before = rx_packets(c2.netns)
    finally:
        n2.point_local(c2)
    out_text, _ = ping.communicate(timeout=10)
    assert ping.returncode == 0, out_text
    rtt = float(out_text.split("time=")[1].split()[0])  # ms
    assert rtt >= 500, out_text  # it waited in the hold and was answered afterwards
    assert rx_packets(c2.netns) > before
    assert n2.route_of(c2.address)["dev"] == c2.host_veth
    assert out not in S.links_in("hpcmig-rt-n2")  # the hold is gone once drained
    assert pings(c1.netns, "10.252.0.2")


def rx_packets(netns: str) -> int:
    link = json.loads(S.in_ns(netns, "ip", "-j", "-s", "link", "show", "eth0").stdout)[0]
    return int(link["stats64"]["rx"]["packets"])


def test_address_moves_to_another_node_and_routes_follow(net: dict) -> None:
    """What a migration does to the network: same /32, new node, routes re-pointed."""
    n1, n2, c1, c2 = net["n1"], net["n2"], net["c1"], net["c2"]
    moved = container_net(c2.address, "hpcmig-rtc2-moved")
    assert pings(c1.netns, "10.252.0.2")  # cached on both nodes: the moves below apply
    n2.hold(c2.address)  # lock on the source
    n1.create_container_net(moved)  # target: same address in a fresh netns on node 1
    try:
        n2.route_via(c2.address, S.NODES["hpcmig-rt-n1"])  # re-point on the other node
        before_old, before_new = rx_packets(c2.netns), rx_packets(moved.netns)
        assert pings(c1.netns, "10.252.0.2")
        assert pings(moved.netns, "10.252.0.1")
        assert rx_packets(moved.netns) > before_new
        assert rx_packets(c2.netns) == before_old  # the old copy saw nothing
    finally:
        n1.remove_container_net(moved)
        n1.route_via(c2.address, S.NODES["hpcmig-rt-n2"])
        n2.point_local(c2)
    assert pings(c1.netns, "10.252.0.2")


def test_teardown_leaves_nothing_behind() -> None:
    with S.nodes():
        node = NodeNet("hpcmig-rt-n1")
        c = container_net("10.252.0.9", "hpcmig-rtc9")
        node.create_container_net(c)
        node.install_isolation(POOL)
        node.allow_job(JOB1)
        assert node.hold("10.252.0.9") == "hold"
        node.remove_container_net(c)
        node.remove_container_net(c)  # idempotent
        node.remove_isolation()
        assert "hpcmig-rtc9" not in S.netns_list()
        assert c.host_veth not in S.links_in("hpcmig-rt-n1")
        assert hold.devices("10.252.0.9")[0] not in S.links_in("hpcmig-rt-n1")
        assert "10.252." not in S.in_ns("hpcmig-rt-n1", "ip", "route", "show", "table",
                                        "all").stdout
        assert "hpcmig" not in S.in_ns("hpcmig-rt-n1", "nft", "list", "tables").stdout
        assert S.in_ns("hpcmig-rt-n1", "tc", "filter", "show", "dev", "eth0",
                       "ingress").stdout == ""
        inode = os.stat("/run/netns/hpcmig-rt-n1").st_ino
        assert not os.path.exists(fastpath.pin_dir(inode))


def test_without_the_fast_path_a_node_forwards_and_says_why(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """No clang (and no object built before): the kernel forwards, isolation holds, the
    node says why; the program is removed again when the configuration turns it off."""
    with S.nodes():
        n1, n2 = NodeNet("hpcmig-rt-n1"), NodeNet("hpcmig-rt-n2")
        c1 = container_net("10.252.0.1", "hpcmig-rtc1")
        c3 = container_net("10.252.0.65", "hpcmig-rtc3")
        monkeypatch.setattr(fastpath, "OBJECT_CACHE", str(tmp_path))
        monkeypatch.setattr(fastpath, "CLANG", "hpcmig-no-such-clang")
        try:
            n1.create_container_net(c1)
            n2.create_container_net(c3)
            n1.route_via(c3.address, S.NODES["hpcmig-rt-n2"])
            n2.route_via(c1.address, S.NODES["hpcmig-rt-n1"])
            path = n1.install_isolation(POOL)
            assert path.kind == "forwarded" and "clang is not installed" in path.detail
            n1.allow_job(JOB1)
            assert n1.fast.path().kind == "forwarded"
            monkeypatch.undo()
            assert n2.install_isolation(POOL).kind == "bpf"
            n2.allow_job(JOB1)
            n2.allow_job(JOB2)
            assert not pings(c1.netns, "10.252.0.65")  # another job, across both paths
            assert not pings(c3.netns, "10.252.0.1")
            off = n2.install_isolation(POOL, fastpath=False)
            assert off.kind == "forwarded" and "off" in off.detail
            assert n2.fast.path().kind == "forwarded"
            assert S.in_ns("hpcmig-rt-n2", "tc", "filter", "show", "dev", "eth0",
                           "ingress").stdout == ""
        finally:
            for node, c in ((n1, c1), (n2, c3)):
                node.remove_container_net(c)
                node.remove_isolation()


def test_failed_create_cleans_up() -> None:
    with S.nodes():
        node = NodeNet("hpcmig-rt-n1")
        c = container_net("10.252.0.10", "hpcmig-rtc10")
        S.sh("ip", "netns", "add", "hpcmig-rtc10")  # a leftover in the way
        try:
            with pytest.raises(Exception, match="netns"):
                node.create_container_net(c)
        finally:
            S.sh("ip", "netns", "del", "hpcmig-rtc10", check=False)
        assert c.host_veth not in S.links_in("hpcmig-rt-n1")
