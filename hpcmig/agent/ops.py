"""The agent's RPC operations for jobs and the virtual network (the API: docs/agent.md).

Design note: thin handlers; each checks its arguments, takes the job's lock and calls
`NodeAgent`. Access levels are declared here, enforced by server.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

from hpcmig import __version__
from hpcmig.agent.node import JobRecord, NodeAgent
from hpcmig.agent.server import Call, operation
from hpcmig.errors import UsageError
from hpcmig.vcluster import VCluster


def _agent(call: Call) -> NodeAgent:
    agent: NodeAgent = call.ctx
    return agent


@operation("ping", "any")
def ping(call: Call) -> dict[str, Any]:
    return {"node": _agent(call).node, "version": __version__, "pid": os.getpid(),
            "time": time.time(), "uid": call.who.uid, "network": _agent(call).network_path}


@operation("health.sample", "admin")
def health_sample(call: Call) -> dict[str, Any] | None:
    """This node's latest health sample (agent/health.py); None until the first is taken."""
    sampler = _agent(call).health
    latest = sampler.latest if sampler else None
    return latest.to_json() if latest else None


@operation("job.setup", "admin")
def job_setup(call: Call, vcluster: dict[str, Any], restoring: bool = False) -> dict[str, Any]:
    """Build this node's part of a job's virtual cluster (the prolog calls this); with
    `restoring`, no container: the job's checkpoint will be restored here."""
    agent = _agent(call)
    vc = VCluster.from_json(vcluster)
    with agent.job_lock(vc.job_id):
        rec = agent.setup(vc, start=not restoring)
    return {"containers": [c.to_json() for c in rec.containers.values()]}


@operation("job.fail", "admin")
def job_fail(call: Call, vcluster: dict[str, Any], error: str) -> None:
    """Remember why a job's virtual cluster could not be built, for `hpcmig run` to say."""
    agent = _agent(call)
    vc = VCluster.from_json(vcluster)
    with agent.job_lock(vc.job_id):
        old = agent.load(vc.job_id)
        agent.save(JobRecord(vc, old.containers if old else {}, error))


@operation("job.members", "admin")
def job_members(call: Call, vcluster: dict[str, Any]) -> bool:
    """The controller says where the job's containers are now (after a move): this node's
    record follows. False: no record of the job here (not one of its nodes)."""
    agent = _agent(call)
    vc = VCluster.from_json(vcluster)
    with agent.job_lock(vc.job_id):
        rec = agent.load(vc.job_id)
        if rec is None or rec.vc.restart != vc.restart:
            return False
        rec.vc = vc
        agent.save(rec)
        agent.write_hosts(vc)
    return True


@operation("job.teardown", "admin")
def job_teardown(call: Call, job_id: str) -> dict[str, Any]:
    agent = _agent(call)
    with agent.job_lock(job_id):
        return {"removed": agent.teardown(str(job_id))}


@operation("job.info", "job")
def job_info(call: Call, job_id: str) -> dict[str, Any]:
    """The job's virtual cluster as this node knows it, and its containers here."""
    rec = _agent(call).load(str(job_id))
    if rec is None:  # authorize() already refused unknown jobs; a race with teardown
        raise UsageError(f"no hpcmig job {job_id} here")
    data = rec.to_json()
    data["hosts_file"] = str(_agent(call).job_dir(str(job_id)) / "hosts")
    return data


@operation("job.list", "admin")
def job_list(call: Call) -> list[dict[str, Any]]:
    return [rec.to_json() for rec in _agent(call).records()]
