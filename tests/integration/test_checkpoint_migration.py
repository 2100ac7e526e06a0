"""Live migration for real: the state machine + LocalOps + CRIU on three node namespaces.

Job 91 has a server container (64 MiB of verified memory behind a TCP counter,
`hpcmig.workloads.holder`) that moves between nodes b1 and b2, and a client container on b3
whose one TCP connection to the server must survive every move, with the server's count
always equal to the client's (a duplicated or rewound server breaks that at once). Cases:
shared-directory and streamed moves; a corrupted image (rolled back, the source keeps
serving); the orchestrator SIGKILLed at each journaled step, then recovery in a new process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hpcmig import _procfs
from hpcmig.checkpoint import images
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.controller.jobckpt import JobCheckpoint, JobSpec, Placement, checkpoint_job, restore_job
from hpcmig.controller.journal import Journal
from hpcmig.controller.localops import LocalConfig, LocalOps
from hpcmig.controller.migration import FORWARD, MigrationSpec, migrate
from hpcmig.network import NodeNet
from hpcmig.runtime import Container, ContainerSpec, get_runtime
from hpcmig.runtime import ns as ns_runtime
from tests.integration import rt_support as S

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing()))]

B1, B2, B3 = S.BRIDGED
PY = sys.executable


@dataclass
class Env:
    sock: str
    user: S.User
    ops: LocalOps
    cfg_path: str
    journal_path: str
    work: Path
    server: ContainerRef
    client: ContainerRef
    where: str = B1  # the server's node
    client_at: str = B3  # the client's node
    tags: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def other(self) -> str:
        return B2 if self.where == B1 else B1

    def spec(self, transport: str) -> MigrationSpec:
        tag = f"m{next(self.tags)}"
        src, dst = self.where, self.other()
        if transport == "shared":
            d = self.ops.image_dir(None, self.server, tag)
            return MigrationSpec(self.server, src, dst, (B3,), d, d, "shared")
        return MigrationSpec(self.server, src, dst, (B3,),
                             self.ops.image_dir(src, self.server, tag),
                             self.ops.image_dir(dst, self.server, tag), "stream")

    def progress(self) -> tuple[int, float]:
        text = (self.work / "peer" / "progress").read_text().strip()
        if not text or text.startswith("ERROR"):
            raise AssertionError(f"the peer's connection broke: {text!r}")
        pings, gap = text.split()
        return int(pings), float(gap)

    def rsh(self, node: str, *args: str, timeout: float = 30.0) -> S._proc.Result:
        return S.rsh(node, *args, munge_socket=self.sock, timeout=timeout)


def _start(ops: LocalOps, node: str, ref: ContainerRef, user: S.User, state_dir: str,
           env: dict[str, str]) -> Container:
    net = ops.net(node, ref)
    NodeNet(node).create_container_net(net)
    for other in S.BRIDGED:
        if other != node:
            NodeNet(other).route_via(ref.address, S.BRIDGED[node])
    spec = ContainerSpec(name=ref.name, job_id=ref.job_id, uid=user.uid, gid=user.gid,
                         netns=net.netns_path, address=ref.address, env=env,
                         state_dir=state_dir, stop_grace=2.0)
    return get_runtime("ns").start(spec)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    problem = S.criu_problem()
    if problem:
        pytest.skip(problem)
    ns_runtime.become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="hpcmig-rt-ckpt-"))
    os.chmod(work, 0o755)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(S.munged())
        user = stack.enter_context(S.users())[0]
        stack.enter_context(S.bridged_nodes())
        cfg = LocalConfig(nodes=dict(S.BRIDGED), shared_root=str(work / "ckpt"),
                          spool_roots={n: str(work / f"spool-{n}") for n in S.BRIDGED},
                          state=str(work / "localops"))
        cfg_path = str(work / "localops.json")
        Path(cfg_path).write_text(json.dumps(cfg.to_json()))
        ops = LocalOps(cfg)
        server = ContainerRef("91", 0, 1, "10.252.0.2", user.uid)
        client = ContainerRef("91", 0, 0, "10.252.0.1", user.uid)
        state_dir = str(work / "containers")
        (work / "peer").mkdir()
        shutil.chown(work / "peer", user.uid, user.gid)
        cenv = {"PATH": f"{S.VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
                "HPCMIG_MUNGE_SOCKET": sock}
        e = Env(sock, user, ops, cfg_path, str(work / "journal.db"), work, server, client)
        try:
            _start(ops, B1, server, user, state_dir, cenv)
            _start(ops, B3, client, user, state_dir, cenv)
            r = e.rsh(B1, "-n", server.address, f"{PY} -m hpcmig.workloads.holder serve "
                      "--memory-mb 64 </dev/null >/dev/null 2>&1 &")
            assert r.returncode == 0, r.stderr
            assert S.wait_for(lambda: len(S.holder_processes()) == 1, 10)
            time.sleep(1.0)  # fills and hashes 64 MiB before it listens
            r = e.rsh(B3, "-n", client.address, f"{PY} -m hpcmig.workloads.holder client "
                      f"{server.address} --progress {work}/peer/progress "
                      "</dev/null >/dev/null 2>&1 &")
            assert r.returncode == 0, r.stderr
            assert S.wait_for(lambda: _pings(e) > 20, 20), _text(e)
            yield e
        finally:
            for node in S.BRIDGED:
                for ref in (server, client):
                    with contextlib.suppress(Exception):
                        ops.kill(node, ref)
                    with contextlib.suppress(Exception):
                        ops.remove_net(node, ref)
            shutil.rmtree(work, ignore_errors=True)
    assert not [n for n in S.netns_list() if n.startswith("hpcmig-rtc")]


def _text(e: Env) -> str:
    with contextlib.suppress(OSError):
        return (e.work / "peer" / "progress").read_text()
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
    assert not os.path.exists(e.ops.net(other, e.server).netns_path)
    for n in S.BRIDGED:
        route = NodeNet(n).route_of(e.server.address)
        assert route is not None
        if n == node:
            assert route.get("dev", "").startswith("hmv") and route.get("type") != "blackhole"
        else:
            assert route.get("gateway") == S.BRIDGED[node], (n, route)
    check = e.rsh(e.client_at, e.client.address, f"{PY} -m hpcmig.workloads.holder check "
                  f"{e.server.address}")
    assert check.stdout.split()[0] == "ok", check
    who = e.rsh(node, e.server.address, "hostname")
    assert who.stdout.strip() == e.server.name, who


@pytest.mark.parametrize("transport", ["shared", "stream"])
def test_live_migration_keeps_the_peer_connection(env: Env, transport: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = env.spec(transport)
    before = _pings(env)
    with Journal(env.journal_path) as journal:
        out = migrate(journal, env.ops, spec)
    assert out.state == "done", out.error
    env.where = spec.target
    at_unlock = _pings(env)
    assert_serving_once(env, spec.target, at_unlock)
    assert not os.path.exists(spec.src_images) and not os.path.exists(spec.dst_images)
    _, gap = env.progress()
    dump = out.data["dump"]
    with capsys.disabled():
        print(f"\nmigration ({transport}) {spec.source}->{spec.target}: pause (lock->unlock) "
              f"{out.pause:.3f} s, dump {out.steps['dump']:.3f} s, restore "
              f"{out.steps['restore']:.3f} s, images {dump['image_bytes'] / 1e6:.1f} MB "
              f"(streamed {dump['streamed_bytes'] / 1e6:.1f} MB); peer: {before} pings "
              f"before, largest gap so far {gap:.0f} ms")


@pytest.mark.parametrize("transport", ["shared", "stream"])
def test_corrupted_image_is_refused_and_the_source_keeps_running(env: Env,
                                                                 transport: str) -> None:
    spec = env.spec(transport)
    victim = {"shared": "pages-", "stream": "core-"}[transport]  # streamed pages: no checksum

    class Corrupting(LocalOps):
        def verify_images(self, node: str, image_dir: str, sha: str | None) -> None:
            name = max((n for n in os.listdir(image_dir) if n.startswith(victim)),
                       key=lambda n: os.path.getsize(os.path.join(image_dir, n)))
            with open(os.path.join(image_dir, name), "r+b") as fh:
                fh.seek(os.path.getsize(os.path.join(image_dir, name)) // 2)
                byte = fh.read(1)
                fh.seek(-1, os.SEEK_CUR)
                fh.write(bytes([byte[0] ^ 0x5A]))
            super().verify_images(node, image_dir, sha)

    with Journal(env.journal_path) as journal:
        out = migrate(journal, Corrupting(env.ops.cfg), spec)
    assert out.state == "rolled_back", out
    assert "does not match its checksum" in (out.error or "")
    assert [s.name for s in Journal(env.journal_path).steps(out.op_id, "forward")][-1] == \
        "verify"
    assert_serving_once(env, spec.source, _pings(env))
    assert not os.path.exists(spec.src_images) and not os.path.exists(spec.dst_images)


KILL_CASES = [(step, "kill", "shared") for step in FORWARD] + [
    ("dump", "kill-after", "shared"), ("restore", "kill-after", "shared"),
    ("images", "kill-after", "stream"), ("dump", "kill", "stream"),
    ("transfer", "kill", "stream"), ("restore", "kill", "stream")]


@pytest.mark.parametrize("step,how,transport", KILL_CASES)
def test_sigkill_of_the_orchestrator_then_recovery(env: Env, step: str, how: str,
                                                   transport: str) -> None:
    spec = env.spec(transport)
    spec_path = env.work / "spec.json"
    spec_path.write_text(json.dumps(spec.to_json()))
    cmd = [PY, "-m", "hpcmig.controller.localops"]
    r = subprocess.run([*cmd, "migrate", env.cfg_path, str(spec_path), env.journal_path],
                       env={**os.environ, "HPCMIG_FAULT": f"{step}:{how}"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr[-2000:])
    with Journal(env.journal_path) as journal:
        [op] = journal.open_operations()
        assert journal.steps(op.id)[-1].name == step
    before = _pings(env)
    r = subprocess.run([*cmd, "recover", env.cfg_path, env.journal_path],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr[-2000:])
    [outcome] = json.loads(r.stdout)
    restored = FORWARD.index(step) > FORWARD.index("restore") or (
        step == "restore" and how == "kill-after")
    assert outcome["state"] == ("done" if restored else "rolled_back"), outcome
    if restored:
        env.where = spec.target
    assert_serving_once(env, env.where, before)
    for d in (spec.src_images, spec.dst_images):
        assert not os.path.exists(d)
    listeners = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                 if spec.dst_images in _procfs.argv(pid)]
    assert not listeners  # no page server or receiver left behind


def test_whole_job_checkpoint_resume_then_stop_and_restore_on_other_nodes(env: Env) -> None:
    """Runs last: it moves the client too. Both containers are locked before either is
    dumped (a consistent cut), so the connection between them survives a checkpoint that
    resumes the job, and a stop + restore on a different set of nodes."""
    def spec(tag: str, then: str) -> JobSpec:
        return JobSpec("91", tuple(Placement(n, r, env.ops.image_dir(None, r, tag))
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
        assert not [n for n in S.netns_list() if n.startswith("hpcmig-rtc")]
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
    env.where, env.client_at = server_to, client_to
    assert_serving_once(env, server_to, stopped_at)
    assert images.remove_job(env.ops.cfg.shared_root, "91")  # at job end
    assert not os.path.exists(images.job_dir(env.ops.cfg.shared_root, "91"))
