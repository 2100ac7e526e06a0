"""The effects a migration, checkpoint or restore needs, as one Protocol: `MigrationOps`.

Design note: the state machines (`migration`, `jobckpt`, `recovery`) only decide; every
effect on a node goes through these methods, so the machines are unit-tested with a fake
and run for real with `AgentOps`, the agents' RPC (hpcmigd; and the integration tests and
the migration benchmark, on throwaway nodes that run real agents). Methods take node
*names*; the implementation knows each node's address, image root and container registry.

Contract for implementations (recovery depends on it):
- Every method is idempotent: calling it twice, or after a crash half-way, is harmless.
- Undo-like methods (`remove_net`, `close_stream`, `remove_images`, `kill`, `resume`,
  `unroute`, `point_local`) succeed when there is nothing to do.
- `container_state` reports BUSY while an engine command (criu dump/restore) for that copy
  is still running on the node, so recovery can wait for it to settle.
- Errors are `HpcmigError`s (an unreachable node included); anything else is a bug.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from hpcmig.checkpoint.base import DumpStats
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.checkpoint.stream import Stream


@runtime_checkable
class MigrationOps(Protocol):
    # -- queries -------------------------------------------------------------------------
    def refuse_reasons(self, node: str, ref: ContainerRef) -> list[str]:
        """What the engine cannot dump in the container on node ([]: dumpable)."""

    def container_state(self, node: str, ref: ContainerRef) -> ContainerState:
        """The state of the container's copy on node (see ContainerState)."""

    # -- virtual network -----------------------------------------------------------------
    def hold(self, node: str, address: str) -> str:
        """Network lock: node holds packets to address without an answer until
        `point_local` or `route_via` there lets them go (hpcmig.network.hold; a node that
        cannot hold drops them). Returns "hold" or "blackhole"."""

    def point_local(self, node: str, ref: ContainerRef) -> None:
        """Route ref.address to the container's veth on node (held packets go to it)."""

    def route_via(self, node: str, address: str, via: str) -> None:
        """On node, route address/32 via node `via`'s address (held packets follow)."""

    def unroute(self, node: str, address: str) -> None:
        """Remove node's route for address/32 (idempotent)."""

    def create_net(self, node: str, ref: ContainerRef) -> None:
        """Make the container's netns + veth on node with ref.address, *unrouted*: the /32
        is held on node until `point_local` (restore target)."""

    def remove_net(self, node: str, ref: ContainerRef) -> None:
        """Remove the container's netns, veth, hold and local /32 route on node
        (idempotent; a route to another node stays)."""

    # -- images --------------------------------------------------------------------------
    def prepare_images(self, node: str, image_dir: str, uid: int) -> None:
        """Make image_dir on node empty, root-owned, readable by uid (images.create)."""

    def open_stream(self, node: str, image_dir: str, uid: int, peer: str) -> Stream:
        """On node (the target): page server + file receiver into image_dir, accepting only
        node `peer` (the source)."""

    def close_stream(self, node: str, stream: Stream) -> None:
        """Stop whatever of the stream still listens (idempotent)."""

    def send_images(self, node: str, image_dir: str, stream: Stream) -> int:
        """On node (the source): send the non-page files of the dump; returns bytes sent."""

    def verify_images(self, node: str, image_dir: str, manifest_sha256: str | None) -> None:
        """Raise CorruptImage unless image_dir on node matches its manifest, and the
        manifest has this sha256 (None: whatever manifest is there; images.verify)."""

    def remove_images(self, node: str, image_dir: str) -> None:
        """Remove image_dir on node, first stopping any page server or receiver still
        serving it (a stream opened by a process that died before journaling it)."""

    # -- engine --------------------------------------------------------------------------
    def dump(self, node: str, ref: ContainerRef, image_dir: str,
             stream: Stream | None, postcopy: bool = False) -> DumpStats:
        """criu dump of the container on node, left stopped; pages to the stream if given.
        postcopy: the memory stays on node, served from a page server (stats.lazy_*) until
        `postcopy_wait` on the target saw it all or `postcopy_end` here ended it."""

    def restore(self, node: str, ref: ContainerRef, image_dir: str,
                lazy_from: tuple[str, int] | None = None) -> int:
        """criu restore on node into the netns `create_net` made; returns the init's pid.
        lazy_from: a post-copy dump's page server; the memory follows the restore."""

    def postcopy_wait(self, node: str, ref: ContainerRef, image_dir: str) -> float:
        """Target of a post-copy move: wait until all the memory arrived (seconds waited);
        a failed transfer kills the copy there (it cannot go on) and raises."""

    def postcopy_end(self, node: str, ref: ContainerRef, image_dir: str) -> bool:
        """Source of a post-copy move: end the dump's page server if it still serves (the
        tree stays stopped) and collect the dump (idempotent; True if it was serving)."""

    def resume(self, node: str, ref: ContainerRef) -> None:
        """SIGCONT a copy a dump left stopped (idempotent; nothing if absent)."""

    def kill(self, node: str, ref: ContainerRef) -> None:
        """Kill the container's copy on node (stopped or running) and wait until it is
        gone (idempotent)."""
