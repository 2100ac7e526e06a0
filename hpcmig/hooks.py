"""`hpcmig-prolog` / `hpcmig-epilog`: slurmd's Prolog= and Epilog= for hpcmig jobs.

Design note: a job opts in with `--hpcmig[=key=value,...]` (the SPANK plugin in
slurm-plugins/spank, which hands the hooks SPANK_HPCMIG) or `#SBATCH --comment=hpcmig[:key=
value,...]` (keys: image=, spares=, runtime=, mpi=); every other job is untouched and the hook
exits 0 at once. With `PrologFlags=Alloc` every node of the job runs
the prolog at allocation; each computes the same virtual-cluster plan (hpcmig.vcluster) from
what Slurm says and asks its local agent to build its part. A hook exits non-zero only for a
real node fault (the local agent or munged unreachable, namespaces that cannot be made),
because Slurm drains a node whose prolog fails. A job's own mistake (a bad option, a missing
image) is recorded on the agent and reported by `hpcmig run`; the hook exits 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Mapping
from ipaddress import IPv4Network

from hpcmig import config as site_config
from hpcmig.agent.rpc import AgentClient, RpcError
from hpcmig.checkpoint import images, record
from hpcmig.errors import HpcmigError, SlurmError, UsageError
from hpcmig.network import AddressPool
from hpcmig.slurm import Slurm
from hpcmig.slurm.parse import JobInfo
from hpcmig.vcluster import VCluster, parse_options, plan

OPT_IN = "hpcmig"
SPANK_ENV = "SPANK_HPCMIG"  # slurm-plugins/spank: job control variable HPCMIG, SPANK_ prefixed
# The job is over (its address block and shared files can go) only in these states; an epilog
# also runs when a running job is shrunk off a node, and before a requeued job runs again.
ENDED_STATES = {"COMPLETING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL", "PREEMPTED"}


def parse_opt_in(comment: str) -> dict[str, str] | None:
    """`hpcmig:image=app.sif,spares=1` -> {'image': 'app.sif', 'spares': '1'}; None: not ours."""
    comment = comment.strip()
    if comment != OPT_IN and not comment.startswith(OPT_IN + ":"):
        return None
    opts: dict[str, str] = {}
    for item in comment[len(OPT_IN) + 1:].split(","):
        if item.strip():
            key, _, value = item.partition("=")
            opts[key.strip()] = value.strip()
    return opts


def job_options(comment: str, env: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The job's options: the SPANK plugin's `--hpcmig=k=v,...` (Slurm hands the hooks
    SPANK_HPCMIG) or else the comment; None: not ours. `--hpcmig` replaces the comment."""
    spank = env.get(SPANK_ENV)
    return parse_opt_in(comment) if spank is None else parse_opt_in(f"{OPT_IN}:{spank}")


def read_job(job_id: str) -> JobInfo:
    """The job as Slurm's adapter reads it (a bad id is the caller's problem: not ours)."""
    try:
        return Slurm().job(int(job_id))
    except ValueError:
        raise SlurmError(f"bad job id {job_id!r}") from None


def node_addresses(nodes: list[str]) -> dict[str, str]:
    want = set(nodes)
    return {n.name: n.address or n.name for n in Slurm().nodes() if n.name in want}


def plan_job(job: JobInfo, opts: dict[str, str], cfg: site_config.Config) -> VCluster:
    options = parse_options(opts)
    if job.uid < 0 or job.gid < 0:
        raise SlurmError(f"Slurm names no user/group for job {job.job_id}")
    nodes = list(job.nodes)
    job_id = str(job.job_id)
    block = AddressPool(str(cfg.pool_state), cfg.pool, cfg.block_prefix).reserve(job_id)
    return plan(job_id=job_id, restart=job.restart_count, user=job.user,
                uid=job.uid, gid=job.gid, nodes=nodes, node_addrs=node_addresses(nodes),
                block=IPv4Network(block), spares=options.get("spares", 0),
                image=options.get("image"), runtime=options.get("runtime", cfg.runtime),
                mpi=options.get("mpi", cfg.mpi), ckpt=options.get("ckpt", ""),
                engine=options.get("engine", "criu"))


