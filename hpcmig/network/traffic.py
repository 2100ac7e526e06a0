"""Traffic counting on the virtual network: which container sends how much to which.

Design note: pure functions, like `plan`. The isolation table (`plan.isolation_script`) holds
an nft set of (source address, destination address) pairs whose elements carry a counter;
its first forward rule accepts a packet whose pair is in the set, and the kernel counts the
packet on the element that matched: the lookup that lets the packet through is the one that
counts it, with no other rule or set update on the packet's path. Only the pairs whose
source container lives on the node are elements there (`count_plan`, added by the agent when
the container's network is made on the node; deleted, after their counts were saved, when
it leaves): every packet between two containers is counted once, on the node of its sender;
a packet forwarded on to another node misses the set there and is accepted by the job-block
rule after it. The bytes are IP bytes (headers included, link layer not). Traffic between
ranks of one container (shared memory, loopback) never reaches the node and is not counted.
The agent reads the counts (`parse_counts`); nft 1.0.6 cannot reset an element's counter, so
counts only grow while the container is on the node. What counting costs MPI:
benchmarks/network/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

TRAFFIC_SET = "traffic"
Pair = tuple[str, str]  # (source address, destination address)
Counts = dict[Pair, tuple[int, int]]  # pair -> (bytes, packets)


def set_definition(table: str) -> str:
    return f"add set {table} {TRAFFIC_SET} {{ type ipv4_addr . ipv4_addr; counter; }}"


def count_rule(table: str) -> str:
    """The forward rule that accepts, and so counts, a packet of a counted pair; it comes
    before the job-block rule."""
    return f"add rule {table} forward ip saddr . ip daddr @{TRAFFIC_SET} accept"


def count_plan(table_family: str, table: str, source: str, peers: Iterable[str]
               ) -> list[list[str]]:
    """Count what `source` (a container on this node) sends to each of `peers` (the other
    containers of its job): one nft command, or none. Adding a pair that exists keeps its
    count."""
    elems = ", ".join(f"{IPv4Address(source)} . {IPv4Address(d)}"
                      for d in sorted(set(peers)) if d != source)
    if not elems:
        return []
    return [["nft", "add", "element", table_family, table, TRAFFIC_SET, f"{{ {elems} }}"]]


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
