"""The agent's side of migrations and checkpoints: `MigrationOps`, one node, over RPC.

Design note: one RPC operation per `hpcmig.controller.ops.MigrationOps` method, carried out on
this node, in the agent's own namespaces (so criu runs in the node's mount namespace, which
the containers share). Every operation names its job (`ref` or `job_id`), so a user may move
their own job and nobody else's (access "job"); each also checks that the address belongs to
that job's block and the image directory to that job's checkpoint tree. Besides the engine
work, the operations keep this node's job record true: a restored container is added, a
killed one removed (which copies run here); which node hosts which container is the
controller's to say (`job.members`). An image container's writable layer
travels inside its dump (`writable.tar`: under the manifest, the image dir's permissions and
removal); the target rebuilds the root from it before `criu restore`
(the runtime's `prepare_restore`), and killing a copy releases its root's mounts on that node.
Which containers can move is the runtime's to say (`Runtime.movable`): the ns runtime's,
and the lxc runtime's on the node's root (CRIU then dumps LXC's mount namespace).
`NodeAgent` owns the records; the engine is `hpcmig.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hpcmig import _proc, _procfs
from hpcmig.agent import _nodetmp, traffic
from hpcmig.agent.node import JobRecord, NodeAgent, netns_name
from hpcmig.agent.server import Call, operation
from hpcmig.checkpoint import _tree, criu, images, lazy, stream
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.checkpoint.stream import Stream
from hpcmig.errors import HpcmigError, PermissionDenied
from hpcmig.network import ContainerNet, container_net
from hpcmig.runtime import ns
from hpcmig.runtime.base import Container, ContainerSpec, Runtime, get_runtime
from hpcmig.runtime.ns import INIT_MODULE, NsRuntime
from hpcmig.vcluster import VCluster

WRITABLE = "writable.tar"  # an image container's writable layer, in its dump
TMP = "tmp.tar"  # the container's $TMPDIR as it was at the dump (Open MPI's session files)

_busy: set[str] = set()
_busy_lock = threading.Lock()


def _agent(call: Call) -> NodeAgent:
    agent: NodeAgent = call.ctx
    return agent


def _ref(data: dict[str, Any]) -> ContainerRef:
    return ContainerRef.from_json(data)


def _net(agent: NodeAgent, ref: ContainerRef) -> ContainerNet:
    return container_net(ref.address, netns_name(ref.name, agent.node))


def _check_address(agent: NodeAgent, job_id: str, address: str) -> None:
    rec = agent.load(str(job_id))
    if rec is not None and IPv4Address(address) not in IPv4Network(rec.vc.block):
        raise PermissionDenied(f"{address} is not an address of job {job_id}")


def _check_images(agent: NodeAgent, job_id: str, image_dir: str) -> str:
    roots = (agent.config.checkpoint_dir, os.path.join(agent.config.run_dir, "spool"))
    real = os.path.realpath(image_dir)
    for root in roots:
        if real.startswith(os.path.join(os.path.realpath(images.job_dir(root, job_id)), "")):
            return root
    raise PermissionDenied(f"{image_dir} is not a checkpoint directory of job {job_id}")


def _init(agent: NodeAgent, ref: ContainerRef) -> int | None:
    return _tree.init_in_netns(_net(agent, ref).netns_path, INIT_MODULE)


def _immovable(container: Container) -> str | None:
    """Why the container's runtime cannot be dumped (docs/runtime.md)."""
    return get_runtime(container.runtime).movable(container.spec)


def _runtime(container: Container) -> Runtime:
    """The container's runtime, which prepares its restore and carries its writable layer."""
    if why := _immovable(container):
        raise HpcmigError(f"{container.name}: {why}")
    return get_runtime(container.runtime)


def _kill_copy(agent: NodeAgent, r: ContainerRef) -> None:
    """Kill the copy of r on this node (idempotent), forget it, and release what it left:
    its image root's mounts and state directory (also those of a restore cut short, which
    the record never knew)."""
    criu.kill_in_netns(_net(agent, r).netns_path, f"{r.name} on {agent.node}")
    with agent.job_lock(str(r.job_id)):
        rec = agent.load(str(r.job_id))
        c = rec.containers.pop(r.index, None) if rec is not None else None
        if rec is not None and c is not None:
            agent.save(rec)
    if c is not None:
        get_runtime(c.runtime).abort_restore(c.spec)
    elif (spec := ns.saved_spec(agent.config.containers_dir, r.name)) is not None:
        NsRuntime().abort_restore(spec)  # a restore cut short: its state directory


