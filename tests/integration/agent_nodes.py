"""Three throwaway nodes with a real `hpcmig-agent` each: the production path of migrations,
checkpoints and restores, for the checkpoint tests and the migration benchmark.

Design note: builds on `rt_support` (the bridged node network namespaces `hpcmig-rt-b1..3`,
a private munged, a job user) and owns what makes those namespaces nodes an agent can run
on: the bridge gets `CONTROLLER_ADDR`, so this process reaches the agents from the root
namespace as hpcmigd does on the testbed (the nodes still have no route out); each node gets
a mount namespace (held by a `sleep`, slave propagation) in which `<work>/run` is a bind
mount of the node's own `<work>/nodes/<node>/run`. So every node has its node-local
`run_dir` (containers, agent records, spool) at one path, as real nodes do: it has to be one
path, because a restored container's init keeps its state directory's path in its argv, and
container netns that the agents make (`<container>.<node>`) stay visible only inside their
node. Each agent runs as `nsenter -t <holder> -m --net=/run/netns/<node> python -m
hpcmig.agent.main --node ... --state-dir ... --munge-socket ... --config <node's toml>` in
its own session; its pid is recorded, SIGTERM ends it (SIGKILL after 10 s). Containers are
made and removed by the agents (`job.setup`, `job.teardown`); afterwards, anything still
living in a node's mount namespace (a copy a failed test left, a criu) is SIGKILLed by pid,
since nothing but this module's agents and what they started lives there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from hpcmig import _proc, config
from hpcmig.agent.node import netns_name
from hpcmig.agent.rpc import AgentClient
from hpcmig.checkpoint import images
from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.controller.agentops import AgentOps
from hpcmig.errors import HpcmigError
from hpcmig.vcluster import VCluster, plan
from tests.integration import rt_support as S

CONTROLLER_ADDR = "10.253.1.254/24"  # the bridge's: where this process (the controller) is
POOL = IPv4Network("10.252.0.0/16")
BLOCK_PREFIX = 26
AGENT_PORT = 7101
PY = sys.executable


@dataclass
class AgentNodes:
    work: Path
    sock: str
    user: S.User
    cfg: config.Config
    holders: dict[str, int] = field(default_factory=dict)  # node -> mount namespace holder
    agents: dict[str, int] = field(default_factory=dict)  # node -> agent pid

    # -- paths -----------------------------------------------------------------------------
    def host_path(self, node: str, path: str) -> str:
        """Where a path of `node`'s run_dir is seen from here (the node's backing directory);
        other paths are the same everywhere."""
        run = os.path.join(self.cfg.run_dir, "")
        if path.startswith(run):
            return str(self.work / "nodes" / node / "run" / path[len(run):])
        return path

    def image_dir(self, transport: str, ref: ContainerRef, tag: str) -> str:
        """As hpcmigd picks it: shared under checkpoint_dir, streamed under each node's spool
        (the same path on source and target, different directories)."""
        root = (self.cfg.checkpoint_dir if transport == "shared"
                else os.path.join(self.cfg.run_dir, "spool"))
        return images.image_dir(root, ref.job_id, ref.restart, ref.index, tag)

    def netns_exists(self, node: str, ref: ContainerRef) -> bool:
        return os.path.exists(f"/run/netns/{netns_name(ref.name, node)}")

    def log_tail(self, node: str, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "".join((self.work / f"agent-{node}.log").read_text().splitlines(True)
                           [-lines:])
        return ""

    # -- talking to the agents -------------------------------------------------------------
    def client(self, node: str) -> AgentClient:
        return AgentClient(node, S.BRIDGED[node], AGENT_PORT, self.sock)

    def ops(self, vc: VCluster) -> AgentOps:
        return AgentOps(vc, S.BRIDGED, AGENT_PORT, self.sock)

    def orchestrator_args(self, vc: VCluster) -> dict[str, Any]:
        """What tests.integration.orchestrate needs to build the same AgentOps."""
        return {"vcluster": vc.to_json(), "port": AGENT_PORT, "munge_socket": self.sock}

    def plan(self, job_id: str, block: int, nodes: list[str], spares: int) -> VCluster:
        """The job's virtual cluster as the prolog plans it: container i on nodes[i], the
        last `spares` nodes spare, addresses from the pool's block number `block`."""
        net = list(POOL.subnets(new_prefix=BLOCK_PREFIX))[block]
        return plan(job_id=job_id, restart=0, user=self.user.name, uid=self.user.uid,
                    gid=self.user.gid, nodes=nodes, node_addrs=S.BRIDGED, block=net,
                    spares=spares)

    def setup(self, vc: VCluster) -> None:
        """`job.setup` on every node of the job, as the prologs do."""
        for node in vc.nodes():
            self.client(node).call("job.setup", timeout=120, vcluster=vc.to_json())

    def publish(self, vc: VCluster) -> None:
        """Where the job's containers are now (after a move), to every agent, as hpcmigd."""
        for node in S.BRIDGED:
            self.client(node).call("job.members", vcluster=vc.to_json())

    def teardown(self, job_id: str) -> list[str]:
        """`job.teardown` on every node, as the epilogs do; returns what was removed."""
        removed: list[str] = []
        for node in S.BRIDGED:
            removed += self.client(node).call("job.teardown", timeout=120,
                                              job_id=job_id)["removed"]
        return removed

    def rsh(self, node: str, *args: str, timeout: float = 60.0) -> _proc.Result:
        """hpcmig-rsh from `node` into a container (that node must host it: job networks
        are closed to other nodes' addresses)."""
        return S.rsh(node, *args, munge_socket=self.sock, timeout=timeout)

    def start_holder(self, node: str, address: str, memory_mb: int) -> None:
        """`holder serve` with memory_mb of verified memory in the container at address
        (on node); returns once its process runs (it fills and hashes, then listens)."""
        r = self.rsh(node, "-n", address, f"{sys.executable} -m hpcmig.workloads.holder "
                     f"serve --memory-mb {memory_mb} </dev/null >/dev/null 2>&1 &")
        assert r.returncode == 0, r.stderr
        assert S.wait_for(lambda: len(S.holder_processes()) == 1, 10)

    def container_netns(self) -> list[str]:
        return [n for n in S.netns_list() if n.rsplit(".", 1)[-1] in S.BRIDGED and "." in n]

    # -- the nodes' life -------------------------------------------------------------------
    def _mount_namespace(self, node: str) -> None:
        run = self.work / "nodes" / node / "run"
        run.mkdir(parents=True)
        run.chmod(0o755)
        log = str(self.work / "holders.log")
        pid = _proc.spawn(["unshare", "--mount", "--propagation", "slave", "sleep", "1d"],
                          log_path=log)
        self.holders[node] = pid
        if not S.wait_for(lambda: _mnt(str(pid)) != _mnt("self"), 5):
            raise RuntimeError(f"mount namespace holder of {node} did not start")
        S.in_node(pid, "mount", "--bind", str(run), self.cfg.run_dir)

    def _start_agent(self, node: str) -> None:
        toml = self.work / "nodes" / node / "hpcmig.toml"
        toml.write_text(config.render(self.cfg, f"# {node}: tests/integration/agent_nodes.py"))
        argv = ["nsenter", "-t", str(self.holders[node]), "-m",
                f"--net=/run/netns/{node}", "--", PY, "-m", "hpcmig.agent.main",
                "--node", node, "--state-dir", os.path.join(self.cfg.run_dir, "agent"),
                "--munge-socket", self.sock, "--config", str(toml)]
        env = {"PATH": f"{S.VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:"
                       "/sbin", "HPCMIG_MUNGE_SOCKET": self.sock, "HPCMIG_CONFIG": str(toml)}
        self.agents[node] = _proc.spawn(argv, log_path=str(self.work / f"agent-{node}.log"),
                                        env=env, cwd="/")

    def _wait_serving(self, node: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client(node).call("ping", timeout=5)
                return
            except HpcmigError as exc:
                if _exited(self.agents[node]) or time.monotonic() > deadline:
                    raise RuntimeError(f"hpcmig-agent on {node} does not serve ({exc}):\n"
                                       f"{self.log_tail(node)}") from None
            time.sleep(0.2)

    def stop_agents(self) -> None:
        for pid in self.agents.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for node, pid in list(self.agents.items()):
            deadline = time.monotonic() + 10
            while not _exited(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _exited(pid):
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            del self.agents[node]

    def sweep(self) -> None:
        """After the agents stopped: kill what is left in the nodes' mount namespaces, end
        the holders, remove container netns of these nodes."""
        for holder in self.holders.values():
            ns = _mnt(str(holder))
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != holder and ns is not None \
                        and _mnt(entry) == ns:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry), signal.SIGKILL)
        for pid in self.holders.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.holders.clear()
        for name in self.container_netns():
            S.sh("ip", "netns", "del", name, check=False)


