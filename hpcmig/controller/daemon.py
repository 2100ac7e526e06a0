"""`hpcmigd`: the cluster's one controller, serving the service's verbs over MUNGE RPC.

Design note: one per cluster, root. At start it recovers what a crash left (open operations,
then open drains: hpcmig.controller.aftercrash) while already answering `ping` and `status`;
other verbs wait until recovery ended. It serves the verbs of `Service` on the address in
hpcmig.toml (`controller_host:controller_port`) with the agents' server (one request, one
answer, MUNGE-authenticated); access: admins (root, `admin_users`) every verb, a user
`migrate`, `checkpoint`, `restore_allocation`, `restart_lost`, `restart_stuck` and
`app_checkpoints` of their own jobs and `status` (their own jobs only). A thread pings every
agent every few seconds (heartbeats for status and metrics); once recovery ended, another
fetches every agent's latest health sample every `[health] interval` (`health.sample`;
`hpcmig-healthcheck` sends them with `health.report` instead) and hands it to the `Watcher`
(controller/policy.py), which drains degraded nodes, resumes healthy ones and balances load;
a third takes the periodic checkpoints (controller/periodic.py). Prometheus metrics on
`metrics_address:metrics_port`. SIGTERM/SIGINT stop it; SIGKILL is what recovery is for. It
decides; the agents act.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from hpcmig import __version__
from hpcmig import config as site_config
from hpcmig.agent.server import Call, Registry, Server
from hpcmig.controller import appckpt, periodic, remap, traffic
from hpcmig.controller.client import TARGET
from hpcmig.controller.policy import Watcher
from hpcmig.controller.report import Report
from hpcmig.controller.service import Service, job_number
from hpcmig.errors import HpcmigError, PermissionDenied
from hpcmig.health.sample import Sample
from hpcmig.slurm import diagnose

log = logging.getLogger("hpcmig.controller")
CONTROLLER = Registry()
PING_SECONDS = 3.0
POLL_WORKERS = 16  # agents asked for their health sample at once


class Daemon:
    """The server's context: the service, who may do what, recovery state."""

    def __init__(self, cfg: site_config.Config, service: Service) -> None:
        self.node = TARGET
        self.cfg = cfg
        self.munge_socket = cfg.munge_socket or None
        self.service = service
        self.recovered = threading.Event()
        self.watcher = Watcher(service, cfg.health)
        self._seen: dict[str, float] = {}  # node -> time of the last sample judged
        self.admin_uids = {0}
        for name in cfg.admin_users:
            with contextlib.suppress(KeyError):
                self.admin_uids.add(pwd.getpwnam(name).pw_uid)

    def is_admin(self, uid: int) -> bool:
        return uid in self.admin_uids

    def job_owner(self, job_id: str) -> int | None:
        job = self.service.job(job_number(job_id))
        return job.uid if job.uid >= 0 else None

    def ready(self) -> None:
        """Verbs that change things wait until start-up recovery ended."""
        if not self.recovered.wait(timeout=3600):
            raise HpcmigError("hpcmigd is still recovering after an hour")

    def recover_at_start(self) -> None:
        try:
            for warning in diagnose.config_warnings(self.service.slurm.config()):
                log.warning("slurm.conf: %s", warning)
        except HpcmigError as exc:
            log.warning("cannot read Slurm's configuration: %s", exc)
        try:
            rep = self.service.recover()
            for row in rep.rows:
                log.info("recovery: operation %s (%s): %s%s", row["operation"], row["what"],
                         row["state"], f": {row['note']}" if row["note"] else "")
            if not rep.rows:
                log.info("recovery: nothing to recover")
        except Exception:  # noqa: BLE001 - a failed recovery must not stop the controller
            log.exception("recovery at start failed; `hpcmig recover` retries it")
        finally:
            self.recovered.set()

    def poll_agents(self, stopping: threading.Event) -> None:
        svc = self.service
        while not stopping.is_set():
            try:
                nodes = list(svc.node_addrs(refresh=True))
            except HpcmigError as exc:
                log.warning("cannot list nodes: %s", exc)
                nodes = []
            for node in nodes:
                try:
                    answer = svc.agent(node).call("ping", timeout=5)
                except HpcmigError:
                    svc.metrics.agent_up.labels(node=node).set(0)
                    continue
                now = time.time()
                svc.heartbeats[node] = now
                svc.networks[node] = str(answer.get("network", "")) if isinstance(
                    answer, dict) else ""
                svc.metrics.heartbeat.labels(node=node).set(now)
                svc.metrics.agent_up.labels(node=node).set(1)
            with contextlib.suppress(Exception), svc.journal() as journal:
                svc.metrics.open_operations.set(len(journal.open_operations()))
            stopping.wait(PING_SECONDS)


    def judge(self, sample: Sample) -> None:
        """Hand a sample to the watcher once (an agent answers its latest until a new one)."""
        if sample.time <= self._seen.get(sample.node, 0.0):
            return
        self._seen[sample.node] = sample.time
        for finding in self.watcher.observe(sample):
            self.service.metrics.findings.labels(rule=finding.rule).inc()

    def _fetch(self, node: str) -> Sample | None:
        try:
            data = self.service.agent(node).call("health.sample", timeout=10)
            return Sample.from_json(data) if data else None
        except HpcmigError as exc:
            log.debug("no health sample of %s: %s", node, exc)
            return None

    def poll_health(self, stopping: threading.Event) -> None:
        self.recovered.wait()
        policy = self.cfg.health
        if not policy.enabled:
            log.info("health rules off ([health] enabled = false)")
            return
        log.info("health: sampling every %g s%s", policy.interval,
                 " (dry run: decisions are only logged)" if policy.dry_run else "")
        with ThreadPoolExecutor(POLL_WORKERS, thread_name_prefix="health") as pool:
            while not stopping.is_set():
                t0 = time.monotonic()
                try:
                    nodes = list(self.service.node_addrs())
                    for sample in pool.map(self._fetch, nodes):
                        if sample is not None:
                            self.judge(sample)
                    self.watcher.round()
                except Exception:  # noqa: BLE001 - the watcher must outlive one bad round
                    log.exception("health round failed")
                stopping.wait(max(0.0, policy.interval - (time.monotonic() - t0)))


    def poll_periodic(self, stopping: threading.Event) -> None:
        self.recovered.wait()
        clock = periodic.Periodic(self.service)
        remapper = remap.AutoRemap(self.service)
        while not stopping.wait(1.0):
            try:
                clock.round()
            except Exception:  # noqa: BLE001 - the clock must outlive one bad round
                log.exception("periodic checkpoint round failed")
            try:
                remapper.round()
            except Exception:  # noqa: BLE001 - same for the remap rule
                log.exception("remap round failed")