def _image_trees(agent: NodeAgent, r: ContainerRef) -> list[str]:
    """The directories holding r's dumps (every tag), under both image roots."""
    return [os.path.dirname(images.image_dir(root, r.job_id, r.restart, r.index, "any"))
            for root in (agent.config.checkpoint_dir,
                         os.path.join(agent.config.run_dir, "spool"))]


def _orphan_criu(agent: NodeAgent, r: ContainerRef) -> list[int]:
    """criu dumps and restores of r's images running in this node's network namespace: after
    an agent restart, ones an earlier life of the agent started (they outlive it)."""
    trees = [os.path.join(t, "") for t in _image_trees(agent, r)]
    base = os.path.basename(criu.criu_binary())
    mine = os.stat("/proc/self/ns/net").st_ino
    found = []
    for pid in _tree.pids():
        argv = _procfs.argv(pid)
        if len(argv) < 2 or os.path.basename(argv[0]) != base \
                or argv[1] not in ("dump", "restore") \
                or not any(a.startswith(t) for a in argv for t in trees):
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/net").st_ino == mine:
                found.append(pid)
    return found


def _adopt(agent: NodeAgent, r: ContainerRef) -> None:
    """Record a copy of r that runs here but that the job record does not know: its restore
    finished after the agent that ran it died (SIGKILL) and before it could record it. The
    copy is named by the dump it came from: the image dir whose `restored.pid` (criu's
    pidfile, written once the restore finished) holds its init's pid."""
    with agent.job_lock(str(r.job_id)):
        rec = agent.load(str(r.job_id))
        pid = _init(agent, r)
        if rec is None or r.index in rec.containers or pid is None:
            return
        for tree in _image_trees(agent, r):
            for tag in sorted(os.listdir(tree)) if os.path.isdir(tree) else []:
                image_dir = os.path.join(tree, tag)
                try:
                    with open(os.path.join(image_dir, "restored.pid"), encoding="ascii") as fh:
                        if int(fh.read().strip()) != pid:
                            continue
                except (OSError, ValueError):
                    continue
                old, _key = criu.saved_container(image_dir)
                netns = _net(agent, r).netns_path
                spec = ContainerSpec.from_json({**old.spec.to_json(), "netns": netns})
                rec.containers[r.index] = dataclasses.replace(old, init_pid=pid, netns=netns,
                                                              spec=spec)
                agent.save(rec)
                return
        # no finished restore made it: not ours to adopt (the caller decides what runs)


@contextlib.contextmanager
def _engine(ref: ContainerRef) -> Iterator[None]:
    with _busy_lock:
        _busy.add(ref.name)
    try:
        yield
    finally:
        with _busy_lock:
            _busy.discard(ref.name)


# -- queries ----------------------------------------------------------------------------------
@operation("ckpt.refuse_reasons", "job")
def refuse_reasons(call: Call, job_id: str, ref: dict[str, Any]) -> list[str]:
    """Why the container cannot be dumped, asked before anything is touched: its runtime
    (`Runtime.movable`), what CRIU cannot dump."""
    r = _ref(ref)
    agent = _agent(call)
    rec = agent.load(str(job_id))
    container = rec.containers.get(r.index) if rec is not None else None
    if container is not None and (why := _immovable(container)):
        return [why]
    pid = _init(agent, r)
    return [f"{r.name} is not on {agent.node}"] if pid is None else criu.refuse_reasons(pid)


@operation("ckpt.state", "job")
def container_state(call: Call, job_id: str, ref: dict[str, Any]) -> str:
    r = _ref(ref)
    agent = _agent(call)
    if r.name in _busy or _orphan_criu(agent, r):
        return ContainerState.BUSY.value
    pid = _init(agent, r)
    if pid is None:
        left = _tree.in_netns(_net(agent, r).netns_path)
        return (ContainerState.STOPPED if left else ContainerState.ABSENT).value
    return (ContainerState.STOPPED if _procfs.state(pid) in ("T", "t")
            else ContainerState.RUNNING).value


# -- network ----------------------------------------------------------------------------------
@operation("ckpt.hold", "job")
def hold(call: Call, job_id: str, address: str) -> str:
    """The network lock: packets to the address wait here (hpcmig.network.hold); the answer
    says whether they are held or, where this node cannot, dropped ("blackhole")."""
    _check_address(_agent(call), job_id, address)
    return _agent(call).net.hold(address)


