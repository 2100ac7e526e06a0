"""The L2 data path for real: macvlans on three bridged node namespaces, guarded per job.

Nodes hpcmig-rt-b1..b3 (10.253.1.1-3 on one bridge, no route out; rt_support). Job 1 holds
10.252.0.0/26 and job 2 10.252.0.64/26; their data blocks are 10.250.0.0/26 and
10.250.0.64/26. Container netns hpcmig-rtl*.
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

from hpcmig.network import NodeNet, container_net, fastpath, l2
from hpcmig.network.plan import ContainerNet
from tests.integration import rt_support as S

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing()))]

POOL = IPv4Network("10.252.0.0/16")
DP = l2.DataPath(POOL, IPv4Network("10.250.0.0/16"), "eth0")
JOB1 = IPv4Network("10.252.0.0/26")
JOB2 = IPv4Network("10.252.0.64/26")
B1, B2, B3 = S.BRIDGED


def data(c: ContainerNet) -> str:
    return str(DP.address(c.address))


def pings(netns: str, address: str) -> bool:
    return S.in_ns(netns, "ping", "-c1", "-W1", address, check=False).returncode == 0


def guard_drops(c: ContainerNet) -> int:
    """Packets the guards of c's eth0 dropped (tc's per-filter counters are per program:
    read the qdisc's drop count instead)."""
    out = json.loads(S.in_ns(c.netns, "tc", "-j", "-s", "qdisc", "show", "dev", "eth0").stdout)
    return sum(int(q.get("drops", 0)) for q in out)


# The two tests that make nodes of their own come before the module's nodes exist (making
# them again would sweep those away).
def test_teardown_leaves_nothing_of_the_data_path() -> None:
    with S.bridged_nodes():
        node = NodeNet(B1, data_path=DP)
        node.install_isolation(POOL)
        c = container_net("10.252.0.9", "hpcmig-rtl9")
        node.create_container_net(c)
        node.remove_container_net(c)
        node.remove_container_net(c)  # idempotent
        node.remove_isolation()
        assert "hpcmig-rtl9" not in S.netns_list()
        assert not [x for x in S.links_in(B1) if x.startswith("hm")]
        inode = os.stat(f"/run/netns/{B1}").st_ino
        assert not os.path.exists(fastpath.pin_dir(inode))