def _svc(call: Call, wait: bool = True) -> Service:
    daemon: Daemon = call.ctx
    if wait:
        daemon.ready()
    return daemon.service


def _answer(report: Report) -> dict[str, Any]:
    return report.to_json()


@CONTROLLER.operation("ping", "any")
def ping(call: Call) -> dict[str, Any]:
    daemon: Daemon = call.ctx
    return {"version": __version__, "pid": os.getpid(), "time": time.time(),
            "uid": call.who.uid, "recovering": not daemon.recovered.is_set()}


@CONTROLLER.operation("status", "any")
def status(call: Call) -> dict[str, Any]:
    daemon: Daemon = call.ctx
    uid = None if daemon.is_admin(call.who.uid) else call.who.uid
    return _answer(_svc(call, wait=False).status(uid, daemon.watcher.health))


@CONTROLLER.operation("migrate", "job")
def migrate(call: Call, job_id: str, source: str, target: str | None = None,
            transport: str = "shared", dry_run: bool = False,
            mode: str | None = None) -> dict[str, Any]:
    return _answer(_svc(call).migrate(str(job_id), source, target, transport, dry_run, mode))


@CONTROLLER.operation("checkpoint", "job")
def checkpoint(call: Call, job_id: str, resume: bool = False) -> dict[str, Any]:
    return _answer(_svc(call).checkpoint(str(job_id), resume))


@CONTROLLER.operation("restore_allocation", "job")
def restore_allocation(call: Call, job_id: str) -> dict[str, Any]:
    return _svc(call).restore_allocation(str(job_id))


@CONTROLLER.operation("restart_lost", "job")
def restart_lost(call: Call, job_id: str) -> dict[str, Any]:
    """`hpcmig run` asks when its launcher failed: did a node of the job die?"""
    return periodic.restart_lost(_svc(call), str(job_id))


@CONTROLLER.operation("restart_stuck", "job")
def restart_stuck(call: Call, job_id: str, why: str) -> dict[str, Any]:
    """`hpcmig run` of an engine=dmtcp job asks when its checkpoint never completed (`why`,
    the caller's words, goes to the decision log: one line, 200 characters at most)."""
    return periodic.restart_stuck(_svc(call), str(job_id), " ".join(str(why).split())[:200])


@CONTROLLER.operation("app_checkpoints", "job")
def app_checkpoints(call: Call, job_id: str, directory: str,
                    engine: str = "app") -> dict[str, Any]:
    """`hpcmig run` of an engine=app or engine=dmtcp job: where it keeps its checkpoints."""
    svc = _svc(call)
    vc = svc.vcluster(str(job_id))
    app = appckpt.register(svc.cfg.state_dir, vc.job_id,
                           appckpt.AppDir(str(directory), vc.uid, vc.gid, str(engine)))
    return {"directory": app.directory}


