"""Remap benchmark: a job whose heavy pair starts across leaf switches, run as it is and
remapped by `hpcmig remap` while it runs, side by side in one session.

Design note: its own 4-node testbed with 2 leaves (node1-2, node3-4) whose uplinks are
limited to `--spine-rate`. The job asks for 4 nodes with one spare: containers 0, 1, 2 on
node1, node2, node3, the spare node4. Its ranks (one per container) run
`hpcmig.workloads.pairs --pairs 1:2`: ranks 1 and 2 exchange `--mib` MiB per phase across the
leaves, `--phases` times, `--gap` seconds apart; rank 0 only meets them in barriers. Each
phase's time (the slower rank's) is the job's communication time. The "as is" run keeps that
placement; in the "remapped" run the benchmark calls `hpcmig remap JOBID` (the site's
topology.conf, as a user would) once `--remap-after` phases printed, which moves container 1
next to container 2 (node4) when the model says it pays. Reported: median phase time as is,
remapped before the move and after it, the ratio, and the move's pause. Root; takes the
integration tier's lock.

    /opt/hpcmig/venv/bin/python benchmarks/traffic/run.py --out benchmarks/traffic/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcmig.slurm import Slurm  # noqa: E402
from hpcmig.testbed.plan import Plan  # noqa: E402
from hpcmig.workloads import batch  # noqa: E402
from tests.integration.conftest import bench_testbed, settle  # noqa: E402

HPCMIG = os.path.join(os.path.dirname(sys.executable), "hpcmig")
PHASE = re.compile(r"^pairs: phase (\d+) of \d+ in ([0-9.]+) s", re.M)


def run_job(plan: Plan, slurm: Slurm, home: Path, args: argparse.Namespace, name: str,
            remap: bool) -> dict[str, Any]:
    script = batch.vcluster_script(
        4, [["hpcmig.workloads.pairs", "--pairs", "1:2", "--mib", str(args.mib),
             "--phases", str(args.phases), "--gap", str(args.gap)]],
        mpi="mpich", ntasks=3, options={"spares": "1"}, job_name="bench-remap")
    (home / f"{name}.sh").write_text(script)
    out = home / f"{name}.out"
    job_id = slurm.submit([f"--output={out}", str(home / f"{name}.sh")], user=plan.user,
                          cwd=str(home))
    moved: dict[str, Any] = {}
    if remap:
        deadline = time.monotonic() + 600
        while len(PHASE.findall(out.read_text() if out.exists() else "")) < args.remap_after:
            if time.monotonic() > deadline or slurm.job(job_id).state not in (
                    "PENDING", "CONFIGURING", "RUNNING"):
                raise SystemExit(f"job {job_id} never reached phase {args.remap_after}")
            time.sleep(0.2)
        done_before = len(PHASE.findall(out.read_text()))
        res = subprocess.run([HPCMIG, "remap", str(job_id), "--json"], capture_output=True,
                             text=True, timeout=600)
        report = json.loads(res.stdout) if res.stdout.strip() else {"error": res.stderr}
        moved = {"report": report, "phases_before": done_before,
                 "phases_at_end": len(PHASE.findall(out.read_text()))}
        print(json.dumps(moved), flush=True)
    job = slurm.wait(job_id, timeout=1800)
    text = out.read_text()
    if job.state != "COMPLETED" or "pairs: PASS" not in text:
        raise SystemExit(f"job {job_id} {job.state}:\n{text}")
    phases = [float(t) for _, t in PHASE.findall(text)]
    return {"job_id": job_id, "remap": remap, "phases": phases, **moved}


def summarize(as_is: dict[str, Any], remapped: dict[str, Any]) -> dict[str, Any]:
    rows = remapped.get("report", {}).get("rows", [])
    # phases that may have overlapped the move (printed during the remap call) are left out
    before = remapped["phases"][:remapped["phases_before"]]
    after = remapped["phases"][remapped["phases_at_end"] + 1:]
    out: dict[str, Any] = {
        "as_is_phase_seconds": statistics.median(as_is["phases"]),
        "remapped_before_move_seconds": statistics.median(before) if before else None,
        "remapped_after_move_seconds": statistics.median(after) if after else None,
        "moves": [(r["container"], r["from"], r["to"], r["result"], r["pause"]) for r in rows],
        "model": remapped.get("report", {}).get("data", {}),
    }
    if after:
        out["speedup_after_move"] = out["as_is_phase_seconds"] / out[
            "remapped_after_move_seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spine-rate", default="200mbit")
    parser.add_argument("--mib", type=int, default=32, help="MiB per rank and phase")
    parser.add_argument("--phases", type=int, default=12)
    parser.add_argument("--gap", type=float, default=0.5)
    parser.add_argument("--remap-after", type=int, default=4)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    started = time.time()
    with bench_testbed("bench-remap", nodes=4, leaves=2, spine_rate=args.spine_rate) as (
            plan, slurm, home):
        as_is = run_job(plan, slurm, home, args, "as-is", remap=False)
        settle(slurm, timeout=120)
        remapped = run_job(plan, slurm, home, args, "remapped", remap=True)
    result = {"command": " ".join(["benchmarks/traffic/run.py", *(argv or sys.argv[1:])]),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "seconds": round(time.time() - started, 1),
              "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
              "settings": vars(args), "runs": [as_is, remapped],
              "summary": summarize(as_is, remapped)}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
