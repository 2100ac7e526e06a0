"""Health policy benchmark: the rules' decision time per sample with 10,000 simulated nodes.

Design note: pure policy code on generated samples, nothing else runs. 10,000 nodes are fed
`--rounds` samples each (3 s apart, as hpcmigd's default interval); from round `--degrade-at`
a few percent of the nodes degrade, as many of each rule kind (corrected and uncorrected
memory errors, temperature, disk, NIC, check script), 1 % of the healthy nodes reset their
EDAC counters (a driver reload: must not raise an alarm), 2 % run overloaded all along, and
every healthy node's counters creep up below the thresholds. Measured in one run:
- `observe`: `Health.observe(sample)` per sample (median, p99, max) and per round of every
  node, timed around each call with perf_counter_ns;
- `balance`: `overloaded()` + `idle()` for every node once per round (what hpcmigd's
  balancing pass asks);
- baselines in the same run, through the same timer: a no-op observe (a dict lookup and a
  deque append: the floor of any registry), building the round's samples, and
  `Sample.from_json` (what hpcmigd does to each sample an agent answers).
It also checks the decisions: every degraded node is found in the round it degraded, no
healthy node ever is, and exactly the busy nodes are overloaded at the end (the run fails
otherwise).

    /opt/hpcmig/venv/bin/python benchmarks/health/policy.py --out benchmarks/health/results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hpcmig.health.rules import RULES, Health, Policy  # noqa: E402
from hpcmig.health.sample import CheckResult, Sample  # noqa: E402

GIB = 1024**3
MB = 1024**2
OK = (CheckResult("10-mounts", True, ""), CheckResult("20-ib", True, ""))
FAILED = (CheckResult("10-mounts", False, "/scratch not mounted"), OK[1])


class Fleet:
    """Generated nodes: who degrades how, and each node's counters."""

    def __init__(self, nodes: int, degraded: float, seed: int) -> None:
        rng = random.Random(seed)
        self.names = [f"cn{i:05d}" for i in range(nodes)]
        order = list(range(nodes))
        rng.shuffle(order)
        per_kind = max(1, round(nodes * degraded / len(RULES)))
        self.kind: dict[int, str] = {}
        for k, rule in enumerate(RULES):
            for i in order[k * per_kind:(k + 1) * per_kind]:
                self.kind[i] = rule
        rest = order[len(RULES) * per_kind:]
        self.resets = set(rest[: nodes // 100])
        self.busy = set(rest[nodes // 100: nodes // 100 + nodes // 50])
        self.ce = [rng.randrange(0, 1000) for _ in range(nodes)]
        self.nic = [rng.randrange(0, 10_000) for _ in range(nodes)]
        self.load = [30.0 if i in self.busy else rng.uniform(0.0, 8.0) for i in range(nodes)]

    def samples(self, r: int, t: float, degrade_at: int) -> list[Sample]:
        out = []
        bad_round = r >= degrade_at
        for i, name in enumerate(self.names):
            kind = self.kind.get(i) if bad_round else None
            if r % 10 == i % 10:
                self.ce[i] += 1  # a DIMM that corrects one error now and then
            self.nic[i] += 1 if r % 2 else 0
            if r == degrade_at and kind == "memory-errors":
                self.ce[i] += 50
            if r == degrade_at and kind == "nic":
                self.nic[i] += 500
            if r == degrade_at + 5 and i in self.resets:
                self.ce[i] = 0  # EDAC driver reloaded
            out.append(Sample(
                node=name, time=t, cpus=16, load=self.load[i], mem_total=256 * GIB,
                mem_available=200 * GIB, swap_used=0,
                temperatures={"Package id 0": 95.0 if kind == "temperature" else 61.0,
                              "Package id 1": 58.0},
                free={"/var/lib/hpcmig": 100 * MB if kind == "disk" else 500 * GIB,
                      "/run/hpcmig": 30 * GIB},
                free_total={"/var/lib/hpcmig": 1000 * GIB, "/run/hpcmig": 64 * GIB},
                edac_ce=self.ce[i], edac_ue=1 if kind == "memory-uncorrected" else 0,
                nic={"eth0": self.nic[i], "ib0": 0},
                checks=FAILED if kind == "check" else OK, errors=()))
        return out


class NoOp:
    """The floor of any registry: find the node's history, remember the sample."""

    def __init__(self) -> None:
        self.nodes: dict[str, deque[Sample]] = {}

    def observe(self, sample: Sample) -> list[Any]:
        q = self.nodes.get(sample.node)
        if q is None:
            q = self.nodes[sample.node] = deque(maxlen=21)
        q.append(sample)
        return []


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def stats_us(ns: list[int]) -> dict[str, float]:
    return {"median_us": statistics.median(ns) / 1000.0, "p99_us": pct(ns, 0.99),
            "max_us": max(ns) / 1000.0, "n": len(ns)}


def run(nodes: int, rounds: int, degrade_at: int, degraded: float, seed: int
        ) -> dict[str, Any]:
    fleet = Fleet(nodes, degraded, seed)
    policy = Policy()
    health, noop = Health(policy), NoOp()
    per_call: list[int] = []
    noop_call: list[int] = []
    from_json: list[int] = []
    round_ms: list[float] = []
    build_ms: list[float] = []
    balance_ms: list[float] = []
    found: dict[str, tuple[int, str]] = {}  # node -> (first round, rule)
    clock = time.perf_counter_ns
    gc.collect()
    for r in range(rounds):
        t = 1_700_000_000.0 + 3.0 * r
        t0 = clock()
        samples = fleet.samples(r, t, degrade_at)
        build_ms.append((clock() - t0) / 1e6)
        if r % 10 == 0:  # 10 % of the rounds: what hpcmigd does to each answer first
            for s in samples:
                wire = s.to_json()
                a = clock()
                Sample.from_json(wire)
                from_json.append(clock() - a)
        for s in samples:
            a = clock()
            noop.observe(s)
            noop_call.append(clock() - a)
        total = 0
        for s in samples:
            a = clock()
            findings = health.observe(s)
            b = clock()
            per_call.append(b - a)
            total += b - a
            if findings and s.node not in found:
                found[s.node] = (r, findings[0].rule)
        round_ms.append(total / 1e6)
        a = clock()
        busy = [hist.node for hist in health.nodes.values()
                if hist.overloaded(policy, t) and not hist.idle(policy)]
        balance_ms.append((clock() - a) / 1e6)
    if sorted(busy) != sorted(fleet.names[i] for i in fleet.busy):
        raise SystemExit(f"overloaded: {len(busy)} nodes, expected {len(fleet.busy)}")
    expected = {fleet.names[i]: rule for i, rule in fleet.kind.items()}
    wrong = {n: v for n, v in found.items() if expected.get(n) != v[1] or v[0] != degrade_at}
    missed = sorted(set(expected) - set(found))
    if wrong or missed:
        raise SystemExit(f"wrong decisions: {len(wrong)} wrong {list(wrong.items())[:5]}, "
                         f"{len(missed)} missed {missed[:5]}")
    return {
        "nodes": nodes, "rounds": rounds, "interval_s": 3.0, "degrade_at": degrade_at,
        "degraded_nodes": len(expected), "per_rule": len(expected) // len(RULES),
        "counter_resets": len(fleet.resets), "overloaded_nodes": len(fleet.busy),
        "decisions": {"found": len(found), "false_alarms": 0, "missed": 0,
                      "latency_rounds": 0},
        "observe": stats_us(per_call),
        "observe_round_ms": {"median": statistics.median(round_ms), "max": max(round_ms)},
        "noop_observe": stats_us(noop_call),
        "balance_round_ms": {"median": statistics.median(balance_ms),
                             "max": max(balance_ms)},
        "build_round_ms": {"median": statistics.median(build_ms), "max": max(build_ms)},
        "from_json": stats_us(from_json),
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "nproc": os.cpu_count(),
            "python": platform.python_version(), "kernel": platform.release()}


def table(res: dict[str, Any]) -> str:
    o, n, j = res["observe"], res["noop_observe"], res["from_json"]
    return "\n".join([
        "| measure | median | p99 | max |",
        "|---|---|---|---|",
        f"| `Health.observe` per sample | {o['median_us']:.1f} µs | {o['p99_us']:.1f} µs | "
        f"{o['max_us']:.0f} µs |",
        f"| baseline: no-op observe per sample | {n['median_us']:.2f} µs | "
        f"{n['p99_us']:.2f} µs | {n['max_us']:.0f} µs |",
        f"| baseline: `Sample.from_json` per sample | {j['median_us']:.1f} µs | "
        f"{j['p99_us']:.1f} µs | {j['max_us']:.0f} µs |",
        f"| observe, whole round of {res['nodes']:,} nodes | "
        f"{res['observe_round_ms']['median']:.1f} ms | | "
        f"{res['observe_round_ms']['max']:.1f} ms |",
        f"| overloaded + idle, whole round | {res['balance_round_ms']['median']:.1f} ms | | "
        f"{res['balance_round_ms']['max']:.1f} ms |",
        f"| baseline: building a round's samples | {res['build_round_ms']['median']:.1f} ms |"
        f" | {res['build_round_ms']['max']:.1f} ms |",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--degrade-at", type=int, default=20)
    p.add_argument("--degraded", type=float, default=0.03, help="fraction of nodes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    res = run(args.nodes, args.rounds, args.degrade_at, args.degraded, args.seed)
    res["machine"] = machine()
    print(table(res))
    print(f"\n{res['degraded_nodes']} degraded nodes ({res['per_rule']} per rule), "
          f"{res['counter_resets']} counter resets: all found in the round they degraded, "
          f"no false alarm; the {res['overloaded_nodes']} busy nodes, and only they, "
          "overloaded")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
