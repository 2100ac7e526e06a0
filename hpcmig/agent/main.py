"""`hpcmig-agent`: the per-node daemon.

Owns the node-local view: a heartbeat file (`hpcmig testbed status` reads it), this node's
health samples (agent/health.py; hpcmigd fetches them with `health.sample`), and it serves
the authenticated RPC (server.py, the operations in ops.py) from a thread pool: container
lifecycle, routes, checkpoints. It must not talk to Slurm: the prolog, `hpcmig run` and the
controller do.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path
from types import FrameType

import psutil

from hpcmig import _cmdline
from hpcmig import config as site_config
from hpcmig.agent import ckpt as _ckpt  # noqa: F401  (registers the operations)
from hpcmig.agent import ops as _ops  # noqa: F401
from hpcmig.agent import traffic as _traffic  # noqa: F401
from hpcmig.agent.health import Sampler
from hpcmig.agent.node import NodeAgent
from hpcmig.agent.server import Server
from hpcmig.errors import HpcmigError
from hpcmig.health.sample import Roots
from hpcmig.runtime.ns import become_subreaper

HEARTBEAT_SECONDS = 2.0


def sample(node: str) -> dict[str, object]:
    mem = psutil.virtual_memory()
    load1, load5, load15 = os.getloadavg()
    return {
        "node": node,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.time(),
        "cpu_count": psutil.cpu_count(),
        "load": [load1, load5, load15],
        "mem_total": mem.total,
        "mem_available": mem.available,
    }


def write_heartbeat(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = _cmdline.Parser(prog="hpcmig-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True, type=_cmdline.node_name,
                        help="the Slurm name of this node")
    parser.add_argument("--state-dir", default=None, type=Path,
                        help="where the heartbeat goes (default: <run_dir>/agent)")
    parser.add_argument("--munge-socket", default=None, help="MUNGE socket for authentication")
    parser.add_argument("--listen", default="0.0.0.0", type=_cmdline.ip_address,
                        help="address to serve RPC on")
    parser.add_argument("--config", default=None, help="hpcmig.toml (default: $HPCMIG_CONFIG "
                        "or /etc/hpcmig/hpcmig.toml)")
    parser.add_argument("--proc-root", default="/proc", type=_cmdline.absolute_path,
                        help="read the health sources of /proc here (default /proc)")
    parser.add_argument("--sys-root", default="/sys", type=_cmdline.absolute_path,
                        help="read the health sources of /sys here (a testbed node's fixture "
                             "view; default /sys)")
    parser.add_argument("--check-dir", default=None, type=_cmdline.absolute_path,
                        help="NHC-style check scripts (default: health_check_dir of "
                             "hpcmig.toml)")
    parser.add_argument("--health-path", action="append", default=[],
                        type=_cmdline.absolute_path,
                        help="watch this path's free space too (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s hpcmig-agent: %(levelname)s %(message)s")
    try:
        cfg = site_config.load(args.config)
        state_dir = args.state_dir or cfg.agent_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        agent = NodeAgent(args.node, cfg, args.munge_socket or cfg.munge_socket or None)
        become_subreaper()
        agent.network_path = str(agent.net.install_isolation(
            IPv4Network(cfg.pool), fastpath=cfg.network_fastpath))
        agent.adopt()
        server = Server(agent, args.listen, cfg.agent_port)
    except (HpcmigError, OSError) as exc:
        print(f"hpcmig-agent: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    agent.health = Sampler(
        args.node, cfg.health.interval, Roots(args.proc_root, args.sys_root),
        tuple(dict.fromkeys([*cfg.watched_paths, *args.health_path])),
        args.check_dir or cfg.health_check_dir or None,
        cfg.health_load)
    threading.Thread(target=server.serve_forever, name="rpc", daemon=True).start()
    stopping = threading.Event()
    agent.health.start(stopping)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    beat = state_dir / "heartbeat.json"
    print(f"hpcmig-agent: node {args.node} (pid {os.getpid()}) serving on "
          f"{args.listen}:{cfg.agent_port}", flush=True)
    while not stopping.is_set():
        agent.reap()
        write_heartbeat(beat, sample(args.node))
        stopping.wait(HEARTBEAT_SECONDS)
    server.shutdown()
    beat.unlink(missing_ok=True)
    print(f"hpcmig-agent: node {args.node} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