@operation("ckpt.point_local", "job")
def point_local(call: Call, job_id: str, ref: dict[str, Any]) -> None:
    """The copy here becomes the one its address reaches (a migration's target after the
    restore, or the source rolled back); the job record knows it from now on."""
    r = _ref(ref)
    _check_address(_agent(call), job_id, r.address)
    _adopt(_agent(call), r)
    _agent(call).net.point_local(_net(_agent(call), r))


@operation("ckpt.route_via", "job")
def route_via(call: Call, job_id: str, address: str, via: str, via_addr: str) -> None:
    """address/32 now lives on node `via`: route it there (the job's membership is the
    controller's to change: `job.members`)."""
    agent = _agent(call)
    _check_address(agent, job_id, address)
    if via != agent.node:
        agent.net.route_via(address, via_addr)


@operation("ckpt.unroute", "job")
def unroute(call: Call, job_id: str, address: str) -> None:
    _check_address(_agent(call), job_id, address)
    _agent(call).net.unroute(address)


@operation("ckpt.create_net", "job")
def create_net(call: Call, job_id: str, ref: dict[str, Any],
               vcluster: dict[str, Any] | None = None) -> None:
    """The restore target's netns, /32 held. `vcluster`: the job as the controller
    knows it, for a node that has no record of the job yet (acquired for it)."""
    agent = _agent(call)
    r = _ref(ref)
    with agent.job_lock(str(job_id)):
        if agent.load(str(job_id)) is None and vcluster is not None:
            vc = VCluster.from_json(vcluster)
            agent.save(JobRecord(vc, {}))
            agent.write_hosts(vc)
            agent.user_dir(vc)
            agent.net.allow_job(IPv4Network(vc.block))
            agent.routes(vc)
    _check_address(agent, job_id, r.address)
    net = _net(agent, r)
    if os.path.exists(net.netns_path):
        if _tree.in_netns(net.netns_path):
            raise HpcmigError(f"{net.netns} on {agent.node} already holds processes")
        agent.net.remove_container_net(net)  # a half-made one: start over
    agent.net.create_container_net(net, routed=False)
    if (rec := agent.load(str(job_id))) is not None:
        traffic.count(agent, rec.vc, r.address)


@operation("ckpt.remove_net", "job")
def remove_net(call: Call, job_id: str, ref: dict[str, Any]) -> None:
    agent = _agent(call)
    r = _ref(ref)
    net = _net(agent, r)
    if _tree.in_netns(net.netns_path):
        raise HpcmigError(f"{r.name} still has processes on {agent.node}: kill it first")
    if (rec := agent.load(str(job_id))) is not None:
        with contextlib.suppress(HpcmigError, OSError):  # counts are not worth a stuck move
            traffic.save_and_forget(agent, rec.vc, source=r.address)
    agent.net.remove_container_net(net)


# -- images -----------------------------------------------------------------------------------
@operation("ckpt.prepare_images", "job")
def prepare_images(call: Call, job_id: str, image_dir: str, uid: int) -> None:
    root = _check_images(_agent(call), job_id, image_dir)
    stream.stop_listeners(image_dir)
    images.create(root, image_dir, uid)


@operation("ckpt.open_stream", "job")
def open_stream(call: Call, job_id: str, image_dir: str, uid: int, address: str,
                peer: str) -> dict[str, Any]:
    _check_images(_agent(call), job_id, image_dir)
    return stream.open_stream(image_dir, address, peer, uid).to_json()


@operation("ckpt.close_stream", "job")
def close_stream(call: Call, job_id: str, stream_: dict[str, Any]) -> None:
    stream.close_stream(Stream.from_json(stream_))


@operation("ckpt.send_images", "job")
def send_images(call: Call, job_id: str, image_dir: str, stream_: dict[str, Any]) -> int:
    _check_images(_agent(call), job_id, image_dir)
    s = Stream.from_json(stream_)
    return stream.send_files(image_dir, s.address, s.file_port)


@operation("ckpt.verify_images", "job")
def verify_images(call: Call, job_id: str, image_dir: str, manifest_sha256: str | None) -> None:
    _check_images(_agent(call), job_id, image_dir)
    images.verify(image_dir, manifest_sha256)


@operation("ckpt.remove_images", "job")
def remove_images(call: Call, job_id: str, image_dir: str) -> None:
    _check_images(_agent(call), job_id, image_dir)
    stream.stop_listeners(image_dir)
    images.remove(image_dir)


