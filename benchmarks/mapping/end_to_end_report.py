"""Render end_to_end.json (from end_to_end.py) as markdown: medians and ratios, never re-measured.

Design note: reads measurements only; every ratio is working tree / baseline of the same
run (same machine, runs interleaved), medians over the repeats.

    python benchmarks/mapping/end_to_end.py --report end_to_end.json > end_to_end.md
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

PHASES = ("read_comm", "map_ranks", "max_link_load", "lower_bound")


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timing_table(records: list[dict[str, Any]]) -> list[str]:
    """Medians per instance and tree; a killed run counts as its timeout (a lower bound)."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        runs[(r["instance"], r["tree"])].append(r)
    out = ["| instance | tree | runs (killed) | wall (median) | read | map | link loads | "
           "bound | other (startup, output) |", "|" + "---|" * 9]
    ratios = ["| instance | wall now / baseline | bound now / baseline | "
              "bound / map (now) |", "|---|---|---|---|"]
    for inst in dict.fromkeys(r["instance"] for r in records):
        med: dict[str, dict[str, float]] = {}
        for tree in ("baseline", "now"):
            rs = runs[(inst, tree)]
            done = [r for r in rs if r["wall"] is not None]
            killed = len(rs) - len(done)
            if not rs:
                continue
            walls = [r["wall"] for r in done] + [r["timeout"] for r in rs if r["wall"] is None]
            m = {p: _med([r["phases"].get(p, 0.0) for r in done]) for p in PHASES}
            m["wall"] = _med(walls)
            m["other"] = _med([r["wall"] - sum(r["phases"].get(p, 0.0) for p in PHASES)
                               for r in done])
            m["killed"] = killed
            med[tree] = m
            at_least = ">= " if killed * 2 >= len(rs) else ""
            out.append(f"| {inst} | {tree} | {len(rs)} ({killed}) | {at_least}{m['wall']:.2f} s"
                       " | " + " | ".join(f"{m[p]:.2f}" for p in PHASES)
                       + f" | {m['other']:.2f} |")
        if len(med) == 2:
            b, n = med["baseline"], med["now"]
            le = "<= " if b["killed"] * 2 >= len(runs[(inst, "baseline")]) else ""
            ratios.append(f"| {inst} | {le}{n['wall'] / b['wall']:.3f} | "
                          f"{n['lower_bound'] / b['lower_bound']:.4f} (completed runs) | "
                          f"{n['lower_bound'] / n['map_ranks']:.2f} |")
    return out + [""] + ratios


def bounds_table(records: list[dict[str, Any]]) -> list[str]:
    by: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    killed = [r for r in records if "timeout" in r]
    for r in records:
        if "timeout" not in r:
            by[(r["topology"], r["pattern"], r["ranks"])][r["tree"]] = r
    out = ["| topology | pattern | ranks | mapping / new bound | new / old bound | "
           "bound s, old | bound s, new | mapping s (warm) | new <= mapping | "
           "old <= mapping |", "|" + "---|" * 10]
    worst_ratio, valid_new, valid_old, count = [], 0, 0, 0
    for (topo, pat, n), t in by.items():
        if "now" not in t:
            continue
        new, old = t["now"], t.get("baseline")
        cost = new["mapping"]
        ok_new = new["bound"] <= cost
        count += 1
        valid_new += ok_new
        if old is None:
            out.append(f"| {topo} | {pat} | {n} | {cost / new['bound']:.3f} | (old killed) | "
                       f"killed | {new['seconds']:.3f} | {new['map_seconds']:.3f} | "
                       f"{'yes' if ok_new else 'NO'} | |")
            continue
        ok_old = old["bound"] <= cost
        valid_old += ok_old
        ratio = new["bound"] / old["bound"] if old["bound"] else float("nan")
        worst_ratio.append(ratio)
        secs = ("(eigenvalues reused)", "") if new["eig_reused"] else (
            f"{old['seconds']:.3f}", f"{new['seconds']:.3f}")
        out.append(f"| {topo} | {pat} | {n} | {cost / new['bound']:.3f} | {ratio:.6f} | "
                   f"{secs[0]} | {secs[1]} | {new['map_seconds']:.3f} | "
                   f"{'yes' if ok_new else 'NO'} | {'yes' if ok_old else 'NO'} |")
    out.append("")
    for r in killed:
        out.append(f"The {r['tree']} bound of {r['pattern']} at {r['ranks']} ranks was killed "
                   f"after {r['timeout']:.0f} s.")
    out.append(f"New bound <= mapping on {valid_new}/{count} instances (old: {valid_old}/"
               f"{len(worst_ratio)}); new / old bound between {min(worst_ratio):.6f} and "
               f"{max(worst_ratio):.6f}.")
    return out


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"Baseline commit {result['baseline']}; {m['cpus']} x {m['cpu']}, Python "
             f"{m['python']}, load average {m['load_at_start']} at the start.", ""]
    if result.get("timing"):
        lines += ["## `hpcmig map` end to end (seconds, medians)", ""]
        lines += timing_table(result["timing"]) + [""]
    if result.get("bounds"):
        lines += ["## Lower bound: old (shift-invert ARPACK) vs new, per instance", ""]
        lines += bounds_table(result["bounds"]) + [""]
    return "\n".join(lines)
