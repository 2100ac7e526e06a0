"""The virtual-network plans: exact commands, names and isolation rules."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from hpcmig.network import fastpath, hold, l2, plan
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


def test_a_migration_target_starts_without_a_route_to_its_veth() -> None:
    net = container_net("10.252.0.5", "c5")
    steps = plan.create_plan(net, routed=False)
    assert not [s for s in steps if s[:3] == ["ip", "route", "replace"]]  # NodeNet holds it


def test_hold_routes_into_a_slow_queue_on_a_veth_loop_and_release_starts_it() -> None:
    out, back = hold.devices("10.252.0.5")
    assert (out, back) == ("hmh0afc0005", "hmk0afc0005") and len(out) <= 15
    steps = hold.hold_plan("10.252.0.5")
    assert steps[0][:4] == ["ip", "link", "add", out] and back in steps[0]
    qdisc = next(s for s in steps if s[:2] == ["tc", "qdisc"])
    assert qdisc[qdisc.index("rate") + 1] == "1kbit" and qdisc[qdisc.index("dev") + 1] == out
    # the bucket's first burst is spent on junk frames before the route points there
    drain = steps.index([hold.KICK_STEP, out, "24", "1500"])
    assert steps.index(qdisc) < drain < len(steps) - 1 and 24 * 1514 > 30 * 1024
    # the route comes last: nothing is sent into the pair before its queue exists
    assert steps[-1] == ["ip", "route", "replace", "10.252.0.5/32", "via", hold.NEXT_HOP,
                         "dev", out, "onlink"]
    neigh = next(s for s in steps if s[:2] == ["ip", "neigh"])
    assert hold.back_mac("10.252.0.5") in neigh  # no ARP on the pair
    # the pair's ip steps run as one process, before the rest
    run = plan.batched(steps)
    assert run[0][0] == ["ip", "-batch", "-"] and run[0][1].count("\n") == 4
    assert [s for s, _ in run[1:]] == steps[4:]
    change, kick = hold.release_plan("10.252.0.5")
    assert change[:4] == ["tc", "qdisc", "change", "dev"] and "40gbit" in change
    assert kick == [hold.KICK_STEP, out, "1", "46"]
    compile(hold.KICK, "kick", "exec")
    assert hold.remove_plan("10.252.0.5") == [["ip", "link", "del", out]]
    assert hold.backlog([{"kind": "tbf", "qlen": 3}]) == 3 and hold.backlog([]) == 0


def test_runs_of_ip_steps_share_one_ip_process() -> None:
    net = container_net("10.252.0.5", "c5")
    steps = plan.create_plan(net)
    run = plan.batched(steps)
    # `ip netns add` alone (making a netns moves the ip process into it); the link, then the
    # container side (-n c5) as one batch, then the node side as another
    assert [s for s, _ in run] == [steps[0], steps[1], ["ip", "-n", "c5", "-batch", "-"],
                                   ["ip", "-batch", "-"]]
    inside = run[2][1]
    assert inside is not None and inside.splitlines() == [
        " ".join(s[3:]) for s in steps if s[1:3] == ["-n", "c5"]]
    assert run[3][1] is not None and run[3][1].splitlines() == [
        " ".join(s[1:]) for s in steps[2 + len(inside.splitlines()):]]
    # what a batch cannot carry runs on its own; one step alone is not batched
    odd = [["ip", "link", "set", "a b", "up"], ["ip", "-j", "route"], ["tc", "qdisc"],
           ["ip", "route", "del", "10.0.0.1/32"]]
    assert plan.batched(odd) == [(s, None) for s in odd]


def test_runs_of_tc_steps_share_one_tc_process_also_in_a_containers_netns() -> None:
    attach = fastpath.attach_plan("hmv0afc0005", 1, "/sys/fs/bpf/p")
    [(step, lines)] = plan.batched(attach)
    assert step == ["tc", "-batch", "-"]
    assert lines is not None and lines.splitlines() == [" ".join(s[1:]) for s in attach]
    guard = l2.attach_steps(container_net("10.252.0.5", "c5"), "/sys/fs/bpf/p")
    [(step, lines)] = plan.batched(guard)
    assert step == ["nsenter", "--net=/run/netns/c5", "tc", "-batch", "-"]
    assert lines is not None and len(lines.splitlines()) == 3
    # another netns, or a global option, starts another process
    other = [["nsenter", "--net=/run/netns/c6", "tc", "qdisc", "del", "dev", "eth0", "clsact"],
             ["tc", "-s", "qdisc", "show"], ["nsenter", "--net=/x", "ip", "link"]]
    assert [s for s, _ in plan.batched(guard[:1] + other)] == guard[:1] + other


def test_remove_blackhole_and_remote_route_plans() -> None:
    net = container_net("10.252.0.5", "c5")
    assert plan.remove_plan(net) == [  # a route to another node stays
        ["ip", "route", "del", "blackhole", "10.252.0.5/32"],
        ["ip", "link", "del", net.host_veth],
        ["ip", "netns", "del", "c5"],
    ]
    assert plan.blackhole_plan("10.252.0.5") == [
        ["ip", "route", "replace", "blackhole", "10.252.0.5/32"]]
    assert plan.remote_route_plan("10.252.0.5", "10.253.0.2") == [
        ["ip", "route", "replace", "10.252.0.5/32", "via", "10.253.0.2"]]
    assert plan.local_route_plan(net) == [
        ["ip", "route", "replace", "10.252.0.5/32", "dev", net.host_veth]]
    assert plan.quiet_plan("10.252.0.5") == [["ip", "link", "set", net.host_veth, "down"]]
    assert plan.wake_plan(net) == [["ip", "link", "set", net.host_veth, "up"]]


def test_isolation_accepts_same_block_and_drops_the_rest_of_the_pool() -> None:
    script = plan.isolation_script(IPv4Network("10.252.0.0/16"))
    lines = script.splitlines()
    accept = lines.index("add rule ip hpcmig forward ip saddr . ip daddr @intra accept")
    drop_s = lines.index("add rule ip hpcmig forward ip saddr 10.252.0.0/16 drop")
    drop_d = lines.index("add rule ip hpcmig forward ip daddr 10.252.0.0/16 drop")
    refuse = lines.index("add rule ip hpcmig forward ip saddr 10.252.0.0/16 "
                         "ip daddr != 10.252.0.0/16 reject with icmp type admin-prohibited")
    assert accept < refuse < drop_s and accept < drop_d
    assert "flush chain ip hpcmig forward" in lines  # re-install does not duplicate rules
    pre = plan.refuse_script(IPv4Network("10.252.0.0/16")).splitlines()
    assert "flush chain ip hpcmig prerouting" in pre
    assert ("add rule ip hpcmig prerouting ip saddr 10.252.0.0/16 ip daddr != 10.252.0.0/16 "
            "fib daddr type != local reject with icmp type admin-prohibited") in pre
    assert not any(line.startswith("delete") for line in lines)  # keeps the job set
    block = IPv4Network("10.252.0.64/26")
    assert plan.allow_job_plan(block) == [
        ["nft", "add", "element", "ip", "hpcmig", "intra",
         "{ 10.252.0.64/26 . 10.252.0.64/26 }"]]
    assert plan.forbid_job_plan(block)[0][1] == "delete"


def test_isolation_keeps_the_data_pool_apart_too_where_the_l2_data_path_is_on() -> None:
    lines = plan.isolation_script(IPv4Network("10.252.0.0/16"),
                                  IPv4Network("10.250.0.0/16")).splitlines()
    accept = lines.index("add rule ip hpcmig forward ip saddr . ip daddr @intra accept")
    assert accept < lines.index("add rule ip hpcmig forward ip saddr 10.250.0.0/16 drop")
    assert accept < lines.index("add rule ip hpcmig forward ip daddr 10.250.0.0/16 drop")
    assert "10.250." not in plan.isolation_script(IPv4Network("10.252.0.0/16"))


def test_hosts_file() -> None:
    text = plan.hosts_file([(IPv4Address("10.252.0.1"), "node1"), ("10.252.0.2", "node2")])
    assert text == "10.252.0.1 node1\n10.252.0.2 node2\n"
