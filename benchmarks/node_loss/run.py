"""Node-loss benchmark: issue 11's acceptance as written, a node crashed under a running 3-node
job with `ckpt=10`, for every engine; the time to run again and the work lost, per case.

Design note: the integration tier runs these scenarios with 2-node jobs on its 3-node testbed
(tests/integration/test_node_loss.py, test_dmtcp_job.py, test_app_ckpt.py), so that a node is
left to requeue onto, within CI's time. Here the job has 3 nodes (6 ranks in 3 containers) on
a 4-node testbed of its own. Cases: `criu-mpich`, `criu-openmpi` (hpcmigd dumps the containers),
`dmtcp-mpich`, `dmtcp-openmpi` (engine=dmtcp: the job's coordinator), `app` (the worked example
jobs/app_ckpt_heat.sh, engine=app). Each case: submit, wait for a generation, `testbed fail
NODE --crash` half an interval later (NODE: the job's last node that is not its batch host),
then with no command from anybody the job must run again on the nodes left, keep its id,
restart once, print the exact checksum once, redo at most one interval (+2 s) of work, leave
the dead node DOWN with hpcmig's reason and remove its checkpoints once it ended. Recorded per
case: generation time, crash to running again, crash to completed, work lost; a case that
fails is recorded with its reason and the next one runs. Root; takes the integration tier's
lock. DMTCP at $HPCMIG_DMTCP_PREFIX or on PATH (the dmtcp cases are skipped without it).

    HPCMIG_DMTCP_PREFIX=/path/to/dmtcp /opt/hpcmig/venv/bin/python benchmarks/node_loss/run.py \
        --out benchmarks/node_loss/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcmig.checkpoint import dmtcp, dmtcp_job  # noqa: E402
from hpcmig.errors import MissingDependency, SlurmError  # noqa: E402
from hpcmig.slurm import Slurm  # noqa: E402
from hpcmig.slurm.adapter import TERMINAL  # noqa: E402
from hpcmig.testbed import cluster  # noqa: E402
from hpcmig.testbed.plan import DMTCP_PREFIX_ENV, Plan  # noqa: E402
from hpcmig.workloads import batch, ring  # noqa: E402
from tests.integration.conftest import bench_testbed, settle  # noqa: E402
from tests.integration.test_app_ckpt import HEAT, app_generations  # noqa: E402
from tests.integration.test_dmtcp_job import dmtcp_story, steps  # noqa: E402
from tests.integration.test_migration import ELEMENTS  # noqa: E402
from tests.integration.test_node_loss import (  # noqa: E402
    INTERVAL,
    ROUNDS,
    SECONDS,
    generations,
    revive,
    rounds_done,
    submit_job,
)

NODES, TESTBED = 3, 4
RANKS = 2 * NODES
CASES = {"criu-mpich": ("criu", "mpich"), "criu-openmpi": ("criu", "openmpi"),
         "dmtcp-mpich": ("dmtcp", "mpich"), "dmtcp-openmpi": ("dmtcp", "openmpi"),
         "app": ("app", "mpich")}
HEAT_STEPS = 8000


def script(case: str, job_dir: Path, interval: int = INTERVAL) -> str:
    engine, mpi = CASES[case]
    if engine == "app":  # the worked example as it is, on 3 nodes, a 10 s interval
        shutil.copy(HEAT, job_dir / HEAT.name)
        text = HEAT.with_suffix(".sh").read_text()
        for old, new in (("--nodes=2", f"--nodes={NODES}"),
                         ("--ntasks=4", f"--ntasks={RANKS}"),
                         ("ckpt=30", f"ckpt={interval}"),
                         ("--steps 20000", f"--steps {HEAT_STEPS}"),
                         ("/opt/hpcmig/venv/bin/python", sys.executable)):
            assert old in text, f"{HEAT.with_suffix('.sh')} no longer says {old}"
            text = text.replace(old, new)
        return text
    options = {"ckpt": str(interval), **({"engine": "dmtcp"} if engine == "dmtcp" else {})}
    return batch.vcluster_script(
        NODES, [["hpcmig.workloads.ring", "--elements", str(ELEMENTS), "--rounds", str(ROUNDS),
                 "--seconds", str(SECONDS), "--progress"]],
        mpi=mpi, ntasks=RANKS, options=options, job_name=f"loss-{case}")


def newest(engine: str, plan: Plan, job_id: int, job_dir: Path) -> dict[str, Any] | None:
    """The job's newest complete generation: {n, time, seconds (None: not measured)}."""
    if engine == "criu":
        gens = generations(plan, job_id)
        return {"n": gens[-1]["n"], "time": gens[-1]["time"],
                "seconds": gens[-1]["seconds"]} if gens else None
    if engine == "dmtcp":
        found = steps(Path(dmtcp_job.job_dir(str(job_dir), str(job_id))))
        return {"n": found[-1].number, "time": found[-1].created,
                "seconds": found[-1].seconds} if found else None
    gens = app_generations(job_dir / f"hpcmig-ckpt-{job_id}")
    return {"n": gens[-1]["generation"], "time": gens[-1]["time"], "seconds": None,
            "step": gens[-1]["step"], "steps_per_interval":
            gens[-1]["step"] - gens[-2]["step"] if len(gens) > 1 else None} if gens else None


def checkpoints_of(engine: str, plan: Plan, job_id: int, job_dir: Path) -> Path:
    if engine == "criu":
        return plan.base / "ckpt" / str(job_id)
    if engine == "dmtcp":
        return Path(dmtcp_job.job_dir(str(job_dir), str(job_id)))
    return job_dir / f"hpcmig-ckpt-{job_id}"


