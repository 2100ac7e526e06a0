"""A job's virtual cluster: which container is where, with which virtual address.

Design note: pure data and rules, shared by the prolog (which plans it), the agents (which
build their part), `hpcmig run` (which launches into it) and the controller (which moves its
members). Every node's prolog computes the same plan from the same inputs (the job's node list
in Slurm's order, its address block, its options), so no node has to wait for another. It
does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from ipaddress import IPv4Network
from typing import Any

from hpcmig.errors import UsageError
from hpcmig.network.pool import container_address
from hpcmig.runtime.base import container_name

OPTION_KEYS = {"image", "spares", "runtime", "mpi", "engine", "ckpt"}
ENGINES = ("criu", "dmtcp", "app")


@dataclass(frozen=True)
class Member:
    """Container `index` of the job, hosted by `node` (reachable at `node_addr`)."""

    index: int
    node: str
    node_addr: str
    address: str  # the container's virtual /32, stable across migration and requeue


@dataclass(frozen=True)
class VCluster:
    job_id: str
    restart: int
    user: str
    uid: int
    gid: int
    block: str  # the job's address block, e.g. 10.252.0.64/26
    members: tuple[Member, ...]
    spares: tuple[str, ...] = ()  # nodes of the allocation that host no container (yet)
    node_addrs: Mapping[str, str] = field(default_factory=dict)  # every node of the job
    image: str | None = None
    runtime: str = "ns"
    mpi: str = "mpich"
    ckpt: str = ""  # periodic checkpoints: "" none, seconds ("600") or "auto" (Young/Daly)
    engine: str = "criu"

    def name(self, index: int) -> str:
        return container_name(self.job_id, self.restart, index)

    def member(self, index: int) -> Member:
        for m in self.members:
            if m.index == index:
                return m
        raise UsageError(f"job {self.job_id} has no container {index}")

    def on_node(self, node: str) -> list[Member]:
        return [m for m in self.members if m.node == node]

    def nodes(self) -> list[str]:
        """Every node that takes part: hosts a container or is a spare."""
        seen = [m.node for m in self.members] + list(self.spares)
        return list(dict.fromkeys(seen))

    def moved(self, index: int, node: str, node_addr: str) -> VCluster:
        """The same cluster with container `index` hosted by `node` instead."""
        old = self.member(index)
        members = tuple(replace(m, node=node, node_addr=node_addr) if m.index == index else m
                        for m in self.members)
        spares = tuple(n for n in self.spares if n != node)
        if not any(m.node == old.node for m in members):
            spares = (*spares, old.node) if old.node in self.node_addrs else spares
        addrs = {**self.node_addrs, node: node_addr}
        return replace(self, members=members, spares=spares, node_addrs=addrs)

    def without_node(self, node: str) -> VCluster:
        """The same cluster once the job released `node` (which hosts none of its
        containers): no longer a spare, no longer one of the job's nodes."""
        if self.on_node(node):
            raise UsageError(f"job {self.job_id} still has containers on {node}")
        return replace(self, spares=tuple(n for n in self.spares if n != node),
                       node_addrs={n: a for n, a in self.node_addrs.items() if n != node})

    def hosts_text(self) -> str:
        """Lines `addr name` for $HPCMIG_HOSTS (hpcmig-rsh resolves container names)."""
        return "".join(f"{m.address} {self.name(m.index)}\n" for m in self.members)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["members"] = [asdict(m) for m in self.members]
        data["node_addrs"] = dict(self.node_addrs)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VCluster:
        data = dict(data)
        data["members"] = tuple(Member(**m) for m in data["members"])
        data["spares"] = tuple(data.get("spares", ()))
        data["node_addrs"] = dict(data.get("node_addrs", {}))
        return cls(**data)


def parse_options(opts: Mapping[str, str]) -> dict[str, Any]:
    """Validate the job's `hpcmig:` options (image=, spares=, runtime=, mpi=, engine=,
    ckpt=): the same rules as the SPANK plugin's (slurm-plugins/spank/options.c)."""
    unknown = sorted(set(opts) - OPTION_KEYS)
    if unknown:
        raise UsageError(f"unknown hpcmig option(s) {', '.join(unknown)}",
                         hint=f"known: {', '.join(sorted(OPTION_KEYS))}")
    out: dict[str, Any] = {}
    if opts.get("image"):
        out["image"] = opts["image"]
    if "spares" in opts:
        try:
            out["spares"] = int(opts["spares"])
        except ValueError:
            raise UsageError(f"spares must be a number, got {opts['spares']!r}") from None
        if out["spares"] < 0:
            raise UsageError("spares must be >= 0")
    if opts.get("runtime"):
        out["runtime"] = opts["runtime"]
    if opts.get("mpi"):
        if opts["mpi"] not in ("mpich", "openmpi"):
            raise UsageError(f"mpi must be mpich or openmpi, got {opts['mpi']!r}")
        out["mpi"] = opts["mpi"]
    if opts.get("engine"):
        if opts["engine"] not in ENGINES:
            raise UsageError(f"engine must be {', '.join(ENGINES)}, got {opts['engine']!r}")
        out["engine"] = opts["engine"]
    if "ckpt" in opts:
        out["ckpt"] = check_ckpt(opts["ckpt"])
    return out


def check_ckpt(value: str) -> str:
    """ckpt=SECONDS (a whole number > 0) or ckpt=auto."""
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        raise UsageError(f"ckpt must be a number of seconds > 0 or auto, got {value!r}")
    return value if value == "auto" else str(int(value))


def plan(
    *,
    job_id: str,
    restart: int,
    user: str,
    uid: int,
    gid: int,
    nodes: Sequence[str],
    node_addrs: Mapping[str, str],
    block: IPv4Network,
    spares: int = 0,
    image: str | None = None,
    runtime: str = "ns",
    mpi: str = "mpich",
    ckpt: str = "",
    engine: str = "criu",
) -> VCluster:
    """One container on each of the first len(nodes)-spares nodes, in Slurm's node order."""
    if not nodes:
        raise UsageError(f"job {job_id} has no nodes")
    if spares >= len(nodes):
        raise UsageError(f"job {job_id}: {spares} spare node(s) leave no node for a container",
                         hint="ask for more nodes or fewer spares")
    missing = [n for n in nodes if n not in node_addrs]
    if missing:
        raise UsageError(f"no address known for node(s) {', '.join(missing)}")
    hosting = list(nodes[: len(nodes) - spares])
    members = tuple(
        Member(i, node, node_addrs[node], str(container_address(block, i)))
        for i, node in enumerate(hosting)
    )
    return VCluster(
        job_id=str(job_id), restart=restart, user=user, uid=uid, gid=gid, block=str(block),
        members=members, spares=tuple(nodes[len(hosting):]),
        node_addrs={n: node_addrs[n] for n in nodes}, image=image, runtime=runtime, mpi=mpi,
        ckpt=ckpt, engine=engine,
    )
