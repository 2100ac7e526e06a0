"""Render results.json (from run.py) as the markdown tables in results.md.

Design note: reads measurements only, computes ratios against baselines of the same run;
never re-measures.

    python benchmarks/mapping/report.py results.json > results.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

TOOLS = ("metis", "kahip", "scotch")
SHOWN = ("cyclic", "random", "hpcmig", *TOOLS)
ONE = "hpcmig-1thread"  # same mapping, numba limited to one thread


def main() -> int:
    records = json.loads(Path(sys.argv[1]).read_text())
    inst: dict[tuple[str, str, int], dict[str, dict[str, float]]] = defaultdict(dict)
    for r in records:
        inst[(r["topology"], r["pattern"], r["ranks"])][r["method"]] = r
    print("## Hop-bytes relative to block placement (lower is better) and time in seconds\n")
    print("| topology | pattern | ranks | " + " | ".join(SHOWN) +
          " | hpcmig / best tool | hpcmig time / fastest tool | 1 thread / fastest tool |")
    print("|" + "---|" * (len(SHOWN) + 6))
    met_q = met_b = total = with_block = 0
    speed: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    slowest: dict[int, tuple[float, str]] = {}
    for (topo, pat, n), m in inst.items():
        if "block" not in m or "hpcmig" not in m:
            continue
        blk = m["block"]["hop_bytes"]
        cells = []
        for meth in SHOWN:
            if meth in m:
                t = m[meth]["seconds"]
                cells.append(f"{m[meth]['hop_bytes'] / blk:.3f}" +
                             (f" ({t:.3g}s)" if meth == "hpcmig" or meth in TOOLS else ""))
            else:
                cells.append("-")
        tools = [m[t] for t in TOOLS if t in m]
        if tools:
            best = min(t["hop_bytes"] for t in tools)
            fastest = min(t["seconds"] for t in tools)
            q = m["hpcmig"]["hop_bytes"] / best
            s = m["hpcmig"]["seconds"] / fastest
            total += 1
            met_q += q <= 1.01
            one = m[ONE]["seconds"] / fastest if ONE in m else None
            cells += [f"{q:.3f}" + ("" if q <= 1.01 else " **FAIL**"), f"{s:.2f}",
                      "-" if one is None else f"{one:.2f}"]
            speed[n][0] += 1
            speed[n][1] += s <= 1.0
            speed[n][2] += one is not None and one <= 1.0
        else:
            cells += ["-", "-", "-"]
        with_block += 1
        met_b += m["hpcmig"]["hop_bytes"] <= blk
        secs = m["hpcmig"]["seconds"]
        if secs > slowest.get(n, (0.0, ""))[0]:
            slowest[n] = (secs, f"{topo} {pat}")
        print(f"| {topo} | {pat} | {n} | " + " | ".join(cells) + " |")
    print(f"\nhpcmig <= best tool + 1%: {met_q}/{total} instances; "
          f"hpcmig <= block: {met_b}/{with_block} instances.")
    for n, (count, fast, fast1) in sorted(speed.items()):
        print(f"\n{n} ranks: hpcmig no slower than the fastest tool on {fast}/{count} "
              f"instances ({fast1}/{count} on one thread); slowest hpcmig run "
              f"{slowest[n][0]:.3g} s ({slowest[n][1]}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
