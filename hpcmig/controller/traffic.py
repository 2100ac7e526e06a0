"""`hpcmig traffic JOBID`: the job's measured container-to-container traffic.

Design note: the nodes count (hpcmig.network.traffic: each packet once, on its sender's node);
hpcmigd sums, for every (sender, receiver) address pair of the job, what each node of the job
counts now (`job.traffic`, one RPC per node, in parallel) and what nodes the job already left
saved (`<state_dir>/traffic/<job>/`), and turns addresses into container indices. A node
whose agent does not answer is named in the answer (`missing`), its live counts left out.

History (`hpcmig run --map auto`): while the job runs, hpcmigd notes its name, owner and
container addresses beside the saved counts (`remember`, `job.meta`); once it ended, the
periodic sweep turns the counts into the job's container matrix and keeps it as the last
measured run of that job name by that user (`<state_dir>/traffic/history/<uid>/`, root only,
one file per name, the newest wins), then removes the job's directory (`sweep`).
"""

from __future__ import annotations

import hashlib
import json
import pwd
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcmig.agent.traffic import read_saved, saved_dir
from hpcmig.checkpoint.record import write_private_json
from hpcmig.errors import HpcmigError, UsageError
from hpcmig.network import traffic
from hpcmig.network.pool import container_address, container_index

if TYPE_CHECKING:
    from hpcmig.controller.service import Service
    from hpcmig.slurm import JobInfo
    from hpcmig.vcluster import VCluster

META = "job.meta"


def measure(svc: Service, job_id: str, job: JobInfo | None = None,
            vc: VCluster | None = None) -> dict[str, Any]:
    """The job's container matrix so far; `job` and `vc`: what the caller already read."""
    job = job or svc.job(job_id)
    vc = vc or svc.vcluster(str(job.job_id), job)
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
    total = traffic.add(total, _saved(svc.cfg.state_dir, vc.job_id))
    members = sorted(vc.members, key=lambda m: m.index)
    sent, packets = matrices(total, [m.address for m in members])
    return {"job_id": vc.job_id, "bytes": sent, "packets": packets, "missing": missing,
            "containers": [{"index": m.index, "address": m.address, "node": m.node}
                           for m in members]}


def _saved(state_dir: str, job_id: str) -> traffic.Counts:
    total: traffic.Counts = {}
    for path in sorted(saved_dir(state_dir, job_id).glob("*.json")):
        total = traffic.add(total, read_saved(path))
    return total


def matrices(total: traffic.Counts, addresses: list[str]) -> tuple[list[list[int]],
                                                                    list[list[int]]]:
    """(bytes, packets) container i sent to container j, containers in `addresses` order."""
    index = {a: i for i, a in enumerate(addresses)}
    n = len(addresses)
    sent = [[0] * n for _ in range(n)]
    packets = [[0] * n for _ in range(n)]
    for (src, dst), (b, p) in total.items():
        if src in index and dst in index:
            sent[index[src]][index[dst]] += b
            packets[index[src]][index[dst]] += p
    return sent, packets


def remember(state_dir: str, job: JobInfo, vc: VCluster) -> None:
    """Note the running job's name, owner and container addresses (once per job)."""
    meta = saved_dir(state_dir, vc.job_id) / META
    if meta.exists():
        return
    write_private_json(meta, {"name": job.name, "uid": vc.uid, "addresses": [
        m.address for m in sorted(vc.members, key=lambda m: m.index)]})


def history_path(state_dir: str, uid: int, name: str) -> Path:
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]  # any job name, one file
    return Path(state_dir) / "traffic" / "history" / str(uid) / f"{digest}.json"


def archive(state_dir: str, job_id: str, job: JobInfo | None = None,
            block_prefix: int = 26) -> Path | None:
    """The ended job's container matrix as the last measured run of its name by its user;
    None when there is nothing to keep. Without hpcmigd's note (a job that ended before
    hpcmigd looked at it), Slurm's record of the job names it and the addresses give the
    containers (container i is address i + 1 of the job's block: network.pool)."""
    counts = _saved(state_dir, job_id)
    try:
        meta = json.loads((saved_dir(state_dir, job_id) / META).read_text())
    except (FileNotFoundError, ValueError):
        meta = _meta_from(job, counts, block_prefix)
    if meta is None:
        return None
    sent, _ = matrices(counts, list(meta["addresses"]))
    if not any(any(row) for row in sent):
        return None
    path = history_path(state_dir, int(meta["uid"]), str(meta["name"]))
    write_private_json(path, {"job_id": job_id, "name": meta["name"], "ended": time.time(),
                         "bytes": sent})
    return path


def _meta_from(job: JobInfo | None, counts: traffic.Counts, block_prefix: int
               ) -> dict[str, Any] | None:
    if job is None or not counts:
        return None
    uid = job.uid
    if uid < 0:
        try:
            uid = pwd.getpwnam(job.user).pw_uid
        except KeyError:
            return None
    first = next(iter(counts))[0]
    block = IPv4Network(f"{first}/{block_prefix}", strict=False)
    seen = {a for pair in counts for a in pair if IPv4Address(a) in block}
    n = max(container_index(block, a) for a in seen) + 1
    return {"name": job.name, "uid": uid,
            "addresses": [str(container_address(block, i)) for i in range(n)]}


def last_run(state_dir: str, uid: int, name: str) -> dict[str, Any]:
    """The last measured run of job `name` by `uid` (for `hpcmig run --map auto`)."""
    try:
        found: dict[str, Any] = json.loads(history_path(state_dir, uid, name).read_text())
    except FileNotFoundError:
        raise UsageError(f"hpcmig has measured no earlier run of job '{name}' by this user",
                         hint="run it once (one rank per container) and let it end; "
                              "`hpcmig traffic JOBID` shows what is measured") from None
    if found.get("name") != name:
        raise UsageError(f"no measured run of job '{name}' (another name shares its file)")
    return found


def sweep(state_dir: str, ended: list[str], jobs: dict[str, JobInfo] | None = None,
          block_prefix: int = 26) -> None:
    """Keep the matrices of jobs that ended (`archive`), then remove their saved counts."""
    for job_id in ended:
        archive(state_dir, job_id, (jobs or {}).get(job_id), block_prefix)
        shutil.rmtree(saved_dir(state_dir, job_id), ignore_errors=True)
