"""The fast path's pure parts: map entries, dumps, ports, the compiled object's name."""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from hpcmig.network import fastload, fastpath

PINS = "/sys/fs/bpf/hpcmig/net-7"


def test_a_block_entry_maps_every_address_of_the_block_to_the_block() -> None:
    line = fastpath.block_entry(PINS, IPv4Network("10.252.0.64/26"))
    # LPM key: prefix length (u32, little endian), then the network in network order
    assert line == (f"map update pinned {PINS}/hpcmig_jobs key 26 0 0 0 10 252 0 64 "
                    "value 10 252 0 64 26 0 0 0\n")


def test_ports_are_container_veths_and_addressed_ethernet_links() -> None:
    links = [
        {"ifindex": 1, "ifname": "lo", "link_type": "loopback", "flags": ["UP"],
         "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
        {"ifindex": 2, "ifname": "eth0", "link_type": "ether", "flags": ["UP"],
         "addr_info": [{"family": "inet", "local": "10.253.0.1"}]},
        {"ifindex": 3, "ifname": "hmv0afc0001", "link_type": "ether", "flags": ["UP"],
         "addr_info": []},
        {"ifindex": 4, "ifname": "eth1", "link_type": "ether", "flags": ["UP"],
         "addr_info": [{"family": "inet6", "local": "fe80::1"}]},
        {"ifindex": 5, "ifname": "eth2", "link_type": "ether", "flags": [],
         "addr_info": [{"family": "inet", "local": "10.9.0.1"}]},
        {"ifindex": 6, "ifname": "ib0", "link_type": "infiniband", "flags": ["UP"],
         "addr_info": [{"family": "inet", "local": "10.8.0.1"}]},
    ]
    assert fastpath.ports(json.dumps(links)) == {
        "eth0": (2, fastpath.UPLINK), "hmv0afc0001": (3, fastpath.CONTAINER)}


def dump(entries: list[tuple[bytes, bytes]]) -> str:
    return json.dumps([{"key": [f"0x{b:02x}" for b in k], "value": [f"0x{b:02x}" for b in v]}
                       for k, v in entries])


def test_counts_are_read_from_the_traffic_map_within_the_block() -> None:
    inside = fastpath.pair_key(("10.252.0.1", "10.252.0.2"))
    outside = fastpath.pair_key(("10.252.0.65", "10.252.0.66"))
    value = (1234).to_bytes(8, "little") + (5).to_bytes(8, "little")
    text = dump([(inside, value), (outside, value)])
    assert fastpath.parse_counts(text, IPv4Network("10.252.0.0/26")) == {
        ("10.252.0.1", "10.252.0.2"): (1234, 5)}
    assert len(fastpath.parse_counts(text)) == 2


def test_adding_counted_pairs_keeps_those_already_counted() -> None:
    have = [fastpath.pair_key(("10.252.0.1", "10.252.0.2"))]
    lines = fastpath.count_entries(
        PINS, [("10.252.0.1", "10.252.0.2"), ("10.252.0.1", "10.252.0.3")], have)
    assert lines == (f"map update pinned {PINS}/hpcmig_traffic key 10 252 0 1 10 252 0 3 "
                     f"value {' '.join(['0'] * 16)}\n")


def test_every_ip_change_and_no_read_makes_the_fast_path_decide_afresh() -> None:
    changes = [["ip", "route", "replace", "10.252.0.2/32", "via", "10.253.0.2"],
               ["ip", "-batch", "-"], ["ip", "-n", "x", "link", "del", "hmv0afc0001"],
               ["ip", "neigh", "flush", "dev", "eth0"], ["ip", "addr", "add", "10.0.0.1/24",
                                                         "dev", "eth0"]]
    reads = [["ip", "-j", "route", "show", "table", "all", "10.252.0.2/32"],
             ["ip", "-j", "-d", "addr", "show"], ["ip", "route", "get", "10.252.0.2"],
             ["tc", "qdisc", "replace", "dev", "eth0", "clsact"], ["nft", "-f", "-"],
             ["bpftool", "batch", "file", "-"]]
    assert all(fastpath.changes_routes(s) for s in changes)
    assert not any(fastpath.changes_routes(s) for s in reads)


def test_the_object_is_named_by_its_source() -> None:
    src = fastpath.source()
    assert b"SEC(\"tc\")" in src and b"bpf_redirect_peer" in src
    assert fastpath.object_path(src) != fastpath.object_path(src + b"\n")
    assert fastpath.object_path(src).startswith(fastpath.OBJECT_CACHE + "/fastpath-")


def test_attach_and_detach_touch_only_our_filter() -> None:
    attach = fastpath.attach_plan("eth0", fastpath.UPLINK, PINS)
    assert attach[-1][-2:] == ["object-pinned", f"{PINS}/hpcmig_link"]
    veth = fastpath.attach_plan("hmv0afc0001", fastpath.CONTAINER, PINS)
    assert veth[-1][-2:] == ["object-pinned", f"{PINS}/hpcmig_ctr"]
    assert attach[-1][6:8] == ["pref", fastpath.TC_PREF]
    assert fastpath.detach_plan("eth0") == [
        ["tc", "filter", "del", "dev", "eth0", "ingress", "pref", fastpath.TC_PREF]]


def test_sweep_removes_the_pins_of_namespaces_that_are_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = os.stat("/proc/self/ns/net").st_ino
    for name in (f"net-{mine}", "net-1", "other"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(fastpath, "PIN_ROOT", str(tmp_path))
    assert fastload.sweep() == [f"{tmp_path}/net-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"net-{mine}", "other"])
