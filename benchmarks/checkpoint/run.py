"""Checkpoint benchmark: whole-job checkpoint time, restart time, image size and the job's
slowdown at the `auto` interval, CRIU (hpcmig containers on the testbed) and DMTCP (the same
program under hpcmig's DMTCP driver) side by side in one run.

Design note: the program is jobs/bin/ring.mpich, 4 ranks, the same arguments on both sides;
each side alternates its kinds `--repeat` times (criu_side.py, dmtcp_side.py say what each
kind runs). Derived per side, from medians: the job's cost of one checkpoint
c = (seconds with checkpoints every INTERVAL - seconds without) / checkpoints taken; the
`auto` interval T = Young's sqrt(2 C M) as hpcmigd computes it (hpcmig.controller.periodic.
interval) from the checkpoint time C hpcmigd measures and the job's MTBF M (node MTBF
`--mtbf-hours` over its 2 nodes); the slowdown at `auto` = c / T. Root; takes the integration
tier's lock and brings up its own 3-node testbed for the CRIU side.

    /opt/hpcmig/venv/bin/python benchmarks/checkpoint/run.py \
        --out benchmarks/checkpoint/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.checkpoint.criu_side import CriuSide  # noqa: E402
from benchmarks.checkpoint.dmtcp_side import DmtcpSide  # noqa: E402
from hpcmig.checkpoint import dmtcp  # noqa: E402
from hpcmig.controller.periodic import interval  # noqa: E402
from tests.integration.conftest import bench_testbed, settle  # noqa: E402

NODES = 2  # the CRIU side's job; the MTBF of the DMTCP side's job is taken the same


def _median(runs: list[dict[str, Any]], kind: str, key: str) -> float | None:
    values = [r[key] for r in runs if r["kind"] == kind and r.get(key) is not None]
    return statistics.median(values) if values else None


def summary(runs: list[dict[str, Any]], mtbf_hours: float) -> dict[str, Any]:
    plain, periodic = _median(runs, "plain", "seconds"), _median(runs, "periodic", "seconds")
    taken = _median(runs, "periodic", "checkpoints")
    each = [s for r in runs if r["kind"] == "periodic" for s in r["checkpoint_seconds"]]
    out: dict[str, Any] = {
        "plain_seconds": plain, "periodic_seconds": periodic, "checkpoints": taken,
        "checkpoint_seconds": statistics.median(each) if each else None,
        "image_mb": (_median(runs, "periodic", "image_bytes") or 0) / 2**20,
        "restore_seconds": _median(runs, "restart", "restore"),
        "launched_seconds": _median(runs, "launched", "seconds"),
        "release_to_restored": _median(runs, "restart", "release_to_restored"),
    }
    if plain and periodic and taken and each:
        cost = (periodic - plain) / taken
        auto = interval("auto", out["checkpoint_seconds"], NODES, mtbf_hours)
        out |= {"slowdown_at_interval": periodic / plain - 1, "cost_per_checkpoint": cost,
                "auto_interval": auto, "slowdown_at_auto": max(0.0, cost) / auto}
    return out


def criu(args: argparse.Namespace, ring_args: list[str], runs: list[dict[str, Any]]) -> None:
    with bench_testbed("bench-ckpt") as (plan, slurm, home):
        side = CriuSide(plan, slurm, home, args.binary, ring_args, args.elements, args.rounds)
        for i in range(args.repeat):
            for kind in ("plain", "periodic", "restart"):
                settle(slurm, timeout=120)
                r = side.periodic(i, args.interval) if kind == "periodic" else \
                    getattr(side, kind)(i)
                runs.append({"engine": "criu", **r})
                print(json.dumps(runs[-1]), flush=True)


def dmtcp_runs(args: argparse.Namespace, ring_args: list[str],
               runs: list[dict[str, Any]]) -> None:
    tools = dmtcp.find_dmtcp(args.dmtcp_prefix)
    with tempfile.TemporaryDirectory(prefix="hpcmig-ckpt-bench-") as work:
        side = DmtcpSide(tools, Path(work), args.binary, ring_args, args.elements, args.rounds)
        for i in range(args.repeat):
            for kind in ("plain", "launched", "periodic", "restart"):
                r = side.periodic(i, args.interval) if kind == "periodic" else \
                    getattr(side, kind)(i)
                runs.append({"engine": "dmtcp", **r})
                print(json.dumps(runs[-1]), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="dmtcp,criu")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--interval", type=int, default=10, help="seconds between checkpoints")
    p.add_argument("--elements", type=int, default=262144)
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--memory-mb", type=int, default=64, help="ballast per rank")
    p.add_argument("--mtbf-hours", type=float, default=720.0, help="node MTBF (hpcmig.toml "
                   "node_mtbf_hours)")
    p.add_argument("--binary", default="/opt/hpcmig/jobs/bin/ring.mpich")
    p.add_argument("--dmtcp-prefix", default=os.environ.get("HPCMIG_DMTCP_PREFIX", ""))
    p.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = p.parse_args()
    ring_args = ["--elements", str(args.elements), "--rounds", str(args.rounds),
                 "--memory-mb", str(args.memory_mb)]
    runs: list[dict[str, Any]] = []
    began = time.time()
    for engine in args.engines.split(","):
        (dmtcp_runs if engine == "dmtcp" else criu)(args, ring_args, runs)
    result = {
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d", time.gmtime(began)),
        "minutes": round((time.time() - began) / 60, 1),
        "machine": {"arch": platform.machine(), "kernel": platform.release(),
                    "nproc": os.cpu_count()},
        "program": [args.binary, "-n 4", *ring_args], "interval": args.interval,
        "mtbf_hours": args.mtbf_hours, "runs": runs,
        "summary": {e: summary([r for r in runs if r["engine"] == e], args.mtbf_hours)
                    for e in args.engines.split(",")}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for engine, s in result["summary"].items():
        print(engine, json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
