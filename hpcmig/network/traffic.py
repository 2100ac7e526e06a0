"""Traffic counting on the virtual network: which container sends how much to which.

Design note: pure functions, like `plan`. The isolation table (`plan.isolation_script`) holds a
dynamic nft set keyed by (source address, destination address) whose elements carry a
counter; the forward rule that accepts traffic inside a job block also updates it, but only
for packets that enter from a container's host-side veth (that interface test comes first in
the rule, so a packet from a node link pays no second job-set lookup). So every packet
between two containers is counted once, on the node of its sender (a packet forwarded on to
another node is not counted again there), and the bytes are IP bytes (headers included,
link layer not). Traffic between ranks of one container (shared memory, loopback) never
reaches the node and is not counted. The agent reads the counts (`parse_counts`) and, when
the job leaves the node, deletes the job's elements (`forget_plan`) after saving them;
nft 1.0.6 cannot reset a set element's counter, so counts only grow while the job is on the
node. What counting costs MPI: benchmarks/network/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

TRAFFIC_SET = "traffic"
VETH_GLOB = "hmv*"  # plan.ContainerNet.host_veth: a packet from a container enters here
Pair = tuple[str, str]  # (source address, destination address)
Counts = dict[Pair, tuple[int, int]]  # pair -> (bytes, packets)


def set_definition(table: str) -> str:
    return (f"add set {table} {TRAFFIC_SET} {{ type ipv4_addr . ipv4_addr; size 65535; "
            "flags dynamic; counter; }")


def count_match() -> str:
    """What selects the packets to count: those that come from a container. It comes first
    in the counting rule, so a packet from a node link costs one interface-name compare
    there, not a second job-set lookup."""
    return f'iifname "{VETH_GLOB}"'


def count_update() -> str:
    """The part of the intra-job accept rule that counts the packet."""
    return f"update @{TRAFFIC_SET} {{ ip saddr . ip daddr }}"


def parse_counts(nft_json: str, block: IPv4Network | None = None) -> Counts:
    """`nft -j list set ip hpcmig traffic` -> {(src, dst): (bytes, packets)}, only pairs
    whose two addresses lie in `block` (all pairs if None)."""
    counts: Counts = {}
    for item in json.loads(nft_json).get("nftables", []):
        for elem in item.get("set", {}).get("elem", []):
            inner = elem.get("elem", elem) if isinstance(elem, dict) else {}
            pair = inner.get("val", {}).get("concat") if isinstance(inner, dict) else None
            counter = inner.get("counter") if isinstance(inner, dict) else None
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(counter, dict)):
                continue
            src, dst = (str(IPv4Address(a)) for a in pair)
            if block is None or (IPv4Address(src) in block and IPv4Address(dst) in block):
                counts[(src, dst)] = (int(counter.get("bytes", 0)),
                                      int(counter.get("packets", 0)))
    return counts


def forget_plan(table_family: str, table: str, pairs: Iterable[Pair]) -> list[list[str]]:
    """Delete these pairs' elements (one nft command, or none)."""
    elems = ", ".join(f"{s} . {d}" for s, d in sorted(pairs))
    if not elems:
        return []
    return [["nft", "delete", "element", table_family, table, TRAFFIC_SET, f"{{ {elems} }}"]]


def add(total: Counts, more: Counts) -> Counts:
    """Element-wise sum of two count maps (a new map)."""
    out = dict(total)
    for pair, (b, p) in more.items():
        ob, op = out.get(pair, (0, 0))
        out[pair] = (ob + b, op + p)
    return out


def to_json(counts: Counts) -> list[list[object]]:
    return [[s, d, b, p] for (s, d), (b, p) in sorted(counts.items())]


def from_json(rows: Iterable[Iterable[object]]) -> Counts:
    out: Counts = {}
    for row in rows:
        s, d, b, p = list(row)
        out[(str(IPv4Address(str(s))), str(IPv4Address(str(d))))] = (int(str(b)), int(str(p)))
    return out