@CONTROLLER.operation("traffic", "job")
def traffic_matrix(call: Call, job_id: str) -> dict[str, Any]:
    """`hpcmig traffic`: the job's container-to-container bytes and packets so far."""
    return traffic.measure(_svc(call), str(job_id))


@CONTROLLER.operation("remap", "job")
def remap_job(call: Call, job_id: str, topology: str = "", dry_run: bool = False,
              force: bool = False) -> dict[str, Any]:
    """Move the job's containers to fit its measured traffic when it pays (or `force`).
    Another topology file than the site's is for admins (hpcmigd reads it as root)."""
    daemon: Daemon = call.ctx
    if topology and not daemon.is_admin(call.who.uid):
        raise PermissionDenied("remap --topology is for root and the Slurm admin; users "
                               "remap on the site's topology.conf")
    return _answer(remap.remap(_svc(call), str(job_id), topology, dry_run, force))


@CONTROLLER.operation("traffic_history", "job")
def traffic_history(call: Call, job_id: str) -> dict[str, Any]:
    """`hpcmig run --map auto`: the container matrix measured in the last run of this job's
    name by its owner."""
    svc = _svc(call)
    job = svc.job(str(job_id))
    uid = job.uid if job.uid >= 0 else pwd.getpwnam(job.user).pw_uid
    return traffic.last_run(svc.cfg.state_dir, uid, job.name)


@CONTROLLER.operation("health.report", "admin")
def health_report(call: Call, node: str, sample: dict[str, Any]) -> dict[str, Any]:
    """A node's sample sent by `hpcmig-healthcheck` (Slurm's HealthCheckProgram)."""
    daemon: Daemon = call.ctx
    got = Sample.from_json(sample)
    if got.node != node:
        raise HpcmigError(f"health.report: the sample is of {got.node!r}, not {node!r}")
    daemon.judge(got)
    return {"findings": [f.reason() for f in daemon.watcher.health.history(node).last_findings]}


@CONTROLLER.operation("drain", "admin")
def drain(call: Call, node: str, reason: str = "evacuating", transport: str = "shared",
          dry_run: bool = False, timeout: float = 120.0,
          mode: str | None = None) -> dict[str, Any]:
    return _answer(_svc(call).drain(node, reason, transport, dry_run, float(timeout), mode))


@CONTROLLER.operation("resume", "admin")
def resume(call: Call, node: str) -> dict[str, Any]:
    return _answer(_svc(call).resume(node))


@CONTROLLER.operation("restore", "admin")
def restore(call: Call, job_id: str, exclude: str = "") -> dict[str, Any]:
    return _answer(_svc(call).restore(str(job_id), exclude))


@CONTROLLER.operation("recover", "admin")
def recover(call: Call, job_id: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    return _answer(_svc(call).recover(job_id, dry_run))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcmigd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="hpcmig.toml (default: $HPCMIG_CONFIG "
                        "or /etc/hpcmig/hpcmig.toml)")
    parser.add_argument("--version", action="version", version=f"hpcmigd {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s hpcmigd: %(levelname)s %(message)s")
    if os.geteuid() != 0:
        print("hpcmigd: error: hpcmigd runs as root (it drains nodes and owns the journal)",
              file=sys.stderr)
        return 2
    try:
        cfg = site_config.load(args.config)
        if args.config:
            os.environ[site_config.CONFIG_ENV] = args.config
        service = Service(cfg)
        daemon = Daemon(cfg, service)
        server = Server(daemon, cfg.controller_host, cfg.controller_port, CONTROLLER)
        if cfg.metrics_port:
            service.metrics.serve(cfg.metrics_port, cfg.metrics_address)
    except (HpcmigError, OSError) as exc:
        print(f"hpcmigd: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=server.serve_forever, name="rpc", daemon=True).start()
    threading.Thread(target=daemon.recover_at_start, name="recover", daemon=True).start()
    threading.Thread(target=daemon.poll_agents, args=(stopping,), name="ping",
                     daemon=True).start()
    threading.Thread(target=daemon.poll_health, args=(stopping,), name="health",
                     daemon=True).start()
    threading.Thread(target=daemon.poll_periodic, args=(stopping,), name="periodic",
                     daemon=True).start()
    log.info("serving on %s:%d (pid %d)%s", cfg.controller_host, cfg.controller_port,
             os.getpid(), f", metrics on {cfg.metrics_address}:{cfg.metrics_port}"
             if cfg.metrics_port else "")
    while not stopping.wait(1.0):
        pass
    server.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
