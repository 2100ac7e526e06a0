"""`hpcmig map` end to end, and its lower bound, at a baseline commit and in the working tree.

Design note: this script owns the measurements of issue 13's goal 4 (the command a user runs,
where `run.py` times the mapper warm and in-process). It writes the instances as HDF5 files,
extracts the baseline's `hpcmig/` with `git archive`, gives each tree its own numba cache
(filled by one untimed run), then:

* `--timing`: runs the CLI (`python -m hpcmig map`, bound included) for every instance, the
  trees taking turns run by run, `--repeat` times; wall time from the parent, phases (read,
  map, link loads, bound) from wrappers around the functions the CLI calls. A run is killed
  after `--timeout` seconds (the baseline's ARPACK sometimes iterates for many minutes on
  the pencil FFT's 126-fold eigenvalue) and counts as at least that long;
* `--bounds`: the lower bound of every mapping-benchmark instance up to `--bound-sizes`
  ranks in both trees, its time, and the hop-bytes of the working tree's mapping (a bound
  above it would be wrong). The Laplacian eigenvalues of a pattern are computed once per
  tree and reused for its second topology (they do not depend on it): only the first
  topology's bound time (median of up to 3 runs within 10 s) counts the eigensolve. Both
  trees run OpenBLAS on one thread there, as `hpcmig map` now does.

    python benchmarks/mapping/end_to_end.py --baseline 13587d0 --out end_to_end.json
    python benchmarks/mapping/end_to_end.py --report end_to_end.json > end_to_end.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TIMED = ["fattree:16,16/fft/4096", "torus:8x8x4/fft/4096",
         "fattree:16,16,16/fft/65536", "torus:16x16x16/fft/65536"]

# The start of a job that times phases: timed(mod, name) wraps mod.name so that every call
# adds its seconds to T[name] (warm.py's job starts with it too).
TIMER = """
import time
T = {}
def timed(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            T[name] = T.get(name, 0.0) + time.perf_counter() - t
    setattr(mod, name, g)
"""

# Runs `hpcmig map` with the phases it goes through timed; the report goes to stdout as
# usual, the phases (JSON) to stderr's last line.
CLI_WRAPPER = TIMER + """
import json, sys
import hpcmig.topology.bounds as b, hpcmig.topology.comm as c
import hpcmig.topology.mapper as m, hpcmig.topology.metrics as x
for mod, name in ((c, "read_comm"), (m, "map_ranks"), (x, "max_link_load"), (b, "lower_bound")):
    timed(mod, name)
from hpcmig.cli import main
code = main(sys.argv[1:])
print(json.dumps(T), file=sys.stderr)
sys.exit(code)
"""

# Lower bounds of the benchmark instances (JSON lines on stdout); eigenvalues memoised per
# pattern across topologies.
BOUND_JOB = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from run import FATTREE, TORUS, make_pattern
from hpcmig.topology import bounds, patterns
name = "smallest_eigenvalues" if hasattr(bounds, "smallest_eigenvalues") else \\
    "laplacian_eigenvalues"
solve, memo = getattr(bounds, name), {}
def cached(w, count):
    key = (w.shape[0], w.nnz, float(w.data.sum()), count)
    if key not in memo:
        memo[key] = solve(w, count)
    return memo[key]
setattr(bounds, name, cached)
from hpcmig.topology.generate import load_topology
with_cost = sys.argv[2] == "cost"
from hpcmig.topology.mapper import map_ranks
for warm in (patterns.pencil_fft(24, 24), patterns.stencil((24, 24))):  # imports, numba cache
    bounds.lower_bound(warm, load_topology("fattree:6,6"), 16)
    if with_cost:
        map_ranks(warm, load_topology("fattree:6,6"), 16)
for n in [int(s) for s in sys.argv[3].split(",")]:
    for pattern in sys.argv[4].split(","):
        comm = make_pattern(pattern, n)
        for spec in (FATTREE[n], TORUS[n]):
            topo = load_topology(spec)
            fresh, times = spec == FATTREE[n], []
            while True:  # up to 3 timed runs (median) when the eigensolve is timed
                if fresh:
                    memo.clear()
                t = time.perf_counter()
                lb = bounds.lower_bound(comm, topo, 16)
                times.append(time.perf_counter() - t)
                if not fresh or len(times) == 3 or sum(times) > 10:
                    break
            rec = {"topology": spec, "pattern": pattern, "ranks": n, "bound": lb.total,
                   "seconds": statistics.median(times), "runs": len(times),
                   "eig_reused": not fresh, "spectral": [lv.spectral for lv in lb.levels]}
            if with_cost:  # the working tree's mapping, warm and in-process
                t = time.perf_counter()
                rec["mapping"] = map_ranks(comm, topo, 16, seed=0).hop_bytes
                rec["map_seconds"] = time.perf_counter() - t
            print(json.dumps(rec), flush=True)
"""


def extract(rev: str, dest: Path) -> Path:
    """`hpcmig/` of commit `rev` under dest (once)."""
    if not (dest / "hpcmig").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        tar = dest / "hpcmig.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "--output", str(tar), rev, "hpcmig"],
                       check=True)
        subprocess.run(["tar", "-xf", str(tar), "-C", str(dest)], check=True)
        tar.unlink()
    return dest


