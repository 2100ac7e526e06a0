"""`hpcmig status`: what hpcmigd knows, as one JSON document with a schema, and as tables.

Design note: builds the document (`document`) from Slurm (nodes, jobs), the service's
membership (containers, virtual addresses), its agent heartbeats, the journal (operations in
flight, the last ones that ended) and its recent decisions. The schema is
hpcmig/data/status.schema.json (docs/controller.md describes the fields); `validate` checks a
document against it. A user who is not an admin sees only their own jobs. Reads only.
"""

from __future__ import annotations

import json
import os
import socket
import time
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from hpcmig import __version__
from hpcmig.controller.journal import Operation
from hpcmig.controller.recovery import describe
from hpcmig.controller.report import Report
from hpcmig.errors import HpcmigError
from hpcmig.vcluster import VCluster

if TYPE_CHECKING:
    from hpcmig.controller.service import Service
    from hpcmig.health.rules import Health

AGENT_STALE = 15.0  # seconds without an answer before an agent counts as down


@cache
def schema() -> dict[str, Any]:
    text = resources.files("hpcmig").joinpath("data/status.schema.json").read_text()
    return dict(json.loads(text))


def validate(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless doc is a valid status document."""
    import jsonschema

    jsonschema.validate(doc, schema(), format_checker=jsonschema.FormatChecker())


def _op(op: Operation) -> dict[str, Any]:
    return {"id": op.id, "kind": op.kind, "job_id": op.job_id, "what": describe(op),
            "state": op.state, "updated": op.updated, "error": op.error}


def _health(health: Health | None, node: str) -> dict[str, Any] | None:
    """The node's last health sample as hpcmigd judged it (None: no sample yet)."""
    hist = health.nodes.get(node) if health is not None else None
    last = hist.last if hist is not None else None
    if hist is None or last is None:
        return None
    return {"sampled": last.time, "cpus": last.cpus, "load": last.load,
            "findings": [f.reason() for f in hist.last_findings]}


def document(svc: Service, uid: int | None = None,
             health: Health | None = None) -> dict[str, Any]:
    """The status document; `uid`: only that user's jobs (None: every job); `health`: the
    watcher's node histories (hpcmigd's; None when nothing samples)."""
    now = time.time()
    nodes = svc.slurm.nodes()
    jobs = [j for j in svc.slurm.jobs() if j.state == "RUNNING"
            and (uid is None or j.uid == uid)]
    out_jobs = []
    with svc.journal() as journal:
        stored = journal.all_members()
        for job in jobs:
            entry = stored.get(str(job.job_id))
            if entry is None or entry[0] != job.restart_count:
                try:
                    vc = svc.vcluster(str(job.job_id), job)
                except HpcmigError:
                    continue  # not an hpcmig job
            else:
                vc = VCluster.from_json(entry[1])
            out_jobs.append({
                "job_id": vc.job_id, "user": job.user, "state": job.state,
                "restart": vc.restart, "nodes": list(job.nodes), "spares": list(vc.spares),
                "runtime": vc.runtime, "image": vc.image, "mpi": vc.mpi, "engine": "criu",
                "containers": [{"index": m.index, "name": vc.name(m.index), "node": m.node,
                                "address": m.address}
                               for m in sorted(vc.members, key=lambda m: m.index)]})
        mine = {j["job_id"] for j in out_jobs}
        visible = (lambda op: True) if uid is None else (lambda op: op.job_id in mine)
        operations = [_op(op) for op in journal.open_operations() if visible(op)]
        recent = [_op(op) for op in journal.recent(10) if visible(op)]
    out_nodes = []
    for n in nodes:
        seen = svc.heartbeats.get(n.name)
        age = max(0.0, now - seen) if seen is not None else None
        out_nodes.append({
            "name": n.name, "state": n.display_state, "flags": sorted(n.flags),
            "reason": n.reason, "reason_by_hpcmig": n.reason_is_ours, "jobs": list(n.jobs),
            "agent": {"up": age is not None and age < AGENT_STALE, "last_seen": seen,
                      "age": age, "network": svc.networks.get(n.name) or None},
            "health": _health(health, n.name)})
    decisions = [d for d in svc.decisions if uid is None or d.get("job") in mine]
    return {"schema": 1, "time": now,
            "controller": {"host": socket.gethostname(), "pid": os.getpid(),
                           "version": __version__, "journal": svc.journal_path},
            "nodes": out_nodes, "jobs": out_jobs, "operations": operations,
            "decisions": [{"time": d["time"], "what": d["what"]} for d in decisions],
            "recent": recent}


def _health_cell(health: dict[str, Any] | None) -> str | None:
    if health is None:
        return None
    return "; ".join(health["findings"]) or f"ok (load {health['load']:g}/{health['cpus']})"


def report(svc: Service, uid: int | None = None, health: Health | None = None) -> Report:
    doc = document(svc, uid, health)
    rep = Report("status", "nodes",
                 ("node", "state", "reason", "agent", "network", "health", "jobs"), data=doc)
    for n in doc["nodes"]:
        agent = n["agent"]
        network = agent["network"]  # "bpf (tc on ...)": the kind; "forwarded (why)": all
        rep.add(node=n["name"], state=n["state"], reason=n["reason"] or None,
                network=network.split(" ", 1)[0] if network and network.startswith("bpf")
                else network,
                health=_health_cell(n["health"]),
                agent=(f"up ({agent['age']:.0f} s ago)" if agent["up"] else
                       "down" if agent["last_seen"] is None else
                       f"silent for {agent['age']:.0f} s"), jobs=n["jobs"] or None)
    for j in doc["jobs"]:
        rep.say(f"job {j['job_id']} ({j['user']}, {j['runtime']}, {j['engine']}): " + ", ".join(
            f"{c['index']}@{c['node']} {c['address']}" for c in j["containers"])
            + (f"; spares {', '.join(j['spares'])}" if j["spares"] else ""))
    for op in doc["operations"]:
        rep.say(f"in flight: operation {op['id']} {op['what']}: {op['state']}")
    for d in doc["decisions"][:5]:
        rep.say(f"{time.strftime('%H:%M:%S', time.localtime(d['time']))} {d['what']}")
    return rep
