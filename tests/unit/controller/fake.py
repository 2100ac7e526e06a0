"""A fake cluster behind `MigrationOps`: nodes, routes, container copies, images, streams.

It enforces what the real system would (you cannot restore without a net, dump a stopped
container, verify a corrupt image...) and records violations of "exactly once": two running
copies of one container at the same time, or a dumped source resumed after a copy restored
from its images has run. Failures are injected per method (and node) with `fail`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcmig.checkpoint.base import CorruptImage, DumpStats
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.checkpoint.stream import Stream
from hpcmig.errors import HpcmigError

SHARED = "/shared"


class NodeDown(HpcmigError):
    pass


class Injected(HpcmigError):
    pass


@dataclass
class Copy:
    state: str  # running | stopped
    restored: bool = False


@dataclass
class World:
    nodes: list[str]
    routes: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    nets: dict[str, set[str]] = field(default_factory=dict)
    copies: dict[str, dict[str, Copy]] = field(default_factory=dict)  # node -> name -> copy
    images: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    streams: set[tuple[str, str]] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    restored_ran: set[str] = field(default_factory=set)  # names whose restored copy ran
    calls: list[str] = field(default_factory=list)
    serving: dict[str, str] = field(default_factory=dict)  # post-copy: name -> source node
    lacking: set[str] = field(default_factory=set)  # restored copies whose memory is not in

    def __post_init__(self) -> None:
        for n in self.nodes:
            self.routes.setdefault(n, {})
            self.nets.setdefault(n, set())
            self.copies.setdefault(n, {})

    def place(self, node: str, ref: ContainerRef) -> None:
        """A running container on node, routed everywhere."""
        self.copies[node][ref.name] = Copy("running")
        self.nets[node].add(ref.address)
        for n in self.nodes:
            self.routes[n][ref.address] = ("local",) if n == node else ("via", node)

    def where(self, ref: ContainerRef) -> list[tuple[str, str]]:
        return [(n, c.state) for n in self.nodes for name, c in self.copies[n].items()
                if name == ref.name]

    def check_once(self, ref: ContainerRef) -> None:
        running = [n for n, s in self.where(ref) if s == "running"]
        if len(running) > 1:
            self.violations.append(f"{ref.name} runs on {running}")


class FakeOps:
    def __init__(self, world: World) -> None:
        self.w = world
        self.down: set[str] = set()
        self.failures: list[tuple[str, str | None, int]] = []  # (method, node, times)
        self.hooks: dict[str, Callable[[], None]] = {}
        self.busy: dict[tuple[str, str], int] = {}  # (node, name) -> BUSY answers left
        self.pids = itertools.count(100)

    # -- fault plumbing ------------------------------------------------------------------
    def fail(self, method: str, node: str | None = None, times: int = 1) -> None:
        self.failures.append((method, node, times))

    def _enter(self, method: str, node: str) -> None:
        self.w.calls.append(f"{method}@{node}")
        if node in self.down:
            raise NodeDown(f"{node} is unreachable")
        for i, (m, n, times) in enumerate(self.failures):
            if m == method and (n is None or n == node) and times > 0:
                self.failures[i] = (m, n, times - 1)
                raise Injected(f"injected {method} failure on {node}")

    def _key(self, node: str, image_dir: str) -> tuple[str, str]:
        return ("*", image_dir) if image_dir.startswith(SHARED) else (node, image_dir)

    # -- queries -------------------------------------------------------------------------
    def refuse_reasons(self, node: str, ref: ContainerRef) -> list[str]:
        self._enter("refuse_reasons", node)
        return list(getattr(self, "refusals", []))

    def container_state(self, node: str, ref: ContainerRef) -> ContainerState:
        self._enter("container_state", node)
        left = self.busy.get((node, ref.name), 0)
        if left:
            self.busy[(node, ref.name)] = left - 1
            return ContainerState.BUSY
        copy = self.w.copies[node].get(ref.name)
        if copy is None:
            return ContainerState.ABSENT
        return ContainerState.RUNNING if copy.state == "running" else ContainerState.STOPPED

    # -- network -------------------------------------------------------------------------
    def hold(self, node: str, address: str) -> str:
        self._enter("hold", node)
        self.w.routes[node][address] = ("held",)
        return "hold"

    def point_local(self, node: str, ref: ContainerRef) -> None:
        self._enter("point_local", node)
        if ref.address not in self.w.nets[node]:
            raise HpcmigError(f"no net for {ref.address} on {node}")
        self.w.routes[node][ref.address] = ("local",)

    def route_via(self, node: str, address: str, via: str) -> None:
        self._enter("route_via", node)
        self.w.routes[node][address] = ("via", via)

    def unroute(self, node: str, address: str) -> None:
        self._enter("unroute", node)
        self.w.routes[node].pop(address, None)

    def create_net(self, node: str, ref: ContainerRef) -> None:
        self._enter("create_net", node)
        self.w.nets[node].add(ref.address)
        self.w.routes[node][ref.address] = ("held",)

    def remove_net(self, node: str, ref: ContainerRef) -> None:
        self._enter("remove_net", node)
        if ref.name in self.w.copies[node]:
            raise HpcmigError("removing the net of a live container")
        self.w.nets[node].discard(ref.address)
        if self.w.routes[node].get(ref.address, ("none",))[0] in ("local", "held"):
            del self.w.routes[node][ref.address]  # a route to another node stays

    # -- images --------------------------------------------------------------------------
    def prepare_images(self, node: str, image_dir: str, uid: int) -> None:
        self._enter("prepare_images", node)
        self.w.images[self._key(node, image_dir)] = {}

    def open_stream(self, node: str, image_dir: str, uid: int, peer: str) -> Stream:
        self._enter("open_stream", node)
        self.w.streams.add((node, image_dir))
        return Stream(node, 1, 2, 3, 4, image_dir)

    def close_stream(self, node: str, stream: Stream) -> None:
        self._enter("close_stream", node)
        self.w.streams.discard((node, stream.image_dir))

    def send_images(self, node: str, image_dir: str, stream: Stream) -> int:
        self._enter("send_images", node)
        src = self.w.images.get(self._key(node, image_dir))
        if not src or "sha" not in src or (stream.address, stream.image_dir) not in \
                self.w.streams:
            raise HpcmigError("nothing to send, or the stream is closed")
        self.w.images[self._key(stream.address, stream.image_dir)].update(
            {k: v for k, v in src.items() if k != "pages" or src.get("lazy")})
        return 10

    def verify_images(self, node: str, image_dir: str, manifest_sha256: str | None) -> None:
        self._enter("verify_images", node)
        img = self.w.images.get(self._key(node, image_dir))
        if not img or "sha" not in img or not img.get("pages"):
            raise CorruptImage(f"{image_dir} on {node} is incomplete")
        if img.get("corrupt") or (manifest_sha256 and img["sha"] != manifest_sha256):
            raise CorruptImage(f"{image_dir} on {node} does not match its manifest")
        img["verified"] = True

    def remove_images(self, node: str, image_dir: str) -> None:
        self._enter("remove_images", node)
        self.w.images.pop(self._key(node, image_dir), None)
        self.w.streams.discard((node, image_dir))

    # -- engine --------------------------------------------------------------------------
    def dump(self, node: str, ref: ContainerRef, image_dir: str,
             stream: Stream | None, postcopy: bool = False) -> DumpStats:
        self._enter("dump", node)
        copy = self.w.copies[node].get(ref.name)
        if copy is None or copy.state != "running":
            raise HpcmigError(f"cannot dump {ref.name} on {node}: {copy}")
        if self.w.routes[node].get(ref.address) != ("held",):
            self.w.violations.append(f"dump of {ref.name} without the network lock")
        img = self.w.images.get(self._key(node, image_dir))
        if img is None:
            raise HpcmigError(f"{image_dir} was not prepared on {node}")
        copy.state = "stopped"
        sha = f"sha-{ref.name}-{next(self.pids)}"
        img.update({"sha": sha, "name": ref.name})
        if postcopy:
            if stream is not None:
                raise HpcmigError("a post-copy dump writes no pages to a page server")
            img.update(pages=True, lazy=True)
            self.w.serving[ref.name] = node
            return DumpStats(0.1, 100, sha, lazy_address=node, lazy_port=1)
        if stream is None:
            img["pages"] = True
        else:
            if (stream.address, stream.image_dir) not in self.w.streams:
                raise HpcmigError("the page server is gone")
            self.w.images[self._key(stream.address, stream.image_dir)]["pages"] = True
        if "dump_after" in self.hooks:
            self.hooks.pop("dump_after")()
        return DumpStats(0.1, 1000, sha)

    def restore(self, node: str, ref: ContainerRef, image_dir: str,
                lazy_from: tuple[str, int] | None = None) -> int:
        self._enter("restore", node)
        if lazy_from is not None and self.w.serving.get(ref.name) != lazy_from[0]:
            raise HpcmigError(f"no page server for {ref.name} on {lazy_from[0]}")
        img = self.w.images.get(self._key(node, image_dir))
        if not img or not img.get("verified"):
            raise HpcmigError(f"restore from unverified images on {node}")
        if ref.address not in self.w.nets[node]:
            raise HpcmigError(f"no netns for {ref.address} on {node}")
        if ref.name in self.w.copies[node]:
            raise HpcmigError(f"{node} already has {ref.name}")
        self.w.copies[node][ref.name] = Copy("running", restored=True)
        if lazy_from is not None:
            self.w.lacking.add(ref.name)
        self.w.restored_ran.add(ref.name)
        self.w.check_once(ref)
        if "restore_after" in self.hooks:
            self.hooks.pop("restore_after")()
        return next(self.pids)

    def postcopy_wait(self, node: str, ref: ContainerRef, image_dir: str) -> float:
        self._enter("postcopy_wait", node)
        if ref.name not in self.w.lacking:
            return 0.0
        source = self.w.serving.get(ref.name)
        if source is None or source in self.down:
            self.w.copies[node].pop(ref.name, None)  # the agent kills a copy it cannot fill
            self.w.lacking.discard(ref.name)
            raise HpcmigError(f"the memory of {ref.name} did not arrive")
        self.w.lacking.discard(ref.name)
        return 0.5

    def postcopy_end(self, node: str, ref: ContainerRef, image_dir: str) -> bool:
        self._enter("postcopy_end", node)
        if self.w.serving.get(ref.name) != node:
            return False
        if ref.name in self.w.lacking:
            self.w.violations.append(f"{ref.name}: page server ended before the memory moved")
        del self.w.serving[ref.name]
        return True

    def resume(self, node: str, ref: ContainerRef) -> None:
        self._enter("resume", node)
        if self.w.serving.get(ref.name) == node:
            self.w.violations.append(f"{ref.name}: resumed while its dump still serves")
        copy = self.w.copies[node].get(ref.name)
        if copy is None:
            return
        if copy.state == "stopped" and not copy.restored and ref.name in self.w.restored_ran:
            self.w.violations.append(f"{ref.name}: source resumed after a restored copy ran")
        copy.state = "running"
        self.w.check_once(ref)

    def kill(self, node: str, ref: ContainerRef) -> None:
        self._enter("kill", node)
        if self.w.serving.get(ref.name) == node and ref.name in self.w.lacking:
            self.w.violations.append(f"{ref.name}: source killed before its memory moved")
        self.w.copies[node].pop(ref.name, None)


def assert_settled(world: World, ref: ContainerRef, host: str, others: list[str]) -> None:
    """One running copy on host, routed locally there and via host everywhere else."""
    assert not world.violations, world.violations
    assert world.where(ref) == [(host, "running")], world.where(ref)
    assert world.routes[host][ref.address] == ("local",)
    assert ref.address in world.nets[host]
    for n in others:
        assert world.routes[n].get(ref.address) == ("via", host), (n, world.routes[n])
        assert ref.address not in world.nets[n], n
    assert not world.streams, world.streams
    assert not world.serving and not world.lacking, (world.serving, world.lacking)
