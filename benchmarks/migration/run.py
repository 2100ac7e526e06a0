"""Migration benchmark: the pause a container sees vs. its resident memory, shared vs. streamed.

Design note: this script owns the measurement; the path it measures is production's. It
starts three throwaway nodes, each with a real `hpcmig-agent` (tests/integration/
agent_nodes.py: node namespaces on a bridge with no route out, per-node mount namespaces
with a node-local run_dir, a private munged), and per memory size a job planned and built
as the prolog does (`job.setup`): a client container on node 3 and a server container on
node 1 holding that much verified memory (`hpcmig.workloads.holder`). It then moves the
server back and forth between nodes 1 and 2 with the real state machine
(`hpcmig.controller.migration`) over `AgentOps`, the agents' MUNGE-authenticated RPC (CRIU,
the image manifest and checksums, journal fsyncs and the RPC round trips included), and
tells the agents the new membership after each move, as hpcmigd does. Per migration it
records the journal's lock -> unlock time (the pause), every step's time, the image bytes,
and the largest gap the client saw in its ping-pong over the moved connection (TCP
retransmission included). Per size it measures this machine's memory-copy bandwidth in the
same run (numpy copy into a pre-faulted buffer of the same size, best of 3). Sizes that do
not fit in MemAvailable (3x the size + 1 GiB: source, restored copy and page-cached images)
are skipped and recorded so.

    sudo /opt/hpcmig/venv/bin/python benchmarks/migration/run.py \\
        --out benchmarks/migration/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcmig.checkpoint import images  # noqa: E402
from hpcmig.checkpoint.criu import criu_binary  # noqa: E402
from hpcmig.checkpoint.refs import ContainerRef  # noqa: E402
from hpcmig.controller._machine import Outcome  # noqa: E402
from hpcmig.controller.journal import Journal  # noqa: E402
from hpcmig.controller.migration import MigrationSpec, migrate  # noqa: E402
from hpcmig.vcluster import VCluster  # noqa: E402
from hpcmig.workloads import holder  # noqa: E402
from tests.integration import rt_support as S  # noqa: E402
from tests.integration.agent_nodes import AgentNodes, agent_nodes, bench_problem  # noqa: E402
from tests.integration.conftest import hold_lock  # noqa: E402

B1, B2, B3 = S.BRIDGED
PY = sys.executable
MiB = 1 << 20


OPS_PATH = "agents: AgentOps -> hpcmig-agent per node (MUNGE RPC)"  # what a migration goes through


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def copy_seconds(nbytes: int, repeat: int = 3) -> float:
    """Best time to copy nbytes between two pre-faulted buffers (memory bandwidth)."""
    src = np.full(nbytes, 7, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)  # np.zeros may map lazily: touch it
    dst[:] = 1
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return best


class Bench:
    def __init__(self, nodes: AgentNodes) -> None:
        self.nodes = nodes
        self.journal = Journal(str(nodes.work / "journal.db"))
        self.peer = nodes.work / "peer"

    def pings(self, progress: Path) -> int:
        text = progress.read_text().split() if progress.exists() else []
        if text and text[0] == "ERROR":
            raise RuntimeError(f"the peer's connection broke: {' '.join(text)}")
        return int(text[0]) if text else 0

    def wait_pings(self, progress: Path, more_than: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pings(progress) <= more_than:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the peer stopped at {self.pings(progress)} pings")
            time.sleep(0.05)

    def check(self, vc: VCluster, server: ContainerRef) -> str:
        """The server verifies its memory, asked from the client's container."""
        client = vc.member(0)
        r = self.nodes.rsh(client.node, client.address,
                           f"{PY} -m hpcmig.workloads.holder check {server.address}")
        return r.stdout if r.returncode == 0 else f"{r.stdout} {r.stderr}"

    def size_run(self, index: int, size_mb: int, modes: list[str],
                 repeat: int) -> list[dict[str, Any]]:
        """One job per size, planned and built as the prolog does: client (container 0) on
        node 3, server (container 1) on node 1, node 2 spare."""
        vc = self.nodes.plan(str(770 + index), index, [B3, B1, B2], spares=1)
        m = vc.member(1)
        server = ContainerRef(vc.job_id, vc.restart, 1, m.address, vc.uid)
        progress = self.peer / f"progress-{size_mb}"
        gaps = self.peer / f"gaps-{size_mb}"
        records = []
        try:
            self.nodes.setup(vc)
            r = self.nodes.rsh(B1, "-n", server.address, f"{PY} -m hpcmig.workloads.holder "
                               f"serve --memory-mb {size_mb} </dev/null >/dev/null 2>&1 &")
            assert r.returncode == 0, r.stderr
            deadline = time.monotonic() + 120
            while not self.check(vc, server).startswith("ok"):  # listens once filled+hashed
                if time.monotonic() > deadline:
                    raise RuntimeError(f"holder of {size_mb} MiB never served: "
                                       f"{self.check(vc, server)}")
                time.sleep(0.5)
            r = self.nodes.rsh(B3, "-n", vc.member(0).address,
                               f"{PY} -m hpcmig.workloads.holder client {server.address} "
                               f"--progress {progress} --gaps {gaps} </dev/null >/dev/null "
                               "2>&1 &")
            assert r.returncode == 0, r.stderr
            self.wait_pings(progress, 20, 30)
            tag = 0
            for rep in range(repeat):
                for mode in modes:
                    tag += 1
                    where = vc.member(1).node
                    other = B2 if where == B1 else B1
                    transport, _, post = mode.partition("+")
                    d = self.nodes.image_dir(transport, server, f"b{tag}")
                    spec = MigrationSpec(server, where, other, (B3,), d, d, transport,
                                         postcopy=post == "postcopy")
                    out = migrate(self.journal, self.nodes.ops(vc), spec)
                    if out.state != "done":
                        raise RuntimeError(f"{size_mb} MiB {mode}: {out.state}: {out.error}")
                    vc = vc.moved(1, other, S.BRIDGED[other])
                    self.nodes.publish(vc)  # as hpcmigd does after a move
                    records.append(self.record(out, size_mb, mode, rep, progress, gaps))
            text = self.check(vc, server)
            if not text.startswith("ok"):
                raise RuntimeError(f"memory check after the moves: {text}")
        finally:
            self.nodes.teardown(vc.job_id)
        return records

    def record(self, out: Outcome, size_mb: int, mode: str, rep: int, progress: Path,
               gaps: Path) -> dict[str, Any]:
        steps = self.journal.steps(out.op_id)
        lock_t = next(s.started for s in steps if s.name == "lock")
        unlock_t = next(s.ended for s in steps if s.name == "unlock")
        self.wait_pings(progress, self.pings(progress) + 20, 60)
        peer_gap = 0.0  # the longest wait that began before the unlock
        for end, gap in holder.read_gaps(str(gaps)):
            if lock_t - 0.5 <= end - gap <= (unlock_t or end) and end >= lock_t:
                peer_gap = max(peer_gap, gap)
        dump = out.data["dump"]
        assert out.pause is not None
        total = sum(out.steps.values())
        print(f"  {size_mb:5d} MiB {mode:15s} #{rep}: pause {out.pause:.3f} s "
              f"(dump {out.steps['dump']:.3f}, verify {out.steps['verify']:.3f}, "
              f"restore {out.steps['restore']:.3f}), peer gap {peer_gap:.3f} s, "
              f"memory after {out.steps.get('pages', 0.0):.3f} s, move {total:.3f} s",
              flush=True)
        return {"size_mb": size_mb, "mode": mode, "repeat": rep,
                "pause_s": out.pause, "peer_gap_s": peer_gap, "move_s": total,
                "steps_s": {k: round(v, 4) for k, v in out.steps.items()},
                "criu_dump_s": dump["seconds"], "image_bytes": dump["image_bytes"],
                "streamed_bytes": dump["streamed_bytes"]}


