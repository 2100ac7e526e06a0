"""Two throwaway nodes with one hpcmig container each, for the network benchmark (root).

Design note: this module owns every object the benchmark makes on the machine, all named
`hpcmig-nb*`: two node network namespaces joined by a veth (10.254.77.1/24 <-> .2/24, no
route out), a system user `hpcmignb` (the job's user), a private munged (own key) and one
job's two containers, built with hpcmig's public APIs exactly as an agent would:
`AddressPool` (a state file under WORK) gives the job's block, `NodeNet.create_container_net`
+ `route_via` + `install_isolation`/`allow_job` make the routed /32 network with its nft
forward filter, and `get_runtime("ns").start(ContainerSpec(...))` starts the inits as the
job's user. `bench_nodes()` removes everything on the way out, even on failure or Ctrl-C;
`sweep()` first removes what a crashed earlier run left behind (processes found by their
network namespace or their WORK paths, namespaces, links, the user). It runs no MPI.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from hpcmig import _proc, _procfs
from hpcmig.errors import HpcmigError
from hpcmig.network import (
    AddressPool,
    NodeNet,
    container_address,
    container_net,
    hosts_file,
    l2,
    plan,
    traffic,
)
from hpcmig.network.fastpath import CONTAINER_PREFIX
from hpcmig.network.plan import ContainerNet
from hpcmig.runtime import Container, ContainerSpec, get_runtime
from hpcmig.runtime import ns as ns_runtime

WORK = "/run/hpcmig-nb"
NODES = {"hpcmig-nb-n1": "10.254.77.1", "hpcmig-nb-n2": "10.254.77.2"}
LINKS = ("hpcmig-nbv1", "hpcmig-nbv2")
CONTAINERS = ("hpcmig-nb-c0", "hpcmig-nb-c1")  # container i on node i (also its netns name)
USER = "hpcmignb"
JOB_ID = "nb1"
POOL = "10.252.0.0/16"
TOOLS = ("ip", "ethtool", "nsenter", "unshare", "nft", "munged", "setpriv", "useradd", "userdel",
         "mpiexec.mpich", "mpiexec.openmpi", "hydra_pmi_proxy", "orted")
VENV_BIN = os.path.dirname(sys.executable)
# mode container-l2 (run.py) only: hpcmig's L2 data path on the nodes' eth0
DATA_PATH = l2.DataPath(IPv4Network(POOL), IPv4Network("10.250.0.0/16"), "eth0")
COUNTING = f"@{traffic.TRAFFIC_SET} accept"  # the counting rule, as nft lists it


def uncounted(script: str) -> str:
    """The isolation script without its counting rule (traffic.count_rule)."""
    return "\n".join(ln for ln in script.splitlines() if COUNTING not in ln) + "\n"


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, containers, a system user)"
    gone = [t for t in TOOLS if shutil.which(t) is None]
    return f"missing programs: {', '.join(gone)}" if gone else None


def ready(name: str) -> None:
    """Exit with the reason if this machine cannot run the benchmark `name`; else let
    SIGTERM/SIGHUP unwind like Ctrl-C, so that everything made is removed."""
    why = missing()
    if why:
        raise SystemExit(f"{name}: {why}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)


def sh(*argv: str, check: bool = True, timeout: float = 30.0) -> _proc.Result:
    return _proc.run(list(argv), check=check, timeout=timeout)


def in_node(node: str, *argv: str, check: bool = True) -> _proc.Result:
    return sh("nsenter", f"--net=/run/netns/{node}", *argv, check=check)


@dataclass
class Bench:
    """What the measurements need to know about the nodes and the job."""

    nodes: dict[str, str]  # node netns -> node address
    uid: int
    gid: int
    munge_socket: str
    hosts_path: str  # the job's hosts file ($HPCMIG_HOSTS)
    block: IPv4Network
    addresses: list[str]  # container i's virtual address
    containers: list[Container] = field(default_factory=list)
    container_env: dict[str, str] = field(default_factory=dict)
    link_wait: float = 0.0  # seconds the links took to come up after setup

    def set_filter(self, on: bool, counted: bool = True, fast: bool = False) -> None:
        """Install (as the agent does) or remove the nft isolation on both nodes;
        `counted=False`: the isolation without the traffic counting (its cost, issue 14);
        `fast`: with the fast path, as the agent installs it (hpcmig.network.fastpath),
        else the kernel forwards."""
        for i, ns in enumerate(self.nodes):
            node = NodeNet(ns)
            node.remove_isolation()  # a fresh table and no fast path: nothing of another mode
            if not on:
                continue
            if fast:
                path = node.install_isolation(IPv4Network(POOL))
                if path.kind != "bpf":
                    raise HpcmigError(f"{ns}: no fast path: {path}")
            else:
                script = plan.isolation_script(IPv4Network(POOL))
                node.run(["nft", "-f", "-"], input=script if counted else uncounted(script))
            node.allow_job(self.block)
            if counted:  # as the agent does for the container it starts on the node
                node.count_from(self.addresses[i], self.addresses)

    def fast(self) -> list[bool]:
        """Per node, whether it forwards the job's packets by the fast path."""
        return [NodeNet(ns).fast.path().kind == "bpf" for ns in self.nodes]

    def counted(self) -> bool:
        """Whether both nodes count the job's traffic (hpcmig.network.traffic)."""
        return all(COUNTING in NodeNet(ns).run(
            ["nft", "list", "chain", "ip", plan.NFT_TABLE, "forward"]) for ns in self.nodes)

    def filtered(self) -> bool:
        """Whether both nodes forward the job's traffic through the nft isolation table."""
        return all(self.block in NodeNet(ns).allowed_blocks() for ns in self.nodes)


