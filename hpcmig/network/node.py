"""Apply virtual-network plans to one node's network namespace.

Design note: with its parts `fastnode` (the fast path, traffic counts) and `l2node` (the L2
data path), the only module of hpcmig.network with effects. `NodeNet` runs the steps of
`hpcmig.network.plan` through `_proc`, in the calling process's network namespace (the agent,
which runs in its node's) or, for tests and the testbed, in a named one via
`nsenter --net=` (never `ip netns exec`: it makes a mount namespace, which CRIU cannot dump
around). Creation is all-or-nothing (a failed create removes what it made); removal is
idempotent (objects already gone are fine). It decides nothing: which node hosts which
address is the caller's (agent's, controller's) knowledge.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from ipaddress import IPv4Address, IPv4Network

from hpcmig import _proc
from hpcmig.errors import CommandError, HpcmigError
from hpcmig.network import fastpath as fast
from hpcmig.network import hold as holding
from hpcmig.network import l2, plan
from hpcmig.network import traffic as counting
from hpcmig.network.fastnode import FastLink
from hpcmig.network.l2node import DataLink
from hpcmig.network.plan import ContainerNet, NetworkError, Step

_GONE = ("Cannot find device", "No such file", "No such process", "not found",
         "does not exist", "No such file or directory", "Invalid argument")


log = logging.getLogger(__name__)


class NodeNet:
    """The virtual network as seen from one node (its network namespace)."""

    def __init__(self, netns: str | None = None, timeout: float = 30.0,
                 data_path: l2.DataPath | None = None) -> None:
        self.netns = netns  # name or path of the node's netns; None: our own
        self.timeout = timeout
        self.fast = FastLink(self)  # the fast path (hpcmig.network.fastpath)
        # the L2 data path (hpcmig.network.l2) where the configuration turns it on
        self.data = DataLink(self, data_path) if data_path else None

    def _prefix(self) -> list[str]:
        if self.netns is None:
            return []
        path = self.netns if self.netns.startswith("/") else f"{plan.NETNS_DIR}/{self.netns}"
        return ["nsenter", f"--net={path}"]

    def run(self, step: Step, *, input: str | None = None, tolerate_gone: bool = False) -> str:
        if self.netns is None and self._here(step):
            return ""
        if step[:1] == [holding.KICK_STEP]:  # in the node's netns, with this interpreter
            step = [sys.executable, "-c", holding.KICK, *step[1:]]
        try:
            return _proc.run([*self._prefix(), *step], timeout=self.timeout, input=input).stdout
        except CommandError as exc:
            if tolerate_gone and any(g in exc.stderr for g in _GONE):
                return ""
            batch = f" (its commands: {'; '.join(input.splitlines())})" if (
                input and "-batch" in step) else ""
            raise NetworkError(f"{exc}{batch}", hint=self._hint(step)) from None
        finally:  # a failed batch may have made its first changes
            if fast.changes_routes(step):
                self.fast.decide_afresh()

    def _here(self, step: Step) -> bool:
        """Run a kick or a sysctl of this netns in this process (no program to start: they
        lie on the migration's pause, hpcmig.network.hold); False if it is not one."""
        if step[:1] == [holding.KICK_STEP]:
            try:
                holding.kick(step[1], int(step[2]), int(step[3]))
            except OSError as exc:
                raise NetworkError(f"cannot send into {step[1]}: {exc}") from None
            return True
        if step[:2] == ["sysctl", "-qw"] and len(step) == 3 and "/" not in step[2]:
            key, _, value = step[2].partition("=")
            try:  # /proc/sys/net is this process's netns
                with open("/proc/sys/" + key.replace(".", "/"), "w") as fh:
                    fh.write(value)
            except OSError as exc:
                raise NetworkError(f"sysctl {step[2]}: {exc}") from None
            return True
        return False

    def _hint(self, step: Step) -> str | None:
        if step[:1] == ["nft"]:
            return "is nftables installed and the kernel's nf_tables available?"
        if step[:1] == ["bpftool"]:
            return "is bpftool installed and bpffs mounted on /sys/fs/bpf?"
        return "run as root; `ip netns list` and `ip link` show leftovers"

    def run_all(self, steps: list[Step], tolerate_gone: bool = False) -> None:
        """Run the steps in order; without tolerate_gone, runs of `ip` steps as one process
        each (plan.batched)."""
        if tolerate_gone:
            for step in steps:
                self.run(step, tolerate_gone=True)
            return
        for step, lines in plan.batched(steps):
            self.run(step, input=lines)

    # -- containers -----------------------------------------------------------------------
    def enable_forwarding(self) -> None:
        self.run_all(plan.forwarding_plan())

    def create_container_net(self, net: ContainerNet, routed: bool = True) -> ContainerNet:
        """Make the container's netns + veth and route its /32 here; undo on failure.

        routed=False for a migration target: the /32 is held on this node (`hold`) until
        `point_local` after `criu restore` (see plan.create_plan)."""
        self.enable_forwarding()
        try:
            self.run_all(plan.create_plan(net, routed, l2.CONTROL if self.data else "eth0"))
            if not routed:  # (its data address: frames come only after its own announcement)
                self.hold(net.address, data=False)
            self.fast.attach(net.host_veth)
            if self.data:
                self.data.create(net, up=routed)
            self.wait_link_up(net)
        except HpcmigError:
            self.remove_container_net(net)
            raise
        return net

    def wait_link_up(self, net: ContainerNet, timeout: float = 5.0) -> None:
        """Until the container's veth carries traffic: `ip link set up` returns before the
        veth runs, and MPICH started at once then finds "eth0 not available"."""
        dev = l2.CONTROL if self.data else "eth0"
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(["ip", "-n", net.netns, "-j", "link", "show", "dev", dev])
            links = json.loads(out or "[]")
            if links and links[0].get("operstate") == "UP":
                return
            if time.monotonic() > deadline:
                raise NetworkError(f"{dev} of {net.netns} is not up after {timeout:g} s")
            time.sleep(0.02)

    def remove_container_net(self, net: ContainerNet) -> None:
        """Remove the veth, the netns, a hold or blackhole of the /32 and its local route
        (a route to another node stays). Idempotent."""
        self.fast.forget_port(net.host_veth)
        for step in [*holding.remove_plan(net.address), *plan.remove_plan(net)]:
            self.run(step, tolerate_gone=True)
        if self.data:
            self.data.remove(net)

    def point_local(self, net: ContainerNet) -> None:
        """Route the /32 to the container's veth here, its veth up (lets held packets go to
        it), and its eth0 on the L2 data path up."""
        self.run_all([*plan.wake_plan(net), *plan.local_route_plan(net)])
        if self.data:
            self.data.wake(net)
        self._release(net.address, ["dev", net.host_veth])

    def route_via(self, address: IPv4Address | str, via: IPv4Address | str) -> None:
        """This node does not host the address: send it to the node that does (packets held
        here follow)."""
        self.run_all(plan.remote_route_plan(address, via))
        self._release(address, ["via", str(IPv4Address(str(via)))])

    def unroute(self, address: IPv4Address | str) -> None:
        self.run_all([*holding.remove_plan(address), *plan.unroute_plan(address)],
                     tolerate_gone=True)
        if self.data:
            self.data.forget(address)

    def hold(self, address: IPv4Address | str, data: bool = True) -> str:
        """Migration network lock: packets to the address wait on this node, without an
        answer, until `point_local` or `route_via` lets them go (hpcmig.network.hold).
        Where the hold cannot be made they are dropped instead (blackhole), and the peers
        retransmit. Returns which: "hold" or "blackhole". What the container sends still
        leaves until the dump has frozen it (`quiet_command`). `data`: hold the packets for
        its data address too, where the L2 data path is on (hpcmig.network.l2)."""
        if self._has_link(holding.devices(address)[0]):  # a leftover pair
            self.run_all(holding.remove_plan(address), tolerate_gone=True)
        try:
            self.run_all(holding.hold_plan(address))
        except NetworkError as exc:
            self.run_all(holding.remove_plan(address), tolerate_gone=True)
            log.warning("cannot hold packets to %s here (%s); dropping them instead", address,
                        exc)
            self.run_all(plan.blackhole_plan(address))
            return "blackhole"
        if self.data and data:
            try:
                self.data.hold(address)
            except NetworkError as exc:  # its peers retransmit after their back-off
                log.warning("cannot hold packets to the data address of %s here: %s",
                            address, exc)
        return "hold"

    def quiet_command(self, net: ContainerNet) -> list[str]:
        """The command that makes the copy quiet, its host veth down (`plan.quiet_plan`) and
        its eth0 on the L2 data path (`point_local` brings them up): CRIU runs it once it has
        frozen the copy it dumps (`criu.dump(on_freeze=)`). Then, the stopped copy's kernel cannot
        retransmit with TCP timestamps that run on while the restored copy's stay where the
        dump froze them (a peer that heard those rejected the restored copy's answers, PAWS,
        for about a second). Not earlier: an answer the copy wrote between the lock and the
        freeze would never leave, and its restored socket resends it only after its first
        retransmission timeout, 1 s (both seen with a capture on the nodes)."""
        [step] = plan.quiet_plan(net.address)
        if self.data:
            return ["sh", "-c", shlex.join([*self._prefix(), *step]) + " ; " +
                    self.data.quiet_command(net)]
        return [*self._prefix(), *step]

    def _release(self, address: IPv4Address | str, to: list[str], drain: float = 1.0) -> None:
        """Let packets held for the address take its current route (and those for its data
        address `to`, l2.release_steps); remove the hold."""
        out, _ = holding.devices(address)
        if not self._has_link(out):
            return
        if self.data:
            self.data.release(address, to)
        self.run_all(holding.release_plan(address), tolerate_gone=True)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            listed = self.run(["tc", "-j", "-s", "qdisc", "show", "dev", out],
                              tolerate_gone=True)
            if holding.backlog(json.loads(listed or "[]")) == 0:
                break
            time.sleep(0.005)
        self.run_all(holding.remove_plan(address), tolerate_gone=True)
        if self.data and to[0] == "via":
            self.data.unroute(address)

    def _has_link(self, name: str) -> bool:
        if self.netns is None:  # our own netns: /proc/self/net is it (/sys may be another's)
            with open("/proc/self/net/dev") as fh:
                return any(line.split(":", 1)[0].strip() == name for line in fh)
        return bool(self.run(["ip", "-j", "link", "show", "dev", name], tolerate_gone=True))

    def route_of(self, address: IPv4Address | str) -> dict[str, object] | None:
        """This node's route for address/32 as iproute2 JSON (None: no such route)."""
        out = self.run(["ip", "-j", "route", "show", "table", "all",
                        f"{IPv4Address(str(address))}/32"])
        routes = json.loads(out or "[]")
        exact = [r for r in routes if r.get("dst") == str(IPv4Address(str(address)))]
        return exact[0] if exact else None

    # -- isolation ------------------------------------------------------------------------
    def install_isolation(self, pool: IPv4Network, fastpath: bool = True) -> fast.Path:
        """Idempotent: (re)load the nft table that keeps jobs apart; keeps allowed blocks.
        A table an older hpcmig made with another counting set loses that set (and counts).
        Then the fast path (hpcmig.network.fastpath) where the node can run it; returns the
        path its containers' packets take (and the L2 data path's state where it is on)."""
        script = plan.isolation_script(pool, self.data.dp.data_pool if self.data else None)
        try:
            self.run(["nft", "-f", "-"], input=script)
        except NetworkError:
            self.run(["nft", "-f", "-"], input=plan.renew_counting_script())
            self.run(["nft", "-f", "-"], input=script)
        try:
            self.run(["nft", "-f", "-"], input=plan.refuse_script(pool))
        except NetworkError as exc:
            log.warning("containers' packets to unrouted addresses are dropped, not refused "
                        "(a lookup there waits for its timeout): %s", exc)
        if not fastpath:
            self.fast.remove()
            path = fast.Path("forwarded", "fast path off in the configuration")
        else:
            path = self.fast.enable()
        if self.data:
            data = self.data.describe()
            (log.warning if "unavailable" in data else log.info)("virtual network: %s", data)
            path = fast.Path(path.kind, "; ".join(p for p in (path.detail, data) if p))
        return path

    def allow_job(self, block: IPv4Network) -> None:
        """Containers inside `block` may reach each other through this node."""
        self.run_all(plan.allow_job_plan(block))
        if self.data:
            self.run_all(plan.allow_job_plan(self.data.dp.block(block)))
        if pins := self.fast.pins():
            self.fast.bpftool(self.fast.block_lines(pins, block))

    def forbid_job(self, block: IPv4Network) -> None:
        if pins := self.fast.pins():
            data = self.data.forbid_lines(pins, block) if self.data else ""
            self.fast.bpftool(fast.delete(pins, fast.JOBS, fast.block_key(block)) + data,
                              tolerate=True)
        self.run_all(plan.forbid_job_plan(block), tolerate_gone=True)
        if self.data:
            self.run_all(plan.forbid_job_plan(self.data.dp.block(block)), tolerate_gone=True)

    def remove_isolation(self) -> None:
        self.fast.remove()
        self.run_all(plan.remove_isolation_plan(), tolerate_gone=True)

    # -- traffic counts (hpcmig.network.fastnode) ----------------------------------------
    def traffic(self, block: IPv4Network | None) -> counting.Counts:
        return self.fast.traffic(block)

    def count_from(self, source: IPv4Address | str, peers: list[str]) -> None:
        self.fast.count_from(source, peers)

    def forget_traffic(self, pairs: list[counting.Pair]) -> None:
        self.fast.forget_traffic(pairs)

    def allowed_blocks(self) -> list[IPv4Network]:
        """Job blocks currently in the isolation set (for status and tests)."""
        try:
            out = self.run(["nft", "-j", "list", "set", "ip", plan.NFT_TABLE, plan.NFT_SET])
        except NetworkError:
            return []
        blocks: list[IPv4Network] = []
        for item in json.loads(out).get("nftables", []):
            for elem in item.get("set", {}).get("elem", []):
                first = elem["concat"][0] if isinstance(elem, dict) else elem
                if isinstance(first, dict) and "prefix" in first:
                    p = first["prefix"]
                    blocks.append(IPv4Network(f"{p['addr']}/{p['len']}"))
        if self.data:  # the data blocks allowed with them
            blocks = [b for b in blocks if not b.subnet_of(self.data.dp.data_pool)]
        return blocks