def _exited(pid: int) -> bool:
    """Our child `pid` has ended (reaped here, or already by subprocess's own cleanup)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def _mnt(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


@contextlib.contextmanager
def agent_nodes(prefix: str = "hpcmig-rt-agents-", tmp: str | None = None,
                **settings: Any) -> Iterator[AgentNodes]:
    """munged, a job user, the three bridged nodes with their mount namespaces and agents
    (their hpcmig.toml with `settings` on top); everything removed afterwards (leftovers of
    a crashed run first)."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    work.chmod(0o755)
    (work / "run").mkdir()
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(S.munged())
        user = stack.enter_context(S.users())[0]
        stack.enter_context(S.bridged_nodes())
        S.sh("ip", "addr", "add", CONTROLLER_ADDR, "dev", S.BRIDGE)
        cfg = config.Config(state_dir=str(work / "state"), run_dir=str(work / "run"),
                             checkpoint_dir=str(work / "ckpt"), agent_port=AGENT_PORT,
                             munge_socket=sock, pool=str(POOL), block_prefix=BLOCK_PREFIX,
                             **settings)
        nodes = AgentNodes(work, sock, user, cfg)
        for name in nodes.container_netns():  # a crashed earlier run's
            S.sh("ip", "netns", "del", name, check=False)
        try:
            for node in S.BRIDGED:
                nodes._mount_namespace(node)
                nodes._start_agent(node)
            for node in S.BRIDGED:
                nodes._wait_serving(node)
            yield nodes
        finally:
            nodes.stop_agents()
            nodes.sweep()
            shutil.rmtree(work, ignore_errors=True)


def bench_problem() -> str | None:
    """Why a benchmark on agent nodes cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "run as root (network namespaces, CRIU)"
    problem = S.criu_problem()
    return f"cannot run: {problem}" if problem else None


@contextlib.contextmanager
def criu_agent_nodes(**settings: Any) -> Iterator[AgentNodes]:
    """`agent_nodes` for tests that dump containers: skipped with the reason where CRIU
    cannot checkpoint job containers here."""
    import pytest  # only the tests use this; the benchmarks import the module without it

    problem = S.criu_problem()
    if problem:
        pytest.skip(problem)
    with agent_nodes(**settings) as nodes:
        yield nodes
