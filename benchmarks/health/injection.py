"""Health benchmark, on the testbed: time from a degradation's injection to the job's container
running on another node, per fault kind, with hpcmigd acting on its own.

Design note: for each kind (and `--repeat` times) a 3-node MPICH ring job with a spare node
runs; `hpcmig testbed fail node2 --degrade KIND` changes what node2's agent reads; the script
then polls hpcmigd's `status` every 0.1 s and records when hpcmigd first said the node was
degraded (detection), when its container runs on the spare (moved), when Slurm calls node2
DRAINED, and the pause hpcmigd measured; the job must still finish with the exact checksum.
Baseline in the same run: the same job's container moved by an explicit `hpcmig migrate`
(no detection), timed the same way, so `moved - baseline` is what detection and the policy
add. Takes the integration tier's lock (same testbed names).

    /opt/hpcmig/venv/bin/python benchmarks/health/injection.py \
        --out benchmarks/health/injection.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcmig.slurm import Slurm  # noqa: E402
from hpcmig.testbed import cluster  # noqa: E402
from hpcmig.testbed.faults import KINDS  # noqa: E402
from tests.integration import hpcmigd  # noqa: E402
from tests.integration.conftest import bench_testbed, settle  # noqa: E402
from tests.integration.test_migration import finish, submit_ring  # noqa: E402


def _decisions_since(t0: float) -> list[dict[str, Any]]:
    return [d for d in hpcmigd.status()["decisions"] if d["time"] >= t0]


def one(plan: Any, slurm: Slurm, home: Path, kind: str | None, i: int) -> dict[str, Any]:
    """kind None: the baseline (an explicit migrate)."""
    name = f"bench-{kind or 'migrate'}-{i}"
    job_id, out = submit_ring(plan, slurm, home, name, seconds=20)
    t0 = time.time()
    if kind is None:
        row = hpcmigd.migrate(job_id, "node2")
        moved = time.time() - t0
        finish(slurm, job_id, out)
        return {"kind": "migrate (baseline)", "moved": moved, "pause": row["pause"]}
    cluster.fail("node2", kind)
    detected = moved = drained = None
    pause = None
    while time.time() - t0 < 60 and (moved is None or drained is None):
        for d in _decisions_since(t0):
            if detected is None and d["what"].startswith("node2: degraded ("):
                detected = d["time"] - t0
            if pause is None and "container 1 done, pause " in d["what"]:
                pause = float(d["what"].rsplit("pause ", 1)[1].split()[0])
        if moved is None and hpcmigd.host_of(job_id, 1) != "node2":
            moved = time.time() - t0
        node = slurm.node("node2")
        if drained is None and node.drained and node.state == "idle":
            drained = time.time() - t0
        time.sleep(0.1)
    finish(slurm, job_id, out)
    reason = slurm.node("node2").reason
    healed_at = time.time()
    cluster.heal("node2")
    hpcmigd.wait_healthy(["node2"], since=healed_at)  # before anybody resumes node2
    return {"kind": kind, "detected": detected, "moved": moved, "drained": drained,
            "pause": pause, "reason": reason}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).with_name("injection.json")))
    args = p.parse_args()
    runs = []
    with bench_testbed("bench-health") as (plan, slurm, home):
        for i in range(args.repeat):
            for kind in [None, *args.kinds.split(",")]:
                settle(slurm, timeout=120)
                time.sleep(11)  # the testbed's rule windows (10 s) forget the last one
                r = one(plan, slurm, home, kind, i)
                print(json.dumps(r), flush=True)
                runs.append(r)
    summary = {}
    for kind in sorted({r["kind"] for r in runs}):
        rs = [r for r in runs if r["kind"] == kind]
        summary[kind] = {k: statistics.median(v for r in rs if (v := r.get(k)) is not None)
                         for k in ("detected", "moved", "drained", "pause")
                         if any(r.get(k) is not None for r in rs)}
    Path(args.out).write_text(json.dumps({
        "machine": {"cpus": platform.machine(), "kernel": platform.release(),
                    "nproc": __import__("os").cpu_count()},
        "runs": runs, "median": summary}, indent=2))
    for kind, m in summary.items():
        print(kind, " ".join(f"{k} {v:.2f} s" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
