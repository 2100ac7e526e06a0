"""`hpcmig testbed up/down/status`: the order of steps, the state file, the readiness checks.

`up` first removes anything a previous run left (crash, kill -9), then builds in order:
munged, bridge and node namespaces, Slurm configuration, slurmctld, one slurmd and one
hpcmig-agent per node, then hpcmigd; it returns when every node is idle in Slurm and hpcmigd
answers. Every started pid goes into
the state file at once. `down` works from the state file when there is one and from the
fixed naming scheme when there is not, so it always leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcmig import _proc
from hpcmig.errors import CommandError, MissingDependency, PermissionDenied, TestbedError
from hpcmig.testbed import daemons, faults, host
from hpcmig.testbed.plan import MAX_NODES, Node, Plan

Progress = Callable[[str], None]
REQUIRED_TOOLS = ("slurmctld", "slurmd", "munged", "munge", "sinfo", "scontrol", "ip",
                  "nsenter", "unshare", "mount", "useradd", "criu")
# Slurm node states that mean the testbed itself is broken (drained or busy nodes are fine).
BROKEN = {"down", "fail", "failing", "unknown", "future", "inval", "invalid"}
INSTALL_HINT = "install everything (as root) with: bash scripts/bootstrap.sh install"


def _quiet(_: str) -> None:
    pass


@dataclass
class State:
    nodes: int
    leaves: int = 1
    spine_rate: str = "1gbit"
    procs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, proc: daemons.Proc) -> None:
        self.procs[proc.name] = {"pid": proc.pid, "match": proc.match}

    def proc(self, name: str) -> daemons.Proc | None:
        rec = self.procs.get(name)
        return daemons.Proc(name, rec["pid"], rec["match"]) if rec else None

    def all_procs(self) -> list[daemons.Proc]:
        return [daemons.Proc(n, r["pid"], r["match"]) for n, r in self.procs.items()]


def plan_for(nodes: int, leaves: int = 1, spine_rate: str = "1gbit") -> Plan:
    return Plan(nodes_count=nodes, controller_host=socket.gethostname().split(".")[0],
                leaves=leaves, spine_rate=spine_rate)


def load_state(plan: Plan) -> State | None:
    try:
        data = json.loads(plan.state_file.read_text())
        return State(nodes=int(data["nodes"]), leaves=int(data.get("leaves", 1)),
                     spine_rate=str(data.get("spine_rate", "1gbit")),
                     procs=dict(data.get("procs", {})))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_state(plan: Plan, state: State) -> None:
    plan.base.mkdir(parents=True, exist_ok=True)
    tmp = plan.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.replace(plan.state_file)


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied(
            "the testbed needs root (it creates network namespaces and starts Slurm)",
            "run it with sudo",
        )


def preflight() -> None:
    require_root()
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise MissingDependency(f"missing programs: {', '.join(missing)}", INSTALL_HINT)
    try:
        _proc.run(["criu", "check"], timeout=60)
    except CommandError as exc:
        raise MissingDependency(f"CRIU does not work on this kernel: {exc}", INSTALL_HINT) from exc


def current_plan() -> Plan | None:
    """The plan of the running testbed, or None when no testbed is up."""
    probe = plan_for(2)
    state = load_state(probe)
    return plan_for(state.nodes, state.leaves, state.spine_rate) if state else None


# -- up ---------------------------------------------------------------------------------------
def up(nodes: int, progress: Progress = _quiet, leaves: int = 1,
       spine_rate: str = "1gbit") -> Plan:
    plan = plan_for(nodes, leaves, spine_rate)  # validates before anything happens
    preflight()
    progress("removing leftovers of earlier runs")
    down(progress=_quiet)
    state = State(nodes=nodes, leaves=leaves, spine_rate=spine_rate)
    for d in (plan.base, plan.log_dir, plan.run_dir, plan.spool_dir, plan.hosts_file.parent):
        d.mkdir(parents=True, exist_ok=True)
    plan.base.chmod(0o755)
    save_state(plan, state)
    try:
        _start_munge(plan, state, progress)
        _make_network(plan, progress)
        _write_config(plan, progress)
        _start_slurm(plan, state, progress)
        _start_agents(plan, state, progress)
        _start_controller(plan, state, progress)
    except BaseException:
        progress("start failed; the testbed is left for inspection "
                 "(`hpcmig testbed down` removes it)")
        raise
    progress(f"testbed up: {nodes} nodes idle")
    return plan


def _start_munge(plan: Plan, state: State, progress: Progress) -> None:
    progress("starting munged")
    munge = pwd.getpwnam("munge")
    key_dir = plan.base / "munge-key"
    for d, mode in ((plan.munge_dir, 0o755), (key_dir, 0o700)):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, munge.pw_uid, munge.pw_gid)
        d.chmod(mode)
    key = key_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chown(key, munge.pw_uid, munge.pw_gid)
    key.chmod(0o400)
    log = str(plan.log_dir / "munged.log")
    argv = [
        # setpriv execs (runuser would fork and leave munged orphaned if killed)
        "setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--clear-groups",
        "munged", "--foreground",
        f"--socket={plan.munge_socket}", f"--key-file={key}",
        f"--pid-file={plan.munge_dir}/munged.pid", f"--log-file={plan.munge_dir}/munged.log",
        f"--seed-file={plan.munge_dir}/munged.seed",
    ]
    proc = daemons.start("munged", argv, match=str(plan.munge_socket), log_path=log)
    state.add(proc)
    save_state(plan, state)

    def ready() -> bool:
        cred = _proc.run(["munge", "-n", "-S", str(plan.munge_socket)], timeout=10).stdout
        _proc.run(["unmunge", "-S", str(plan.munge_socket)], input=cred, timeout=10)
        return True

    daemons.wait_for("munged", ready, 20, proc, [log, str(plan.munge_dir / "munged.log")])


def _make_network(plan: Plan, progress: Progress) -> None:
    progress(f"creating bridge {plan.bridge} and {plan.nodes_count} node namespaces"
             + (f" under {plan.leaves} leaf switches ({plan.spine_rate} uplinks)"
                if plan.leaves > 1 else ""))
    host.make_bridge(plan)
    host.make_leaves(plan)
    original_hosts = Path("/etc/hosts").read_text()
    plan.hosts_file.write_text(plan.hosts(original_hosts))
    host.make_ns_dir(plan)
    for node in plan.nodes:
        host.make_node_netns(plan, node)
        host.make_node_namespaces(plan, node)


def _write_config(plan: Plan, progress: Progress) -> None:
    progress(f"writing {plan.slurm_etc}/slurm.conf and cgroup.conf")
    host.write_owned_file(plan.slurm_etc / "slurm.conf", plan.slurm_conf())
    host.write_owned_file(plan.slurm_etc / "cgroup.conf", plan.cgroup_conf())
    host.write_owned_file(plan.plugstack_path, plan.plugstack_conf())
    if plan.leaves > 1:
        host.write_owned_file(plan.slurm_etc / "topology.conf", plan.topology_conf())
    progress(f"writing {plan.hpcmig_conf_path}")
    plan.hpcmig_conf_path.parent.mkdir(parents=True, exist_ok=True)
    host.write_owned_file(plan.hpcmig_conf_path, plan.hpcmig_conf())
    for d in ("shared", "ckpt"):
        (plan.base / d).mkdir(parents=True, exist_ok=True, mode=0o755)
    user = host.ensure_user(plan)
    progress(f"job user: {user.pw_name} (uid {user.pw_uid}), home {user.pw_dir}")


def _start_slurm(plan: Plan, state: State, progress: Progress) -> None:
    progress("starting slurmctld")
    (plan.spool_dir / "slurmctld").mkdir(parents=True, exist_ok=True)
    log = str(plan.log_dir / "slurmctld.out")
    ctld = daemons.start("slurmctld", ["slurmctld", "-D", "-i"], "slurmctld", log)
    state.add(ctld)
    save_state(plan, state)
    daemons.wait_for(
        "slurmctld",
        lambda: "UP" in _proc.run(["scontrol", "ping"], timeout=10, check=False).stdout,
        30, ctld, str(plan.log_dir / "slurmctld.log"),
    )
    for node in plan.nodes:
        progress(f"starting slurmd on {node.name} ({node.address})")
        _spawn_slurmd(plan, state, node)
    progress("waiting for every node to be idle in Slurm")
    names = {n.name for n in plan.nodes}

    def all_idle() -> bool:
        for node in plan.nodes:
            p = state.proc(f"slurmd@{node.name}")
            if p is None or not daemons.alive(p):
                raise TestbedError(
                    f"slurmd on {node.name} exited",
                    f"see {plan.log_dir}/slurmd-{node.name}.log",
                )
        states = _slurm_states()
        return all(states.get(n, "").rstrip("*") == "idle" for n in names)

    daemons.wait_for("slurm nodes", all_idle, 60, None, str(plan.log_dir / "slurmctld.log"))


def _spawn_slurmd(plan: Plan, state: State, node: Node) -> daemons.Proc:
    log = str(plan.log_dir / f"slurmd-{node.name}.out")
    argv = [*plan.nsenter(node), "slurmd", "-D", "-N", node.name]
    proc = daemons.start(f"slurmd@{node.name}", argv, "slurmd", log)
    state.add(proc)
    save_state(plan, state)
    return proc


def _slurm_states() -> dict[str, str]:
    """{node: state} as `sinfo` prints it (a trailing * means not responding)."""
    out = _proc.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _start_agents(plan: Plan, state: State, progress: Progress) -> None:
    for node in plan.nodes:
        progress(f"starting hpcmig-agent on {node.name}")
        faults.prepare(plan, node)
        _spawn_agent(plan, state, node)
    for node in plan.nodes:
        beat = plan.node_dir(node) / "agent" / "heartbeat.json"
        agent = state.proc(f"agent@{node.name}")
        daemons.wait_for(f"hpcmig-agent on {node.name}", beat.exists, 30, agent,
                         str(plan.log_dir / f"agent-{node.name}.log"))


def _spawn_agent(plan: Plan, state: State, node: Node) -> daemons.Proc:
    agent_dir = plan.node_dir(node) / "agent"
    agent_dir.mkdir(parents=True, exist_ok=True)
    log = str(plan.log_dir / f"agent-{node.name}.log")
    argv = [
        *plan.nsenter(node), sys.executable, "-m", "hpcmig.agent.main",
        "--node", node.name, "--state-dir", str(agent_dir),
        "--munge-socket", str(plan.munge_socket),
        "--sys-root", str(faults.sys_root(plan, node)),
        "--check-dir", str(faults.check_dir(plan, node)),
        "--health-path", str(faults.scratch(plan, node)),
    ]
    proc = daemons.start(f"agent@{node.name}", argv, "hpcmig.agent.main", log)
    state.add(proc)
    save_state(plan, state)
    return proc


def restart_agent(name: str, timeout: float = 30.0) -> daemons.Proc:
    """Start node `name`'s hpcmig-agent again after it died (a crash, or a test killed it
    by its recorded pid); returns it once it serves (its heartbeat names the new pid).
    Refuses while the recorded agent still runs."""
    plan = current_plan()
    state = load_state(plan) if plan else None
    if plan is None or state is None:
        raise TestbedError("no testbed is up")
    node = plan.node(name)
    old = state.proc(f"agent@{name}")
    if old is not None and daemons.alive(old):
        raise TestbedError(f"hpcmig-agent on {name} still runs (pid {old.pid})")
    proc = _spawn_agent(plan, state, node)
    beat = plan.node_dir(node) / "agent" / "heartbeat.json"

    def serving() -> bool:
        try:
            return bool(json.loads(beat.read_text()).get("pid") == proc.pid)
        except (OSError, ValueError):
            return False

    daemons.wait_for(f"hpcmig-agent on {name}", serving, timeout, proc,
                     str(plan.log_dir / f"agent-{name}.log"))
    return proc


def _start_controller(plan: Plan, state: State, progress: Progress,
                      env: dict[str, str] | None = None) -> daemons.Proc:
    progress("starting hpcmigd")
    log = str(plan.log_dir / "hpcmigd.log")
    proc = daemons.start("hpcmigd", [sys.executable, "-m", "hpcmig.controller.daemon"],
                         "hpcmig.controller.daemon", log, env=env)
    state.add(proc)
    save_state(plan, state)
    daemons.wait_for("hpcmigd", lambda: _controller_ready(proc.pid), 120, proc, log)
    return proc


def _controller_ready(pid: int) -> bool:
    """hpcmigd `pid` answers and its start-up recovery ended."""
    from hpcmig.controller.client import ControllerClient
    from hpcmig.errors import HpcmigError

    try:
        answer = ControllerClient(timeout=5).call("ping")
    except HpcmigError:
        return False
    return isinstance(answer, dict) and answer.get("pid") == pid and not answer["recovering"]


def controller() -> daemons.Proc | None:
    """The testbed's recorded hpcmigd (alive or not); None without a testbed."""
    plan = current_plan()
    state = load_state(plan) if plan else None
    return state.proc("hpcmigd") if state else None


