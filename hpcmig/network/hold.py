"""Holding a container's packets while it moves: the migration network lock without loss.

Design note: pure plans, like `plan`. While a container is dumped, moved and restored, its
/32 must reach no socket (a socket-less address answers with RST and kills the peers'
connections). A blackhole route did that by dropping the packets, and the peers' TCP then
backed off: their longest wait was up to three times the pause (benchmarks/migration). Here
the /32 is routed instead into a queue that does not drain: a veth pair on the node (`out`
-> `back`), whose `out` end has a token-bucket qdisc with a rate of 125 B/s, and whose
`back` end hands every packet back to the node's forwarding. While held, a packet waits in
that queue (the bucket's first burst is used up by junk frames before the route points
there; what slips through at 125 B/s comes back round into it). On release the caller
first points the /32 where the container now lives (`point_local` on
the target, `route_via` on the source), then the qdisc's rate is raised and one frame
(local experimental ethertype, dropped by `back`) is sent into `out` to start the queue; the
held packets go round once more and take the new route, so the peers get their answers (and
their ACKs) as soon as the copy runs, and the pair is deleted once its queue is empty.
Kernel parts: veth, tbf, forwarding, a permanent neighbour entry (no ARP on the pair).
Where holding cannot be set up, the node falls back to the blackhole and says so.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

from hpcmig.network.plan import Step, mac

NEXT_HOP = "169.254.0.77"  # a link-local next hop on `out`; its neighbour entry is `back`
HOLD_RATE = "1kbit"  # 125 B/s slip through (and come round again) while held
HOLD_BURST = "30kb"  # what tc allows at that rate; a larger GSO packet is segmented
DRAIN_FRAMES = 24  # of 1514 bytes: more than the bucket's first burst
RELEASE_RATE = "40gbit"
LIMIT = "64mb"  # held bytes per address before the queue drops (hundreds of MB/s for 0.1 s)
KICK_STEP = "hpcmig-kick"  # a step NodeNet runs itself: send frames into a device
KICK = ("import sys\n"  # the same, in the node's netns when NodeNet is not in it
        "from hpcmig.network.hold import kick\n"
        "kick(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))\n")
ETHERTYPE = b"\x88\xb5"  # local experimental: `back` drops them


def kick(device: str, frames: int, size: int) -> None:
    """Send `frames` frames of `size` payload bytes into `device` (root; this netns)."""
    frame = b"\xff" * 6 + b"\x02" * 6 + ETHERTYPE + bytes(size)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((device, 0))
        for _ in range(frames):
            s.send(frame)


def devices(address: IPv4Address | str) -> tuple[str, str]:
    """(out, back) for this address: 11 characters, unique per address."""
    packed = IPv4Address(str(address)).packed.hex()
    return "hmh" + packed, "hmk" + packed


def back_mac(address: IPv4Address | str) -> str:
    return mac(0x6b, IPv4Address(str(address)))  # 'k': not a container veth's 'h' or 'c'


def hold_plan(address: IPv4Address | str) -> list[Step]:
    """Make the pair (a leftover one is deleted first by the caller), empty the bucket's
    first burst with junk frames (else a held packet would circle through it until its TTL
    ran out), and route the /32 into it."""
    addr = IPv4Address(str(address))
    out, back = devices(addr)
    return [  # the ip steps first, so NodeNet runs them as one `ip -batch`
        ["ip", "link", "add", out, "type", "veth", "peer", "name", back,
         "address", back_mac(addr)],
        ["ip", "link", "set", back, "up"],
        ["ip", "link", "set", out, "up"],
        ["ip", "neigh", "replace", NEXT_HOP, "lladdr", back_mac(addr), "dev", out,
         "nud", "permanent"],
        ["sysctl", "-qw", f"net.ipv4.conf.{back}.rp_filter=0"],
        ["tc", "qdisc", "replace", "dev", out, "root", "tbf", "rate", HOLD_RATE,
         "burst", HOLD_BURST, "limit", LIMIT],
        [KICK_STEP, out, str(DRAIN_FRAMES), "1500"],
        ["ip", "route", "replace", f"{addr}/32", "via", NEXT_HOP, "dev", out, "onlink"],
    ]


def release_plan(address: IPv4Address | str) -> list[Step]:
    """Let the held packets go (after the /32 was pointed elsewhere): raise the rate, and
    start the queue with one frame."""
    out, _ = devices(address)
    return [
        ["tc", "qdisc", "change", "dev", out, "root", "tbf", "rate", RELEASE_RATE,
         "burst", "1mb", "limit", LIMIT],
        [KICK_STEP, out, "1", "46"],
    ]


def remove_plan(address: IPv4Address | str) -> list[Step]:
    """Delete the pair (what is still queued is dropped; its route goes with it)."""
    return [["ip", "link", "del", devices(address)[0]]]


def backlog(tc_json: list[dict[str, object]]) -> int:
    """Packets still queued, from `tc -j -s qdisc show dev OUT`."""
    return sum(int(str(q.get("qlen", 0) or 0)) for q in tc_json)