def lost_seconds(engine: str, text: str, taken: dict[str, Any], interval: int) -> float:
    """The work the job did twice, in seconds of its progress, after checking its result."""
    if engine == "app":
        passed = re.findall(rf"^heat: PASS checksum=\w+ expected=\w+ ranks={RANKS} ", text, re.M)
        assert len(passed) == 1, "the exact checksum once"
        steps_lost = int(re.search(r"^lost work: (\d+) steps", text, re.M).group(1))  # type: ignore[union-attr]
        per = taken["steps_per_interval"]
        return steps_lost / per * interval
    want = f"ring: PASS checksum={ring.expected(RANKS, ELEMENTS, ROUNDS)} "
    assert text.count(want) == 1, "the exact checksum once"
    done = rounds_done(text)
    assert sorted(done) == list(range(1, ROUNDS + 1)), "every round ran"
    return sum(1 for c in done.values() if c > 1) * SECONDS / ROUNDS


def run_case(case: str, plan: Plan, slurm: Slurm, home: Path, rep: int,
             interval: int = INTERVAL, victim_is_batch: bool = False) -> dict[str, Any]:
    engine, mpi = CASES[case]
    job_dir = home / f"{case}-{rep}"  # its own output file
    job_dir.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(job_dir, plan.user, plan.user)
    job_id, out, job = submit_job(plan, slurm, job_dir, script(case, job_dir, interval))
    victim = job.batch_host if victim_is_batch else \
        [n for n in job.nodes if n != job.batch_host][-1]
    result: dict[str, Any] = {"case": case, "run": rep, "engine": engine, "mpi": mpi,
                              "job_id": job_id,
                              "nodes": list(job.nodes), "victim": victim}
    crashed = False
    try:
        deadline = time.monotonic() + 4 * interval
        want = 2 if engine == "app" else 1  # the app's lost work is measured per interval
        while (taken := newest(engine, plan, job_id, job_dir)) is None or taken["n"] < want:
            assert time.monotonic() < deadline, f"no generation in {4 * interval} s"
            assert slurm.job(job_id).state == "RUNNING", "the job ended before a generation"
            time.sleep(0.3)
        time.sleep(max(0.0, taken["time"] + interval / 2 - time.time()))
        crash_at, crashed = time.time(), True
        print(cluster.fail(victim, "crash"), flush=True)
        deadline = time.monotonic() + 300
        while not ((again := slurm.job(job_id)).state == "RUNNING" and again.restart_count):
            assert again.state not in TERMINAL, f"the job ended {again.state} before a restart"
            assert time.monotonic() < deadline, "not running again 300 s after the crash"
            time.sleep(0.3)
        running = time.time()
        ended = slurm.wait(job_id, timeout=300, states={"COMPLETED", "FAILED", "CANCELLED"})
        completed = time.time()
        text = out.read_text()
        result |= {"generation": taken["n"], "generation_seconds": taken["seconds"],
                   "crash_after_generation": round(crash_at - taken["time"], 2),
                   "crash_to_running": round(running - crash_at, 1),
                   "crash_to_completed": round(completed - crash_at, 1),
                   "nodes_after": list(ended.nodes), "restarts": ended.restart_count}
        assert ended.state == "COMPLETED", f"the job ended {ended.state}\n{text[-3000:]}"
        assert ended.restart_count == 1 and victim not in ended.nodes, ended
        result["lost_seconds"] = round(lost_seconds(engine, text, taken, interval), 1)
        assert result["lost_seconds"] <= interval + 2, "more than one interval of work lost"
        assert slurm.node(victim).reason.startswith("hpcmig: node lost"), slurm.node(victim)
        left = checkpoints_of(engine, plan, job_id, job_dir)
        deadline = time.monotonic() + 60
        while left.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left.exists(), f"{left} left behind"
        result["ok"] = True
    except (AssertionError, SlurmError) as exc:  # (SlurmError: not ended in time)
        result |= {"ok": False, "error": str(exc)[:2000],
                   "output_tail": out.read_text(errors="replace")[-3000:]}
        if engine == "dmtcp":  # its coordinators' logs, where its processes wait
            result["dmtcp"] = dmtcp_story(Path(dmtcp_job.job_dir(str(job_dir), str(job_id))))
        if slurm.job(job_id).state not in TERMINAL:
            slurm.cancel(job_id)  # the next run needs the nodes
    finally:
        if crashed:
            revive(slurm, victim)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every case")
    parser.add_argument("--out", type=Path, help="write the results (JSON) here")
    parser.add_argument("--interval", type=int, default=INTERVAL,
                        help=f"ckpt= of the jobs, s (default {INTERVAL}); the crash comes "
                             "half an interval after a generation")
    parser.add_argument("--crash", choices=("other", "batch"), default="other",
                        help="the node crashed: the job's last node that is not its batch "
                             "host (default), or its batch host (launcher, coordinator)")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    try:
        dmtcp.find_dmtcp(os.environ.get(DMTCP_PREFIX_ENV, ""))
    except MissingDependency as exc:
        print(f"skipping the dmtcp cases: {exc}", file=sys.stderr)
        cases = [c for c in cases if CASES[c][0] != "dmtcp"]
    runs: list[dict[str, Any]] = []
    with bench_testbed("bench-node-loss", nodes=TESTBED) as (plan, slurm, home):
        for rep in range(args.repeat):
            for case in cases:
                settle(slurm, timeout=120)
                runs.append(run_case(case, plan, slurm, home, rep, args.interval,
                                     args.crash == "batch"))
                print(json.dumps(runs[-1]), flush=True)
    doc = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": platform.node(),
           "cpus": os.cpu_count(), "job_nodes": NODES, "testbed_nodes": TESTBED,
           "interval": args.interval, "crash": args.crash, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    failed = [r["case"] for r in runs if not r["ok"]]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
