"""Live migration for real: the state machines, AgentOps, real agents and CRIU on three nodes.

Three throwaway nodes each run a real `hpcmig-agent` (tests/integration/agent_nodes.py);
this process is the controller and drives them through `AgentOps`, the production
`MigrationOps`. Job 91 is planned as the prolog plans it (container 0 on b3, container 1 on
b1, b2 spare) and built by the agents (`job.setup`). Container 1 runs a server with 64 MiB
of verified memory behind a TCP counter (`hpcmig.workloads.holder`) and moves between b1
and b2; container 0 runs a client whose one TCP connection to the server must survive
every move, with the server's count always equal to the client's (a duplicated or rewound
server breaks that at once). Cases: shared-directory and streamed moves; a corrupted image
(rolled back, the source keeps serving); the orchestrator (tests/integration/orchestrate.py)
SIGKILLed at each journaled step, then recovery in a new process; a whole-job checkpoint that
resumes, then one that stops, restored on other nodes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcmig import _procfs
from hpcmig.checkpoint import _tree, images
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.jobckpt import JobCheckpoint, JobSpec, Placement, checkpoint_job, restore_job
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import FORWARD, MigrationSpec, migrate
from hpcmig.network import NodeNet
from hpcmig.vcluster import VCluster
from hpcmig.workloads import holder
from tests.integration import rt_support as S
from tests.integration.agent_nodes import AgentNodes, criu_agent_nodes

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing()))]

B1, B2, B3 = S.BRIDGED
PY = sys.executable
REPO = str(Path(__file__).resolve().parents[2])


@dataclass
class Env:
    nodes: AgentNodes
    vc: VCluster  # where the job's containers are, as the agents were last told
    journal_path: str
    server: ContainerRef
    client: ContainerRef
    tags: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def where(self) -> str:  # the server's node
        return self.vc.member(self.server.index).node

    @property
    def client_at(self) -> str:
        return self.vc.member(self.client.index).node

    @property
    def ops(self) -> AgentOps:
        return self.nodes.ops(self.vc)

    @property
    def peer_dir(self) -> Path:
        return self.nodes.work / "peer"

    def other(self) -> str:
        return B2 if self.where == B1 else B1

    def moved(self, ref: ContainerRef, node: str) -> None:
        """ref now runs on node: tell every agent, as hpcmigd does after a move."""
        self.vc = self.vc.moved(ref.index, node, S.BRIDGED[node])
        self.nodes.publish(self.vc)

    def spec(self, mode: str) -> MigrationSpec:
        """mode: a transport, alone (stop-and-copy) or with "+postcopy"."""
        transport, _, post = mode.partition("+")
        tag = f"m{next(self.tags)}"
        d = self.nodes.image_dir(transport, self.server, tag)
        return MigrationSpec(self.server, self.where, self.other(), (B3,), d, d, transport,
                             postcopy=post == "postcopy")

    def images_left(self, spec: MigrationSpec) -> list[str]:
        return [p for p in (self.nodes.host_path(spec.source, spec.src_images),
                            self.nodes.host_path(spec.target, spec.dst_images))
                if os.path.exists(p)]

    def progress(self) -> tuple[int, float]:
        text = (self.peer_dir / "progress").read_text().strip()
        if not text or text.startswith("ERROR"):
            raise AssertionError(f"the peer's connection broke: {text!r}")
        pings, gap = text.split()
        return int(pings), float(gap)

    def longest_wait(self, since: float) -> float:
        """The peer's longest wait for an answer that came after `since` (wall clock), s."""
        return max((gap for end, gap in holder.read_gaps(str(self.peer_dir / "gaps"))
                    if end > since), default=0.0)


@contextlib.contextmanager
def holder_job(job_id: str, to: Callable[[ContainerRef], str] = lambda r: r.address,
               **settings: Any) -> Iterator[Env]:
    """The job of this module's tests on agent nodes (their hpcmig.toml with `settings`):
    the server in container 1 on b1, the client in container 0 on b3, connected to the
    server's address `to` gives; everything of the job checked gone afterwards."""
    with criu_agent_nodes(**settings) as nodes:
        vc = nodes.plan(job_id, 0, [B3, B1, B2], spares=1)
        client, server = (ContainerRef(vc.job_id, vc.restart, m.index, m.address, vc.uid)
                          for m in vc.members)
        e = Env(nodes, vc, str(nodes.work / "journal.db"), server, client)
        e.peer_dir.mkdir()
        os.chown(e.peer_dir, nodes.user.uid, nodes.user.gid)
        try:
            nodes.setup(vc)
            nodes.start_holder(B1, server.address, 64)
            time.sleep(1.0)  # fills and hashes 64 MiB before it listens
            r = nodes.rsh(B3, "-n", client.address, f"{PY} -m hpcmig.workloads.holder client "
                          f"{to(server)} --progress {e.peer_dir}/progress "
                          f"--gaps {e.peer_dir}/gaps </dev/null >/dev/null 2>&1 &")
            assert r.returncode == 0, r.stderr
            assert S.wait_for(lambda: _pings(e) > 20, 20), _text(e)
            yield e
        finally:
            removed = nodes.teardown(vc.job_id)
            left = nodes.container_netns()
        assert not left, left  # job.teardown removed every container netns
        assert removed, "job.teardown found no container"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with holder_job("91") as e:
        yield e


