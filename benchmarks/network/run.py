"""Network benchmark: MPI ping-pong between two nodes, natively and between hpcmig containers.

Design note: this script owns the measurement loop. `nodes.bench_nodes()` builds two node
namespaces with one container of one job on each (and removes everything afterwards); here
each round runs `hpcmig.workloads.pingpong` with 2 ranks, one per node, in up to three modes
per MPI:

* native: the launcher runs as root in node 1's namespace and starts its daemon in node 2's
  through `nbrsh` (an rsh look-alike: `nsenter --net` into the other node); TCP over the
  node link, no container, no virtual network, and since 2026-12-07 nothing of hpcmig on
  the nodes (before, a native run found the nft table and the fast path's programs a
  container run before it had left there: they cost native messages about 0.2 us, 3-4 %);
* native-hpcmig: native, on nodes that carry hpcmig's isolation and fast path as an agent
  installs them (the nft table, the programs on the node link): what hpcmig costs traffic
  that is not its containers';
* container: the launcher runs in container 0 as the job's user, started through the exec
  protocol (`client.exec_stream`, what `hpcmig run --stream` does) with the argv
  `hpcmig.mpi_launch.launcher_argv` builds for `hpcmig run`, and starts its daemon in
  container 1 through `hpcmig-rsh`; TCP between the containers' /32 addresses, carried by
  the fast path as the agent installs it (hpcmig.network.fastpath: a tc program on each
  node redirects the job's packets);
* container-forwarded: the same with the fast path off: each node's kernel forwards (a /32
  route) and the nft forward filter isolates and counts;
* container-uncounted: forwarded, with the isolation but without the traffic counting
  (hpcmig.network.traffic), to tell what counting costs;
* container-unfiltered: the same with the nodes' nft isolation table removed for the run, to
  tell the filter's cost from the extra veth hops and routing;
* container-l2: hpcmig's L2 data path (hpcmig.network.l2, `network_l2 = true`): the same
  containers and launch as `container`, but eth0 in each container is a guarded macvlan on
  its node's eth0 with the container's data address (`nodes.l2_data_path`, hpcmig's own
  code), so MPI's messages cross no container veth and no node's forwarding;
* container-gro: `container` with GRO switched on at both ends of each container's veth
  (`nodes.veth_gro`), which puts the veth in NAPI mode: a candidate for the veth crossing's
  cost.

`--pin` runs each rank, all its threads, on a core of its own (`pingpong --pin`) in every
mode: both "nodes" share this machine's two cores, and without it the scheduler sometimes
puts both ranks on one core, which moves a single run's bandwidth by up to 2x.

Every mode uses the same hostfile format, the flavour's transport settings (`hpcmig.mpi`) and
distinct host names per node (a UTS namespace natively, the container's otherwise), and each
run checks that its messages crossed the link between the nodes, so MPI never takes a
shared-memory path. The modes alternate (forward order in even rounds, reverse in odd ones)
over `--rounds` rounds; `report.py` turns the records into medians and ratios to native.

    flock /run/lock/hpcmig-integration.lock \
        /opt/hpcmig/venv/bin/python benchmarks/network/run.py --rounds 7 \
        --out benchmarks/network/results.json --md benchmarks/network/results.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nodes  # noqa: E402
import report  # noqa: E402

from hpcmig import _proc, mpi, mpi_launch  # noqa: E402
from hpcmig.errors import CommandError, HpcmigError  # noqa: E402
from hpcmig.workloads import pingpong  # noqa: E402

RUN_TIMEOUT = 90.0
MODES = ("native", "native-hpcmig", "container", "container-forwarded", "container-uncounted",
         "container-unfiltered", "container-l2", "container-gro")
# the candidate modes' changes to the containers' devices, made for one run each
AROUND: dict[str, Callable[[nodes.Bench], contextlib.AbstractContextManager[Any]]] = {
    "container-l2": nodes.l2_data_path, "container-gro": nodes.veth_gro}
N1 = next(iter(nodes.NODES))
# Both "nodes" share this machine's cores. Open MPI binds each node's first rank to core 0 by
# default, so both ranks would fight over one core (measured: 4 ms per message natively);
# binding is switched off in both modes. Hydra does not bind by default.
SAME_MACHINE_ENV = {"OMPI_MCA_hwloc_base_binding_policy": "none"}

# rsh look-alike for the native runs (root only): `nbrsh [-opts] HOST COMMAND...` runs the
# command words, joined like rshd does, in HOST's node network namespace under that node's
# host name (its own UTS namespace), the way ssh would reach a real node.
NBRSH = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -l|-p) shift 2 ;; -*) shift ;; *) break ;; esac
done
host=$1; shift
case "$host" in
{cases}
  *) echo "nbrsh: unknown host $host" >&2; exit 255 ;;
esac
exec nsenter --net=/run/netns/$ns unshare --uts /bin/sh -c \\
  'hostname "$1"; shift; exec /bin/sh -c "$*"' nbrsh "$ns" "$@"
"""