def local_agent(cfg: site_config.Config, node: str) -> AgentClient:
    """The agent of this node (the hooks run in the node's network namespace)."""
    return AgentClient(node, "127.0.0.1", cfg.agent_port, cfg.munge_socket or None)


def log(kind: str, job_id: str, message: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} hpcmig-{kind}: job {job_id}: {message}"
    print(line, file=sys.stderr)
    try:
        cfg = site_config.load()
        os.makedirs(cfg.run_dir, exist_ok=True)
        with open(os.path.join(cfg.run_dir, "hooks.log"), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except (OSError, HpcmigError):
        pass


def prolog(job_id: str, node: str) -> int:
    try:
        cfg = site_config.load()
        job = read_job(job_id)
    except HpcmigError as exc:
        log("prolog", job_id, f"cannot read the job or the configuration: {exc}")
        return 0  # not a node fault
    opts = job_options(job.comment)
    if opts is None:
        return 0
    agent = local_agent(cfg, node)
    try:
        vc = plan_job(job, opts, cfg)
    except (UsageError, SlurmError) as exc:
        log("prolog", job_id, f"cannot plan the virtual cluster: {exc}")
        return 0
    ckpt = record.pending(cfg.checkpoint_dir, job_id)
    if ckpt is not None:  # a requeued job: its checkpointed incarnation's names, no container
        vc = dataclasses.replace(vc, restart=ckpt.restart)
    try:
        agent.call("job.setup", vcluster=vc.to_json(), restoring=ckpt is not None)
    except UsageError as exc:  # the job's own mistake: tell the job, keep the node
        log("prolog", job_id, f"job error: {exc}")
        with contextlib.suppress(HpcmigError):
            agent.call("job.fail", vcluster=vc.to_json(), error=str(exc))
        return 0
    except (RpcError, HpcmigError) as exc:
        log("prolog", job_id, f"node fault: {exc}")
        return 1
    here = [m for m in vc.members if m.node == node]
    if ckpt is not None:
        log("prolog", job_id, f"ready to restore the checkpoint of run {ckpt.restart}: "
            + (", ".join(f"container {m.index} at {m.address}" for m in here) or "spare node"))
        return 0
    log("prolog", job_id, "ready: " + (", ".join(f"container {m.index} at {m.address}"
                                                 for m in here) or "spare node, routes only"))
    return 0


def epilog(job_id: str, node: str) -> int:
    try:
        cfg = site_config.load()
        job: JobInfo | None = read_job(job_id)
    except HpcmigError as exc:
        job = None
        log("epilog", job_id, f"cannot read the job ({exc}); cleaning up anyway")
        try:
            cfg = site_config.load()
        except HpcmigError:
            return 0
    if job is not None and job_options(job.comment) is None:
        return 0
    try:
        removed = local_agent(cfg, node).call("job.teardown", job_id=job_id)["removed"]
    except RpcError as exc:
        log("epilog", job_id, f"node fault: {exc}")
        return 1
    except HpcmigError as exc:
        log("epilog", job_id, f"teardown failed: {exc}")
        return 1
    ended = job.state in ENDED_STATES if job is not None else False
    if ended and record.pending(cfg.checkpoint_dir, job_id) is not None:
        ended = False  # requeued from a whole-job checkpoint: kept for its restore
    if ended:
        AddressPool(str(cfg.pool_state), cfg.pool, cfg.block_prefix).release(job_id)
        shutil.rmtree(os.path.join(cfg.state_dir, "jobs", job_id), ignore_errors=True)
        for root in (cfg.checkpoint_dir, os.path.join(cfg.run_dir, "spool")):
            images.remove_job(root, job_id)  # checkpoint images hold process memory
    if removed:
        log("epilog", job_id, f"removed {', '.join(removed)}")
    return 0


def _hook(kind: str) -> int:
    job_id = os.environ.get("SLURM_JOB_ID", "")
    node = os.environ.get("SLURMD_NODENAME", "")
    if not job_id or not node:
        print(f"hpcmig-{kind}: SLURM_JOB_ID/SLURMD_NODENAME not set; run me from slurmd",
              file=sys.stderr)
        return 0
    return prolog(job_id, node) if kind == "prolog" else epilog(job_id, node)


def prolog_main() -> int:
    return _hook("prolog")


def epilog_main() -> int:
    return _hook("epilog")
