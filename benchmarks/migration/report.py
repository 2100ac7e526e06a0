"""Turn benchmarks/migration/results.json into the Markdown tables of results.md.

    python benchmarks/migration/report.py benchmarks/migration/results.json > results.md
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

PAUSE_STEPS = ("lock", "dump", "transfer", "verify", "target_net", "route", "restore",
               "unlock")
MODES = ("shared", "stream", "shared+postcopy", "stream+postcopy")


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(data: dict[str, Any]) -> str:
    runs = data["migrations"]
    copies = {int(k): v for k, v in data["copies"].items()}
    m = data["machine"]
    out = [
        "# Migration benchmark: results",
        "",
        f"Recorded {data['started']} - {data.get('finished', '(unfinished)')}, kernel "
        f"{m['kernel']}, {m['cpus']} CPUs, {m['mem_total_bytes'] / 2**30:.1f} GiB, "
        f"{m['criu']}, image checksums {m.get('image_checksum', 'sha256')}"
        + (f", migrations through {m['path']}" if m.get("path") else "") + ". "
        "Medians over the repeats (min-max in brackets). *Pause* = the journal's lock -> "
        "unlock (what the moved container misses); *peer gap* = the longest wait the client "
        "saw for an answer over the moved TCP connection (TCP retransmission backoff "
        "included); *copy* = one memory copy of the same size on this machine in the same "
        "run (numpy, pre-faulted buffers, best of 3); *memory after* = post-copy's `pages` "
        "step (the memory still arriving after the unlock); *move* = the whole move, every "
        "step.",
        "",
        "| resident | mode | pause s | peer gap s | dump s | verify s | restore s | "
        "memory after s | move s | images MB | copy ms | pause / copy |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = sorted({r["size_mb"] for r in runs})
    for size in sizes:
        for mode in MODES:
            rs = [r for r in runs if r["size_mb"] == size and r["mode"] == mode]
            if not rs:
                continue
            pauses = [r["pause_s"] for r in rs]
            copy = copies[size]
            out.append(
                f"| {size} MiB | {mode} | {med(pauses):.2f} ({min(pauses):.2f}-"
                f"{max(pauses):.2f}) | {med([r['peer_gap_s'] for r in rs]):.2f} | "
                f"{med([r['steps_s']['dump'] for r in rs]):.2f} | "
                f"{med([r['steps_s']['verify'] for r in rs]):.2f} | "
                f"{med([r['steps_s']['restore'] for r in rs]):.2f} | "
                f"{med([r['steps_s'].get('pages', 0.0) for r in rs]):.2f} | "
                f"{med([r.get('move_s', sum(r['steps_s'].values())) for r in rs]):.2f} | "
                f"{med([r['image_bytes'] / 1e6 for r in rs]):.0f} | {copy * 1e3:.0f} | "
                f"{med(pauses) / copy:.0f} |")
    for size, why in sorted(data.get("skipped", {}).items(), key=lambda kv: int(kv[0])):
        out.append(f"| {size} MiB | - | skipped: {why} | | | | | | | | | |")
    out += ["", "Where the pause goes (median seconds per step, lock to unlock):", "",
            "| resident | mode | " + " | ".join(PAUSE_STEPS) + " | criu dump |",
            "|---:|---|" + "---:|" * (len(PAUSE_STEPS) + 1)]
    for size in sizes:
        for mode in MODES:
            rs = [r for r in runs if r["size_mb"] == size and r["mode"] == mode]
            if rs:
                cells = [f"{med([r['steps_s'].get(s, 0.0) for r in rs]):.3f}"
                         for s in PAUSE_STEPS]
                out.append(f"| {size} MiB | {mode} | " + " | ".join(cells) +
                           f" | {med([r['criu_dump_s'] for r in rs]):.3f} |")
    if 1024 in copies:
        out += ["", "**1 GiB resident:** " + "; ".join(
            f"{mode}: pause {med(p):.2f} s = {med(p) / copies[1024]:.0f} x one 1 GiB memory "
            f"copy ({copies[1024] * 1e3:.0f} ms)"
            for mode in MODES
            if (p := [r["pause_s"] for r in runs if r["size_mb"] == 1024 and r["mode"] == mode]))
            + "."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0] if args else "benchmarks/migration/results.json") as fh:
        sys.stdout.write(report(json.load(fh)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
