"""The agent's side of a requeued job's restore: `job.restore`, called by `hpcmig run`.

Design note: the job's user starts the restore (its first `hpcmig run` after the requeue),
but the restore is root's work on every node, journaled like any controller operation; so the
batch host's agent acts as the controller here (hpcmig.controller.restart), calling the
job's agents (itself included) with its own identity. Access "job": the owner or an admin.
"""

from __future__ import annotations

import os
from typing import Any

from hpcmig.agent.node import NodeAgent
from hpcmig.agent.server import Call, operation
from hpcmig.controller import restart
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.journal import Journal
from hpcmig.errors import UsageError


@operation("job.restore", "job")
def job_restore(call: Call, job_id: str) -> dict[str, Any]:
    """Restore the job's pending whole-job checkpoint on its current allocation."""
    agent: NodeAgent = call.ctx
    rec = agent.load(str(job_id))
    if rec is None:
        raise UsageError(f"no hpcmig job {job_id} here")
    cfg = agent.config
    pending = restart.pending(cfg.checkpoint_dir, str(job_id))
    if pending is None:
        return {"restored": False, "from_restart": None}
    with agent.job_lock(f"restore-{job_id}"):  # one restore at a time per job
        ops = AgentOps(rec.vc, rec.vc.node_addrs, cfg.agent_port, agent.munge_socket)
        with Journal(os.path.join(cfg.state_dir, "controller.db")) as journal:
            done = restart.restore_on_allocation(journal, ops, rec.vc, cfg.checkpoint_dir)
    return {"restored": done, "from_restart": pending.restart}