@contextlib.contextmanager
def bench_env() -> Iterator[Bench]:
    with agent_nodes("hpcmig-rt-bench-", "/var/tmp") as nodes:
        bench = Bench(nodes)
        bench.peer.mkdir()
        os.chown(bench.peer, nodes.user.uid, nodes.user.gid)
        try:
            yield bench
        finally:
            bench.journal.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024,2048", help="MiB, comma-separated")
    parser.add_argument("--modes", default="shared,stream,shared+postcopy,stream+postcopy",
                        help="transports, each alone (stop-and-copy) or +postcopy")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    args = parser.parse_args(argv)
    if problem := bench_problem():
        print(problem, file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    result: dict[str, Any] = {
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "criu": S.sh(criu_binary(), "--version").stdout.split("\n")[0],
                    "image_checksum": images.FILE_HASH, "path": OPS_PATH},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "copies": {}, "skipped": {},
        "migrations": []}
    with hold_lock(), bench_env() as bench:
        for index, size_mb in enumerate((int(s) for s in args.sizes.split(",")), start=1):
            need = 3 * size_mb * MiB + 1024 * MiB
            avail = mem_available()
            if avail < need:
                result["skipped"][str(size_mb)] = (
                    f"MemAvailable {avail / MiB:.0f} MiB < {need / MiB:.0f} MiB needed")
                print(f"skip {size_mb} MiB: {result['skipped'][str(size_mb)]}", flush=True)
                continue
            copy = copy_seconds(size_mb * MiB)
            result["copies"][str(size_mb)] = copy
            print(f"{size_mb} MiB: memory copy {copy * 1e3:.1f} ms "
                  f"({size_mb * MiB / copy / 1e9:.2f} GB/s)", flush=True)
            result["migrations"] += bench.size_run(index, size_mb, modes, args.repeat)
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
