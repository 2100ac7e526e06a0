"""`MigrationOps` for node namespaces on this machine: tests, benchmarks, the demo's nodes.

Design note: each "node" is a network namespace `/run/netns/<node name>` sharing this
machine's mount and PID namespaces (tests/integration/rt_support.py). Route changes go
through `NodeNet(<node>)` (nsenter); the engine (`criu`, `stream`) runs in a forked child
that `setns`es into the node's network namespace, which is what the agent does in-process
(and costs ~5 ms instead of a Python start-up). The container's netns on a node is
`<prefix>-<last octet of the node's address>-<container address>`, so two copies of one
container (source and target) never share a name on one machine. While a dump or restore
runs, a marker file `<state>/<node>-<address>.busy` holds the forked child's pid, so a
recovering process (after the orchestrator was SIGKILLed) sees the copy as BUSY until that
criu has finished. `python -m hpcmig.controller.localops migrate|recover` is the
orchestrator the fault-injection tests SIGKILL. It is not the production path: the agent's
RPC (`AgentOps`) implements the same Protocol across real nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from hpcmig import _procfs
from hpcmig.checkpoint import _tree, criu, images, stream
from hpcmig.checkpoint.base import DumpStats
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.checkpoint.stream import Stream
from hpcmig.controller.journal import Journal
from hpcmig.errors import HpcmigError
from hpcmig.network import NodeNet, container_net
from hpcmig.network.plan import ContainerNet
from hpcmig.runtime import _linux
from hpcmig.runtime.base import Container, ContainerSpec
from hpcmig.runtime.ns import INIT_MODULE

T = TypeVar("T")


@dataclass(frozen=True)
class LocalConfig:
    nodes: Mapping[str, str]  # node (= its netns name) -> node address
    shared_root: str  # image root every node sees (shared transport)
    spool_roots: Mapping[str, str] = field(default_factory=dict)  # node -> node-local root
    state: str = "/run/hpcmig-localops"  # busy markers
    net_prefix: str = "hpcmig-rtc"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": dict(self.nodes), "spool_roots": dict(self.spool_roots)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalConfig:
        return cls(**data)


class LocalOps:
    """MigrationOps over node network namespaces on one machine (root)."""

    def __init__(self, config: LocalConfig) -> None:
        self.cfg = config
        os.makedirs(config.state, mode=0o700, exist_ok=True)

    # -- naming ----------------------------------------------------------------------------
    def net(self, node: str, ref: ContainerRef) -> ContainerNet:
        tag = self.cfg.nodes[node].rsplit(".", 1)[-1]
        return container_net(ref.address, f"{self.cfg.net_prefix}-{tag}-{ref.address}")

    def image_dir(self, node: str | None, ref: ContainerRef, tag: str) -> str:
        """Where a dump goes: under the shared root (node None) or node's spool."""
        root = self.cfg.shared_root if node is None else self.cfg.spool_roots[node]
        return images.image_dir(root, ref.job_id, ref.restart, ref.index, tag)

    def _root_of(self, image_dir: str) -> str:
        for root in (self.cfg.shared_root, *self.cfg.spool_roots.values()):
            if image_dir.startswith(os.path.join(root, "")):
                return root
        raise HpcmigError(f"{image_dir} is under no image root of this LocalOps")

    def _node(self, node: str) -> NodeNet:
        if node not in self.cfg.nodes:
            raise HpcmigError(f"unknown node {node}")
        return NodeNet(node)

    # -- running in a node -----------------------------------------------------------------
    def in_node(self, node: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """fn(*args) in a forked child inside node's network namespace; result or error back
        through a pipe (pickled)."""
        self._node(node)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into the caller's stack
            os.close(r)
            code = 0
            try:
                _linux.setns(f"/run/netns/{node}", _linux.CLONE_NEWNET)
                payload = pickle.dumps(("ok", fn(*args, **kw)))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                try:
                    payload = pickle.dumps(("err", exc))
                except Exception:
                    payload = pickle.dumps(("err", HpcmigError(f"{type(exc).__name__}: {exc}")))
                code = 1
            with os.fdopen(w, "wb") as fh:
                fh.write(payload)
            os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            raw = fh.read()
        os.waitpid(pid, 0)
        if not raw:
            raise HpcmigError(f"the helper in node {node} died without an answer")
        kind, value = pickle.loads(raw)
        if kind == "err":
            raise value
        result: T = value
        return result

    def _busy_marker(self, node: str, ref: ContainerRef) -> str:
        return os.path.join(self.cfg.state, f"{node}-{ref.address}.busy")

    def _engine(self, node: str, ref: ContainerRef, fn: Callable[..., T], *args: Any,
                **kw: Any) -> T:
        """in_node, with the busy marker (holding the helper's pid) around it."""
        marker = self._busy_marker(node, ref)

        def marked() -> T:
            with open(marker, "w", encoding="ascii") as fh:
                fh.write(str(os.getpid()))
            try:
                return fn(*args, **kw)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(marker)

        return self.in_node(node, marked)

    def _busy(self, node: str, ref: ContainerRef) -> bool:
        try:
            with open(self._busy_marker(node, ref), encoding="ascii") as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return False
        return pid > 0 and _tree.live(pid)

    # -- finding the container --------------------------------------------------------------
    def _pids(self, node: str, ref: ContainerRef) -> list[int]:
        return _tree.in_netns(self.net(node, ref).netns_path)

    def _init(self, node: str, ref: ContainerRef) -> int | None:
        return _tree.init_in_netns(self.net(node, ref).netns_path, INIT_MODULE)

    def container(self, node: str, ref: ContainerRef) -> Container:
        """The running (or stopped) container on node, as the runtime describes it."""
        pid = self._init(node, ref)
        if pid is None:
            raise HpcmigError(f"no {ref.name} on {node}")
        spec_path = _procfs.argv(pid)[-1]
        with open(spec_path, encoding="utf-8") as fh:
            spec = ContainerSpec.from_json(json.load(fh))
        net = self.net(node, ref)
        spec = ContainerSpec.from_json({**spec.to_json(), "netns": net.netns_path})
        return Container(name=spec.name, runtime="ns", init_pid=pid, netns=net.netns_path,
                         address=spec.address, exec_port=spec.exec_port,
                         log_path=os.path.join(os.path.dirname(spec_path), "init.log"),
                         spec=spec)

    # -- MigrationOps: queries ---------------------------------------------------------------
    def refuse_reasons(self, node: str, ref: ContainerRef) -> list[str]:
        pid = self._init(node, ref)
        return [f"{ref.name} is not on {node}"] if pid is None else criu.refuse_reasons(pid)

    def container_state(self, node: str, ref: ContainerRef) -> ContainerState:
        if self._busy(node, ref):
            return ContainerState.BUSY
        pid = self._init(node, ref)
        if pid is None:  # processes without their init: a restore cut short; kill() ends it
            return ContainerState.STOPPED if self._pids(node, ref) else ContainerState.ABSENT
        if _procfs.state(pid) in ("T", "t"):
            return ContainerState.STOPPED
        return ContainerState.RUNNING

    # -- MigrationOps: network ---------------------------------------------------------------
    def blackhole(self, node: str, address: str) -> None:
        self._node(node).blackhole(address)

    def point_local(self, node: str, ref: ContainerRef) -> None:
        self._node(node).point_local(self.net(node, ref))

    def route_via(self, node: str, address: str, via: str) -> None:
        self._node(node).route_via(address, self.cfg.nodes[via])

    def unroute(self, node: str, address: str) -> None:
        self._node(node).unroute(address)

    def create_net(self, node: str, ref: ContainerRef) -> None:
        net = self.net(node, ref)
        if os.path.exists(net.netns_path):
            if self._pids(node, ref):
                raise HpcmigError(f"{net.netns} on {node} already holds processes")
            self._node(node).remove_container_net(net)  # a half-made one: start over
        self._node(node).create_container_net(net, routed=False)

    def remove_net(self, node: str, ref: ContainerRef) -> None:
        if self._pids(node, ref):
            raise HpcmigError(f"{ref.name} still has processes on {node}: kill it first")
        self._node(node).remove_container_net(self.net(node, ref))

    # -- MigrationOps: images ----------------------------------------------------------------
    def prepare_images(self, node: str, image_dir: str, uid: int) -> None:
        stream.stop_listeners(image_dir)
        images.create(self._root_of(image_dir), image_dir, uid)

    def open_stream(self, node: str, image_dir: str, uid: int, peer: str) -> Stream:
        return self.in_node(node, stream.open_stream, image_dir, self.cfg.nodes[node],
                            self.cfg.nodes[peer], uid)

    def close_stream(self, node: str, s: Stream) -> None:
        stream.close_stream(s)

    def send_images(self, node: str, image_dir: str, s: Stream) -> int:
        return self.in_node(node, stream.send_files, image_dir, s.address, s.file_port)

    def verify_images(self, node: str, image_dir: str, manifest_sha256: str | None) -> None:
        images.verify(image_dir, manifest_sha256)

    def remove_images(self, node: str, image_dir: str) -> None:
        stream.stop_listeners(image_dir)
        images.remove(image_dir)

    # -- MigrationOps: engine ----------------------------------------------------------------
    def dump(self, node: str, ref: ContainerRef, image_dir: str,
             stream: Stream | None) -> DumpStats:
        c = self.container(node, ref)
        page_server = (stream.address, stream.page_port) if stream else None
        return self._engine(node, ref, criu.dump, c, image_dir, page_server=page_server)

    def restore(self, node: str, ref: ContainerRef, image_dir: str) -> int:
        net = self.net(node, ref)
        c = self._engine(node, ref, criu.restore_container, image_dir,
                         netns_path=net.netns_path)
        return c.init_pid

    def resume(self, node: str, ref: ContainerRef) -> None:
        pid = self._init(node, ref)
        if pid is not None:
            criu.resume(pid)

    def kill(self, node: str, ref: ContainerRef) -> None:
        criu.kill_in_netns(self.net(node, ref).netns_path, f"{ref.name} on {node}")


def main(argv: list[str] | None = None) -> int:
    """`migrate CONFIG SPEC JOURNAL` / `recover CONFIG JOURNAL`: JSON outcomes on stdout."""
    from hpcmig.controller.migration import MigrationSpec, migrate
    from hpcmig.controller.recovery import recover

    parser = argparse.ArgumentParser(prog="python -m hpcmig.controller.localops")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("migrate")
    m.add_argument("config")
    m.add_argument("spec")
    m.add_argument("journal")
    r = sub.add_parser("recover")
    r.add_argument("config")
    r.add_argument("journal")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as fh:
        ops = LocalOps(LocalConfig.from_json(json.load(fh)))
    with Journal(args.journal) as journal:
        if args.cmd == "migrate":
            with open(args.spec, encoding="utf-8") as fh:
                spec = MigrationSpec.from_json(json.load(fh))
            outcomes = [migrate(journal, ops, spec)]
        else:
            outcomes = recover(journal, ops)
    print(json.dumps([asdict(o) for o in outcomes]))
    return 0 if all(o.state in ("done", "rolled_back") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
