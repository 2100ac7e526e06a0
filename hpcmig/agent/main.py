"""`hpcmig-agent`: the per-node daemon.

Owns the node-local view: it samples the node's health (psutil) into a heartbeat file that the
controller and `hpcmig testbed status` read. Container lifecycle, routes, CRIU and the
authenticated RPC are added on top of this loop by the virtual-cluster work. It must not talk to
Slurm: the controller does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

import psutil

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
    parser = argparse.ArgumentParser(prog="hpcmig-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True, help="the Slurm name of this node")
    parser.add_argument("--state-dir", default="/run/hpcmig/agent", type=Path)
    parser.add_argument("--munge-socket", default=None, help="MUNGE socket for authentication")
    args = parser.parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    beat = args.state_dir / "heartbeat.json"
    print(f"hpcmig-agent: node {args.node} (pid {os.getpid()}) started", flush=True)
    while not stopping:
        write_heartbeat(beat, sample(args.node))
        deadline = time.monotonic() + HEARTBEAT_SECONDS
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
    beat.unlink(missing_ok=True)
    print(f"hpcmig-agent: node {args.node} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