def _text(e: Env) -> str:
    with contextlib.suppress(OSError):
        return (e.peer_dir / "progress").read_text()
    return ""


def _pings(e: Env) -> int:
    text = _text(e).split()
    return int(text[0]) if text and text[0].isdigit() else 0


def assert_serving_once(e: Env, node: str, after: int) -> None:
    """The server runs exactly once, on node, routed there from everywhere, its peer's
    connection alive and counting, its memory intact, its init serving exec requests."""
    assert S.wait_for(lambda: _pings(e) > after + 20, 20), _text(e)
    e.progress()  # raises on a broken connection
    assert len(S.holder_processes()) == 1
    other = B2 if node == B1 else B1
    assert e.ops.container_state(node, e.server) is ContainerState.RUNNING
    assert e.ops.container_state(other, e.server) is ContainerState.ABSENT
    assert not e.nodes.netns_exists(other, e.server)
    for n in S.BRIDGED:
        route = NodeNet(n).route_of(e.server.address)
        assert route is not None
        if n == node:
            assert str(route.get("dev", "")).startswith("hmv") and route.get("type") != "blackhole"
        else:
            assert route.get("gateway") == S.BRIDGED[node], (n, route)
    check = e.nodes.rsh(e.client_at, e.client.address, f"{PY} -m hpcmig.workloads.holder "
                        f"check {e.server.address}")
    assert check.stdout.split()[0] == "ok", check
    who = e.nodes.rsh(node, e.server.address, "hostname")
    assert who.stdout.strip() == e.server.name, who


@pytest.mark.parametrize("transport", ["shared", "stream", "shared+postcopy",
                                       "stream+postcopy"])
