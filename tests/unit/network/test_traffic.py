"""Traffic counting: the nft rule counts intra-job packets once, where they leave their
container; counts parse, add up and round-trip; the agent's saved counts accumulate."""

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


def test_the_intra_job_accept_counts_packets_from_container_veths_first() -> None:
    lines = plan.isolation_script(IPv4Network("10.252.0.0/16")).splitlines()
    counted = ('add rule ip hpcmig forward iifname "hmv*" ip saddr . ip daddr @intra '
               "update @traffic { ip saddr . ip daddr } accept")
    plain = "add rule ip hpcmig forward ip saddr . ip daddr @intra accept"
    assert lines.index(counted) < lines.index(plain)  # a packet from a node link: not counted
    assert any(ln.startswith("add set ip hpcmig traffic") and "counter" in ln
               and "dynamic" in ln for ln in lines)
    assert plan.container_net("10.252.0.7").host_veth.startswith(traffic.VETH_GLOB[:-1])


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
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
