"""The virtual network's fast path: tc programs that forward a job's packets themselves.

Design note: pure functions, like `plan`; `hpcmig.network.node` runs them. Forwarded the
kernel's way, a packet between two containers crosses the node's IP forwarding and the nft
forward chain on each node (benchmarks/network: 1.4-1.7x native latency). The programs in
`hpcmig/data/fastpath.bpf.c` run at tc ingress of every container's host-side veth
(`hpcmig_ctr`) and of the node's uplinks (`hpcmig_link`). For a packet whose two addresses
lie in one allowed job block (map `hpcmig_jobs`, kept with the nft set `intra` by
allow_job/forbid_job) and whose route (the kernel's FIB, so /32 routes and moves apply as
before) leaves through a registered port (map `hpcmig_ports`), they redirect the packet:
into the container's netns directly (`bpf_redirect_peer`) or out of the uplink to the
route's next hop (`bpf_redirect_neigh`), without writing to it (no TTL decrement: a write
would copy the headers a TCP segment shares with its retransmission copy). What passes
from one uplink to another, another job's packets, a held or blackholed address during a
move and other protocols go on to the kernel's forwarding and the nft table, which decides
as before: isolation holds either way. The decision per (source, destination) is cached
per CPU in map `hpcmig_routes`, valid while its generation is the one in map `hpcmig_gen`
and for 1024 of the pair's packets at most; the node changes that generation
(`fastload.bump`) after every change of its routes, links or maps (`changes_routes`), so a
move or a forbidden job applies to the next packet. The programs count the pairs of
`hpcmig.network.traffic` that they forward (map `hpcmig_traffic`; the nft set counts the
rest). Node-local: programs and maps are pinned under PIN_ROOT/net-<inode of the node's
netns> in bpffs; the object is compiled once per source with clang into OBJECT_CACHE.
Where any of this is missing (no clang or libbpf headers, no bpftool, no bpffs, a kernel
that refuses the programs), the node forwards the kernel's way and says why (`Path`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from ipaddress import IPv4Address, IPv4Network

from hpcmig.network.traffic import Counts, Pair

PIN_ROOT = "/sys/fs/bpf/hpcmig"
OBJECT_CACHE = "/var/cache/hpcmig/bpf"
CLANG = "clang"
JOBS, PORTS, TRAFFIC = "hpcmig_jobs", "hpcmig_ports", "hpcmig_traffic"
ROUTES, GEN = "hpcmig_routes", "hpcmig_gen"
HELD = "hpcmig_held"  # the L2 data path's hold (hpcmig.network.l2)
CONTAINER, UPLINK = 1, 2  # kinds of port (fastpath.bpf.c)
PROGS = {CONTAINER: "hpcmig_ctr", UPLINK: "hpcmig_link"}  # the program for each kind
PROG = PROGS[CONTAINER]  # its pin says the fast path is loaded
CONTAINER_PREFIX = "hmv"  # plan.ContainerNet.host_veth
TC_PREF = "49152"  # the filter's preference and handle: ours, whatever else is attached


@dataclass(frozen=True)
class Path:
    """How a node forwards its containers' packets: "bpf" or "forwarded", and why."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


@functools.cache
def source() -> bytes:
    return resources.files("hpcmig").joinpath("data/fastpath.bpf.c").read_bytes()


@functools.cache
def version(src: bytes) -> str:
    """Names the program built from this source: its object, and its pins on a node (an
    upgraded hpcmig loads its own beside the old one, then removes the old)."""
    return hashlib.sha256(src).hexdigest()[:12]


def object_path(src: bytes) -> str:
    """Where the object compiled from this source is cached (one per source)."""
    return f"{OBJECT_CACHE}/fastpath-{version(src)}.o"


def compile_argv(src_path: str, out: str) -> list[str]:
    multiarch = f"/usr/include/{platform.machine()}-linux-gnu"  # asm/types.h on Debian
    return [CLANG, "-O2", "-g", "-Wall", "-target", "bpf", f"-I{multiarch}", "-c", src_path,
            "-o", out]


def pin_dir(netns_inode: int) -> str:
    """The node's directory in bpffs; the program and maps are in its `version` subdir."""
    return f"{PIN_ROOT}/net-{netns_inode}"


def load_plan(obj: str, pins: str) -> list[list[str]]:
    return [["bpftool", "prog", "loadall", obj, pins, "type", "tc", "pinmaps", pins]]


