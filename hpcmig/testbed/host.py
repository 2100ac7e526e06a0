"""Namespaces, bridge, mounts, files and the job user of the testbed (effects only).

Every function here makes or removes one kind of thing and is safe to call when the thing is
already there (make) or already gone (remove): `up` after a crash and `down` twice both work.
It must not start daemons (daemons.py) or decide the order of steps (cluster.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from pathlib import Path

from hpcmig import _proc
from hpcmig.errors import CommandError, TestbedError
from hpcmig.network import fastload
from hpcmig.testbed.plan import LINK_PREFIXES, MARKER, USER_GECOS, Node, Plan

NS_BIND_ATTEMPTS = 3  # make_node_namespaces: tries of `unshare --mount=FILE`


def _ip(*args: str, check: bool = True) -> _proc.Result:
    return _proc.run(["ip", *args], check=check, timeout=30)


def mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _umount(path: Path) -> None:
    while mounted(path):
        _proc.run(["umount", "-l", str(path)], check=False, timeout=30)
        if mounted(path):
            raise TestbedError(f"cannot unmount {path}", "something still uses it; see `lsof`")


# -- bridge and node network namespaces ------------------------------------------------------
def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_list() -> list[str]:
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []


def make_bridge(plan: Plan) -> None:
    if not link_exists(plan.bridge):
        _ip("link", "add", plan.bridge, "type", "bridge")
    _ip("addr", "replace", f"{plan.bridge_address}/{plan.prefixlen}", "dev", plan.bridge)
    _ip("link", "set", plan.bridge, "up")


def make_leaves(plan: Plan) -> None:
    """Leaf bridges under the spine (`plan.bridge`), each uplink limited both ways."""
    if plan.leaves == 1:
        return
    for leaf in range(1, plan.leaves + 1):
        bridge = f"hpcmig-tbl{leaf}"
        up, down = plan.uplink(leaf)
        if not link_exists(bridge):
            _ip("link", "add", bridge, "type", "bridge")
        if not link_exists(up):
            _ip("link", "add", up, "type", "veth", "peer", "name", down)
        _ip("link", "set", up, "master", bridge)
        _ip("link", "set", down, "master", plan.bridge)
        for link in (bridge, up, down):
            _ip("link", "set", link, "up")
        for link in (up, down):  # each end limits what it sends: both directions
            _proc.run(["tc", "qdisc", "replace", "dev", link, "root", "tbf", "rate",
                       plan.spine_rate, "burst", "256kb", "latency", "50ms"])


def remove_leaves() -> None:
    """Every leaf bridge and uplink a testbed may have made (a crashed run's too)."""
    for name in sorted(os.listdir("/sys/class/net")):
        if name.startswith(LINK_PREFIXES) and link_exists(name):
            _ip("link", "del", name, check=False)  # a veth takes its peer along


def make_node_netns(plan: Plan, node: Node) -> None:
    if node.netns not in netns_list():
        _ip("netns", "add", node.netns)
    inside = ["ip", "-n", node.netns]
    if not link_exists(node.host_veth):
        _proc.run([*inside, "link", "del", "eth0"], check=False)
        _ip("link", "add", node.host_veth, "type", "veth", "peer", "name", f"{node.host_veth}p")
        _ip("link", "set", f"{node.host_veth}p", "netns", node.netns)
        _proc.run([*inside, "link", "set", f"{node.host_veth}p", "name", "eth0"])
    _ip("link", "set", node.host_veth, "master", plan.bridge_of(node))
    _ip("link", "set", node.host_veth, "up")
    _proc.run([*inside, "link", "set", "lo", "up"])
    _proc.run([*inside, "addr", "replace", f"{node.address}/{plan.prefixlen}", "dev", "eth0"])
    _proc.run([*inside, "link", "set", "eth0", "up"])
    # Containers of the virtual cluster are routed through their node.
    _proc.run(["ip", "netns", "exec", node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])


def remove_node_netns(node: Node) -> None:
    for name in netns_list():  # the node's, and its containers' (`<container>.<node>`)
        if name == node.netns or name.endswith(f".{node.name}"):
            _ip("netns", "del", name, check=False)
    fastload.sweep()  # the fast path's pins in a bpffs the node shared with this machine
    if link_exists(node.host_veth):
        _ip("link", "del", node.host_veth, check=False)


def remove_bridge(plan: Plan) -> None:
    if link_exists(plan.bridge):
        _ip("link", "del", plan.bridge, check=False)


# -- per-node mount and UTS namespaces -------------------------------------------------------
def make_ns_dir(plan: Plan) -> None:
    """A private mount for the files that keep node namespaces alive (unshare(1) needs it)."""
    plan.ns_dir.mkdir(parents=True, exist_ok=True)
    if not mounted(plan.ns_dir):
        _proc.run(["mount", "--bind", str(plan.ns_dir), str(plan.ns_dir)])
    _proc.run(["mount", "--make-private", str(plan.ns_dir)])


def make_node_namespaces(plan: Plan, node: Node) -> None:
    """Mount + UTS namespaces for a node: hostname, private /tmp, /dev/shm, /dev/pts,
    /run/hpcmig and /etc/hosts (every node sees hpcmig's paths where a real node would)."""
    mnt, uts = plan.mnt_ns(node), plan.uts_ns(node)
    if mounted(mnt) and mounted(uts):
        return
    _umount(mnt)
    _umount(uts)
    mnt.touch()
    uts.touch()
    tmp = plan.node_dir(node) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o1777)
    run = plan.node_dir(node) / "run-hpcmig"  # the node's own /run/hpcmig (agent, containers)
    run.mkdir(parents=True, exist_ok=True)
    run.chmod(0o755)
    script = (
        f"hostname {node.name} && mount --bind {tmp} /tmp && "
        f"mkdir -p /run/hpcmig && mount --bind {run} /run/hpcmig && "
        "mount -t tmpfs -o mode=1777,size=4g tmpfs /dev/shm && "
        # a node's own pseudo-terminals, as on a real node: CRIU restores a pty (Open MPI's
        # orted keeps some) under its old index, which must be free on the target node
        "mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts && "
        "mount --bind /dev/pts/ptmx /dev/ptmx && "
        f"mount --bind {plan.hosts_file} /etc/hosts"
    )
    argv = ["nsenter", f"--net={plan.netns_path(node)}", "--",
            "unshare", f"--mount={mnt}", f"--uts={uts}", "--propagation", "private",
            "sh", "-c", script]
    for attempt in range(1, NS_BIND_ATTEMPTS + 1):
        try:
            _proc.run(argv)
            return
        except CommandError as exc:
            # Seen on Linux 6.18 while other namespaces were being made on the machine at the
            # same moment: binding the new mount namespace fails with EINVAL now and then;
            # the next try works. Anything else is a real error.
            if attempt == NS_BIND_ATTEMPTS or "failed: Invalid argument" not in exc.stderr:
                raise
            _umount(mnt)
            _umount(uts)
            time.sleep(0.2 * attempt)


