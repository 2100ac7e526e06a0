"""The L2 data path's effects on one node: a container's eth0, its guard, waking it.

Design note: `hpcmig.network.node.NodeNet` owns one `DataLink` when the configuration turns
the data path on (`hpcmig.network.l2` has the plans and the design), and calls it at the
same moments as the routed network's own steps: with the container's netns, when a move
quiets or wakes a copy, and when a job's block is allowed or forbidden. A node that cannot
carry the data path (no fast path to guard it, no uplink) says why (`problem`) and makes no
container: a job whose containers did not all have eth0 on the data path could not run MPI.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shlex
import socket
import threading
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from hpcmig.errors import HpcmigError
from hpcmig.network import fastpath as fast
from hpcmig.network import hold as holding
from hpcmig.network import l2
from hpcmig.network import traffic as counting
from hpcmig.network.plan import ContainerNet, NetworkError

if TYPE_CHECKING:
    from hpcmig.network.node import NodeNet

CLONE_NEWNET = 0x40000000

log = logging.getLogger(__name__)


class DataLink:
    """The data path of the containers of one node."""

    def __init__(self, node: NodeNet, dp: l2.DataPath) -> None:
        self.node = node
        self.dp = dp

    def problem(self) -> str | None:
        """Why this node cannot carry the data path now (None: it can)."""
        if not self.node.fast.pins():
            return "the fast path is not loaded on this node, and it guards the data path"
        out = self.node.run(["ip", "-j", "link", "show", "dev", self.dp.uplink],
                            tolerate_gone=True)
        links = json.loads(out or "[]")
        if not links:
            return f"this node has no device {self.dp.uplink} (network_l2_uplink)"
        if links[0].get("link_type") != "ether":
            return f"{self.dp.uplink} is not an Ethernet device (a macvlan needs one)"
        return None

    def describe(self) -> str:
        why = self.problem()
        if why:
            return f"L2 data path unavailable: {why}"
        return f"L2 data path on {self.dp.uplink} ({self.dp.data_pool})"

    def create(self, net: ContainerNet, up: bool) -> None:
        """eth0 of the container, guarded; up now, or at `wake` (a move's target)."""
        why = self.problem()
        if why:
            raise NetworkError(f"{net.netns}: cannot make its eth0 on the L2 data path: {why}",
                               hint="the cluster's hpcmig.toml sets network_l2 = true; every "
                                    "node of a job must carry it, or set it false")
        pins = self.node.fast.pins()
        assert pins is not None
        self.node.run_all([*l2.create_steps(net, self.dp), *l2.local_steps(net, self.dp)])
        self.node.run_all(l2.attach_steps(net, pins))
        if up:
            self.wake(net)

    def wake(self, net: ContainerNet) -> None:
        """eth0 up, and a gratuitous ARP from it: the segment learns where the MAC is."""
        *steps, garp = l2.wake_steps(net, self.dp)
        self.node.run_all(steps)
        try:
            send_garp(*garp[1:])
        except HpcmigError as exc:  # the segment learns from the container's first frame
            log.warning("%s", exc)

    def quiet_command(self, net: ContainerNet) -> str:
        return " ; ".join(shlex.join([*self.node._prefix(), *step])
                          for step in l2.quiet_steps(net))

    def remove(self, net: ContainerNet) -> None:
        for step in l2.remove_steps(net, self.dp):
            self.node.run(step, tolerate_gone=True)
        self.forget(net.address)

    def hold(self, address: IPv4Address | str) -> None:
        """Hold the data address's packets and frames with the /32's (its pair exists)."""
        pins = self.node.fast.pins()
        if pins is None:
            raise NetworkError("no fast path: frames for the data address cannot be held")
        out, _ = holding.devices(address)
        [link] = json.loads(self.node.run(["ip", "-j", "link", "show", "dev", out]))
        self.node.run_all(l2.hold_steps(address, self.dp))
        self.node.fast.bpftool(fast.held_entry(pins, self._mac(address), int(link["ifindex"]),
                                               holding.back_mac(address)))

    def release(self, address: IPv4Address | str, to: list[str]) -> None:
        """The held packets' way on (l2.release_steps); no more frames into the hold."""
        self.node.run_all(l2.release_steps(address, self.dp, to))
        self._forget_hold(address)

    def unroute(self, address: IPv4Address | str) -> None:
        self.node.run_all(l2.unroute_steps(address, self.dp), tolerate_gone=True)

    def forget(self, address: IPv4Address | str) -> None:
        """Nothing of the data address on this node (its hold gone with the /32's)."""
        self._forget_hold(address)
        self.unroute(address)

    def pairs(self, pairs: list[counting.Pair]) -> list[counting.Pair]:
        """The data addresses' pairs of these containers' pairs (counted by the guard)."""
        return [(str(self.dp.address(a)), str(self.dp.address(b))) for a, b in pairs]

    def containers(self, counts: counting.Counts) -> counting.Counts:
        """Counts of data-address pairs as the containers' pairs; other pairs as they are."""
        out: counting.Counts = {}
        for (a, b), (nbytes, packets) in counts.items():
            ca, cb = self.dp.container(a), self.dp.container(b)
            pair = (str(ca), str(cb)) if ca and cb else (a, b)
            had = out.get(pair, (0, 0))
            out[pair] = (had[0] + nbytes, had[1] + packets)
        return out

    def _mac(self, address: IPv4Address | str) -> str:
        return l2.data_mac(self.dp.address(address))

    def _forget_hold(self, address: IPv4Address | str) -> None:
        """One tolerant delete (no dump first: a move's unlock runs this on its pause)."""
        if pins := self.node.fast.pins():
            key = fast.mac_key(self._mac(address))
            self.node.fast.bpftool(fast.delete(pins, fast.HELD, key), tolerate=True)

    def block_lines(self, pins: str, block: IPv4Network) -> str:
        """bpftool lines allowing the job's data block beside its block."""
        return fast.block_entry(pins, self.dp.block(block))

    def forbid_lines(self, pins: str, block: IPv4Network) -> str:
        return fast.delete(pins, fast.JOBS, fast.block_key(self.dp.block(block)))


def send_garp(netns_path: str, device: str, data: str, hw: str) -> None:
    """A gratuitous ARP from `device` of the netns at `netns_path` (root): from a thread
    that enters that netns (setns is per thread), so no program starts on a move's pause."""
    frame = l2.garp_frame(IPv4Address(data), hw)
    failed: list[OSError] = []

    def inside() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((device, 0))
                s.send(frame)
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=inside, name="garp")
    thread.start()
    thread.join()
    if failed:
        raise HpcmigError(f"cannot announce {data} from {device} of {netns_path}: {failed[0]}")
