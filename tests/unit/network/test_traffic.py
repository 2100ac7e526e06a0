"""Traffic counting: the nft lookup that accepts an intra-job packet counts it, on the node
of its sender; counts parse, add up and round-trip; the agent's saved counts accumulate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from ipaddress import IPv4Network

import pytest

from hpcmig.network import plan, traffic

# `nft -j list set ip hpcmig traffic` as nftables 1.0.6 prints it
LISTED = json.dumps({"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"set": {"family": "ip", "name": "traffic", "table": "hpcmig",
             "type": ["ipv4_addr", "ipv4_addr"], "handle": 2, "size": 65535,
             "elem": [
                 {"elem": {"val": {"concat": ["10.252.0.2", "10.252.0.1"]},
                           "counter": {"packets": 3, "bytes": 3084}}},
                 {"elem": {"val": {"concat": ["10.252.0.1", "10.252.0.2"]},
                           "counter": {"packets": 7, "bytes": 9000}}},
                 {"elem": {"val": {"concat": ["10.252.0.65", "10.252.0.66"]},
                           "counter": {"packets": 1, "bytes": 84}}}],
             "stmt": [{"counter": None}]}}]})


def test_the_pair_lookup_that_accepts_the_packet_counts_it() -> None:
    lines = plan.isolation_script(IPv4Network("10.252.0.0/16")).splitlines()
    counted = "add rule ip hpcmig forward ip saddr . ip daddr @traffic accept"
    plain = "add rule ip hpcmig forward ip saddr . ip daddr @intra accept"
    drop = "add rule ip hpcmig forward ip saddr 10.252.0.0/16 drop"
    # one lookup for a packet sent from this node (its pair is an element, whose counter
    # the kernel updates on the match); a packet forwarded for another node's container
    # misses it and is accepted by the job-block rule; nothing else is accepted
    assert lines.index(counted) < lines.index(plain) < lines.index(drop)
    assert "add set ip hpcmig traffic { type ipv4_addr . ipv4_addr; counter; }" in lines
    assert not any("update @" in ln or "dynamic" in ln for ln in lines)


def test_a_container_counts_towards_each_other_container_of_its_job() -> None:
    assert traffic.count_plan("ip", "hpcmig", "10.252.0.2",
                              ["10.252.0.3", "10.252.0.2", "10.252.0.1", "10.252.0.3"]) == [
        ["nft", "add", "element", "ip", "hpcmig", "traffic",
         "{ 10.252.0.2 . 10.252.0.1, 10.252.0.2 . 10.252.0.3 }"]]
    assert traffic.count_plan("ip", "hpcmig", "10.252.0.2", ["10.252.0.2"]) == []


def test_parse_keeps_the_block_asked_for() -> None:
    assert traffic.parse_counts(LISTED, IPv4Network("10.252.0.0/26")) == {
        ("10.252.0.2", "10.252.0.1"): (3084, 3), ("10.252.0.1", "10.252.0.2"): (9000, 7)}
    assert len(traffic.parse_counts(LISTED)) == 3
    assert traffic.parse_counts(json.dumps({"nftables": [{"set": {"name": "traffic"}}]})) == {}


def test_counts_add_and_round_trip() -> None:
    a = {("10.0.0.1", "10.0.0.2"): (10, 1)}
    b = {("10.0.0.1", "10.0.0.2"): (5, 2), ("10.0.0.2", "10.0.0.1"): (1, 1)}
    total = traffic.add(a, b)
    assert total == {("10.0.0.1", "10.0.0.2"): (15, 3), ("10.0.0.2", "10.0.0.1"): (1, 1)}
    assert a == {("10.0.0.1", "10.0.0.2"): (10, 1)}  # inputs untouched
    assert traffic.from_json(json.loads(json.dumps(traffic.to_json(total)))) == total


def test_forget_deletes_the_pairs_in_one_command() -> None:
    assert traffic.forget_plan("ip", "hpcmig", []) == []
    assert traffic.forget_plan("ip", "hpcmig", [("10.0.0.2", "10.0.0.1"),
                                                ("10.0.0.1", "10.0.0.2")]) == [
        ["nft", "delete", "element", "ip", "hpcmig", "traffic",
         "{ 10.0.0.1 . 10.0.0.2, 10.0.0.2 . 10.0.0.1 }"]]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                    reason="needs root and nft (checks the script loads into a real kernel)")
def test_the_script_loads_and_a_set_lists_back() -> None:
    """The rule syntax is the kernel's and nft's, not only ours: load it in a scratch netns."""
    ns = f"hpcmig-unit-traffic-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = ["ip", "netns", "exec", ns]
        subprocess.run([*run, "nft", "-f", "-"], check=True, text=True,
                       input=plan.isolation_script(IPv4Network("10.252.0.0/16")))
        out = subprocess.run([*run, "nft", "-j", "list", "set", "ip", "hpcmig", "traffic"],
                             check=True, capture_output=True, text=True).stdout
        assert traffic.parse_counts(out) == {}
        for _ in range(2):  # adding a pair again is harmless
            for step in traffic.count_plan("ip", "hpcmig", "10.252.0.1", ["10.252.0.2"]):
                subprocess.run([*run, *step], check=True)
        out = subprocess.run([*run, "nft", "-j", "list", "set", "ip", "hpcmig", "traffic"],
                             check=True, capture_output=True, text=True).stdout
        assert traffic.parse_counts(out) == {("10.252.0.1", "10.252.0.2"): (0, 0)}
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                    reason="needs root and nft (a real kernel's nft table)")
def test_an_older_counting_set_is_renewed_and_the_blocks_kept() -> None:
    """An agent upgraded on a node whose table has the dynamic counting set of an older
    hpcmig still starts: that set is replaced, the allowed job blocks stay."""
    from hpcmig.network import NodeNet

    ns = f"hpcmig-unit-upgrade-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True,
                       input="add table ip hpcmig\n"
                       "add set ip hpcmig intra { type ipv4_addr . ipv4_addr; flags interval; }\n"
                       "add set ip hpcmig traffic { type ipv4_addr . ipv4_addr; size 65535; "
                       "flags dynamic; counter; }\n"
                       "add chain ip hpcmig forward { type filter hook forward priority "
                       "filter; policy accept; }\n"
                       'add rule ip hpcmig forward iifname "hmv*" ip saddr . ip daddr @intra '
                       "update @traffic { ip saddr . ip daddr } accept\n"
                       "add element ip hpcmig intra { 10.252.0.0/26 . 10.252.0.0/26 }\n")
        node = NodeNet(ns)
        node.install_isolation(IPv4Network("10.252.0.0/16"))
        assert node.allowed_blocks() == [IPv4Network("10.252.0.0/26")]
        chain = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chain", "ip",
                                "hpcmig", "forward"], check=True, capture_output=True,
                               text=True).stdout
        assert "update @" not in chain and "@traffic accept" in chain
        node.count_from("10.252.0.1", ["10.252.0.2"])
        assert node.traffic(IPv4Network("10.252.0.0/26")) == {
            ("10.252.0.1", "10.252.0.2"): (0, 0)}
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
