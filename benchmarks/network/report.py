"""Network benchmark report: medians over rounds and container/native ratios, as Markdown.

Design note: pure functions over the run records `run.py` writes (no I/O except `main`).
For every MPI, mode and message size the statistic is the median over rounds of each run's
median one-way latency (and of its bandwidth, size / that latency). Ratios are
container / native: above 1 means the container path is slower for latency, below 1 that it
has less bandwidth. The headline ratios are small-message latency (1 B, 8 B) and large-message
bandwidth (1, 2, 4 MiB); next to each, the range of the per-round paired ratios (each
container run against the native run of the same round) shows the noise.

    python benchmarks/network/report.py benchmarks/network/results.json > results.md
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

MiB = 1024 * 1024
LATENCY_SIZES = (1, 8)
BANDWIDTH_SIZES = (1 * MiB, 2 * MiB, 4 * MiB)


def _by(runs: list[dict[str, Any]], flavour: str, mode: str) -> dict[int, dict[int, Any]]:
    """{round: {size: size record}} for one flavour and mode."""
    out: dict[int, dict[int, Any]] = {}
    for run in runs:
        if run["flavour"] == flavour and run["mode"] == mode:
            out[run["round"]] = {s["size"]: s for s in run["sizes"]}
    return out


def _ratio_stats(native: dict[int, dict[int, Any]], cont: dict[int, dict[int, Any]],
                 size: int, key: str) -> dict[str, float]:
    nat = [r[size][key] for r in native.values() if size in r]
    con = [r[size][key] for r in cont.values() if size in r]
    paired = [cont[k][size][key] / native[k][size][key]
              for k in native if k in cont and size in native[k] and size in cont[k]]
    n_med, c_med = statistics.median(nat), statistics.median(con)
    return {"native": n_med, "container": c_med, "ratio": c_med / n_med,
            "paired_min": min(paired), "paired_max": max(paired),
            "paired_median": statistics.median(paired)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per flavour: the size table and the headline ratios."""
    summary: dict[str, Any] = {}
    for flavour in sorted({r["flavour"] for r in runs}, key=lambda f: f != "mpich"):
        native, cont = _by(runs, flavour, "native"), _by(runs, flavour, "container")
        if not native or not cont:
            continue
        sizes = sorted(set.intersection(*(set(r) for r in [*native.values(), *cont.values()])))
        table: list[dict[str, Any]] = []
        for size in sizes:
            lat = _ratio_stats(native, cont, size, "latency_us")
            bw = _ratio_stats(native, cont, size, "bandwidth_MBps")
            table.append({"size": size, "latency_us": lat, "bandwidth_MBps": bw})
        rows = {row["size"]: row for row in table}
        summary[flavour] = {
            "rounds": min(len(native), len(cont)),
            "latency_ratio": {str(s): rows[s]["latency_us"]["ratio"]
                              for s in LATENCY_SIZES if s in rows},
            "bandwidth_ratio": {str(s): rows[s]["bandwidth_MBps"]["ratio"]
                                for s in BANDWIDTH_SIZES if s in rows},
            "table": table,
        }
    return summary


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n // MiB} MiB"
    if n >= 1024:
        return f"{n // 1024} KiB"
    return f"{n} B"


def _range(stats: dict[str, float]) -> str:
    return f"{stats['paired_min']:.2f}-{stats['paired_max']:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Network benchmark results", "",
             f"Command: `{result['command']}`  ",
             f"Started {result['started']}, {result.get('seconds', '?')} s; kernel "
             f"{result['machine']['kernel']}, {result['machine']['cpus']} CPUs; load average "
             f"before {result['loadavg_before'][0]:.2f}, after "
             f"{result.get('loadavg_after', ['?'])[0]}.", ""]
    versions = {r["flavour"]: r["mpi"] for r in result["runs"]}
    for flavour, s in result["summary"].items():
        t = {row["size"]: row for row in s["table"]}
        lines += [f"## {flavour} ({versions.get(flavour, '?')}), {s['rounds']} rounds", ""]
        lines += ["| headline | native | container | container/native | per-round range |",
                  "|---|---:|---:|---:|---:|"]
        for size in LATENCY_SIZES:
            if size in t:
                lat = t[size]["latency_us"]
                lines.append(f"| latency {_size(size)} (us) | {lat['native']:.1f} | "
                             f"{lat['container']:.1f} | **{lat['ratio']:.2f}** | "
                             f"{_range(lat)} |")
        for size in BANDWIDTH_SIZES:
            if size in t:
                bw = t[size]["bandwidth_MBps"]
                lines.append(f"| bandwidth {_size(size)} (MB/s) | {bw['native']:.0f} | "
                             f"{bw['container']:.0f} | **{bw['ratio']:.2f}** | "
                             f"{_range(bw)} |")
        lines += ["", "| size | latency native (us) | latency container (us) | ratio | "
                  "bandwidth native (MB/s) | bandwidth container (MB/s) | ratio |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for row in s["table"]:
            lat, bw = row["latency_us"], row["bandwidth_MBps"]
            lines.append(f"| {_size(row['size'])} | {lat['native']:.1f} | "
                         f"{lat['container']:.1f} | {lat['ratio']:.2f} | {bw['native']:.1f} | "
                         f"{bw['container']:.1f} | {bw['ratio']:.2f} |")
        lines.append("")
    lines += ["Each value is the median over rounds of a run's median one-way latency "
              "(half a round trip) or of its bandwidth (size / that latency, 1 MB = 10^6 B). "
              "Ratios are container / native; the range is that of the per-round pairs.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as fh:
        result = json.load(fh)
    result["summary"] = summarize(result["runs"])
    sys.stdout.write(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