# Runs in node 1's namespace: ask container 0's init to run the launcher (exec protocol).
EXEC_HELPER = """import json, sys
from hpcmig.runtime import client
a = json.load(sys.stdin)
sys.exit(client.exec_stream(a["address"], a["argv"], env=a["env"], cwd=a["cwd"],
                            munge_socket=a["munge"], forward_signals=True))
"""


def write_nbrsh(path: str) -> str:
    cases = "\n".join(f"  {addr}|{ns}) ns={ns} ;;" for ns, addr in nodes.NODES.items())
    with open(path, "w") as fh:
        fh.write(NBRSH.format(cases=cases))
    os.chmod(path, 0o755)
    return path


def program(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "hpcmig.workloads.pingpong",
            "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    if args.pin:
        argv.append("--pin")
    if args.sizes:
        argv += ["--sizes", args.sizes]
    if getattr(args, "settle", None) is not None:  # program_cost.py's counted runs
        argv += ["--settle", str(args.settle)]
    return argv


def native_run(bench: nodes.Bench, flavour: mpi.Flavour, prog: list[str]) -> _proc.Result:
    hostfile = os.path.join(nodes.WORK, f"native-{flavour.name}.hosts")
    with open(hostfile, "w") as fh:
        fh.write(mpi_launch.hostfile(flavour, list(bench.nodes.values()), [1, 1]))
    env = {"PATH": f"{nodes.VENV_BIN}:/usr/bin:/bin", "HOME": "/root",
           **flavour.environment("eth0"), **SAME_MACHINE_ENV}
    if flavour.name == "openmpi":  # the native launcher runs as root (nsenter needs it)
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    argv = mpi_launch.launcher_argv(flavour, rsh=os.path.join(nodes.WORK, "nbrsh"),
                                    hostfile_path=hostfile, n=2, env_names=list(env),
                                    program=prog)
    return _proc.run(["nsenter", f"--net=/run/netns/{N1}", "unshare", "--uts", "/bin/sh", "-c",
                      'hostname "$0"; exec "$@"', N1, *argv],
                     env=env, timeout=RUN_TIMEOUT, check=False, cwd=nodes.WORK)


def container_run(bench: nodes.Bench, flavour: mpi.Flavour, prog: list[str],
                  timeout: float = RUN_TIMEOUT) -> _proc.Result:
    """As `hpcmig run --stream -n 2 --ppn 1` would, from node 1 into container 0."""
    hostfile = os.path.join(nodes.WORK, f"job-{flavour.name}.hosts")
    with open(hostfile, "w") as fh:
        fh.write(mpi_launch.hostfile(flavour, bench.addresses, [1, 1]))
    os.chmod(hostfile, 0o644)
    env = mpi_launch.launch_env(bench.container_env,
                                {**flavour.environment("eth0"), **SAME_MACHINE_ENV})
    env["HPCMIG_HOSTS"] = bench.hosts_path
    argv = mpi_launch.launcher_argv(
        flavour, rsh=os.path.join(nodes.VENV_BIN, "hpcmig-rsh"), hostfile_path=hostfile, n=2,
        env_names=[k for k in env if k not in ("HOME", "USER", "LOGNAME")], program=prog)
    request = {"address": bench.addresses[0], "argv": argv, "env": env, "cwd": "/tmp",
               "munge": bench.munge_socket}
    return _proc.run(["nsenter", f"--net=/run/netns/{N1}", sys.executable, "-c", EXEC_HELPER],
                     input=json.dumps(request), timeout=timeout, check=False)


def payload_bytes(record: dict[str, Any], warmup: int) -> int:
    """Message bytes rank 0 sent to rank 1 (timed and warm-up round trips)."""
    return sum(s["size"] * (s["iterations"] + warmup) for s in record["sizes"])


def measure(bench: nodes.Bench, flavour: mpi.Flavour, mode: str,
            args: argparse.Namespace) -> dict[str, Any]:
    counted = mode in ("native-hpcmig", "container", "container-forwarded", "container-l2",
                       "container-gro")
    fast = mode in ("native-hpcmig", "container", "container-l2", "container-gro")
    filtered = mode not in ("native", "container-unfiltered")
    # native: nothing of hpcmig on the nodes, no nft table and no program on their link
    bench.set_filter(filtered, counted=counted, fast=fast)
    if bench.filtered() != filtered or (filtered and bench.counted() != counted) or (
            bench.fast() != [fast] * len(bench.nodes)):
        raise HpcmigError(f"{mode}: the nft isolation is not in the state this mode needs")
    bytes0, packets0 = nodes.wire_counters(N1)
    around = AROUND.get(mode)  # set up before the clock starts, undone after the run
    with around(bench) if around else contextlib.nullcontext():
        t0 = time.monotonic()
        run = native_run if mode.startswith("native") else container_run
        res = run(bench, flavour, program(args))
    seconds = time.monotonic() - t0
    bytes1, packets1 = nodes.wire_counters(N1)
    wire, packets = bytes1 - bytes0, packets1 - packets0
    if res.returncode != 0:
        raise CommandError(res.argv, res.returncode, res.stdout, res.stderr)
    record = pingpong.parse_output(res.stdout)
    sent = payload_bytes(record, args.warmup)
    if not record["ok"]:
        raise HpcmigError(f"{flavour.name} {mode}: ping-pong echo check failed")
    if wire < sent:  # the messages did not cross the link between the two nodes
        raise HpcmigError(f"{flavour.name} {mode}: node 1 sent {wire} bytes on its link, "
                          f"less than the {sent} bytes of messages: not a two-node run")
    if args.pin and len(set(record["cpus"])) != len(record["cpus"]):
        raise HpcmigError(f"{flavour.name} {mode}: --pin, but ranks share a CPU "
                          f"{record['cpus']}")
    hosts = record["hosts"]
    if len(set(hosts)) != len(hosts):
        raise HpcmigError(f"{flavour.name} {mode}: ranks share a host name {hosts}")
    return {"flavour": flavour.name, "mode": mode, "seconds": round(seconds, 2),
            "nft_filter": filtered,
            "traffic_counted": counted, "fast_path": fast,
            "loadavg_1min": loadavg()[0],
            "wire_bytes": wire, "wire_packets": packets, "payload_bytes": sent,
            "hosts": hosts, "cpus": record.get("cpus"), "mpi": record["mpi"],
            "sizes": record["sizes"]}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("network benchmark: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    except HpcmigError as exc:
        print(f"network benchmark: error: {exc}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5,
                        help="native/container pairs per MPI (default 5)")
    parser.add_argument("--mpi", default="mpich,openmpi", help="comma-separated flavours")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from {', '.join(MODES)} (default: all)")
    parser.add_argument("--iterations", type=int, default=1000,
                        help="timed round trips per small size (fewer for large ones)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sizes", default="", help="comma-separated sizes (default 1 B-4 MiB)")
    parser.add_argument("--pin", action="store_true",
                        help="each rank on a core of its own (pingpong --pin), in every mode")
    parser.add_argument("--out", default="", help="write the records (JSON) here")
    parser.add_argument("--md", default="", help="write the report (Markdown) here")
    args = parser.parse_args(argv)
    why = nodes.missing()
    if why:
        print(f"network benchmark: {why}", file=sys.stderr)
        return 3
    flavours = [mpi.flavour(f.strip()) for f in args.mpi.split(",") if f.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "native" not in modes or not set(modes) <= set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}, native included")
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every context manager cleans up
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)

    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/network/run.py",
                                                *(sys.argv[1:] if argv is None else argv)])
    result: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {"rounds": args.rounds, "iterations": args.iterations,
                     "warmup": args.warmup, "pin": args.pin,
                     "mpi": [f.name for f in flavours], "modes": modes,
                     "ranks": 2, "ranks_per_node": 1},
        "loadavg_before": loadavg(),
        "runs": [],
    }
    t0 = time.monotonic()
    with nodes.bench_nodes() as bench:
        write_nbrsh(os.path.join(nodes.WORK, "nbrsh"))
        result["network"] = {"nodes": bench.nodes, "job_block": str(bench.block),
                             "containers": bench.addresses,
                             "link_wait_seconds": round(bench.link_wait, 3)}
        for rnd in range(args.rounds):
            for flavour in flavours:
                for mode in modes if rnd % 2 == 0 else modes[::-1]:
                    rec = measure(bench, flavour, mode, args)
                    rec["round"] = rnd
                    result["runs"].append(rec)
                    first = rec["sizes"][0]
                    print(f"round {rnd} {flavour.name:8} {mode:20} {rec['seconds']:5.1f} s  "
                          f"{first['size']} B: {first['latency_us']:6.1f} us  "
                          f"max bw {max(s['bandwidth_MBps'] for s in rec['sizes']):7.0f} MB/s",
                          flush=True)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["loadavg_after"] = loadavg()
    result["summary"] = report.summarize(result["runs"])
    text = report.markdown(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
