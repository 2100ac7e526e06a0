"""What one node's agent knows and does: the jobs with containers or routes here.

Design note: `NodeAgent` is the context every RPC operation gets. It owns this node's job
records (one JSON file per job under `<run_dir>/agent/jobs/`, written atomically), builds and
tears down this node's part of a job's virtual cluster (routes to the job's other containers,
the local container's netns and veth, the container itself), and answers who owns a job. It
runs in the node's own namespaces, so `NodeNet(None)` programs this node. It never talks to
Slurm: the prolog, `hpcmig run` and the controller bring what Slurm says.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import sys
import threading
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from hpcmig.agent import traffic
from hpcmig.agent.health import Sampler
from hpcmig.config import Config
from hpcmig.errors import HpcmigError
from hpcmig.network import ContainerNet, NodeNet, container_net, l2
from hpcmig.runtime import Container, ContainerSpec, get_runtime
from hpcmig.vcluster import Member, VCluster

log = logging.getLogger("hpcmig.agent")
VENV_BIN = os.path.dirname(sys.executable)
BASE_PATH = f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


def netns_name(container: str, node: str) -> str:
    """Per node: while a container moves, its source and target netns exist at once, and the
    testbed's nodes share /run/netns."""
    return f"{container}.{node}"


@dataclass
class JobRecord:
    vc: VCluster
    containers: dict[int, Container]  # the ones on this node
    error: str = ""  # why this node could not build its part (shown by `hpcmig run`)

    def to_json(self) -> dict[str, Any]:
        return {"vc": self.vc.to_json(), "error": self.error,
                "containers": {str(i): c.to_json() for i, c in self.containers.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        return cls(VCluster.from_json(data["vc"]),
                   {int(i): Container.from_json(c) for i, c in data["containers"].items()},
                   data.get("error", ""))


def data_path(config: Config) -> l2.DataPath | None:
    """The L2 data path of the configuration (None: off)."""
    if not config.network_l2:
        return None
    return l2.DataPath(IPv4Network(config.pool), IPv4Network(config.network_l2_pool),
                       config.network_l2_uplink)


class NodeAgent:
    def __init__(self, node: str, config: Config, munge_socket: str | None = None) -> None:
        self.node = node
        self.config = config
        self.munge_socket = munge_socket
        self.net = NodeNet(None, data_path=data_path(config))
        self.health: Sampler | None = None  # set by main (agent/health.py)
        self.network_path = ""  # how containers' packets go (set by main, fastpath.Path)
        self.jobs_dir = config.agent_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._job_locks: dict[str, threading.Lock] = {}
        self.admin_uids = {0}
        for name in config.admin_users:
            with contextlib.suppress(KeyError):
                self.admin_uids.add(pwd.getpwnam(name).pw_uid)

    # -- policy hooks for the server ---------------------------------------------------------
    def is_admin(self, uid: int) -> bool:
        return uid in self.admin_uids

    def job_owner(self, job_id: str) -> int | None:
        rec = self.load(job_id)
        return rec.vc.uid if rec else None

    def job_lock(self, job_id: str) -> threading.Lock:
        with self._lock:
            return self._job_locks.setdefault(str(job_id), threading.Lock())

    # -- records ------------------------------------------------------------------------------
    def _path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.json"

    def load(self, job_id: str) -> JobRecord | None:
        try:
            return JobRecord.from_json(json.loads(self._path(job_id).read_text()))
        except FileNotFoundError:
            return None

    def save(self, rec: JobRecord) -> None:
        path = self._path(rec.vc.job_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec.to_json()))
        tmp.replace(path)

    def records(self) -> list[JobRecord]:
        out = []
        for path in sorted(self.jobs_dir.glob("*.json")):
            rec = self.load(path.stem)
            if rec:
                out.append(rec)
        return out

    def user_dir(self, vc: VCluster) -> Path:
        """`<state_dir>/jobs/<id>`, shared and owned by the job's user (`hpcmig run` keeps
        its hostfiles and outcomes there); kept across requeue, removed at job end."""
        d = Path(self.config.state_dir) / "jobs" / vc.job_id
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, vc.uid, vc.gid)
        d.chmod(0o700)
        return d

    def tmp_dir(self, vc: VCluster, index: int) -> Path:
        """The container's $TMPDIR, on shared storage: files a process keeps open there (Open
        MPI's session directory) are found at the same path after a move to another node."""
        d = self.tmp_path(vc.job_id, index)
        for path in (d.parent, d):
            path.mkdir(exist_ok=True)
            os.chown(path, vc.uid, vc.gid)
            path.chmod(0o700)
        return d

    def tmp_path(self, job_id: str, index: int) -> Path:
        """Where `tmp_dir` keeps container `index`'s $TMPDIR (made or not)."""
        return Path(self.config.state_dir) / "jobs" / job_id / "tmp" / str(index)

    def job_dir(self, job_id: str) -> Path:
        return Path(self.config.run_dir) / "jobs" / str(job_id)

    # -- building a job's part here ----------------------------------------------------------
    def container_net(self, vc: VCluster, member: Member) -> ContainerNet:
        return container_net(member.address, netns_name(vc.name(member.index), self.node))

    def write_hosts(self, vc: VCluster) -> Path:
        d = self.job_dir(vc.job_id)
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        path = d / "hosts"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(vc.hosts_text())
        tmp.chmod(0o644)
        tmp.replace(path)
        return path

    def spec(self, vc: VCluster, member: Member, net: ContainerNet) -> ContainerSpec:
        hosts = self.job_dir(vc.job_id) / "hosts"
        home = _home(vc.user)
        return ContainerSpec(
            name=vc.name(member.index), job_id=vc.job_id, uid=vc.uid, gid=vc.gid,
            netns=net.netns_path, address=member.address, restart_count=vc.restart,
            image=vc.image, env={
                "PATH": BASE_PATH, "HOME": home, "USER": vc.user, "LOGNAME": vc.user,
                "HPCMIG_HOSTS": str(hosts), "HPCMIG_JOB_ID": vc.job_id,
                "HPCMIG_CONTAINER": str(member.index), "HPCMIG_ADDRESS": member.address,
                "TMPDIR": str(self.tmp_dir(vc, member.index)),
            }, cwd=home if os.path.isdir(home) else "/", state_dir=self.config.containers_dir,
            # an image root sees the job's shared directory (hpcmig run's outcome, $TMPDIR)
            binds=(str(Path(self.config.state_dir) / "jobs" / vc.job_id),) if vc.image else (),
        )

    def routes(self, vc: VCluster) -> None:
        """Route every container of the job that is not here towards its node."""
        for m in vc.members:
            if m.node != self.node:
                self.net.route_via(m.address, m.node_addr)

    def setup(self, vc: VCluster, start: bool = True) -> JobRecord:
        """This node's part of the virtual cluster; idempotent (a retried prolog is fine).
        `start=False`: everything but the containers (a requeued job whose checkpoint is to
        be restored here: hpcmig.controller.wholejob)."""
        old = self.load(vc.job_id)
        rec = JobRecord(vc, dict(old.containers) if old else {})
        self.save(rec)  # the owner is known from now on, even if building fails
        self.net.allow_job(IPv4Network(vc.block))
        self.routes(vc)
        self.write_hosts(vc)
        self.user_dir(vc)
        runtime = get_runtime(vc.runtime)
        for m in vc.on_node(self.node) if start else []:
            if m.index in rec.containers and runtime.is_running(rec.containers[m.index]):
                continue
            net = self.container_net(vc, m)
            self.net.create_container_net(net)
            try:
                traffic.count(self, vc, m.address)
                rec.containers[m.index] = runtime.start(self.spec(vc, m, net))
            except HpcmigError:
                self.net.remove_container_net(net)
                raise
            self.save(rec)
            log.info("job %s: container %s up at %s", vc.job_id, vc.name(m.index), m.address)
        return rec

    def teardown(self, job_id: str) -> list[str]:
        """Remove everything of the job on this node; idempotent. Returns what was removed."""
        rec = self.load(job_id)
        if rec is None:
            return []
        vc = rec.vc
        removed: list[str] = []
        runtime = get_runtime(vc.runtime)
        for _index, container in sorted(rec.containers.items()):
            runtime.stop(container, grace=2.0)
            removed.append(container.name)
        with contextlib.suppress(HpcmigError, OSError):  # counts are not worth a stuck epilog
            traffic.save_and_forget(self, vc)
        for m in vc.members:
            net = self.container_net(vc, m)
            self.net.remove_container_net(net)  # idempotent; also the /32 route
            self.net.unroute(m.address)
        self.net.forbid_job(IPv4Network(vc.block))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self._path(job_id).unlink(missing_ok=True)
        log.info("job %s: removed %s", job_id, ", ".join(removed) or "routes only")
        return removed

    def adopt(self) -> None:
        """After an agent restart: forget containers whose init is gone. A job whose every
        container here is gone (the node crashed under it) loses what is left of it here too
        (networks, routes, record): hpcmigd restarts it elsewhere, or it ended, and a node
        whose epilog never ran must not keep its addresses and names for the next job."""
        for rec in self.records():
            runtime = get_runtime(rec.vc.runtime)
            alive = {i: c for i, c in rec.containers.items() if runtime.is_running(c)}
            if alive == rec.containers:
                continue
            if not alive:
                log.warning("job %s: its container(s) here are gone; removing the rest of it",
                            rec.vc.job_id)
                with contextlib.suppress(HpcmigError):
                    self.teardown(rec.vc.job_id)
                    continue
            rec.containers = alive
            self.save(rec)

    def reap(self) -> None:
        """Reap container inits that stopped (we are their subreaper)."""
        for rec in self.records():
            for c in rec.containers.values():
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(c.init_pid, os.WNOHANG)


def _home(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return "/"
