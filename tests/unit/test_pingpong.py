"""The ping-pong workload (pure parts, and a real 2-rank run on this machine) and the network
benchmark's report (medians and container/native ratios from run records)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from hpcmig import mpi
from hpcmig.errors import HpcmigError
from hpcmig.workloads import pingpong

ROOT = Path(__file__).resolve().parents[2]


def _benchmark(name: str) -> ModuleType:
    """benchmarks/network/<name>.py as a module (the directory is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"network_{name}", ROOT / "benchmarks" / "network" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report() -> ModuleType:
    return _benchmark("report")


def test_iterations_shrink_for_large_messages_but_keep_a_floor() -> None:
    assert pingpong.iterations_for(1, 1000) == 1000
    assert pingpong.iterations_for(64 * 1024, 1000) == 1000
    assert pingpong.iterations_for(1024 * 1024, 1000) == pingpong.BYTES_PER_SIZE // (1 << 20)
    assert pingpong.iterations_for(64 << 20, 1000) == 50
    assert pingpong.iterations_for(64 << 20, 10) == 10  # never more than asked for
    with pytest.raises(ValueError):
        pingpong.iterations_for(8, 0)


def test_summary_halves_round_trips_and_uses_the_median() -> None:
    rec = pingpong.summarize(1000, [20e-6, 22e-6, 100e-6])
    assert rec["iterations"] == 3
    assert rec["latency_us"] == pytest.approx(11.0)  # median round trip 22 us / 2
    assert rec["latency_us_min"] == pytest.approx(10.0)
    assert rec["latency_us_mean"] == pytest.approx((20 + 22 + 100) / 6)
    assert rec["bandwidth_MBps"] == pytest.approx(1000 / 11e-6 / 1e6)


def test_the_result_line_is_found_among_launcher_noise() -> None:
    line = json.dumps({"workload": "pingpong", "ok": True, "sizes": []})
    text = f"Warning: something\n{line}\n[host:123] more noise\n"
    assert pingpong.parse_output(text)["ok"] is True
    with pytest.raises(ValueError):
        pingpong.parse_output('{"workload": "ring"}\n')


def test_pattern_differs_per_size_and_position() -> None:
    a = pingpong.pattern(300, 7)
    assert a.dtype.name == "uint8" and len(set(a.tolist())) > 200
    assert (a != pingpong.pattern(300, 8)).any()


def _mpich_env() -> dict[str, str] | None:
    if shutil.which("mpiexec.mpich") is None:
        return None
    try:
        env = mpi.flavour("mpich").environment("lo")
    except HpcmigError:
        return None
    return {**os.environ, **env}


def test_two_ranks_really_ping_pong() -> None:
    env = _mpich_env()
    if env is None:
        pytest.skip("MPICH (mpiexec.mpich and hpcmig's libmpi shim) is not installed")
    r = subprocess.run(["mpiexec.mpich", "-n", "2", sys.executable, "-m",
                        "hpcmig.workloads.pingpong", "--sizes", "1,4096,1048576",
                        "--iterations", "30", "--min-iterations", "5", "--warmup", "2",
                        "--pin"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = pingpong.parse_output(r.stdout)
    assert out["ok"] and out["ranks"] == 2
    cpus = sorted(os.sched_getaffinity(0))
    assert out["cpus"] == [cpus[0], cpus[1 % len(cpus)]]
    assert [s["size"] for s in out["sizes"]] == [1, 4096, 1048576]
    assert [s["iterations"] for s in out["sizes"]] == [30, 30, 30]
    for s in out["sizes"]:
        assert s["echo_ok"] and 0 < s["latency_us_min"] <= s["latency_us"]


def test_pin_moves_every_thread_of_the_rank_to_its_cpu() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to tell rank 1's CPU from rank 0's")
    code = ("import os, sys, threading; from hpcmig.workloads import pingpong\n"
            "stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()\n"
            "cpu = pingpong.pin(int(sys.argv[1]))\n"
            "print(cpu, sorted({min(os.sched_getaffinity(int(x))) for x in "
            "os.listdir('/proc/self/task')}), "
            "sorted({len(os.sched_getaffinity(int(x))) for x in os.listdir('/proc/self/task')}))\n"
            "stop.set()")
    cpus = sorted(os.sched_getaffinity(0))
    for rank in (0, 1, len(cpus) + 1):
        out = subprocess.run([sys.executable, "-c", code, str(rank)], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split(maxsplit=1)
        want = cpus[rank % len(cpus)]
        assert int(out[0]) == want
        assert out[1].strip() == f"[{want}] [1]"  # both threads, on that one CPU only


def test_timed_sizes_run_for_their_seconds_and_trace_every_sample() -> None:
    env = _mpich_env()
    if env is None:
        pytest.skip("MPICH (mpiexec.mpich and hpcmig's libmpi shim) is not installed")
    before = time.monotonic_ns()
    r = subprocess.run(["mpiexec.mpich", "-n", "2", sys.executable, "-m",
                        "hpcmig.workloads.pingpong", "--sizes", "8,65536", "--seconds", "0.3",
                        "--warmup", "2", "--trace"],
                       capture_output=True, text=True, env=env, timeout=120)
    after = time.monotonic_ns()
    assert r.returncode == 0, r.stderr
    out = pingpong.parse_output(r.stdout)
    assert out["ok"]
    for s in out["sizes"]:
        starts = pingpong.decode(s["trace"]["start_ns"], "int64")
        trips = pingpong.decode(s["trace"]["round_trip_s"], "float64")
        assert len(starts) == len(trips) == s["iterations"] > 10
        assert before < starts[0] and starts[-1] < after  # the same clock as this process
        assert (np.diff(starts) > 0).all() and (trips > 0).all()
        # the size ran for its 0.3 s (the last sample starts before the deadline)
        assert 0.25e9 < starts[-1] - starts[0] < 0.3e9 + 1e8
        assert s["latency_us"] == pytest.approx(float(np.median(trips)) / 2 * 1e6)


def _run(flavour: str, mode: str, rnd: int, lat: dict[int, float]) -> dict[str, Any]:
    return {"flavour": flavour, "mode": mode, "round": rnd, "mpi": flavour,
            "sizes": [{"size": s, "latency_us": t, "bandwidth_MBps": s / t}
                      for s, t in lat.items()]}


def test_report_ratios_are_container_over_native_medians() -> None:
    report = _report()
    mib = 1 << 20
    runs = []
    for rnd, (nat, con) in enumerate([(10.0, 12.0), (11.0, 11.0), (30.0, 15.0)]):
        runs.append(_run("mpich", "native", rnd, {1: nat, 8: nat, mib: 100 * nat}))
        runs.append(_run("mpich", "container", rnd, {1: con, 8: con, mib: 100 * con}))
    s = report.summarize(runs)["mpich"]
    assert s["rounds"] == 3
    assert s["latency_ratio"]["1"] == pytest.approx(12.0 / 11.0)  # median 12 over median 11
    assert s["bandwidth_ratio"][str(mib)] == pytest.approx(11.0 / 12.0)
    row = s["vs_native"]["container"]["table"][0]["latency_us"]
    assert (row["paired_min"], row["paired_max"]) == (pytest.approx(0.5), pytest.approx(1.2))
    text = report.markdown({"command": "x", "started": "t", "machine": {"kernel": "k",
                            "cpus": 2}, "loadavg_before": [1.0], "runs": runs,
                            "summary": report.summarize(runs)})
    assert "| latency 1 B (us) | 11.0 | 12.0 | **1.09** | 0.50-1.20 |" in text


def test_counting_phases_take_only_samples_wholly_inside_and_pair_with_neighbours() -> None:
    cb = _benchmark("counting_bandwidth")
    ms = 1_000_000
    # uncounted, counted, uncounted, counted (a last counted phase has no right neighbour)
    phases = [(0, 100 * ms, False), (102 * ms, 200 * ms, True), (202 * ms, 300 * ms, False),
              (302 * ms, 400 * ms, True)]
    starts, trips = [], []
    for k, (lo, hi, counted) in enumerate(phases):
        rt = 11e-6 if counted else (10e-6 if k == 0 else 12e-6)
        for t in range(lo + 10 * ms, hi - 10 * ms, ms):
            starts.append(t)
            trips.append(rt)
    starts.append(99 * ms)  # straddles the first swap: belongs to no phase
    trips.append(0.05)
    med = cb.phase_medians(np.array(starts, dtype=np.int64), np.array(trips), phases,
                           guard_ns=2 * ms)
    assert med == [(10e-6, False), (11e-6, True), (12e-6, False), (11e-6, True)]
    # bandwidth counted/uncounted = mean of the neighbours' round trips / the counted one
    assert cb.paired_ratios(med) == [pytest.approx(1.0)]
    med[1] = (22e-6, True)
    assert cb.paired_ratios(med) == [pytest.approx(0.5)]
    assert cb.paired_ratios([None, (1.0, True), (1.0, False)]) == []
    lo, hi = cb.bootstrap_median([0.97, 0.98, 0.99, 1.0, 0.98])
    assert 0.97 <= lo <= 0.98 <= hi <= 1.0
    counting = "ip saddr . ip daddr @traffic accept"
    assert counting in cb.ruleset(True) and counting not in cb.ruleset(False)
    assert cb.ruleset(False).count("@intra accept") == 1  # isolation stays