def test_live_migration_keeps_the_peer_connection(env: Env, transport: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = env.spec(transport)
    before, started = _pings(env), time.time()
    with Journal(env.journal_path) as journal:
        out = migrate(journal, env.ops, spec)
    assert out.state == "done", out.error
    assert out.data["lock"] == "hold"  # the peers' packets waited on the source
    env.moved(env.server, spec.target)
    at_unlock = _pings(env)
    assert_serving_once(env, spec.target, at_unlock)
    assert not env.images_left(spec)
    wait = env.longest_wait(started)
    assert out.pause is not None
    # no back-off: the held packets reach the restored copy at the unlock, the source sent
    # nothing after the freeze that would make the client reject its answers, and an answer
    # it wrote before the freeze left (docs/runtime.md, "The network lock")
    assert wait <= out.pause + 0.3, (wait, out.pause)
    if spec.postcopy:  # the memory came after the restore, and all of it (the check above)
        assert "pages" in out.steps and out.data["dump"]["lazy_port"] > 0
        assert not _procs_on(spec.src_images) and not _procs_on(spec.dst_images)
    dump = out.data["dump"]
    with capsys.disabled():
        print(f"\nmigration ({transport}) {spec.source}->{spec.target}: pause (lock->unlock) "
              f"{out.pause:.3f} s, dump {out.steps['dump']:.3f} s, restore "
              f"{out.steps['restore']:.3f} s, images {dump['image_bytes'] / 1e6:.1f} MB "
              f"(streamed {dump['streamed_bytes'] / 1e6:.1f} MB); peer: {before} pings "
              f"before, longest wait {wait * 1000:.0f} ms")


@pytest.mark.parametrize("transport", ["shared", "stream"])
def test_corrupted_image_is_refused_and_the_source_keeps_running(env: Env,
                                                                 transport: str) -> None:
    spec = env.spec(transport)
    victim = {"shared": "pages-", "stream": "core-"}[transport]  # streamed pages: no checksum
    nodes = env.nodes

    class Corrupting(AgentOps):
        """Flips a byte of the target's images just before the target's agent verifies."""

        def verify_images(self, node: str, image_dir: str, sha: str | None) -> None:
            here = nodes.host_path(node, image_dir)
            name = max((n for n in os.listdir(here) if n.startswith(victim)),
                       key=lambda n: os.path.getsize(os.path.join(here, n)))
            with open(os.path.join(here, name), "r+b") as fh:
                fh.seek(os.path.getsize(os.path.join(here, name)) // 2)
                byte = fh.read(1)
                fh.seek(-1, os.SEEK_CUR)
                fh.write(bytes([byte[0] ^ 0x5A]))
            super().verify_images(node, image_dir, sha)

    with Journal(env.journal_path) as journal:
        out = migrate(journal, Corrupting(env.vc, S.BRIDGED, env.ops.port, nodes.sock), spec)
    assert out.state == "rolled_back", out
    assert "does not match its checksum" in (out.error or "")
    assert [s.name for s in Journal(env.journal_path).steps(out.op_id, "forward")][-1] == \
        "verify"
    assert_serving_once(env, spec.source, _pings(env))
    assert not env.images_left(spec)


KILL_CASES = [(step, "kill", "shared") for step in FORWARD] + [
    ("dump", "kill-after", "shared"), ("restore", "kill-after", "shared"),
    ("images", "kill-after", "stream"), ("dump", "kill", "stream"),
    ("transfer", "kill", "stream"), ("restore", "kill", "stream"),
    # post-copy: rolled back with the page server still serving; forward while it serves
    ("dump", "kill-after", "shared+postcopy"), ("restore", "kill", "stream+postcopy"),
    ("restore", "kill-after", "shared+postcopy"), ("pages", "kill", "shared+postcopy")]


def _procs_on(image_dir: str) -> list[int]:
    """Processes (CRIU's page servers, lazy-pages daemons, receivers) naming image_dir."""
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if image_dir in _procfs.argv(pid) and _tree.live(pid)]


def _orchestrate(env: Env, cmd: str, spec: MigrationSpec | None = None, fault: str | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """tests/integration/orchestrate.py in a fresh process, with HPCMIG_FAULT=fault."""
    args = {**env.nodes.orchestrator_args(env.vc), "journal": env.journal_path}
    if spec is not None:
        args["spec"] = spec.to_json()
    environ = {k: v for k, v in os.environ.items() if k != "HPCMIG_FAULT"}
    if fault:
        environ["HPCMIG_FAULT"] = fault
    return subprocess.run([PY, "-m", "tests.integration.orchestrate", cmd, json.dumps(args)],
                          env=environ, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("step,how,transport", KILL_CASES)
def test_sigkill_of_the_orchestrator_then_recovery(env: Env, step: str, how: str,
                                                   transport: str) -> None:
    spec = env.spec(transport)
    r = _orchestrate(env, "migrate", spec, f"{step}:{how}", timeout=120)
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr[-2000:])
    with Journal(env.journal_path) as journal:
        [op] = journal.open_operations()
        assert journal.steps(op.id)[-1].name == step
    before = _pings(env)
    r = _orchestrate(env, "recover")
    assert r.returncode == 0, (r.stdout, r.stderr[-2000:])
    [outcome] = json.loads(r.stdout)
    restored = FORWARD.index(step) > FORWARD.index("restore") or (
        step == "restore" and how == "kill-after")
    assert outcome["state"] == ("done" if restored else "rolled_back"), outcome
    if restored:
        env.moved(env.server, spec.target)
    assert_serving_once(env, env.where, before)
    assert not env.images_left(spec)
    # no page server, lazy-pages daemon or receiver left behind
    assert not _procs_on(spec.dst_images) and not _procs_on(spec.src_images)


def test_whole_job_checkpoint_resume_then_stop_and_restore_on_other_nodes(env: Env) -> None:
    """Runs last: it moves the client too. Both containers are locked before either is
    dumped (a consistent cut), so the connection between them survives a checkpoint that
    resumes the job, and a stop + restore on a different set of nodes."""
    def spec(tag: str, then: str) -> JobSpec:
        return JobSpec("91", tuple(Placement(n, r, env.nodes.image_dir("shared", r, tag))
                                   for n, r in ((env.where, env.server),
                                                (env.client_at, env.client))),
                       tuple(S.BRIDGED), then)

    with Journal(env.journal_path) as journal:
        before = _pings(env)
        out = checkpoint_job(journal, env.ops, spec("ckpt1", "resume"))
        assert out.state == "done", out.error
        assert_serving_once(env, env.where, before)
        for p in spec("ckpt1", "resume").containers:
            images.verify(p.image_dir, out.data["dumps"][str(p.ref.index)]["manifest_sha256"])

        out = checkpoint_job(journal, env.ops, spec("ckpt2", "stop"))
        assert out.state == "done", out.error
        stopped_at = _pings(env)
        assert S.holder_processes() == []
        assert not env.nodes.container_netns()
        time.sleep(0.5)
        assert _pings(env) == stopped_at  # the client is checkpointed too: nothing runs

        ckpt = JobCheckpoint(journal, env.ops, out.op_id).checkpoint()
        server_to, client_to = env.other(), env.where  # a different set of nodes
        back = restore_job(journal, env.ops, JobSpec("91", (
            Placement(server_to, env.server, ckpt["1"]["image_dir"],
                      ckpt["1"]["manifest_sha256"]),
            Placement(client_to, env.client, ckpt["0"]["image_dir"],
                      ckpt["0"]["manifest_sha256"])), tuple(S.BRIDGED)))
        assert back.state == "done", back.error
    env.moved(env.server, server_to)
    env.moved(env.client, client_to)
    assert_serving_once(env, server_to, stopped_at)
    root = env.nodes.cfg.checkpoint_dir
    assert images.remove_job(root, "91")  # at job end
    assert not os.path.exists(images.job_dir(root, "91"))