def restart_controller(env: dict[str, str] | None = None) -> daemons.Proc:
    """Start hpcmigd again after it died (a test SIGKILLed it by its recorded pid); returns
    once it answers and its recovery of what it left ended. `env`: e.g. HPCMIG_FAULT."""
    plan = current_plan()
    state = load_state(plan) if plan else None
    if plan is None or state is None:
        raise TestbedError("no testbed is up")
    old = state.proc("hpcmigd")
    if old is not None and daemons.alive(old):
        raise TestbedError(f"hpcmigd still runs (pid {old.pid})")
    return _start_controller(plan, state, _quiet, env)


# -- faults -----------------------------------------------------------------------------------
def _running_plan() -> tuple[Plan, State]:
    plan = current_plan()
    state = load_state(plan) if plan else None
    if plan is None or state is None:
        raise TestbedError("the testbed is not up", "start it with: hpcmig testbed up")
    return plan, state


def fail(name: str, kind: str) -> str:
    """Degrade node `name` (faults.KINDS) as its agent sees it, or with kind "crash" kill
    everything of it; one line saying what was done."""
    plan, _ = _running_plan()
    node = plan.node(name)
    if kind == "crash":
        return f"{name}: crashed ({faults.crash(plan, node)} processes SIGKILLed)"
    return faults.degrade(plan, node, kind)