# -- leftovers ---------------------------------------------------------------------------------
def _netns_names() -> list[str]:
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []


def _ours(name: str) -> bool:
    return name.startswith("hpcmig-nb-")


def pids_in_netns(path: str) -> list[int]:
    """Processes whose network namespace is the one at `path` (all of them are ours)."""
    try:
        inode = os.stat(path).st_ino
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
    return found


def kill_in_netns(path: str) -> int:
    """SIGKILL every process in that namespace (the benchmark's own: MPI leftovers, inits)."""
    pids = pids_in_netns(path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids_in_netns(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(pids)


def _kill_work_processes() -> None:
    """Processes started from WORK by an earlier run (munged, container inits)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            argv = _procfs.argv(int(entry))
            if any(a.startswith(WORK + "/") or f"={WORK}/" in a for a in argv):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)


def sweep() -> None:
    """Remove what an earlier (crashed) run left: processes, namespaces, links, user, files."""
    for name in _netns_names():
        if _ours(name):
            kill_in_netns(f"/run/netns/{name}")
    _kill_work_processes()
    for name in _netns_names():
        if _ours(name):
            sh("ip", "netns", "del", name, check=False)
    for link in LINKS:
        sh("ip", "link", "del", link, check=False)
    sh("userdel", USER, check=False)
    shutil.rmtree(WORK, ignore_errors=True)


# -- pieces ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _node_pair() -> Iterator[dict[str, str]]:
    try:
        for ns in NODES:
            sh("ip", "netns", "add", ns)
        n1, n2 = NODES
        sh("ip", "link", "add", LINKS[0], "netns", n1, "type", "veth", "peer", "name",
           LINKS[1], "netns", n2)
        for ns, link in zip(NODES, LINKS, strict=True):
            in_node(ns, "ip", "link", "set", "lo", "up")
            in_node(ns, "ip", "link", "set", link, "name", "eth0")
            in_node(ns, "ip", "addr", "add", f"{NODES[ns]}/24", "dev", "eth0")
            in_node(ns, "ip", "link", "set", "eth0", "up")
        yield dict(NODES)
    finally:
        for ns in NODES:
            kill_in_netns(f"/run/netns/{ns}")
            sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def _user() -> Iterator[pwd.struct_passwd]:
    sh("userdel", USER, check=False)
    sh("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/bin/sh",
       "--home-dir", "/nonexistent", USER)
    try:
        yield pwd.getpwnam(USER)
    finally:
        sh("userdel", USER, check=False)


@contextlib.contextmanager
def _munged() -> Iterator[str]:
    """A private munged with its own key; yields its socket; killed by pid afterwards."""
    top = os.path.join(WORK, "munge")
    key_dir, run_dir = os.path.join(top, "key"), os.path.join(top, "run")
    os.makedirs(top, 0o755)
    os.mkdir(key_dir, 0o700)
    os.mkdir(run_dir, 0o755)
    key = os.path.join(key_dir, "munge.key")
    with open(key, "wb") as fh:
        fh.write(os.urandom(1024))
    os.chmod(key, 0o400)
    for path in (key_dir, key, run_dir):
        shutil.chown(path, "munge", "munge")
    sock = os.path.join(run_dir, "munge.socket")
    pid = _proc.spawn(
        ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged", "-F",
         f"--socket={sock}", f"--key-file={key}", f"--pid-file={run_dir}/munged.pid",
         f"--log-file={run_dir}/munged.log", f"--seed-file={run_dir}/munged.seed"],
        log_path=os.path.join(top, "munged.out"))
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.exists(sock):
            raise RuntimeError(f"private munged did not start: see {top}/munged.out")
        yield sock
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@contextlib.contextmanager
def _job_network(nodes: dict[str, str], block: IPv4Network) -> Iterator[list[ContainerNet]]:
    """Container i's netns + veth on node i, /32 routes on the other node, nft isolation."""
    node_nets = [NodeNet(ns) for ns in nodes]
    addresses = [nodes[ns] for ns in nodes]
    nets = [container_net(container_address(block, i), CONTAINERS[i]) for i in range(2)]
    made: list[tuple[NodeNet, ContainerNet]] = []
    try:
        for node, net in zip(node_nets, nets, strict=True):
            node.create_container_net(net)
            made.append((node, net))
        node_nets[0].route_via(nets[1].address, addresses[1])
        node_nets[1].route_via(nets[0].address, addresses[0])
        for node in node_nets:
            node.install_isolation(IPv4Network(POOL))
            node.allow_job(block)
        yield nets
    finally:
        for node, net in made:
            kill_in_netns(net.netns_path)
            node.remove_container_net(net)
        for node in node_nets:
            node.remove_isolation()


# -- the whole thing ---------------------------------------------------------------------------
@contextlib.contextmanager
def bench_nodes() -> Iterator[Bench]:
    """Sweep, build two nodes with one container each, yield, tear everything down."""
    sweep()
    os.makedirs(WORK, 0o755)
    os.chmod(WORK, 0o755)
    ns_runtime.become_subreaper()  # like the agent: stopped inits are ours to reap
    rt = get_runtime("ns")
    try:
        with contextlib.ExitStack() as stack:
            user = stack.enter_context(_user())
            sock = stack.enter_context(_munged())
            nodes = stack.enter_context(_node_pair())
            block = AddressPool(os.path.join(WORK, "pool.json"), pool=POOL).reserve(JOB_ID)
            nets = stack.enter_context(_job_network(nodes, block))
            hosts = os.path.join(WORK, "hosts")
            with open(hosts, "w") as fh:
                fh.write(hosts_file((n.address, n.netns) for n in nets))
            os.chmod(hosts, 0o644)
            env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HPCMIG_HOSTS": hosts,
                   "HPCMIG_MUNGE_SOCKET": sock, "HOME": "/tmp"}
            bench = Bench(nodes=nodes, uid=user.pw_uid, gid=user.pw_gid, munge_socket=sock,
                          hosts_path=hosts, block=block, addresses=[str(n.address) for n in nets],
                          container_env=env)
            state_dir = os.path.join(WORK, "containers")
            for name, net in zip(CONTAINERS, nets, strict=True):
                spec = ContainerSpec(name=name, job_id=JOB_ID, uid=user.pw_uid,
                                     gid=user.pw_gid, netns=net.netns_path,
                                     address=str(net.address), env=env, state_dir=state_dir,
                                     stop_grace=2.0)
                container = rt.start(spec)
                stack.callback(rt.stop, container)
                bench.containers.append(container)
            bench.link_wait = wait_links_up([f"/run/netns/{ns}" for ns in nodes]
                                            + [net.netns_path for net in nets])
            yield bench
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


def _operstate(netns_path: str, dev: str) -> str:
    out = sh("nsenter", f"--net={netns_path}", "ip", "-j", "link", "show", "dev", dev).stdout
    return str(json.loads(out)[0].get("operstate", "?"))


def wait_links_up(paths: list[str], timeout: float = 10.0, dev: str = "eth0") -> float:
    """Wait until `dev` is operationally UP in each netns; return the seconds waited.

    A new veth reaches IFF_RUNNING only when the kernel's link watcher gets to it (up to
    about a second later); UCX skips a device that is not running, and MPICH then fails
    with "Destination is unreachable"."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    for path in paths:
        while (state := _operstate(path, dev)) != "UP":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dev} in {path} is still {state} after {timeout:g} s")
            time.sleep(0.05)
    return time.monotonic() - t0


def _rename(ctr: str, old: str, new: str) -> None:
    """Rename a device in container `ctr`'s netns, keeping its routes and permanent
    neighbours (a device is renamed down, and going down drops them)."""
    routes = json.loads(in_node(ctr, "ip", "-j", "route", "show", "dev", old).stdout)
    neighs = json.loads(in_node(ctr, "ip", "-j", "neigh", "show", "dev", old, "nud",
                                "permanent").stdout)
    in_node(ctr, "ip", "link", "set", old, "down")
    in_node(ctr, "ip", "link", "set", old, "name", new)
    in_node(ctr, "ip", "link", "set", new, "up")
    for n in neighs:
        in_node(ctr, "ip", "neigh", "replace", n["dst"], "lladdr", n["lladdr"], "dev", new,
                "nud", "permanent")
    for r in sorted(routes, key=lambda r: "gateway" in r):  # on-link routes first
        argv = ["ip", "route", "replace", r["dst"], *(["via", r["gateway"]] if "gateway" in r
                                                      else []), "dev", new]
        argv += ["onlink"] if "onlink" in r.get("flags", []) else []
        argv += ["scope", r["scope"]] if "scope" in r else []
        argv += ["src", r["prefsrc"]] if "prefsrc" in r else []
        in_node(ctr, *argv)


@contextlib.contextmanager
def l2_data_path(bench: Bench) -> Iterator[list[str]]:
    """Mode container-l2: hpcmig's L2 data path (hpcmig.network.l2), made by its own code on
    the running containers: each container's veth renamed to l2.CONTROL (what a container
    made with `network_l2 = true` has), then `DataLink.create` gives it eth0, a guarded
    macvlan on its node's eth0 with its data address, and the job's data block is allowed
    on both nodes and its pairs counted. Yields the data addresses; all of it is undone
    afterwards."""
    nets = [container_net(a, c) for a, c in zip(bench.addresses, CONTAINERS, strict=True)]
    node_nets = [NodeNet(ns, data_path=DATA_PATH) for ns in bench.nodes]
    aside: list[str] = []
    try:
        for node, net in zip(node_nets, nets, strict=True):
            node.allow_job(bench.block)
            _rename(net.netns, "eth0", l2.CONTROL)
            aside.append(net.netns)
            assert node.data is not None
            node.data.create(net, up=True)
            node.count_from(net.address, bench.addresses)  # the data pairs too, as the agent
        paths = [n.netns_path for n in nets]
        wait_links_up(paths)
        wait_links_up(paths, dev=l2.CONTROL)
        yield [str(DATA_PATH.address(n.address)) for n in nets]
    finally:
        for ctr in aside:
            kind = in_node(ctr, "ip", "-j", "-d", "link", "show", "dev", "eth0", check=False)
            if kind.returncode == 0 and '"info_kind":"macvlan"' in kind.stdout:
                in_node(ctr, "ip", "link", "del", "eth0")
            _rename(ctr, l2.CONTROL, "eth0")
        for node in node_nets:
            node.forbid_job(bench.block)  # the data block, and the block ...
            NodeNet(node.netns).allow_job(bench.block)  # ... allowed again
        if aside:
            wait_links_up([f"/run/netns/{c}" for c in aside])


@contextlib.contextmanager
def veth_gro(bench: Bench) -> Iterator[int]:
    """Mode container-gro: GRO on at both ends of each container's veth (the host end in its
    node, eth0 in the container), which puts a veth in NAPI mode (a ring and a poll instead
    of the CPU's backlog queue). Yields how many devices it switched; switched off after."""
    devices = [(f"/run/netns/{c}", "eth0") for c in CONTAINERS]
    for ns in bench.nodes:
        links = json.loads(in_node(ns, "ip", "-j", "link", "show").stdout)
        devices += [(f"/run/netns/{ns}", link["ifname"]) for link in links
                    if link["ifname"].startswith(CONTAINER_PREFIX)]
    done: list[tuple[str, str]] = []
    try:
        for path, dev in devices:
            sh("nsenter", f"--net={path}", "ethtool", "-K", dev, "gro", "on")
            done.append((path, dev))
        yield len(done)
    finally:
        for path, dev in done:
            sh("nsenter", f"--net={path}", "ethtool", "-K", dev, "gro", "off", check=False)


def wire_counters(node: str) -> tuple[int, int]:
    """(bytes, packets) node has sent on its eth0 (the link between the two nodes) so far.
    A veth counts each skb it passes as one packet, GSO or not."""
    out = in_node(node, "ip", "-j", "-s", "link", "show", "dev", "eth0").stdout
    tx = json.loads(out)[0]["stats64"]["tx"]
    return int(tx["bytes"]), int(tx["packets"])