def write_instances(workdir: Path, names: list[str]) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    from run import make_pattern

    from hpcmig.topology.comm import write_comm

    out = {}
    for name in names:
        _, pattern, n = name.split("/")
        path = workdir / f"{pattern}-{n}.h5"
        if not path.exists():
            write_comm(path, make_pattern(pattern, int(n)))
        out[name] = path
    return out


def env_for(tree: Path, cache: Path) -> dict[str, str]:
    """The tree first on the path: run with a cwd outside the repository (`-c` puts it first)."""
    return dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(cache))


def run_cli(tree: Path, cache: Path, name: str, comm: Path, out: Path, timeout: float
            ) -> dict[str, object]:
    """One `hpcmig map` run; a run past `timeout` seconds is killed and recorded as such."""
    topo, _, _ = name.split("/")
    argv = ["map", "--topology", topo, "--comm", str(comm), "--ranks-per-node", "16",
            "-o", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", CLI_WRAPPER, *argv],
                              env=env_for(tree, cache), capture_output=True, text=True,
                              cwd=out.parent, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"wall": None, "timeout": timeout}
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{tree}: hpcmig map failed:\n{proc.stderr[-2000:]}")
    lines = proc.stdout.splitlines()
    bound = next(ln for ln in lines if ln.startswith("lower bound")).split()[2]
    return {"wall": wall, "phases": json.loads(proc.stderr.splitlines()[-1]),
            "hop_bytes": float(lines[1].split()[2]), "bound": float(bound)}


def timing(args: argparse.Namespace, trees: dict[str, Path]) -> list[dict[str, object]]:
    files = write_instances(args.workdir, args.instances)
    records: list[dict[str, object]] = []
    for rep in range(-1, args.repeat):  # -1: untimed, fills each tree's numba cache
        for name, comm in files.items():
            for label, tree in trees.items():
                rec = run_cli(tree, args.workdir / f"numba-{label}", name, comm,
                              args.workdir / "hostfile", args.timeout)
                if rep >= 0:
                    records.append({"instance": name, "tree": label, "run": rep, **rec})
                    print(json.dumps(records[-1]), flush=True)
    return records


def bound_records(args: argparse.Namespace, trees: dict[str, Path]) -> list[dict[str, object]]:
    """One process per tree and pattern (its eigenvalues serve both topologies)."""
    records: list[dict[str, object]] = []
    for n in args.bound_sizes.split(","):
        for pattern in args.bound_patterns.split(","):
            for label, tree in trees.items():
                try:
                    proc = subprocess.run(
                        [sys.executable, "-c", BOUND_JOB, str(HERE),
                         "cost" if label == "now" else "-", n, pattern],
                        env=dict(env_for(tree, args.workdir / f"numba-{label}"),
                                 OPENBLAS_NUM_THREADS="1"),
                        capture_output=True, text=True, check=False, cwd=args.workdir,
                        timeout=args.bound_timeout)
                except subprocess.TimeoutExpired:
                    records.append({"tree": label, "pattern": pattern, "ranks": int(n),
                                    "timeout": args.bound_timeout})
                    print(json.dumps(records[-1]), flush=True)
                    continue
                if proc.returncode:
                    raise SystemExit(f"{tree}: bound job failed:\n{proc.stderr[-2000:]}")
                for line in proc.stdout.splitlines():
                    records.append({"tree": label, **json.loads(line)})
                    print(line, flush=True)
    return records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="13587d0", help="commit to compare with")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hpcmig-e2e")
    ap.add_argument("--out", type=Path, default=HERE / "end_to_end.json")
    ap.add_argument("--instances", nargs="+", default=TIMED,
                    help="TOPO/pattern/ranks ... (patterns of run.py)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds before a run is killed (recorded as a timeout)")
    ap.add_argument("--bound-sizes", default="1024,4096,16384")
    ap.add_argument("--bound-timeout", type=float, default=1200.0,
                    help="seconds for one tree's bounds of one pattern and size")
    ap.add_argument("--bound-patterns",
                    default="stencil2d,stencil2d-perm,stencil3d,stencil3d-perm,fft,mesh")
    ap.add_argument("--only", choices=("timing", "bounds"))
    ap.add_argument("--report", type=Path, help="print the tables of a results file, no runs")
    args = ap.parse_args()
    if args.report:
        sys.path.insert(0, str(HERE))
        from end_to_end_report import render

        print(render(json.loads(args.report.read_text())))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    trees = {"baseline": extract(args.baseline, args.workdir / f"tree-{args.baseline}"),
             "now": ROOT}
    result: dict[str, object] = {"baseline": args.baseline, "machine": machine()}
    if args.only != "bounds":
        result["timing"] = timing(args, trees)
    if args.only != "timing":
        result["bounds"] = bound_records(args, trees)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def machine() -> dict[str, object]:
    load = os.getloadavg()[0]
    model = next((ln.split(":", 1)[1].strip() for ln in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpu": model, "load_at_start": round(load, 2),
            "python": sys.version.split()[0]}


if __name__ == "__main__":
    sys.exit(main())