def heal(name: str) -> str:
    """Undo every fault of node `name`; a crashed node's slurmd and agent start again."""
    plan, state = _running_plan()
    node = plan.node(name)
    faults.heal(plan, node)
    started = []
    slurmd = state.proc(f"slurmd@{name}")
    if slurmd is None or not daemons.alive(slurmd):
        _spawn_slurmd(plan, state, node)
        started.append("slurmd")
    agent = state.proc(f"agent@{name}")
    if agent is None or not daemons.alive(agent):
        faults.prepare(plan, node)
        restart_agent(name)
        started.append("hpcmig-agent")
    return f"{name}: healed" + (f"; {' and '.join(started)} started again" if started else "")


# -- down -------------------------------------------------------------------------------------
def down(progress: Progress = _quiet) -> None:
    require_root()
    plan = plan_for(MAX_NODES)  # every name the testbed may have used
    state = load_state(plan)
    # the nodes' namespaces and their containers' netns: a CRIU-restored LXC copy has a
    # mount namespace of its own and no monitor on the node
    ns_pids = daemons.pids_in_namespaces(
        [i for node in plan.nodes for i in faults.node_namespaces(plan, node)])
    recorded = state.all_procs() if state else []
    # Strays whose command line names the testbed's tree (a lost state file, an old run).
    ns_pids += daemons.pids_matching(str(plan.base))
    if ns_pids or any(daemons.alive(p) for p in recorded):
        progress("stopping testbed processes")
    # Node processes first (slurmd, agents, job steps), then the controller and munged.
    daemons.kill_pids(ns_pids + [p.pid for p in recorded
                                 if p.name.startswith(("slurmd@", "agent@")) and daemons.alive(p)])
    daemons.stop([p for p in recorded if p.name == "hpcmigd"])
    daemons.stop([p for p in recorded if p.name == "slurmctld"])
    daemons.stop([p for p in recorded if p.name == "munged"])
    progress("removing namespaces, bridge, mounts and files")
    for node in plan.nodes:
        host.remove_node_namespaces(plan, node)
        host.remove_node_netns(node)
    host.remove_ns_dir(plan)
    host.remove_leaves()
    host.remove_bridge(plan)
    host.remove_owned_file(plan.slurm_etc / "slurm.conf")
    host.remove_owned_file(plan.slurm_etc / "topology.conf")
    host.remove_owned_file(plan.slurm_etc / "cgroup.conf")
    host.remove_owned_file(plan.plugstack_path)
    host.remove_owned_file(plan.hpcmig_conf_path)
    host.remove_user(plan)
    host.remove_tree(plan.base)


