"""A job's traffic counted on this node (hpcmig.network.traffic): read live, saved on leaving.

Design note: the counts live in the node's nft set while the container that sends them is
here: its pairs (it, each other container of the job) become elements when its network is
made on the node (`count`: job setup, a migration or restore target). When it leaves (a
migration source's `ckpt.remove_net`) or the job leaves the node (`NodeAgent.teardown`: its
epilog, or a drain that released the node), this node's counts are added to
`<state_dir>/traffic/<job>/<node>.json` (root only; hpcmigd reads it there and removes the
directory once the job ended) and the elements are deleted, so a later job with the same
addresses starts from zero and a packet forwarded here for the container that left is not
counted as sent from here.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcmig.agent.server import Call, operation
from hpcmig.checkpoint.record import write_private_json
from hpcmig.network import traffic
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.agent.node import NodeAgent


def saved_dir(state_dir: str, job_id: str) -> Path:
    return Path(state_dir) / "traffic" / str(job_id)


def read_saved(path: Path) -> traffic.Counts:
    try:
        return traffic.from_json(json.loads(path.read_text())["counts"])
    except FileNotFoundError:
        return {}


def count(agent: NodeAgent, vc: VCluster, address: str) -> None:
    """Count what the job's container at `address`, whose network was just made on this
    node, sends to the job's other containers."""
    agent.net.count_from(address, [m.address for m in vc.members])


def save_and_forget(agent: NodeAgent, vc: VCluster, source: str | None = None) -> None:
    """Add this node's counts of the job (of the container at `source` only: it leaves the
    node) to its saved file; drop them from the set."""
    counts = agent.net.traffic(IPv4Network(vc.block))
    if source is not None:
        counts = {pair: c for pair, c in counts.items() if pair[0] == source}
    if not counts:
        return
    path = saved_dir(agent.config.state_dir, vc.job_id) / f"{agent.node}.json"
    total = traffic.add(read_saved(path), counts)
    write_private_json(path, {"node": agent.node, "counts": traffic.to_json(total)})
    agent.net.forget_traffic(list(counts))


@operation("job.traffic", "job")
def job_traffic(call: Call, job_id: str) -> dict[str, Any]:
    """Bytes and packets each container of the job sent to each other one through this node
    (rows: source, destination, bytes, packets), since the job came to this node."""
    agent: NodeAgent = call.ctx
    rec = agent.load(str(job_id))
    counts = agent.net.traffic(IPv4Network(rec.vc.block)) if rec else {}
    return {"node": agent.node, "counts": traffic.to_json(counts)}