# -- engine -----------------------------------------------------------------------------------
@operation("ckpt.dump", "job")
def dump(call: Call, job_id: str, ref: dict[str, Any], image_dir: str,
         stream_: dict[str, Any] | None = None,
         lazy_address: str | None = None) -> dict[str, Any]:
    agent = _agent(call)
    r = _ref(ref)
    _check_images(agent, job_id, image_dir)
    rec = agent.load(str(job_id))
    if rec is None or r.index not in rec.containers:
        raise HpcmigError(f"{r.name} is not on {agent.node}")
    container = rec.containers[r.index]
    runtime = _runtime(container)
    s = Stream.from_json(stream_) if stream_ else None
    tmp = str(agent.tmp_path(str(job_id), r.index))

    def extra(d: str) -> None:  # the processes are still frozen: a consistent copy
        runtime.save_writable(container, os.path.join(d, WRITABLE))
        _nodetmp.save(container.init_pid, d)
        if os.path.isdir(tmp):
            _proc.run(["tar", "-C", tmp, "-cpf", os.path.join(d, TMP), "--numeric-owner",
                       "."], timeout=600)

    with _engine(r):
        stats = criu.dump(container, image_dir,
                          page_server=(s.address, s.page_port) if s else None, extra=extra,
                          lazy_address=lazy_address,
                          on_freeze=agent.net.quiet_command(_net(agent, r)))
    return stats.to_json()


def _put_back_tmp(agent: NodeAgent, job_id: str, index: int, image_dir: str) -> None:
    """$TMPDIR as it was at the dump: a job that ran on after a periodic checkpoint (or whose
    MPI cleaned its session directory when a node died) changed it since; CRIU reopens the
    files the restored processes hold there, shared memory segments included."""
    archive, tmp = os.path.join(image_dir, TMP), str(agent.tmp_path(job_id, index))
    if not os.path.exists(archive) or not os.path.isdir(tmp):
        return
    for name in os.listdir(tmp):
        path = os.path.join(tmp, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    _proc.run(["tar", "-C", tmp, "-xpf", archive, "--numeric-owner"], timeout=600)


@operation("ckpt.restore", "job")
def restore(call: Call, job_id: str, ref: dict[str, Any], image_dir: str,
            lazy_from: list[Any] | None = None) -> int:
    agent = _agent(call)
    r = _ref(ref)
    _check_images(agent, job_id, image_dir)
    net = _net(agent, r)
    old, _key = criu.saved_container(image_dir)
    spec = ContainerSpec.from_json({**old.spec.to_json(), "netns": net.netns_path})
    archive = os.path.join(image_dir, WRITABLE)
    with _engine(r):
        _put_back_tmp(agent, str(job_id), r.index, image_dir)
        _nodetmp.put_back(image_dir)
        _runtime(old).prepare_restore(spec, archive if os.path.exists(archive) else None)
        try:
            container = criu.restore_container(
                image_dir, netns_path=net.netns_path,
                lazy_from=(str(lazy_from[0]), int(lazy_from[1])) if lazy_from else None)
        except Exception:
            with contextlib.suppress(HpcmigError):
                _kill_copy(agent, r)
            raise
    with agent.job_lock(str(job_id)):
        rec = agent.load(str(job_id))
        if rec is not None:
            rec.containers[r.index] = container
            agent.save(rec)
    return container.init_pid


@operation("ckpt.postcopy_wait", "job")
def postcopy_wait(call: Call, job_id: str, ref: dict[str, Any], image_dir: str,
                  timeout: float = 1800.0) -> float:
    """Target of a post-copy move: wait until the restored copy has all its memory; if the
    transfer failed, that copy cannot go on: kill it, then raise."""
    agent = _agent(call)
    _check_images(agent, job_id, image_dir)
    try:
        return lazy.wait_done(image_dir, float(timeout))
    except HpcmigError:
        with contextlib.suppress(HpcmigError):
            _kill_copy(agent, _ref(ref))
        raise


@operation("ckpt.postcopy_end", "job")
def postcopy_end(call: Call, job_id: str, ref: dict[str, Any], image_dir: str) -> bool:
    """Source of a post-copy move: end the dump's page server if it still serves (a
    rollback: the tree stays stopped, resumable) and collect it. True if it was serving."""
    _check_images(_agent(call), job_id, image_dir)
    return lazy.cancel(image_dir)


@operation("ckpt.resume", "job")
def resume(call: Call, job_id: str, ref: dict[str, Any]) -> None:
    pid = _init(_agent(call), _ref(ref))
    if pid is not None:
        criu.resume(pid)


@operation("ckpt.kill", "job")
def kill(call: Call, job_id: str, ref: dict[str, Any]) -> None:
    _kill_copy(_agent(call), _ref(ref))
