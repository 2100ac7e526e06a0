"""`MigrationOps` across real nodes: every effect is an RPC to that node's agent.

Design note: the one real implementation of the Protocol in ops.py (hpcmigd uses it, and so
do the integration tests and the migration benchmark, against real agents on throwaway
nodes: tests/integration/agent_nodes.py). It knows each node's address (from Slurm) and
the job's virtual cluster (for a target node that has no record of the job yet); the agents
do the work (hpcmig/agent/ckpt.py) and keep their job records true. The calls are made with
the caller's MUNGE identity, so a user can only move their own job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcmig.agent.rpc import AgentClient
from hpcmig.checkpoint.base import DumpStats
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.checkpoint.stream import Stream
from hpcmig.errors import HpcmigError
from hpcmig.vcluster import VCluster


class AgentOps:
    def __init__(self, vc: VCluster, node_addrs: Mapping[str, str], port: int = 7101,
                 munge_socket: str | None = None) -> None:
        self.vc = vc
        self.node_addrs = dict(node_addrs)
        self.port = port
        self.munge_socket = munge_socket

    def _call(self, node: str, op: str, timeout: float | None = None, **args: Any) -> Any:
        try:
            addr = self.node_addrs[node]
        except KeyError:
            raise HpcmigError(f"no address known for node {node}") from None
        client = AgentClient(node, addr, self.port, self.munge_socket)
        return client.call(op, timeout=timeout, job_id=self.vc.job_id, **args)

    # -- queries --------------------------------------------------------------------------
    def refuse_reasons(self, node: str, ref: ContainerRef) -> list[str]:
        return list(self._call(node, "ckpt.refuse_reasons", ref=ref.to_json()))

    def container_state(self, node: str, ref: ContainerRef) -> ContainerState:
        return ContainerState(self._call(node, "ckpt.state", ref=ref.to_json()))

    # -- network --------------------------------------------------------------------------
    def hold(self, node: str, address: str) -> str:
        return str(self._call(node, "ckpt.hold", address=address))

    def point_local(self, node: str, ref: ContainerRef) -> None:
        self._call(node, "ckpt.point_local", ref=ref.to_json())

    def route_via(self, node: str, address: str, via: str) -> None:
        self._call(node, "ckpt.route_via", address=address, via=via,
                   via_addr=self.node_addrs[via])

    def unroute(self, node: str, address: str) -> None:
        self._call(node, "ckpt.unroute", address=address)

    def create_net(self, node: str, ref: ContainerRef) -> None:
        self._call(node, "ckpt.create_net", ref=ref.to_json(), vcluster=self.vc.to_json())

    def remove_net(self, node: str, ref: ContainerRef) -> None:
        self._call(node, "ckpt.remove_net", ref=ref.to_json())

    # -- images ---------------------------------------------------------------------------
    def prepare_images(self, node: str, image_dir: str, uid: int) -> None:
        self._call(node, "ckpt.prepare_images", image_dir=image_dir, uid=uid)

    def open_stream(self, node: str, image_dir: str, uid: int, peer: str) -> Stream:
        return Stream.from_json(self._call(node, "ckpt.open_stream", image_dir=image_dir,
                                           uid=uid, address=self.node_addrs[node],
                                           peer=self.node_addrs[peer]))

    def close_stream(self, node: str, stream: Stream) -> None:
        self._call(node, "ckpt.close_stream", stream_=stream.to_json())

    def send_images(self, node: str, image_dir: str, stream: Stream) -> int:
        return int(self._call(node, "ckpt.send_images", timeout=600, image_dir=image_dir,
                              stream_=stream.to_json()))

    def verify_images(self, node: str, image_dir: str, manifest_sha256: str | None) -> None:
        self._call(node, "ckpt.verify_images", timeout=600, image_dir=image_dir,
                   manifest_sha256=manifest_sha256)

    def remove_images(self, node: str, image_dir: str) -> None:
        self._call(node, "ckpt.remove_images", image_dir=image_dir)

    # -- engine ---------------------------------------------------------------------------
    def dump(self, node: str, ref: ContainerRef, image_dir: str,
             stream: Stream | None, postcopy: bool = False) -> DumpStats:
        extra = {"lazy_address": self.node_addrs[node]} if postcopy else {}
        return DumpStats.from_json(self._call(
            node, "ckpt.dump", timeout=1800, ref=ref.to_json(), image_dir=image_dir,
            stream_=stream.to_json() if stream else None, **extra))

    def restore(self, node: str, ref: ContainerRef, image_dir: str,
                lazy_from: tuple[str, int] | None = None) -> int:
        extra = {"lazy_from": list(lazy_from)} if lazy_from else {}
        return int(self._call(node, "ckpt.restore", timeout=1800, ref=ref.to_json(),
                              image_dir=image_dir, **extra))

    def postcopy_wait(self, node: str, ref: ContainerRef, image_dir: str) -> float:
        return float(self._call(node, "ckpt.postcopy_wait", timeout=1900, ref=ref.to_json(),
                                image_dir=image_dir))

    def postcopy_end(self, node: str, ref: ContainerRef, image_dir: str) -> bool:
        return bool(self._call(node, "ckpt.postcopy_end", timeout=120, ref=ref.to_json(),
                               image_dir=image_dir))

    def resume(self, node: str, ref: ContainerRef) -> None:
        self._call(node, "ckpt.resume", ref=ref.to_json())

    def kill(self, node: str, ref: ContainerRef) -> None:
        self._call(node, "ckpt.kill", timeout=120, ref=ref.to_json())