def test_a_node_that_cannot_guard_the_data_path_makes_no_container(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """No fast path (no clang): the node says why, and a container there would have no
    eth0 on the data path, so it is refused with the reason and nothing is left."""
    with S.bridged_nodes():
        monkeypatch.setattr(fastpath, "OBJECT_CACHE", str(tmp_path))
        monkeypatch.setattr(fastpath, "CLANG", "hpcmig-no-such-clang")
        node = NodeNet(B1, data_path=DP)
        try:
            path = node.install_isolation(POOL)
            assert "L2 data path unavailable: the fast path is not loaded" in path.detail
            c = container_net("10.252.0.9", "hpcmig-rtl9")
            with pytest.raises(Exception, match="cannot make its eth0 on the L2 data path"):
                node.create_container_net(c)
            assert "hpcmig-rtl9" not in S.netns_list()
            assert not [x for x in S.links_in(B1) if x.startswith("hm")]
        finally:
            node.remove_isolation()


@pytest.fixture(scope="module")
def net() -> Iterator[dict[str, object]]:
    with S.bridged_nodes() as nodes:
        n = {name: NodeNet(name, data_path=DP) for name in nodes}
        cs = {"c1": (B1, container_net("10.252.0.1", "hpcmig-rtl1")),
              "c2": (B2, container_net("10.252.0.2", "hpcmig-rtl2")),
              "c4": (B1, container_net("10.252.0.4", "hpcmig-rtl4")),
              "c3": (B2, container_net("10.252.0.65", "hpcmig-rtl3"))}  # job 2
        made: list[tuple[NodeNet, ContainerNet]] = []
        try:
            for node in n.values():
                assert node.install_isolation(POOL).kind == "bpf"
                node.allow_job(JOB1)
                node.allow_job(JOB2)
            for where, c in cs.values():
                n[where].create_container_net(c)
                made.append((n[where], c))
                for other in set(n) - {where}:
                    n[other].route_via(c.address, S.BRIDGED[where])
            yield {"n": n, **{k: c for k, (_, c) in cs.items()}}
        finally:
            for node, c in made:
                node.remove_container_net(c)
            for node in n.values():
                node.remove_isolation()


def test_a_jobs_containers_reach_each_other_on_the_data_path(net: dict) -> None:
    c1, c2, c4 = net["c1"], net["c2"], net["c4"]
    assert pings(c1.netns, data(c2))  # across nodes
    assert pings(c2.netns, data(c1))
    assert pings(c1.netns, data(c4))  # on one node (macvlan's bridge mode)
    link = json.loads(S.in_ns(c1.netns, "ip", "-j", "-d", "addr", "show", "dev",
                              "eth0").stdout)[0]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["address"] == l2.data_mac(DP.address(c1.address))
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == [data(c1)]
    assert not [a for a in link["addr_info"] if a["family"] == "inet6"]
    # the /32 stays on the veth, now named ctl0: the routed path as before
    assert "default via 169.254.1.1 dev ctl0 onlink" in S.in_ns(c1.netns, "ip",
                                                               "route").stdout
    assert pings(c1.netns, str(c2.address))
    # the nodes route no data address to another node (only their own containers', into
    # the veth, for a move's held packets)
    routes = S.in_ns(B1, "ip", "route", "show", "table", "all").stdout
    assert [r.split()[:3] for r in routes.splitlines() if r.startswith("10.250.")] == [
        ["10.250.0.1", "dev", c1.host_veth], ["10.250.0.4", "dev", c4.host_veth]]
    path = net["n"][B1].install_isolation(POOL)  # idempotent; says which paths it uses
    assert path.kind == "bpf" and "L2 data path on eth0 (10.250.0.0/16)" in path.detail
    bad = NodeNet(B1, data_path=l2.DataPath(POOL, DP.data_pool, "ib0"))
    assert bad.data is not None and "no device ib0" in bad.data.describe()


SEND_BOUND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[2].encode())
for _ in range(3):
    s.sendto(b"leak", (sys.argv[3], 9999))
"""
RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(float(sys.argv[2]))
try:
    print(s.recvfrom(100)[0].decode())
except OSError:
    print("nothing")
"""


