"""The L2 data path: MPI's traffic between containers without the container's veth.

Design note: pure plans, like `plan`. Opt-in (`network_l2`), for nodes whose uplinks share
one Ethernet segment. Each container keeps everything of the routed network (its /32 on a
veth, the nodes' routes, isolation, the hold during a move, `hpcmig.network.plan`), with
the veth's container end named CONTROL instead of eth0. Its eth0 is a macvlan on the
node's uplink carrying a data address: the container's /32 moved by a fixed offset into
`network_l2_pool` (DataPath.address), with a MAC derived from it, so both stay the same on
every node the container moves to and peers' ARP entries stay valid. The data pool is
on-link on eth0: containers ARP for each other and their packets go from node to node
unrouted, with no veth crossing and no forwarding (benchmarks/network: the crossing was
the routed path's remaining cost). MPI uses eth0 (`hpcmig.mpi`), so its traffic takes
this path; the exec protocol, hpcmig-rsh and a node's own traffic keep the /32.

Isolation: the job's data block is allowed where its routed block is (the fast path's map
`hpcmig_jobs`, `DataPath.block`), and a guard program (`hpcmig_l2_out`, `hpcmig_l2_in` in
hpcmig/data/fastpath.bpf.c) on both directions of eth0 in the container's netns passes an
IPv4 packet or an ARP frame only between two addresses of one allowed block, and drops
anything else. The job's processes hold no capability in that netns, so they can neither
detach it nor send from another address. Needs the fast path (a node without it cannot
guard the device, so it refuses to make one) and macvlan in the kernel.

During a move, the dumped copy's eth0 goes down with its veth (`quiet_steps`), and the
target's eth0 stays down until the restore is done (`wake_steps`), so neither copy answers
for the address while the other may; waking sends a gratuitous ARP, so the segment's
switches learn the MAC's new port at once. The hold keeps the peers' packets for the data
address too, without an answer: on the source node the uplink's program sends the frames
for the container's MAC into the /32's hold (map `hpcmig_held`), addressed to its other end,
and the node routes the data address there too (`hold_steps`). At the release the node
routes them on at L3, to the node the container now runs on (`release_steps`), which routes
its containers' data addresses into their veths (`local_steps`): they arrive on CONTROL, and
the answers leave by eth0. Re-sent at L2 they would teach the switches the peers' MACs on
the source's port.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from hpcmig.network import fastpath as fast
from hpcmig.network import hold as holding
from hpcmig.network.plan import ContainerNet, Step, mac

DEVICE = "eth0"  # the data device in the container: MPI's interface
CONTROL = "ctl0"  # the veth's container end when the data path is on
PROGS = {"egress": "hpcmig_l2_out", "ingress": "hpcmig_l2_in"}
GARP_STEP = "hpcmig-garp"  # a step NodeNet runs itself: a gratuitous ARP from a device
ETH_P_ARP = b"\x08\x06"


@dataclass(frozen=True)
class DataPath:
    """Where the data path's addresses come from and which device carries them."""

    pool: IPv4Network  # the containers' /32s (hpcmig.toml `pool`)
    data_pool: IPv4Network  # their data addresses (`network_l2_pool`), as large
    uplink: str  # the node's device on the shared segment (`network_l2_uplink`)

    def address(self, address: IPv4Address | str) -> IPv4Address:
        """The data address of the container with this /32."""
        offset = int(IPv4Address(str(address))) - int(self.pool.network_address)
        if not 0 <= offset < self.pool.num_addresses:
            raise ValueError(f"{address} is not in the pool {self.pool}")
        return self.data_pool.network_address + offset

    def block(self, block: IPv4Network) -> IPv4Network:
        """The data block of a job's block."""
        return IPv4Network(f"{self.address(block.network_address)}/{block.prefixlen}")

    def container(self, address: IPv4Address | str) -> IPv4Address | None:
        """The /32 of the container with this data address (None: not a data address)."""
        addr = IPv4Address(str(address))
        if addr not in self.data_pool:
            return None
        return self.pool.network_address + (int(addr) - int(self.data_pool.network_address))


def data_mac(data: IPv4Address) -> str:
    return mac(0x64, data)  # 'd': not a veth's 'h' or 'c', nor the hold's 'k'


def staging_name(data: IPv4Address) -> str:
    """The macvlan's name in the node's netns, before it moves into the container's."""
    return "hmd" + data.packed.hex()


