"""What traffic counting costs a packet: flood ping between two containers of one job, with
the nodes' nft isolation counting (`container`) and not counting (`container-uncounted`).

Design note: the same two nodes and containers as run.py (`nodes.bench_nodes`). A flood ping
(`ping -f`: the next request leaves as soon as the reply came) from container 0 to container
1 is a chain of single packets through both nodes' forward paths; every request is counted on
node 1 and every reply on node 2 when counting is on, so the per-round-trip time difference
is what two counted packets cost. The modes alternate (reverse order in odd rounds); each
run's average round trip and the per-round ratio counted/uncounted are recorded, and node
1's counter is checked to have seen the pings. Root; run it under the integration lock:

    flock /run/lock/hpcmig-integration.lock /opt/hpcmig/venv/bin/python \\
        benchmarks/network/counting.py --out benchmarks/network/counting-ping.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.network import nodes  # noqa: E402
from hpcmig.network import NodeNet  # noqa: E402

TOTAL = re.compile(r"(\d+) received.*time (\d+)ms")
RTT = re.compile(r"rtt min/avg/max/mdev = ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms")
MODES = ("container", "container-uncounted")


def flood(bench: nodes.Bench, count: int) -> dict[str, float]:
    res = nodes.sh("nsenter", f"--net=/run/netns/{nodes.CONTAINERS[0]}", "ping", "-f", "-q",
                   "-c", str(count), bench.addresses[1], timeout=600)
    found, total = RTT.search(res.stdout), TOTAL.search(res.stdout)
    if found is None or total is None or int(total.group(1)) != count:
        raise SystemExit(f"ping did not come back whole:\n{res.stdout}{res.stderr}")
    # ping prints its per-packet times in whole microseconds: the run's total time over
    # the count resolves the round trip to a few nanoseconds
    return {"avg_us": int(total.group(2)) * 1000 / count,
            "ping_avg_us": float(found.group(2)) * 1000, "min_us": float(found.group(1)) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=200000, help="round trips per run")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    why = nodes.missing()
    if why:
        raise SystemExit(f"counting benchmark: {why}")
    runs = []
    started = time.time()
    with nodes.bench_nodes() as bench:
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
                bench.set_filter(True, counted=mode == "container")
                if bench.counted() != (mode == "container"):
                    raise SystemExit(f"{mode}: the counting is not in the state asked for")
                run = {"round": r, "mode": mode, **flood(bench, args.count)}
                if mode == "container":  # node 1 counted every request
                    seen = NodeNet(next(iter(bench.nodes))).traffic(IPv4Network(bench.block))
                    run["counted_packets"] = seen.get(
                        (bench.addresses[0], bench.addresses[1]), (0, 0))[1]
                    if run["counted_packets"] < args.count:
                        raise SystemExit(f"node 1 counted {run['counted_packets']} requests "
                                         f"of {args.count}")
                runs.append(run)
                print(json.dumps(run), flush=True)
    ratios = []
    for r in range(args.rounds):
        by = {x["mode"]: x["avg_us"] for x in runs if x["round"] == r}
        ratios.append(by["container"] / by["container-uncounted"])
    med = {m: statistics.median(x["avg_us"] for x in runs if x["mode"] == m) for m in MODES}
    summary = {"avg_rtt_us": med, "ratio_median": statistics.median(ratios),
               "ratio_range": [min(ratios), max(ratios)],
               "per_counted_packet_ns": (med["container"] - med["container-uncounted"])
               * 1000 / 2}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"command": "benchmarks/network/counting.py " + " ".join(argv or sys.argv[1:]),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
             "seconds": round(time.time() - started, 1), "settings": vars(args),
             "runs": runs, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
