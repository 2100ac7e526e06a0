"""Migration benchmark: the pause a container sees vs. its resident memory, shared vs. streamed.

Design note: this script owns the measurement. It builds three throwaway node namespaces
(tests/integration/rt_support.py: a bridge, no route out), one client container on node 3
and, per memory size, a server container holding that much verified memory
(`hpcmig.workloads.holder`), then moves the server back and forth between nodes 1 and 2 with
the real state machine (`hpcmig.controller.migration`) and `LocalOps` (CRIU, the image
manifest and checksums, journal fsyncs included). Per migration it records the journal's
lock -> unlock time (the pause), every step's time, the image bytes, and the largest gap the
client saw in its ping-pong over the moved connection (TCP retransmission included). Per size
it measures this machine's memory-copy bandwidth in the same run (numpy copy into a
pre-faulted buffer of the same size, best of 3). Sizes that do not fit in MemAvailable (3x
the size + 1 GiB: source, restored copy and page-cached images) are skipped and recorded so.

    sudo /opt/hpcmig/venv/bin/python benchmarks/migration/run.py \\
        --out benchmarks/migration/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcmig import _procfs  # noqa: E402
from hpcmig.checkpoint import _tree, images  # noqa: E402
from hpcmig.checkpoint.criu import criu_binary  # noqa: E402
from hpcmig.checkpoint.refs import ContainerRef  # noqa: E402
from hpcmig.controller.journal import Journal  # noqa: E402
from hpcmig.controller.localops import LocalConfig, LocalOps  # noqa: E402
from hpcmig.controller.migration import MigrationSpec, migrate  # noqa: E402
from hpcmig.network import NodeNet  # noqa: E402
from hpcmig.runtime import ContainerSpec, get_runtime  # noqa: E402
from hpcmig.runtime import ns as ns_runtime  # noqa: E402
from tests.integration import rt_support as S  # noqa: E402

B1, B2, B3 = S.BRIDGED
PY = sys.executable
MiB = 1 << 20


LOCK = "/run/lock/hpcmig-integration.lock"  # the integration tier's: same node namespaces


def _try_lock(fh: Any) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
    def __init__(self, work: Path, sock: str, user: S.User) -> None:
        self.work, self.sock, self.user = work, sock, user
        self.cfg = LocalConfig(nodes=dict(S.BRIDGED), shared_root=str(work / "ckpt"),
                               spool_roots={n: str(work / f"spool-{n}") for n in S.BRIDGED},
                               state=str(work / "localops"))
        self.ops = LocalOps(self.cfg)
        self.env = {"PATH": f"{S.VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
                    "HPCMIG_MUNGE_SOCKET": sock}
        self.client = ContainerRef("77", 0, 0, "10.252.0.1", user.uid)
        self.journal = Journal(str(work / "journal.db"))

    def start(self, node: str, ref: ContainerRef) -> None:
        net = self.ops.net(node, ref)
        NodeNet(node).create_container_net(net)
        for other in S.BRIDGED:
            if other != node:
                NodeNet(other).route_via(ref.address, S.BRIDGED[node])
        spec = ContainerSpec(name=ref.name, job_id=ref.job_id, uid=self.user.uid,
                             gid=self.user.gid, netns=net.netns_path, address=ref.address,
                             env=self.env, state_dir=str(self.work / "containers"),
                             stop_grace=2.0)
        get_runtime("ns").start(spec)

    def remove(self, ref: ContainerRef) -> None:
        for node in S.BRIDGED:
            with contextlib.suppress(Exception):
                self.ops.kill(node, ref)
            with contextlib.suppress(Exception):
                self.ops.remove_net(node, ref)
            with contextlib.suppress(Exception):
                self.ops.unroute(node, ref.address)

    def rsh(self, node: str, *args: str, timeout: float = 120.0) -> S._proc.Result:
        return S.rsh(node, *args, munge_socket=self.sock, timeout=timeout)

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

    def stop_client(self) -> None:
        for pid in _tree.in_netns(self.ops.net(B3, self.client).netns_path):
            if "client" in _procfs.argv(pid) and "hpcmig.workloads.holder" in _procfs.argv(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def size_run(self, index: int, size_mb: int, modes: list[str],
                 repeat: int) -> list[dict[str, Any]]:
        server = ContainerRef("77", 0, index, f"10.252.0.{index + 1}", self.user.uid)
        progress = self.work / "peer" / f"progress-{size_mb}"
        gaps = self.work / "peer" / f"gaps-{size_mb}"
        records = []
        self.start(B1, server)
        try:
            r = self.rsh(B1, "-n", server.address, f"{PY} -m hpcmig.workloads.holder serve "
                         f"--memory-mb {size_mb} </dev/null >/dev/null 2>&1 &")
            assert r.returncode == 0, r.stderr
            deadline = time.monotonic() + 120
            while True:  # the server listens once its memory is filled and hashed
                r = self.rsh(B3, self.client.address,
                             f"{PY} -m hpcmig.workloads.holder check {server.address}")
                if r.returncode == 0 and r.stdout.startswith("ok"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"holder of {size_mb} MiB never served: {r.stderr}")
                time.sleep(0.5)
            r = self.rsh(B3, "-n", self.client.address,
                         f"{PY} -m hpcmig.workloads.holder client {server.address} "
                         f"--progress {progress} --gaps {gaps} </dev/null >/dev/null 2>&1 &")
            assert r.returncode == 0, r.stderr
            self.wait_pings(progress, 20, 30)
            where, tag = B1, 0
            for rep in range(repeat):
                for mode in modes:
                    tag += 1
                    other = B2 if where == B1 else B1
                    if mode == "shared":
                        d = self.ops.image_dir(None, server, f"b{tag}")
                        spec = MigrationSpec(server, where, other, (B3,), d, d, "shared")
                    else:
                        spec = MigrationSpec(server, where, other, (B3,),
                                             self.ops.image_dir(where, server, f"b{tag}"),
                                             self.ops.image_dir(other, server, f"b{tag}"),
                                             "stream")
                    out = migrate(self.journal, self.ops, spec)
                    if out.state != "done":
                        raise RuntimeError(f"{size_mb} MiB {mode}: {out.state}: {out.error}")
                    where = other
                    steps = self.journal.steps(out.op_id)
                    lock_t = next(s.started for s in steps if s.name == "lock")
                    unlock_t = next(s.ended for s in steps if s.name == "unlock")
                    self.wait_pings(progress, self.pings(progress) + 20, 60)
                    peer_gap = 0.0  # the longest wait that began before the unlock
                    if gaps.exists():
                        for line in gaps.read_text().split("\n"):
                            if line.strip():
                                end, gap = (float(x) for x in line.split())
                                if lock_t - 0.5 <= end - gap <= (unlock_t or end) and \
                                        end >= lock_t:
                                    peer_gap = max(peer_gap, gap)
                    dump = out.data["dump"]
                    records.append({
                        "size_mb": size_mb, "mode": mode, "repeat": rep,
                        "pause_s": out.pause, "peer_gap_s": peer_gap,
                        "steps_s": {k: round(v, 4) for k, v in out.steps.items()},
                        "criu_dump_s": dump["seconds"], "image_bytes": dump["image_bytes"],
                        "streamed_bytes": dump["streamed_bytes"]})
                    print(f"  {size_mb:5d} MiB {mode:6s} #{rep}: pause {out.pause:.3f} s "
                          f"(dump {out.steps['dump']:.3f}, verify {out.steps['verify']:.3f}, "
                          f"restore {out.steps['restore']:.3f}), peer gap {peer_gap:.3f} s",
                          flush=True)
            r = self.rsh(B3, self.client.address,
                         f"{PY} -m hpcmig.workloads.holder check {server.address}")
            if not r.stdout.startswith("ok"):
                raise RuntimeError(f"memory check after the moves: {r.stdout} {r.stderr}")
        finally:
            self.stop_client()
            self.remove(server)
        return records


@contextlib.contextmanager
def bench_env() -> Iterator[Bench]:
    ns_runtime.become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="hpcmig-rt-bench-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(S.munged())
        user = stack.enter_context(S.users())[0]
        stack.enter_context(S.bridged_nodes())
        (work / "peer").mkdir()
        shutil.chown(work / "peer", user.uid, user.gid)
        bench = Bench(work, sock, user)
        try:
            bench.start(B3, bench.client)
            yield bench
        finally:
            bench.remove(bench.client)
            bench.journal.close()
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024,2048", help="MiB, comma-separated")
    parser.add_argument("--modes", default="shared,stream")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (network namespaces, CRIU)", file=sys.stderr)
        return 2
    problem = S.criu_problem()
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    result: dict[str, Any] = {
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "criu": S.sh(criu_binary(), "--version").stdout.split("\n")[0],
                    "image_checksum": images.FILE_HASH},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "copies": {}, "skipped": {},
        "migrations": []}
    lock = open(LOCK, "w")  # noqa: SIM115 - held for the whole run
    if not _try_lock(lock):
        print(f"waiting for {LOCK}: an integration run holds it", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    with bench_env() as bench:
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
