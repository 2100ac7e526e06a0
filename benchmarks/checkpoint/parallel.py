"""Whole-job checkpoint: every container dumped at once against one after another.

Design note: this script owns the measurement; the path it measures is production's. Three
throwaway nodes with a real `hpcmig-agent` each (tests/integration/agent_nodes.py, as the
migration benchmark), one job of three containers, one per node, built as the prolog does
(`job.setup`), each container holding `--memory-mb` of verified memory
(`hpcmig.workloads.holder`). The job is checkpointed whole and resumed
(`hpcmig.controller.jobckpt.checkpoint_job`, `then="resume"`, over `AgentOps`: CRIU, image
manifests and checksums, journal fsyncs and the RPC round trips included), the two ways
taking turns run by run: `parallel`, the code as it is, and `serial`, the same steps with
`jobckpt.WORKERS = 1` (one container after another, which is how whole-job steps ran
before they ran at once). Per run: the job's pause (journal: `lock` started -> `resume`
ended), the `dump:all` and `verify:all` steps, every container's CRIU dump time and image
bytes. After the runs every holder must still verify its memory.

    sudo /opt/hpcmig/venv/bin/python benchmarks/checkpoint/parallel.py \\
        --out benchmarks/checkpoint/parallel.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcmig.checkpoint.criu import criu_binary  # noqa: E402
from hpcmig.controller import jobckpt  # noqa: E402
from hpcmig.controller.journal import Journal  # noqa: E402
from hpcmig.controller.wholejob import checkpoint_spec  # noqa: E402
from hpcmig.vcluster import VCluster  # noqa: E402
from tests.integration import rt_support as S  # noqa: E402
from tests.integration.agent_nodes import AgentNodes, agent_nodes, bench_problem  # noqa: E402
from tests.integration.conftest import hold_lock  # noqa: E402

PY = sys.executable


def check_all(nodes: AgentNodes, vc: VCluster) -> list[str]:
    """Each holder verifies its memory, asked from the next container."""
    out = []
    for m in vc.members:
        asker = vc.member((m.index + 1) % len(vc.members))
        r = nodes.rsh(asker.node, asker.address,
                      f"{PY} -m hpcmig.workloads.holder check {m.address}")
        out.append(r.stdout.strip() if r.returncode == 0 else f"{r.stdout} {r.stderr}")
    return out


def one_run(nodes: AgentNodes, journal: Journal, vc: VCluster, way: str, tag: str
            ) -> dict[str, Any]:
    spec = checkpoint_spec(vc, nodes.cfg.checkpoint_dir, then="resume", tag=tag)
    jobckpt.WORKERS = None if way == "parallel" else 1
    try:
        out = jobckpt.checkpoint_job(journal, nodes.ops(vc), spec)
    finally:
        jobckpt.WORKERS = None
    if out.state != "done":
        raise RuntimeError(f"{way}: {out.state}: {out.error}")
    steps = {s.name: s for s in journal.steps(out.op_id, "forward")}
    ended = steps["resume"].ended
    assert ended is not None
    pause = ended - steps["lock"].started
    dumps = out.data["dumps"]
    for p in spec.containers:  # the images are not kept: each run is a fresh checkpoint
        shutil.rmtree(p.image_dir, ignore_errors=True)
    rec: dict[str, Any] = {"way": way, "pause_s": round(pause, 4),
           "steps_s": {k: round(v, 4) for k, v in out.steps.items()},
           "criu_dump_s": {i: d["seconds"] for i, d in dumps.items()},
           "image_bytes": {i: d["image_bytes"] for i, d in dumps.items()}}
    print(f"  {way:8s}: pause {pause:.3f} s (dump:all {out.steps['dump:all']:.3f}, "
          f"verify:all {out.steps['verify:all']:.3f}; criu dumps "
          f"{', '.join(f'{d:.2f}' for d in rec['criu_dump_s'].values())} s)", flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mb", type=int, default=512, help="per container")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "parallel.json"))
    args = parser.parse_args(argv)
    if problem := bench_problem():
        print(problem, file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "criu": S.sh(criu_binary(), "--version").stdout.split("\n")[0],
                    "load_at_start": os.getloadavg()[0]},
        "memory_mb": args.memory_mb, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": []}
    with hold_lock(), agent_nodes("hpcmig-rt-bench-", "/var/tmp") as nodes:
        vc = nodes.plan("780", 5, list(S.BRIDGED), spares=0)
        journal = Journal(str(nodes.work / "journal-parallel.db"))
        try:
            nodes.setup(vc)
            for m in vc.members:
                r = nodes.rsh(m.node, "-n", m.address, f"{PY} -m hpcmig.workloads.holder "
                              f"serve --memory-mb {args.memory_mb} </dev/null >/dev/null "
                              "2>&1 &")
                assert r.returncode == 0, r.stderr
            deadline = time.monotonic() + 180
            while not all(x.startswith("ok") for x in check_all(nodes, vc)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"holders never served: {check_all(nodes, vc)}")
                time.sleep(0.5)
            for rep in range(args.repeat):
                for way in (("parallel", "serial") if rep % 2 else ("serial", "parallel")):
                    result["runs"].append({"repeat": rep, **one_run(
                        nodes, journal, vc, way, f"bench-{rep}-{way}")})
                    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            result["checks"] = check_all(nodes, vc)
            if not all(x.startswith("ok") for x in result["checks"]):
                raise RuntimeError(f"memory check after the checkpoints: {result['checks']}")
        finally:
            journal.close()
            nodes.teardown(vc.job_id)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    for way in ("serial", "parallel"):
        pauses = [r["pause_s"] for r in result["runs"] if r["way"] == way]
        result[f"{way}_pause_median_s"] = statistics.median(pauses)
    result["ratio"] = result["parallel_pause_median_s"] / result["serial_pause_median_s"]
    print(f"pause, medians: serial {result['serial_pause_median_s']:.3f} s, parallel "
          f"{result['parallel_pause_median_s']:.3f} s (parallel / serial "
          f"{result['ratio']:.2f})", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
