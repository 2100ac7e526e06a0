"""results.md from the checkpoint benchmark's results.json.

    /opt/hpcmig/venv/bin/python benchmarks/checkpoint/report.py benchmarks/checkpoint/results.json \
        > benchmarks/checkpoint/results.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _runs(data: dict[str, Any], engine: str, kind: str, key: str) -> str:
    values = [r[key] for r in data["runs"]
              if r["engine"] == engine and r["kind"] == kind and r.get(key) is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(path: str) -> int:
    data = json.loads(Path(path).read_text())
    m = data["machine"]
    out = [
        "# Checkpoint benchmark: results", "",
        f"Recorded {data['date']} ({data['minutes']} min), kernel {m['kernel']}, {m['nproc']} "
        f"CPUs. Command: `{data['command']}`. Program: `{' '.join(data['program'])}`. "
        f"Checkpoints every {data['interval']} s in the `periodic` runs; node MTBF "
        f"{data['mtbf_hours']:g} h for `auto`. Medians over the repeats (min-max in "
        "brackets). CRIU: hpcmig containers on the testbed (2 nodes, 2 ranks each), "
        "hpcmigd's periodic checkpoints and `hpcmig checkpoint`/`restore`. DMTCP: hpcmig's "
        "DMTCP driver, the same program on the host over loopback (not in containers).", "",
        "| | CRIU | DMTCP |", "|---|---:|---:|",
    ]
    s = data["summary"]
    c, d = s.get("criu", {}), s.get("dmtcp", {})
    rows = [
        ("run without checkpoints, s", "plain", "seconds"),
        ("run under dmtcp_launch, no checkpoint, s", "launched", "seconds"),
        (f"run with a checkpoint every {data['interval']} s, s", "periodic", "seconds"),
        ("checkpoints taken in that run", "periodic", "checkpoints"),
    ]
    for label, kind, key in rows:
        out.append(f"| {label} | {_runs(data, 'criu', kind, key)} | "
                   f"{_runs(data, 'dmtcp', kind, key)} |")
    out += [
        f"| one whole-job checkpoint, s (median of all) | {_f(c.get('checkpoint_seconds'))} | "
        f"{_f(d.get('checkpoint_seconds'))} |",
        f"| images of one checkpoint, MiB | {_f(c.get('image_mb'), '{:.0f}')} | "
        f"{_f(d.get('image_mb'), '{:.0f}')} |",
        f"| restore / restart to running, s | {_f(c.get('restore_seconds'))} | "
        f"{_f(d.get('restore_seconds'))} |",
        f"| release of the requeued job to restored, s (Slurm included) | "
        f"{_f(c.get('release_to_restored'))} | - |",
        f"| job's cost of one checkpoint c, s | {_f(c.get('cost_per_checkpoint'))} | "
        f"{_f(d.get('cost_per_checkpoint'))} |",
        f"| slowdown at {data['interval']} s | {_f(_pct(c, 'slowdown_at_interval'), '{:.1f} %')}"
        f" | {_f(_pct(d, 'slowdown_at_interval'), '{:.1f} %')} |",
        f"| `auto` interval sqrt(2 C M), s | {_f(c.get('auto_interval'), '{:.0f}')} | "
        f"{_f(d.get('auto_interval'), '{:.0f}')} |",
        f"| **slowdown at `auto`** c / T (goal <= 1 %) | "
        f"**{_f(_pct(c, 'slowdown_at_auto'), '{:.3f} %')}** | "
        f"**{_f(_pct(d, 'slowdown_at_auto'), '{:.3f} %')}** |",
    ]
    print("\n".join(out))
    return 0


def _pct(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(key)
    return None if value is None else 100 * value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
