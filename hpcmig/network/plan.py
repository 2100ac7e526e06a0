"""Plans for the virtual network: the exact `ip`/`nft` commands, computed without running them.

Design note: pure functions only. Each returns the argv lists (or nft script) that
`hpcmig.network.node` runs in one node's network namespace, so the layout is reviewable and
unit-tested without root. The layout (PLATFORM.md, "Container gateway without an address on
the host"): the container's eth0 carries its /32, a permanent neighbour 169.254.1.1 with the
host-side veth's MAC, an onlink route to it and the default route via it; the host-side veth
carries NO address, and the hosting node routes the /32 to the veth; other nodes route the
/32 via the hosting node's address. MACs derive from the address, so a container restored
elsewhere gets the same link layer. Isolation is one nft table: forwarded traffic between two
addresses of the same job block is accepted (and counted where it leaves its container:
`hpcmig.network.traffic`); a container's packet to an address outside the pool is refused
(ICMP administratively prohibited), anything else from or to the pool is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from hpcmig.errors import HpcmigError
from hpcmig.network import traffic

GATEWAY = "169.254.1.1"
NFT_TABLE = "hpcmig"
NFT_SET = "intra"
NETNS_DIR = "/run/netns"
REFUSE = "reject with icmp type admin-prohibited"
Step = list[str]


class NetworkError(HpcmigError):
    """The virtual network could not be set up or changed on this node."""


@dataclass(frozen=True)
class ContainerNet:
    """The network identity of one container on its hosting node."""

    address: IPv4Address
    netns: str  # name under /run/netns

    @property
    def netns_path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"

    @property
    def host_veth(self) -> str:
        return "hmv" + self.address.packed.hex()  # 11 chars, unique per address

    @property
    def peer_veth(self) -> str:  # the container end, renamed eth0 once moved
        return "hmc" + self.address.packed.hex()

    @property
    def host_mac(self) -> str:
        return mac(0x68, self.address)

    @property
    def container_mac(self) -> str:
        return mac(0x63, self.address)


def mac(tag: int, address: IPv4Address) -> str:
    # 02: locally administered unicast; tag tells host side ('h') from container side ('c')
    return ":".join(f"{b:02x}" for b in bytes([0x02, tag]) + address.packed)


def container_net(address: IPv4Address | str, netns: str | None = None) -> ContainerNet:
    """Network identity for a container; netns defaults to hpcmig-<address>."""
    addr = IPv4Address(str(address))
    return ContainerNet(addr, netns or f"hpcmig-{addr}")


def _batch_key(step: Step) -> tuple[str, ...] | None:
    """What a step that `-batch` can run starts with: `ip [-n NS]`, `tc` or `nsenter --net=NS
    tc` (None: it cannot be batched): not `ip netns` (making a namespace moves the ip process
    into it), no other global option, nothing with blanks."""
    if any(not a or any(c.isspace() for c in a) for a in step):
        return None
    if step[:1] == ["ip"]:
        head = step[:3] if step[1:2] == ["-n"] else step[:1]
    elif step[:1] == ["tc"]:
        head = step[:1]
    elif step[:1] == ["nsenter"] and step[2:3] == ["tc"] and step[1].startswith("--net="):
        head = step[:3]
    else:
        return None
    rest = step[len(head):]
    if not rest or rest[0].startswith("-") or rest[0] == "netns":
        return None
    return tuple(head)


def batched(steps: list[Step]) -> list[tuple[Step, str | None]]:
    """The steps to run, with their input: consecutive `ip` (or `tc`) steps with the same
    start become one `ip [-n NS] -batch -` (`tc -batch -`) reading one command per line (one
    process, not one per step; it stops at the first command that fails)."""
    out: list[tuple[Step, str | None]] = []
    group: list[Step] = []
    head: tuple[str, ...] = ()  # the group's start

    def flush() -> None:
        if len(group) == 1:
            out.append((group[0], None))
        elif group:
            lines = "".join(" ".join(g[len(head):]) + "\n" for g in group)
            out.append(([*head, "-batch", "-"], lines))
        group.clear()

    for step in steps:
        key = _batch_key(step)
        if key is None or key != head:
            flush()
        if key is None:
            out.append((step, None))
        else:
            head = key
            group.append(step)
    flush()
    return out


def forwarding_plan() -> list[Step]:
    return [["sysctl", "-qw", "net.ipv4.ip_forward=1"]]


def create_plan(net: ContainerNet, routed: bool = True, inner: str = "eth0") -> list[Step]:
    """Make the netns and veth, address the container side (named `inner`), route the /32
    to it here.

    routed=False (a migration target before `criu restore`): no route to the veth yet, so
    that peers' packets meet no socket-less address (which would answer with RST and kill
    their connections); the node holds the /32 instead (`hold`, or `blackhole_plan` where it
    cannot) and `local_route_plan` points it here after the restore."""
    ns = net.netns
    addr = str(net.address)
    inside = ["ip", "-n", ns]
    return [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", net.host_veth, "address", net.host_mac, "type", "veth",
         "peer", "name", net.peer_veth, "address", net.container_mac, "netns", ns],
        [*inside, "link", "set", net.peer_veth, "name", inner],
        [*inside, "link", "set", "lo", "up"],
        [*inside, "addr", "add", f"{addr}/32", "dev", inner],
        [*inside, "link", "set", inner, "up"],
        [*inside, "neigh", "replace", GATEWAY, "lladdr", net.host_mac, "dev", inner,
         "nud", "permanent"],
        [*inside, "route", "replace", f"{GATEWAY}/32", "dev", inner, "scope", "link"],
        [*inside, "route", "replace", "default", "via", GATEWAY, "dev", inner, "onlink"],
        ["ip", "link", "set", net.host_veth, "up"],
        ["ip", "neigh", "replace", addr, "lladdr", net.container_mac, "dev", net.host_veth,
         "nud", "permanent"],
        *(local_route_plan(net) if routed else []),
    ]


def remove_plan(net: ContainerNet) -> list[Step]:
    """Undo create_plan (each step may find its object already gone). A route of the /32
    to another node stays (a migration's source routes it to the target before this)."""
    return [
        ["ip", "route", "del", "blackhole", f"{net.address}/32"],
        ["ip", "link", "del", net.host_veth],
        ["ip", "netns", "del", net.netns],
    ]


def local_route_plan(net: ContainerNet) -> list[Step]:
    """Route the /32 to the container's veth on its hosting node (also: lift a blackhole or
    a hold)."""
    return [["ip", "route", "replace", f"{net.address}/32", "dev", net.host_veth]]


def quiet_plan(address: IPv4Address | str) -> list[Step]:
    """Nothing the container sends leaves its veth (the copy being dumped; see NodeNet.hold)."""
    return [["ip", "link", "set", container_net(address).host_veth, "down"]]


def wake_plan(net: ContainerNet) -> list[Step]:
    """Undo `quiet_plan` (a copy that resumes where it was dumped)."""
    return [["ip", "link", "set", net.host_veth, "up"]]


def remote_route_plan(address: IPv4Address | str, via: IPv4Address | str) -> list[Step]:
    """On a node that does not host it: the /32 goes to the hosting node."""
    return [["ip", "route", "replace", f"{IPv4Address(str(address))}/32",
             "via", str(IPv4Address(str(via)))]]


def unroute_plan(address: IPv4Address | str) -> list[Step]:
    return [["ip", "route", "del", f"{IPv4Address(str(address))}/32"]]


def blackhole_plan(address: IPv4Address | str) -> list[Step]:
    """The migration network lock where the node cannot hold packets (hpcmig.network.hold):
    packets to the container vanish silently, peers retransmit (PLATFORM.md: CRIU's own lock
    made peers see RSTs)."""
    return [["ip", "route", "replace", "blackhole", f"{IPv4Address(str(address))}/32"]]


def isolation_script(pool: IPv4Network, data_pool: IPv4Network | None = None) -> str:
    """nft script installing (idempotently, atomically) the job-isolation table; keeps the
    set of job blocks when re-run. `data_pool`: the L2 data path's addresses, kept apart
    the same way where a node forwards them (a move's held packets, or a container that
    sends from its data address through its veth; hpcmig.network.l2)."""
    t = f"ip {NFT_TABLE}"
    return "\n".join([
        f"add table {t}",
        f"add set {t} {NFT_SET} {{ type ipv4_addr . ipv4_addr; flags interval; }}",
        traffic.set_definition(t),
        f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
        f"flush chain {t} forward",
        traffic.count_rule(t),
        f"add rule {t} forward ip saddr . ip daddr @{NFT_SET} accept",
        # out of the pool (a site's DNS, the internet): refused at once, so that a lookup
        # inside a container fails now rather than after the resolver's 5 s timeout
        f"add rule {t} forward ip saddr {pool} ip daddr != {pool} {REFUSE}",
        f"add rule {t} forward ip saddr {pool} drop",
        f"add rule {t} forward ip daddr {pool} drop",
        *([f"add rule {t} forward ip saddr {data_pool} drop",
           f"add rule {t} forward ip daddr {data_pool} drop"] if data_pool else []),
        "",
    ])


def refuse_script(pool: IPv4Network) -> str:
    """nft script refusing, before routing, what a container sends out of the pool to an
    address that is not the node's own: also where the node has no route (its "net
    unreachable" is no error for a UDP socket: a resolver would wait its 5 s). Kernels
    without reject in prerouting refuse only what they route (the forward rule)."""
    t = f"ip {NFT_TABLE}"
    return "\n".join([
        f"add chain {t} prerouting {{ type filter hook prerouting priority filter; "
        "policy accept; }",
        f"flush chain {t} prerouting",
        f"add rule {t} prerouting ip saddr {pool} ip daddr != {pool} "
        f"fib daddr type != local {REFUSE}",
        "",
    ])


def renew_counting_script() -> str:
    """Drop the forward rules and the counting set (an older definition of it, which
    `isolation_script` cannot change in place); the blocks stay."""
    t = f"ip {NFT_TABLE}"
    return f"flush chain {t} forward\ndelete set {t} {traffic.TRAFFIC_SET}\n"


def _element(block: IPv4Network) -> str:
    return f"{{ {block} . {block} }}"


def allow_job_plan(block: IPv4Network) -> list[Step]:
    return [["nft", "add", "element", "ip", NFT_TABLE, NFT_SET, _element(block)]]


def forbid_job_plan(block: IPv4Network) -> list[Step]:
    return [["nft", "delete", "element", "ip", NFT_TABLE, NFT_SET, _element(block)]]


def remove_isolation_plan() -> list[Step]:
    return [["nft", "delete", "table", "ip", NFT_TABLE]]


def hosts_file(entries: Iterable[tuple[IPv4Address | str, str]]) -> str:
    """Text of the hosts file `hpcmig-rsh` reads ($HPCMIG_HOSTS): `addr name` per line."""
    return "".join(f"{IPv4Address(str(a))} {name}\n" for a, name in entries)