def create_steps(net: ContainerNet, dp: DataPath) -> list[Step]:
    """Make eth0 (down) in the container's netns, addressed. The guard is attached before it
    comes up (`attach_steps`, then `wake_steps`)."""
    data = dp.address(net.address)
    ns, tmp = net.netns, staging_name(data)
    inside = ["ip", "-n", ns]
    return [
        ["ip", "link", "add", tmp, "link", dp.uplink, "address", data_mac(data),
         "type", "macvlan", "mode", "bridge"],
        ["ip", "link", "set", tmp, "netns", ns],
        [*inside, "link", "set", tmp, "name", DEVICE],
        [*inside, "link", "set", DEVICE, "addrgenmode", "none"],  # no IPv6 link-local
        [*inside, "addr", "add", f"{data}/32", "dev", DEVICE],
    ]


def attach_steps(net: ContainerNet, pins: str) -> list[Step]:
    """The guard on both directions of eth0. By nsenter, not `tc -n`, which mounts a /sys of
    its own where the pinned programs are not."""
    tc = ["nsenter", f"--net={net.netns_path}", "tc"]
    steps: list[Step] = [[*tc, "qdisc", "replace", "dev", DEVICE, "clsact"]]
    for direction, prog in PROGS.items():
        steps.append([*tc, "filter", "replace", "dev", DEVICE, direction, "pref",
                      fast.TC_PREF, "handle", "1", "bpf", "da", "object-pinned",
                      f"{pins}/{prog}"])
    return steps


def remove_steps(net: ContainerNet, dp: DataPath) -> list[Step]:
    """A macvlan a failed create left in the node's netns (the netns takes the rest)."""
    return [["ip", "link", "del", staging_name(dp.address(net.address))]]


def quiet_steps(net: ContainerNet) -> list[Step]:
    return [["ip", "-n", net.netns, "link", "set", DEVICE, "down"]]


def wake_steps(net: ContainerNet, dp: DataPath) -> list[Step]:
    """eth0 up, its data pool on-link (a device going down loses its routes), and a
    gratuitous ARP (the last step)."""
    data = dp.address(net.address)
    inside = ["ip", "-n", net.netns]
    return [[*inside, "link", "set", DEVICE, "up"],
            [*inside, "route", "replace", str(dp.data_pool), "dev", DEVICE, "scope", "link",
             "src", str(data)],
            [GARP_STEP, net.netns_path, DEVICE, str(data), data_mac(data)]]


def local_steps(net: ContainerNet, dp: DataPath) -> list[Step]:
    """On the hosting node: the data address routed to the container's veth, for what
    reaches the node routed (a move's held packets, `release_steps`)."""
    data = str(dp.address(net.address))
    return [["ip", "route", "replace", f"{data}/32", "dev", net.host_veth],
            ["ip", "neigh", "replace", data, "lladdr", net.container_mac, "dev",
             net.host_veth, "nud", "permanent"]]


def hold_steps(address: IPv4Address | str, dp: DataPath) -> list[Step]:
    """While the container moves away: its data address routed into the node's hold (the
    /32's, `hpcmig.network.hold`), where the frames for its MAC go too (map hpcmig_held)."""
    out, _ = holding.devices(address)
    return [["ip", "route", "replace", f"{dp.address(address)}/32", "via", holding.NEXT_HOP,
             "dev", out, "onlink"]]


def release_steps(address: IPv4Address | str, dp: DataPath, to: list[str]) -> list[Step]:
    """The held packets' way out: `to` is ["dev", host veth] (the copy here) or ["via",
    node address] (where it now runs; that node routes them into its veth)."""
    return [["ip", "route", "replace", f"{dp.address(address)}/32", *to]]


def unroute_steps(address: IPv4Address | str, dp: DataPath) -> list[Step]:
    return [["ip", "route", "del", f"{dp.address(address)}/32"]]


def garp_frame(data: IPv4Address, hw: str) -> bytes:
    """A gratuitous ARP request (sender = target = data) from hw, to everyone."""
    mac_bytes = bytes.fromhex(hw.replace(":", ""))
    arp = (b"\x00\x01" + b"\x08\x00" + b"\x06\x04" + b"\x00\x01" + mac_bytes + data.packed
           + b"\x00" * 6 + data.packed)
    return b"\xff" * 6 + mac_bytes + ETH_P_ARP + arp + b"\x00" * 18  # 60 bytes, padded