@pytest.mark.parametrize("sender, receiver", [("c3", "c2"), ("c4", "c1")])
def test_a_data_address_is_not_reachable_from_another_job_through_the_veth(
        net: dict, sender: str, receiver: str) -> None:
    """Since Linux 5.7 an unprivileged process may bind a socket to a device: one in job 2's
    container sends from its data address through its veth (ctl0), past its guard, to job
    1's container on the same node (c3 -> c2), whose node routes data addresses into their
    veths for a move's held packets. The node must drop it as it drops the pool's. The same
    between two containers of job 1 on one node (c4 -> c1) arrives, or the test would prove
    nothing."""
    dst, src = net[receiver], net[sender]
    listener = subprocess.Popen(["nsenter", f"--net={dst.netns_path}", sys.executable, "-c",
                                 RECEIVE, data(dst), "3"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        S.in_ns(src.netns, sys.executable, "-c", SEND_BOUND, data(src), l2.CONTROL, data(dst))
        out, _ = listener.communicate(timeout=10)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert out.strip() == ("nothing" if sender == "c3" else "leak"), out


def test_the_data_path_counts_a_registered_pair_as_the_containers_pair(net: dict) -> None:
    n, c1, c2, c4 = net["n"], net["c1"], net["c2"], net["c4"]
    pair = (str(c1.address), str(c2.address))
    n[B1].count_from(c1.address, [str(c2.address)])
    try:
        before = n[B1].traffic(JOB1).get(pair, (0, 0))
        S.in_ns(c1.netns, "ping", "-c5", "-i0.01", "-s1000", "-q", data(c2))
        after = n[B1].traffic(JOB1)[pair]
        assert after[1] - before[1] >= 5 and after[0] - before[0] >= 5 * 1028
        assert (str(c1.address), str(c4.address)) not in n[B1].traffic(JOB1)  # unregistered
        assert n[B1].traffic(JOB2) == {}
    finally:
        n[B1].forget_traffic([pair])
    assert pair not in n[B1].traffic(JOB1)


def test_another_jobs_container_is_unreachable_on_the_data_path(net: dict) -> None:
    c1, c2, c3 = net["c1"], net["c2"], net["c3"]
    before = guard_drops(c3)
    assert not pings(c1.netns, data(c3))  # other job, other node: c1's guard drops it
    assert not pings(c3.netns, data(c2))  # other job, same node
    assert not pings(c3.netns, data(c1))
    assert guard_drops(c3) > before
    # the guard on the receiving side holds on its own: c1 cannot reach c3 with its guard
    # gone (only root in c1's netns could do that)
    S.in_ns(c1.netns, "tc", "filter", "del", "dev", "eth0", "egress")
    try:
        S.in_ns(c1.netns, "ip", "neigh", "replace", data(c3), "lladdr",
                l2.data_mac(DP.address(c3.address)), "dev", "eth0")
        assert not pings(c1.netns, data(c3))
    finally:
        S.in_ns(c1.netns, "ip", "neigh", "del", data(c3), "dev", "eth0", check=False)
        net["n"][B1].run_all(l2.attach_steps(c1, net["n"][B1].fast.pins()))
    # forbidding the job on c2's node cuts its data path there too
    assert pings(c1.netns, data(c2))
    net["n"][B2].forbid_job(JOB1)
    try:
        assert not pings(c1.netns, data(c2))
    finally:
        net["n"][B2].allow_job(JOB1)
    assert pings(c1.netns, data(c2))


def test_a_move_holds_the_data_addresss_packets_and_the_segment_learns_its_new_port(
        net: dict) -> None:
    """As a live migration does it, without the processes: the source holds (the /32 and
    the data address), its copy goes quiet at the freeze, the target's eth0 stays down
    until the restore, then the target wakes and announces itself, and the source lets
    the held packets go to it. A ping sent during the hold is answered by the target."""
    n, c1, c2 = net["n"], net["c1"], net["c2"]
    assert pings(c1.netns, data(c2))  # c1's ARP entry for c2 is fresh
    moved = container_net(c2.address, "hpcmig-rtl2b")
    assert n[B2].hold(c2.address) == "hold"  # the lock
    waiting = subprocess.Popen(["nsenter", f"--net={c1.netns_path}", "ping", "-c1", "-W8",
                                data(c2)], stdout=subprocess.PIPE, text=True)
    try:
        S.sh(*n[B2].quiet_command(c2))  # what CRIU runs once it froze the copy
        assert "UP" not in json.loads(S.in_ns(c2.netns, "ip", "-j", "link", "show", "dev",
                                              "eth0").stdout)[0]["flags"]
        n[B3].create_container_net(moved, routed=False)
        down = json.loads(S.in_ns(moved.netns, "ip", "-j", "link", "show", "dev",
                                  "eth0").stdout)[0]
        assert "UP" not in down["flags"]  # no answer for the address from two places
        time.sleep(1.0)
        assert waiting.poll() is None  # held on B2, not answered, not lost
        n[B3].point_local(moved)  # the unlock on the target
        t0 = time.monotonic()
        n[B2].route_via(c2.address, S.BRIDGED[B3])  # the held packets follow
        out, _ = waiting.communicate(timeout=10)
        assert waiting.returncode == 0, out  # the held request, answered by the target
        assert time.monotonic() - t0 < 1.0
        n[B2].remove_container_net(c2)
        assert pings(c1.netns, data(moved))  # c1's ARP entry still right: the same MAC
        mac = l2.data_mac(DP.address(c2.address))
        fdb = S.sh("bridge", "fdb", "show", "br", S.BRIDGE).stdout
        port = [line.split()[2] for line in fdb.splitlines() if line.startswith(mac)]
        assert port == ["hpcmig-rtb3"], fdb  # learnt from the gratuitous ARP
        for node in (B2, B3):  # nothing of the hold is left
            held = S.in_ns(node, "bpftool", "-j", "map", "dump", "pinned",
                           f"{n[node].fast.pins()}/{fastpath.HELD}").stdout
            assert json.loads(held) == []
        assert data(c2) not in S.in_ns(B2, "ip", "route", "show", "table", "all").stdout
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        n[B3].remove_container_net(moved)
        n[B2].create_container_net(c2)  # back for the other tests
        n[B1].route_via(c2.address, S.BRIDGED[B2])
        n[B3].route_via(c2.address, S.BRIDGED[B2])
