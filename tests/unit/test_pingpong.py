"""The ping-pong workload (pure parts, and a real 2-rank run on this machine) and the network
benchmark's report (medians and container/native ratios from run records)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hpcmig import mpi
from hpcmig.errors import HpcmigError
from hpcmig.workloads import pingpong

ROOT = Path(__file__).resolve().parents[2]


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "network_report", ROOT / "benchmarks" / "network" / "report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
                        "--iterations", "30", "--min-iterations", "5", "--warmup", "2"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = pingpong.parse_output(r.stdout)
    assert out["ok"] and out["ranks"] == 2
    assert [s["size"] for s in out["sizes"]] == [1, 4096, 1048576]
    assert [s["iterations"] for s in out["sizes"]] == [30, 30, 30]
    for s in out["sizes"]:
        assert s["echo_ok"] and 0 < s["latency_us_min"] <= s["latency_us"]


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
