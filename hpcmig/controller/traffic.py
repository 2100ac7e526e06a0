"""`hpcmig traffic JOBID`: the job's measured container-to-container traffic.

Design note: the nodes count (hpcmig.network.traffic: each packet once, on its sender's node);
hpcmigd sums, for every (sender, receiver) address pair of the job, what each node of the job
counts now (`job.traffic`, one RPC per node, in parallel) and what nodes the job already left
saved (`<state_dir>/traffic/<job>/`), and turns addresses into container indices. A node
whose agent does not answer is named in the answer (`missing`), its live counts left out.
The directory of a job that ended is removed by the periodic sweep (`sweep`).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hpcmig.agent.traffic import read_saved, saved_dir
from hpcmig.errors import HpcmigError
from hpcmig.network import traffic

if TYPE_CHECKING:
    from hpcmig.controller.service import Service


def measure(svc: Service, job_id: str) -> dict[str, Any]:
    job = svc.job(job_id)
    vc = svc.vcluster(str(job.job_id), job)
    nodes = list(dict.fromkeys([*job.nodes, *vc.nodes()]))

    def ask(node: str) -> tuple[str, traffic.Counts | str]:
        try:
            answer = svc.agent(node).call("job.traffic", job_id=vc.job_id, timeout=30)
            return node, traffic.from_json(answer["counts"])
        except HpcmigError as exc:
            return node, str(exc)

    total: traffic.Counts = {}
    missing: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(16, len(nodes) or 1)) as pool:
        for node, got in pool.map(ask, nodes):
            if isinstance(got, str):
                missing[node] = got
            else:
                total = traffic.add(total, got)
    for path in sorted(saved_dir(svc.cfg.state_dir, vc.job_id).glob("*.json")):
        total = traffic.add(total, read_saved(path))
    members = sorted(vc.members, key=lambda m: m.index)
    index = {m.address: i for i, m in enumerate(members)}
    n = len(members)
    sent = [[0] * n for _ in range(n)]
    packets = [[0] * n for _ in range(n)]
    for (src, dst), (b, p) in total.items():
        if src in index and dst in index:
            sent[index[src]][index[dst]] += b
            packets[index[src]][index[dst]] += p
    return {"job_id": vc.job_id, "bytes": sent, "packets": packets, "missing": missing,
            "containers": [{"index": m.index, "address": m.address, "node": m.node}
                           for m in members]}


def sweep(state_dir: str, ended: list[str]) -> None:
    """Remove the saved counts of jobs that ended."""
    for job_id in ended:
        shutil.rmtree(saved_dir(state_dir, job_id), ignore_errors=True)
