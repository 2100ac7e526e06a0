"""`map_ranks` warm and in-process, phase by phase, at a baseline commit and in the working tree.

Design note: this script owns the in-process half of issue 13's goal 4 (the 65,536-rank pencil
FFT mapped in at most 1 s); `end_to_end.py` owns the command a user runs, and this script
reuses its instances (HDF5 files under --workdir), its baseline extraction and its per-tree
numba caches. One process per tree and run: it reads the instance, maps a small dense one
(loads the kernels from numba's cache), then times the instance's first call of `map_ranks`
(what `hpcmig map` makes: all its memory is new to the process) and `--inner` more (memory
the process freed before, which the allocator and the kernel may hand out faster); the
trees take turns run by run, so a load spike on the shared VM hits both alike. Phases come
from wrappers around the kernels the mapper calls (those that exist in that tree); a digest
of `node_of` shows both trees give the same mapping.

    python benchmarks/mapping/warm.py --baseline main --out warm.json
    python benchmarks/mapping/warm.py --report warm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from end_to_end import (  # noqa: E402
    ROOT,
    TIMER,
    env_for,
    extract,
    machine,
    write_instances,
)

INSTANCES = ["fattree:16,16,16/fft/65536", "torus:16x16x16/fft/65536"]

# argv: instance file, topology, inner runs; one JSON line per timed call on stdout.
JOB = TIMER + """
import hashlib, json, sys
from hpcmig.topology import mapper, _kernels_cost, _kernels_graph, _kernels_rb
try:
    from hpcmig.topology import _kernels_level
except ImportError:  # (a baseline before it)
    _kernels_level = None
from hpcmig.topology.comm import read_comm
from hpcmig.topology.generate import load_topology
for mod, names in ((mapper, ["as_csr", "block_placement"]),
                   (_kernels_graph, ["symmetrize", "near_fraction"]),
                   (_kernels_rb, ["build_hierarchy", "recursive_bisection"]),
                   (_kernels_cost, ["swap_refine", "hop_bytes", "whole_level"]),
                   (_kernels_level, ["cheapest_level", "mixed_hop_bytes"])):
    for name in names:
        if hasattr(mod, name):  # (the baseline's kernels may lack some)
            timed(mod, name)
from hpcmig.topology import patterns
comm = read_comm(sys.argv[1])
topo = load_topology(sys.argv[2])
# a small dense instance loads every kernel from numba's cache; then the instance's first
# call (what `hpcmig map` makes: fresh memory) and `inner` more (memory the process freed)
mapper.map_ranks(patterns.pencil_fft(32, 32), load_topology("fattree:8,8"), 16, seed=0)
for call in range(int(sys.argv[3]) + 1):
    T.clear()
    t = time.perf_counter()
    m = mapper.map_ranks(comm, topo, 16, seed=0)
    total = time.perf_counter() - t
    print(json.dumps({"seconds": total, "first": call == 0, "phases": T,
                      "hop_bytes": m.hop_bytes, "method": m.method,
                      "digest": hashlib.sha1(m.node_of.tobytes()).hexdigest()[:12]}),
          flush=True)
"""


def measure(args: argparse.Namespace, trees: dict[str, Path]) -> list[dict[str, object]]:
    files = write_instances(args.workdir, args.instances)
    records: list[dict[str, object]] = []
    for rep in range(-1, args.repeat):  # -1: untimed, fills each tree's numba cache
        for name, comm in files.items():
            for label, tree in trees.items():
                proc = subprocess.run(
                    [sys.executable, "-c", JOB, str(comm), name.split("/")[0], str(args.inner)],
                    env=env_for(tree, args.workdir / f"numba-{label}"), capture_output=True,
                    text=True, cwd=args.workdir, check=False, timeout=args.timeout)
                if proc.returncode:
                    raise SystemExit(f"{tree}: map job failed:\n{proc.stderr[-2000:]}")
                if rep < 0:
                    continue
                for line in proc.stdout.splitlines():
                    records.append({"instance": name, "tree": label, "run": rep,
                                    **json.loads(line)})
                    print(json.dumps(records[-1]), flush=True)
    return records


def render(result: dict[str, object]) -> str:
    """Median seconds and phases per instance, tree and call (a process's first call of the
    instance, or the later ones), now / baseline of the same run."""
    recs = result["records"]
    assert isinstance(recs, list)
    out = [f"baseline {result['baseline']}, {result['machine']}", "",
           "| instance | call | tree | runs | median s | min s | now / baseline (median) | "
           "phases (median s) | hop-bytes | digest |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["instance"] for r in recs):
        for first in (True, False):  # (records before the first call was kept: later only)
            med = {}
            for tree in ("baseline", "now"):
                rs = [r for r in recs if r["instance"] == name and r["tree"] == tree
                      and r.get("first", False) == first]
                if not rs:
                    break
                secs = [r["seconds"] for r in rs]
                med[tree] = statistics.median(secs)
                phases = {k: statistics.median(r["phases"].get(k, 0.0) for r in rs)
                          for k in rs[0]["phases"]}
                ph = ", ".join(f"{k} {v:.3f}" for k, v in phases.items() if v >= 0.005)
                ratio = f"{med['now'] / med['baseline']:.2f}" if tree == "now" else ""
                digests = ",".join(sorted({r["digest"] for r in rs}))
                out.append(f"| {name} | {'first' if first else 'later'} | {tree} | {len(rs)} | "
                           f"{med[tree]:.3f} | {min(secs):.3f} | {ratio} | {ph} | "
                           f"{rs[0]['hop_bytes']:.6g} | {digests} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="commit to compare with")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hpcmig-e2e")
    ap.add_argument("--out", type=Path, default=HERE / "warm.json")
    ap.add_argument("--instances", nargs="+", default=INSTANCES,
                    help="TOPO/pattern/ranks ... (patterns of run.py)")
    ap.add_argument("--repeat", type=int, default=5, help="processes per tree and instance")
    ap.add_argument("--inner", type=int, default=2, help="timed calls per process")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--report", type=Path, help="print the table of a results file, no runs")
    args = ap.parse_args()
    if args.report:
        print(render(json.loads(args.report.read_text())))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    trees = {"baseline": extract(args.baseline, args.workdir / f"tree-{args.baseline}"),
             "now": ROOT}
    result = {"baseline": args.baseline, "machine": machine(),
              "records": measure(args, trees)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
