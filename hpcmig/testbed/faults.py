"""Faults a test (or a curious user) injects into a testbed node, and healing them.

Design note: each node's agent reads its health from sources this module owns: a fixture
`/sys` view (`<node dir>/sys`: an EDAC memory controller, a hwmon temperature sensor, eth0's
error counters), a check-script directory (`<node dir>/checks.d`) and a small tmpfs mounted
inside the node's own mount namespace (`<node dir>/scratch`, watched for free space). A
degradation changes what the agent reads there, exactly as a failing DIMM, a hot CPU, a full
disk, a flapping NIC or a site check would: nothing is mocked above the agent. `crash`
SIGKILLs everything that belongs to the node (its slurmd and agent, every process in its
network or mount namespace, and its containers, which live in their own network namespaces
named `<container>.<node>`): a real node failure, not only its daemons. Then it takes the
dead containers' links down: the node's kernel lives on in the testbed, and a socket the kill
left closing (FIN_WAIT, retransmitted for minutes) would otherwise reach a container restored
elsewhere under the same address and 4-tuple and end its connection. (The node's own address
still refuses connections at once, as a node whose daemons died would.) `heal` undoes all of
it (a crashed node's daemons are started again by `cluster.restart_node`). No decisions here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from hpcmig import _proc
from hpcmig.errors import UsageError
from hpcmig.testbed import daemons
from hpcmig.testbed.plan import Node, Plan

KINDS = ("memory-errors", "temperature", "disk", "nic", "check")
SCRATCH_MB = 64
NORMAL_TEMP = 45000  # millidegrees C
HOT_TEMP = 105000
CRASH_WAIT = 5.0  # seconds for SIGKILLed processes to be gone
LAST_PACKETS = 0.2  # then this long for their sockets' FIN/RST to leave, before the link goes
CHECK = "00-testbed-injected"


def sys_root(plan: Plan, node: Node) -> Path:
    return plan.node_dir(node) / "sys"


def check_dir(plan: Plan, node: Node) -> Path:
    return plan.node_dir(node) / "checks.d"


def scratch(plan: Plan, node: Node) -> Path:
    return plan.node_dir(node) / "scratch"


def _edac(plan: Plan, node: Node) -> Path:
    return sys_root(plan, node) / "devices/system/edac/mc/mc0"


def _hwmon(plan: Plan, node: Node) -> Path:
    return sys_root(plan, node) / "class/hwmon/hwmon0"


def _nic(plan: Plan, node: Node) -> Path:
    return sys_root(plan, node) / "class/net/eth0/statistics"


def _write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    tmp.replace(path)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def prepare(plan: Plan, node: Node) -> None:
    """A healthy node's sources: fixture /sys, empty check dir, the scratch tmpfs (mounted
    inside the node's mount namespace, which must exist)."""
    heal(plan, node)
    _write(_hwmon(plan, node) / "name", "testbed")
    _write(_hwmon(plan, node) / "temp1_label", "Package id 0")
    d = check_dir(plan, node)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    path = scratch(plan, node)
    path.mkdir(parents=True, exist_ok=True)
    _proc.run(["nsenter", f"--mount={plan.mnt_ns(node)}", "--", "sh", "-c",
               f"mountpoint -q {path} || mount -t tmpfs -o size={SCRATCH_MB}m,mode=755 "
               f"tmpfs {path}"])


def degrade(plan: Plan, node: Node, kind: str) -> str:
    """Make node's agent read a degradation of `kind`; a line saying what changed."""
    if kind == "memory-errors":
        path = _edac(plan, node) / "ce_count"
        _write(path, _read_int(path) + 1000)
        return f"{node.name}: EDAC mc0 corrected errors +1000 (now {_read_int(path)})"
    if kind == "temperature":
        _write(_hwmon(plan, node) / "temp1_input", HOT_TEMP)
        return f"{node.name}: CPU package temperature {HOT_TEMP / 1000:g} C"
    if kind == "nic":
        path = _nic(plan, node) / "rx_errors"
        _write(path, _read_int(path) + 10000)
        return f"{node.name}: eth0 rx_errors +10000"
    if kind == "check":
        script = check_dir(plan, node) / CHECK
        script.write_text("#!/bin/sh\necho 'testbed: injected check failure'\nexit 1\n")
        script.chmod(0o755)
        return f"{node.name}: check script {script} fails"
    if kind == "disk":
        fill = scratch(plan, node) / "fill"
        _proc.run(["nsenter", f"--mount={plan.mnt_ns(node)}", "--", "sh", "-c",
                   f"head -c {SCRATCH_MB - 1}M /dev/zero > {fill} 2>/dev/null; true"])
        return f"{node.name}: {scratch(plan, node)} filled"
    raise UsageError(f"unknown degradation {kind!r}", hint=f"one of {', '.join(KINDS)}")


def heal(plan: Plan, node: Node) -> None:
    """Every source back to healthy values (counters keep rising only: a heal is not a reset
    of the hardware's counts, so the agent's baselines stay valid)."""
    for name in ("ce_count", "ue_count"):
        path = _edac(plan, node) / name
        _write(path, _read_int(path))
    _write(_hwmon(plan, node) / "temp1_input", NORMAL_TEMP)
    for name in ("rx_errors", "tx_errors", "rx_dropped", "tx_dropped"):
        path = _nic(plan, node) / name
        _write(path, _read_int(path))
    (check_dir(plan, node) / CHECK).unlink(missing_ok=True)
    if plan.mnt_ns(node).exists():
        with contextlib.suppress(Exception):
            _proc.run(["nsenter", f"--mount={plan.mnt_ns(node)}", "--", "rm", "-f",
                       str(scratch(plan, node) / "fill")])


def node_pids(plan: Plan, node: Node) -> list[int]:
    """Every process that belongs to node: in its network or mount namespace, or in one of
    its containers' network namespaces."""
    return daemons.pids_in_namespaces(node_namespaces(plan, node))


def node_namespaces(plan: Plan, node: Node) -> list[int]:
    """Inodes of node's network and mount namespaces and of its containers' netns."""
    inodes = [i for p in (plan.netns_path(node), plan.mnt_ns(node))
              if (i := _inode(p)) is not None]
    return inodes + [i for name in container_netns(node)
                     if (i := _inode(Path("/run/netns") / name)) is not None]


def link_argv(plan: Plan, node: Node, netns: str, *args: str) -> list[str]:
    """`ip link ARGS` in a container's network namespace, named in node's mount namespace."""
    return ["nsenter", f"--mount={plan.mnt_ns(node)}", "--", "ip", "-n", netns, "link", *args]


def container_netns(node: Node) -> list[str]:
    """The network namespaces of node's containers (`<container>.<node>`)."""
    netns = Path("/run/netns")
    return [e for e in (os.listdir(netns) if netns.is_dir() else [])
            if e.endswith(f".{node.name}")]


def crash(plan: Plan, node: Node) -> int:
    """SIGKILL everything of node at once (no SIGTERM first: a node does not say goodbye),
    then, once the dying processes' last packets are out (their peers see the connections
    end, as they would see a crashed node's silence after timeouts), silence its containers'
    network; the number of processes killed."""
    pids = node_pids(plan, node)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + CRASH_WAIT
    # (a zombie has closed its sockets: daemons.cmdline counts it as gone)
    while any(daemons.cmdline(p) is not None for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(LAST_PACKETS)
    for netns in container_netns(node):  # the dead containers' kernels fall silent
        _proc.run(link_argv(plan, node, netns, "set", "eth0", "down"), check=False)
    return len(pids)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