# -- status -----------------------------------------------------------------------------------
@dataclass
class NodeStatus:
    name: str
    address: str
    netns: bool
    slurmd: bool
    agent: bool
    slurm_state: str
    agent_age: float | None


def status() -> tuple[Plan, State, list[NodeStatus], dict[str, bool]] | None:
    plan = current_plan()
    if plan is None:
        return None
    state = load_state(plan)
    assert state is not None
    try:
        slurm_states = _slurm_states()
    except (CommandError, MissingDependency):
        slurm_states = {}
    netns = set(host.netns_list())
    nodes = []
    for node in plan.nodes:
        slurmd = state.proc(f"slurmd@{node.name}")
        agent = state.proc(f"agent@{node.name}")
        beat = plan.node_dir(node) / "agent" / "heartbeat.json"
        age = time.time() - beat.stat().st_mtime if beat.exists() else None
        nodes.append(NodeStatus(
            name=node.name, address=node.address, netns=node.netns in netns,
            slurmd=bool(slurmd and daemons.alive(slurmd)),
            agent=bool(agent and daemons.alive(agent)),
            slurm_state=slurm_states.get(node.name, "unknown"), agent_age=age,
        ))
    central = {name: bool((p := state.proc(name)) and daemons.alive(p))
               for name in ("munged", "slurmctld", "hpcmigd")}
    return plan, state, nodes, central


def healthy() -> bool:
    result = status()
    if result is None:
        return False
    _, _, nodes, central = result
    return all(central.values()) and all(
        n.netns and n.slurmd and n.agent and n.slurm_state.rstrip("*~#!%$@^-") not in BROKEN
        for n in nodes
    )