def attach_plan(dev: str, kind: int, pins: str) -> list[list[str]]:
    return [["tc", "qdisc", "replace", "dev", dev, "clsact"],
            ["tc", "filter", "replace", "dev", dev, "ingress", "pref", TC_PREF, "handle", "1",
             "bpf", "da", "object-pinned", f"{pins}/{PROGS[kind]}"]]


def detach_plan(dev: str) -> list[list[str]]:
    return [["tc", "filter", "del", "dev", dev, "ingress", "pref", TC_PREF]]


_READS = {"show", "list", "ls", "get", "monitor"}


def changes_routes(step: list[str]) -> bool:
    """Whether the step may change what the FIB answers (an `ip` command other than a
    read, or an `ip -batch`): the cached decisions must then be taken again."""
    return step[:1] == ["ip"] and not _READS.intersection(step[1:])


def _bytes(data: bytes) -> str:
    return " ".join(str(b) for b in data)


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def block_key(block: IPv4Network) -> bytes:
    return _u32(block.prefixlen) + block.network_address.packed


def block_value(block: IPv4Network) -> bytes:
    return block.network_address.packed + _u32(block.prefixlen)


def pair_key(pair: Pair) -> bytes:
    return IPv4Address(pair[0]).packed + IPv4Address(pair[1]).packed


def update(pins: str, table: str, key: bytes, value: bytes) -> str:
    """One `bpftool batch` line."""
    return f"map update pinned {pins}/{table} key {_bytes(key)} value {_bytes(value)}\n"


def delete(pins: str, table: str, key: bytes) -> str:
    return f"map delete pinned {pins}/{table} key {_bytes(key)}\n"


def port_entry(pins: str, ifindex: int, kind: int) -> str:
    return update(pins, PORTS, _u32(ifindex), _u32(kind))


def mac_key(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "")) + bytes(2)


def held_entry(pins: str, mac: str, ifindex: int, to_mac: str) -> str:
    """Frames for `mac` on an uplink go to device `ifindex`, addressed to `to_mac`."""
    return update(pins, HELD, mac_key(mac), _u32(ifindex) + mac_key(to_mac))


def block_entry(pins: str, block: IPv4Network) -> str:
    return update(pins, JOBS, block_key(block), block_value(block))


def count_entries(pins: str, pairs: Iterable[Pair], present: Iterable[bytes]) -> str:
    """Lines adding the pairs not yet counted (adding one that is would zero its count)."""
    have = set(present)
    return "".join(update(pins, TRAFFIC, pair_key(p), bytes(16))
                   for p in sorted(set(pairs)) if pair_key(p) not in have)


def dump_entries(bpftool_json: str) -> list[tuple[bytes, bytes]]:
    """`bpftool -j map dump` -> [(key, value)] as raw bytes."""
    return [(bytes(int(b, 16) for b in e["key"]), bytes(int(b, 16) for b in e["value"]))
            for e in json.loads(bpftool_json or "[]")]


def parse_counts(bpftool_json: str, block: IPv4Network | None = None) -> Counts:
    """The traffic map's dump -> {(src, dst): (bytes, packets)} of pairs within `block`."""
    counts: Counts = {}
    for key, value in dump_entries(bpftool_json):
        src, dst = str(IPv4Address(key[:4])), str(IPv4Address(key[4:8]))
        if block is None or (IPv4Address(src) in block and IPv4Address(dst) in block):
            counts[(src, dst)] = (int.from_bytes(value[:8], "little"),
                                  int.from_bytes(value[8:16], "little"))
    return counts


def ports(ip_links_json: str) -> dict[str, tuple[int, int]]:
    """`ip -j -d addr show` -> {device: (ifindex, kind)} of the ports to attach to: container
    veths, and Ethernet uplinks that carry an IPv4 address (the node's links to its peers)."""
    out: dict[str, tuple[int, int]] = {}
    for link in json.loads(ip_links_json or "[]"):
        name, index = str(link.get("ifname", "")), int(link.get("ifindex", 0))
        if name.startswith(CONTAINER_PREFIX):
            out[name] = (index, CONTAINER)
        elif (link.get("link_type") == "ether" and "UP" in link.get("flags", [])
              and any(a.get("family") == "inet" for a in link.get("addr_info", []))):
            out[name] = (index, UPLINK)
    return out
