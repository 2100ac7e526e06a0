"""Network benchmark report: medians over rounds and container/native ratios, as Markdown.

Design note: pure functions over the run records `run.py` writes (no I/O except `main`).
For every MPI, mode and message size the statistic is the median over rounds of each run's
median one-way latency, and of its bandwidth (size / that latency). "Best" figures use each
run's minimum one-way latency instead (the path's capacity with as little scheduling noise as
the machine allows). Ratios are mode / native: above 1 the mode is slower (latency), below 1
it has less bandwidth. The headline is small-message latency (1 B, 8 B) and large-message
bandwidth (1, 2, 4 MiB); next to each, the range of the per-round paired ratios (each run
against the native run of the same round) shows the noise.

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
METRICS = {  # name -> how to read it from a size record
    "latency_us": lambda s: s["latency_us"],
    "bandwidth_MBps": lambda s: s["bandwidth_MBps"],
    "best_latency_us": lambda s: s.get("latency_us_min", s["latency_us"]),
    "best_bandwidth_MBps": lambda s: s["size"] / s.get("latency_us_min", s["latency_us"]),
}

Rounds = dict[int, dict[int, dict[str, Any]]]  # round -> size -> size record


def _by(runs: list[dict[str, Any]], flavour: str, mode: str) -> Rounds:
    out: Rounds = {}
    for run in runs:
        if run["flavour"] == flavour and run["mode"] == mode:
            out[run["round"]] = {s["size"]: s for s in run["sizes"]}
    return out


def compare(native: Rounds, other: Rounds, size: int, metric: str) -> dict[str, float]:
    """Medians over rounds of one metric at one size, their ratio, the paired ratio range."""
    get = METRICS[metric]
    nat = [get(r[size]) for r in native.values() if size in r]
    oth = [get(r[size]) for r in other.values() if size in r]
    paired = [get(other[k][size]) / get(native[k][size])
              for k in native if k in other and size in native[k] and size in other[k]]
    n_med, o_med = statistics.median(nat), statistics.median(oth)
    return {"native": n_med, "mode": o_med, "ratio": o_med / n_med,
            "paired_min": min(paired), "paired_max": max(paired)}


def _bytes_per_packet(runs: list[dict[str, Any]], flavour: str) -> dict[str, float]:
    """Median over runs of node 1's link bytes / packets, per mode (how big the skbs are)."""
    per: dict[str, list[float]] = {}
    for run in runs:
        if run["flavour"] == flavour and run.get("wire_packets"):
            per.setdefault(run["mode"], []).append(run["wire_bytes"] / run["wire_packets"])
    return {mode: statistics.median(v) for mode, v in per.items()}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per flavour and per non-native mode: the size table and the headline ratios.

    `summary[flavour]["latency_ratio"]`/`["bandwidth_ratio"]` are the acceptance figures:
    the `container` mode (what hpcmig runs) against native."""
    summary: dict[str, Any] = {}
    for flavour in sorted({r["flavour"] for r in runs}, key=lambda f: f != "mpich"):
        native = _by(runs, flavour, "native")
        modes = sorted({r["mode"] for r in runs if r["flavour"] == flavour} - {"native"})
        if not native or not modes:
            continue
        entry: dict[str, Any] = {"rounds": len(native), "vs_native": {},
                                 "bytes_per_packet": _bytes_per_packet(runs, flavour)}
        for mode in modes:
            other = _by(runs, flavour, mode)
            sizes = sorted(set.intersection(*(set(r) for r in [*native.values(),
                                                                *other.values()])))
            table: list[dict[str, Any]] = [
                {"size": size, **{m: compare(native, other, size, m) for m in METRICS}}
                for size in sizes]
            rows = {row["size"]: row for row in table}
            entry["vs_native"][mode] = {
                "rounds": len(other),
                "latency_ratio": {str(s): rows[s]["latency_us"]["ratio"]
                                  for s in LATENCY_SIZES if s in rows},
                "bandwidth_ratio": {str(s): rows[s]["bandwidth_MBps"]["ratio"]
                                    for s in BANDWIDTH_SIZES if s in rows},
                "table": table,
            }
        if "container" in entry["vs_native"]:
            entry["latency_ratio"] = entry["vs_native"]["container"]["latency_ratio"]
            entry["bandwidth_ratio"] = entry["vs_native"]["container"]["bandwidth_ratio"]
        summary[flavour] = entry
    return summary


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n // MiB} MiB"
    if n >= 1024:
        return f"{n // 1024} KiB"
    return f"{n} B"


def _headline(vs: dict[str, Any], modes: list[str]) -> list[str]:
    head = "| | native |" + "".join(f" {m} | ratio | per-round range |" for m in modes)
    lines = [head, "|---|---:|" + "---:|---:|---:|" * len(modes)]
    rows = [(f"latency {_size(s)} (us)", s, "latency_us", 1) for s in LATENCY_SIZES]
    rows += [(f"best latency {_size(s)} (us)", s, "best_latency_us", 1) for s in LATENCY_SIZES]
    rows += [(f"bandwidth {_size(s)} (MB/s)", s, "bandwidth_MBps", 0) for s in BANDWIDTH_SIZES]
    rows += [(f"best bandwidth {_size(s)} (MB/s)", s, "best_bandwidth_MBps", 0)
             for s in BANDWIDTH_SIZES]
    tables = {m: {row["size"]: row for row in vs[m]["table"]} for m in modes}
    for label, size, metric, digits in rows:
        if any(size not in tables[m] for m in modes):
            continue
        first = tables[modes[0]][size][metric]
        line = f"| {label} | {first['native']:.{digits}f} |"
        for m in modes:
            c = tables[m][size][metric]
            bold = "**" if metric in ("latency_us", "bandwidth_MBps") and m == "container" else ""
            line += (f" {c['mode']:.{digits}f} | {bold}{c['ratio']:.2f}{bold} | "
                     f"{c['paired_min']:.2f}-{c['paired_max']:.2f} |")
        lines.append(line)
    return lines


def _full_table(vs: dict[str, Any], modes: list[str]) -> list[str]:
    head = "| size | latency native (us) |"
    head += "".join(f" {m} (us) | ratio |" for m in modes)
    head += " bandwidth native (MB/s) |" + "".join(f" {m} (MB/s) | ratio |" for m in modes)
    lines = [head, "|---:|---:|" + "---:|---:|" * len(modes) + "---:|"
             + "---:|---:|" * len(modes)]
    tables = {m: {row["size"]: row for row in vs[m]["table"]} for m in modes}
    for size in sorted(set.intersection(*(set(t) for t in tables.values()))):
        lat0 = tables[modes[0]][size]["latency_us"]
        bw0 = tables[modes[0]][size]["bandwidth_MBps"]
        line = f"| {_size(size)} | {lat0['native']:.1f} |"
        for m in modes:
            c = tables[m][size]["latency_us"]
            line += f" {c['mode']:.1f} | {c['ratio']:.2f} |"
        line += f" {bw0['native']:.1f} |"
        for m in modes:
            c = tables[m][size]["bandwidth_MBps"]
            line += f" {c['mode']:.1f} | {c['ratio']:.2f} |"
        lines.append(line)
    return lines


def markdown(result: dict[str, Any]) -> str:
    after = result.get("loadavg_after")
    lines = ["# Network benchmark results", "",
             f"Command: `{result['command']}`  ",
             f"Started {result['started']}, took {result.get('seconds', '?')} s; kernel "
             f"{result['machine']['kernel']}, {result['machine']['cpus']} CPUs; 1-minute load "
             f"average {result['loadavg_before'][0]:.2f} before, "
             f"{after[0] if after else '?'} after.", ""]
    versions = {r["flavour"]: " ".join(r["mpi"].replace("\0", "").split(",")[0].split())
                for r in result["runs"]}
    for flavour, s in result["summary"].items():
        vs = s["vs_native"]
        modes = [m for m in ("container", "container-forwarded", "container-unfiltered")
                 if m in vs]
        modes += sorted(set(vs) - set(modes))
        lines += [f"## {flavour} ({versions.get(flavour, '?')}), {s['rounds']} rounds", ""]
        lines += _headline(vs, modes)
        if s.get("bytes_per_packet"):
            lines += ["", "Bytes per packet on the link between the nodes (median over runs): "
                      + ", ".join(f"{m} {v:.0f}" for m, v in s["bytes_per_packet"].items())
                      + "."]
        lines += ["", *_full_table(vs, modes), ""]
    lines += ["Each value is the median over rounds of a run's median one-way latency (half a "
              "round trip) or bandwidth (size / that latency, 1 MB = 10^6 B); *best* uses each "
              "run's minimum one-way latency instead. Ratios are mode / native; the range is "
              "that of the per-round pairs (each run against the native run of its round). "
              "`native`: no hpcmig on the nodes (since 2026-12-07; older records' native runs "
              "found what the run before had left); `native-hpcmig`: native, with hpcmig's "
              "nft table and fast path on the nodes as an agent installs them; "
              "`container`: what hpcmig runs (veth + /32 routes on both nodes, the job's "
              "packets redirected by the fast path's tc program); `container-forwarded`: the "
              "same with the fast path off (each node's kernel forwards, the nft forward "
              "filter isolates and counts); `container-unfiltered`: forwarded, with the nft "
              "table removed; `container-l2`: hpcmig's L2 data path (`network_l2`), MPI on a "
              "guarded macvlan of each container on its node's link (no container veth, no "
              "forwarding); `container-macvlan` (older records): the same before it was "
              "built, unguarded; `container-gro`: `container` with GRO (NAPI mode) on both ends of "
              "each container's veth." + (" Every rank ran on a core of its own (`--pin`)."
                                          if result.get("settings", {}).get("pin") else ""),
              ""]
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
