"""The fast path's effects on one node, and the traffic counts it keeps with the nft set.

Design note: `hpcmig.network.node.NodeNet` owns one `FastLink` and calls it where the fast
path (`hpcmig.network.fastpath`: plans, map entries, the program's source) takes part in the
node's network: loading and attaching it with the isolation, a port per container veth, the
job blocks of `allow_job`/`forbid_job`, and the counts of each pair of containers. Every
command runs through the node (`NodeNet.run`), in its network namespace. A node whose fast
path cannot load forwards the kernel's way and says why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from hpcmig.errors import HpcmigError
from hpcmig.network import fastload, plan
from hpcmig.network import fastpath as fast
from hpcmig.network import traffic as counting
from hpcmig.network.plan import NetworkError

if TYPE_CHECKING:
    from hpcmig.network.node import NodeNet

log = logging.getLogger(__name__)


class FastLink:
    """The fast path of one node."""

    def __init__(self, node: NodeNet) -> None:
        self.node = node

    def _pin_dir(self) -> str | None:
        """Where the node's fast path is pinned (None: the netns is gone)."""
        netns = self.node.netns
        path = netns if netns is None or netns.startswith("/") else f"{plan.NETNS_DIR}/{netns}"
        try:
            return fast.pin_dir(os.stat(path or "/proc/self/ns/net").st_ino)
        except FileNotFoundError:
            return None

    def pins(self, loaded: bool = True) -> str | None:
        """Where this hpcmig's fast path is pinned for the node; None where it is not loaded
        (the node forwards the kernel's way), or with loaded=False where the netns is gone."""
        node = self._pin_dir()
        if node is None:
            return None
        pins = f"{node}/{fast.version(fast.source())}"
        return pins if not loaded or os.path.exists(f"{pins}/{fast.PROG}") else None

    def path(self) -> fast.Path:
        """The path this node's containers' packets take now."""
        if not self.pins():
            return fast.Path("forwarded", "")
        attached = [d for d in self._ports() if self._attached(d)]
        return fast.Path("bpf", "tc on " + ", ".join(attached))

    def enable(self) -> fast.Path:
        """Load (or find loaded) the fast path and attach it to every port; on any failure
        remove it and say why: the node then forwards the kernel's way."""
        try:
            fastload.mount_bpffs()
            fastload.sweep()
            pins = self.pins(loaded=False)
            if pins is None:
                raise NetworkError(f"no network namespace {self.node.netns}")
            if not self.pins():
                obj = fastload.compiled(fast.source())
                os.makedirs(pins, exist_ok=True)
                self.node.run_all(fast.load_plan(obj, pins))
            self.bpftool("".join(self.block_lines(pins, b) for b in self.node.allowed_blocks()))
            if counted := self.traffic(None):
                self._count_pairs(pins, list(counted))
            for dev in self._ports():
                self.attach(dev)  # replaces an older version's filter
            node, version = os.path.split(pins)
            for old in set(os.listdir(node)) - {version}:
                shutil.rmtree(f"{node}/{old}", ignore_errors=True)
        except (HpcmigError, OSError) as exc:
            self.remove()
            log.warning("virtual network: forwarding the kernel's way: %s", exc)
            return fast.Path("forwarded", str(exc))
        path = self.path()
        log.info("virtual network: %s", path)
        return path

    def block_lines(self, pins: str, block: IPv4Network) -> str:
        """The map entries that let the job `block` through (its data block's too)."""
        data = self.node.data.block_lines(pins, block) if self.node.data else ""
        return fast.block_entry(pins, block) + data

    def remove(self) -> None:
        """Detach the program from every port and unpin it (idempotent)."""
        fastload.sweep()
        node = self._pin_dir()
        if not node or not os.path.isdir(node):
            return
        for dev in self._ports():
            if self._attached(dev):  # whichever version's program it runs
                self.node.run_all(fast.detach_plan(dev), tolerate_gone=True)
        shutil.rmtree(node, ignore_errors=True)

    def _ports(self) -> list[str]:
        return list(fast.ports(self.node.run(["ip", "-j", "-d", "addr", "show"])))

    def attach(self, dev: str) -> None:
        if not (pins := self.pins()):
            return
        links = self.node.run(["ip", "-j", "-d", "addr", "show", "dev", dev])
        for name, (index, kind) in fast.ports(links).items():
            self.bpftool(fast.port_entry(pins, index, kind))
            self.node.run_all(fast.attach_plan(name, kind, pins))

    def _attached(self, dev: str) -> bool:
        out = self.node.run(["tc", "-j", "filter", "show", "dev", dev, "ingress"],
                            tolerate_gone=True)
        return any(f.get("pref") == int(fast.TC_PREF) for f in json.loads(out or "[]"))

    def forget_port(self, dev: str) -> None:
        """The port's map entry goes before its device (deleting the device detaches it)."""
        if not (pins := self.pins()):
            return
        out = self.node.run(["ip", "-j", "link", "show", "dev", dev], tolerate_gone=True)
        for link in json.loads(out or "[]"):
            key = int(link["ifindex"]).to_bytes(4, "little")
            self.bpftool(fast.delete(pins, fast.PORTS, key), tolerate=True)

    def bpftool(self, lines: str, tolerate: bool = False) -> None:
        """Run a `bpftool batch` of map changes; the cached decisions are taken afresh."""
        if lines:
            try:
                self.node.run(["bpftool", "batch", "file", "-"], input=lines,
                              tolerate_gone=tolerate)
            finally:
                self.decide_afresh()

    def decide_afresh(self) -> None:
        """After a change of the node's routes, links or the fast path's maps: the decisions
        the fast path cached are taken again from the next packet on (fastload.bump)."""
        if not (pins := self.pins()):
            return
        try:
            fastload.bump(pins)
        except OSError as exc:
            log.warning("virtual network: the fast path keeps its cached decisions for up "
                        "to 1024 packets of each pair after this change: %s", exc)

    # -- traffic counts (hpcmig.network.traffic: the nft set; the fast path's map) ---------
    def _dump(self, pins: str) -> str:
        return self.node.run(["bpftool", "-j", "map", "dump", "pinned", f"{pins}/{fast.TRAFFIC}"])

    def _counted(self, pins: str) -> list[bytes]:
        return [k for k, _ in fast.dump_entries(self._dump(pins))]

    def _with_data(self, pairs: list[counting.Pair]) -> list[counting.Pair]:
        """The pairs and, on the L2 data path, the same pairs by their data addresses."""
        return pairs + (self.node.data.pairs(pairs) if self.node.data else [])

    def _count_pairs(self, pins: str, pairs: list[counting.Pair]) -> None:
        self.bpftool(fast.count_entries(pins, self._with_data(pairs), self._counted(pins)))

    def traffic(self, block: IPv4Network | None) -> counting.Counts:
        """Bytes and packets each container of `block` (None: of any) sent to each other one
        through this node since they were last forgotten here, by the nft set and the fast
        path together (empty if the table is not installed)."""
        try:
            out = self.node.run(["nft", "-j", "list", "set", "ip", plan.NFT_TABLE,
                                 counting.TRAFFIC_SET])
        except NetworkError:
            return {}
        counts = counting.parse_counts(out, block)
        if pins := self.pins():
            fast_counts = fast.parse_counts(self._dump(pins))
            if self.node.data:  # the L2 data path's, by the containers' pairs
                fast_counts = self.node.data.containers(fast_counts)
            counts = counting.add(counts, {p: c for p, c in fast_counts.items() if c[1] and (
                block is None or all(IPv4Address(a) in block for a in p))})
        return counts

    def count_from(self, source: IPv4Address | str, peers: list[str]) -> None:
        """Count what the container `source` (on this node) sends to each of `peers`."""
        self.node.run_all(counting.count_plan("ip", plan.NFT_TABLE, str(source), peers))
        if pins := self.pins():
            src = str(IPv4Address(str(source)))
            self._count_pairs(pins, [(src, str(IPv4Address(d))) for d in peers if str(d) != src])

    def forget_traffic(self, pairs: list[counting.Pair]) -> None:
        self.node.run_all(counting.forget_plan("ip", plan.NFT_TABLE, pairs), tolerate_gone=True)
        if pins := self.pins():
            present = set(self._counted(pins))
            self.bpftool("".join(fast.delete(pins, fast.TRAFFIC, fast.pair_key(p))
                                 for p in self._with_data(pairs)
                                 if fast.pair_key(p) in present))