def remove_node_namespaces(plan: Plan, node: Node) -> None:
    for path in (plan.mnt_ns(node), plan.uts_ns(node)):
        _umount(path)


def remove_ns_dir(plan: Plan) -> None:
    _umount(plan.ns_dir)


def ns_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


# -- files -----------------------------------------------------------------------------------
def write_owned_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a config file that the testbed owns; refuse to replace one somebody else wrote."""
    if path.exists() and MARKER not in path.read_text(errors="replace"):
        raise TestbedError(
            f"{path} exists and was not written by hpcmig",
            "the testbed would replace this machine's Slurm configuration; move it away first",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def remove_owned_file(path: Path) -> None:
    if path.exists() and MARKER in path.read_text(errors="replace"):
        path.unlink()


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise TestbedError(f"could not remove {path}", "a mount may still be active below it")


# -- the unprivileged job user ---------------------------------------------------------------
def ensure_user(plan: Plan) -> pwd.struct_passwd:
    try:
        entry = pwd.getpwnam(plan.user)
    except KeyError:
        plan.home.parent.mkdir(parents=True, exist_ok=True)
        _proc.run(
            [
                "useradd", "--create-home", "--home-dir", str(plan.home), "--shell", "/bin/bash",
                "--comment", USER_GECOS, "--user-group", plan.user,
            ]
        )
        entry = pwd.getpwnam(plan.user)
    else:
        if entry.pw_gecos != USER_GECOS:
            raise TestbedError(
                f"user '{plan.user}' exists and was not made by the testbed",
                "remove it or choose another testbed user",
            )
    home = Path(entry.pw_dir)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o755)
    return entry


def remove_user(plan: Plan) -> None:
    try:
        entry = pwd.getpwnam(plan.user)
    except KeyError:
        return
    if entry.pw_gecos != USER_GECOS:
        return  # not ours: leave it
    try:
        _proc.run(["userdel", plan.user], timeout=30)
    except CommandError as exc:
        raise TestbedError(f"could not remove user {plan.user}: {exc}") from exc
