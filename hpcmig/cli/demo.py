"""`hpcmig demo`: the point of hpcmig in one command, on the built-in testbed.

Brings the testbed up (unless it already runs), submits an MPI job across its nodes as the
unprivileged testbed user, inside hpcmig's virtual cluster (one container per node, virtual
addresses, MPI launched inside by `hpcmig run`), shows where every rank ran, then injects a
degradation (memory errors) into one of the job's nodes and shows hpcmigd noticing it on its
own, draining the node and moving the container live (what, when, the pause), and prints the
job's result next to the value an undisturbed serial computation gives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from hpcmig import _cmdline

MPI_NAMES = {"openmpi": "Open MPI", "mpich": "MPICH"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run an MPI job on the built-in testbed and show the result")
    p.add_argument("--nodes", type=_cmdline.count(2, 8), default=3,
                   help="testbed nodes, 2 to 8 (default 3)")
    p.add_argument("--mpi", choices=["openmpi", "mpich"], default="openmpi")
    p.add_argument("--rounds", type=_cmdline.count(1), default=400,
                   help="ring rounds (default 400)")
    p.add_argument("--seconds", type=_cmdline.seconds, default=20.0,
                   help="ring run time (default 20)")
    p.add_argument("--memory-mb", type=_cmdline.count(1), default=64,
                   help="memory per rank in MB (default 64)")
    p.add_argument("--down", action="store_true", help="take the testbed down afterwards")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcmig.errors import HpcmigError
    from hpcmig.slurm import Slurm
    from hpcmig.testbed import cluster
    from hpcmig.testbed.plan import Plan
    from hpcmig.workloads import batch, ring

    console = Console()
    say = console.print
    Plan(nodes_count=args.nodes, controller_host="-")  # validates --nodes before any work
    current = cluster.current_plan()
    if current is not None and current.nodes_count == args.nodes and cluster.healthy():
        plan = current
        say(f"[bold]1.[/bold] testbed already up ({args.nodes} nodes)")
    else:
        say(f"[bold]1.[/bold] bringing up a {args.nodes}-node Slurm testbed "
            "(network namespaces, munged, slurmctld, slurmd + hpcmig-agent per node)")
        plan = cluster.up(args.nodes, progress=lambda m: say(f"   [dim]{m}[/dim]"))
    slurm = Slurm()
    nodes = slurm.nodes()
    say("   " + ", ".join(f"{n.name}={n.state}" for n in nodes))

    job_dir = plan.home / "demo"
    job_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(job_dir, plan.user, plan.user)
    out = job_dir / "ring.out"
    out.unlink(missing_ok=True)
    script = job_dir / "ring.sh"
    hosting = args.nodes - 1  # one node of the allocation stays free: the spare
    ntasks = 2 * hosting
    ring_args = ["--rounds", str(args.rounds), "--seconds", str(args.seconds),
                 "--memory-mb", str(args.memory_mb)]
    script.write_text(batch.vcluster_script(
        args.nodes, [["hpcmig.workloads.whereami"], ["hpcmig.workloads.ring", *ring_args]],
        mpi=args.mpi, ntasks=ntasks, options={"spares": "1"}, job_name="hpcmig-demo",
        output=str(out)))
    victim = "node2"
    say(f"[bold]2.[/bold] sbatch as user {plan.user} (#SBATCH --comment=hpcmig:spares=1): "
        f"`hpcmig run -n {ntasks}` of an {MPI_NAMES[args.mpi]} ring + allreduce "
        f"({args.memory_mb} MB per rank, ~{args.seconds:g} s) inside the job's virtual "
        f"cluster: one container on each of {hosting} nodes, node{args.nodes} kept as a "
        f"spare ({script})")
    job_id = slurm.submit([str(script)], user=plan.user, cwd=str(job_dir))
    t0 = time.monotonic()
    with console.status(f"job {job_id} starting"):
        while not _ring_started(plan, job_id):
            if slurm.job(job_id).state not in ("PENDING", "CONFIGURING", "RUNNING"):
                break
            time.sleep(0.3)
        time.sleep(2.0)
    text = out.read_text() if out.exists() else ""
    placed = next((line for line in text.splitlines() if line.startswith("whereami: ")), None)
    if placed:
        console.print(_ranks_table(json.loads(placed.split(" ", 1)[1]), slurm.job(job_id).nodes))
    pause = _degrade(say, victim) if slurm.job(job_id).state == "RUNNING" else None
    with console.status(f"job {job_id} running") as status:
        while True:
            job = slurm.job(job_id)
            status.update(f"job {job_id}: {job.state} on {','.join(job.nodes) or '-'} "
                          f"({time.monotonic() - t0:.0f}s)")
            if job.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                break
            time.sleep(0.5)
    text = out.read_text() if out.exists() else ""
    result = next((line for line in text.splitlines() if line.startswith("ring: ")), None)
    want = ring.expected(ntasks, 4096, args.rounds)
    say(f"[bold]4.[/bold] job {job_id} {job.state} on {','.join(job.nodes)} "
        f"in {time.monotonic() - t0:.1f}s")
    ok = job.state == "COMPLETED" and result is not None and f"checksum={want} " in result
    if result:
        say(f"   {result}")
    say(f"   undisturbed serial value: {want}  ->  "
        + ("[green]MATCH[/green]" if ok else "[red]MISMATCH[/red]")
        + (f": the job never noticed its container moving, except a {pause:.2f} s pause"
           if ok and pause is not None else ""))
    with contextlib.suppress(HpcmigError):
        cluster.heal(victim)
        slurm.resume(victim)
    if args.down:
        cluster.down()
        say("testbed down")
    else:
        say("[dim]the testbed stays up: try `sinfo`, `hpcmig testbed status`; "
            "remove it with `hpcmig testbed down`[/dim]")
    if not ok:
        raise HpcmigError(f"demo job {job_id} did not produce the expected result",
                          f"see {out} and {plan.log_dir}")
    return 0


def _ranks_table(ranks: list[dict[str, Any]], nodes: Sequence[str]) -> Table:
    """Where each rank ran: container, virtual address, node (container i is on node i)."""
    table = Table(title="ranks inside the virtual cluster", title_justify="left")
    for col in ("rank", "container", "virtual address", "node", "user", "pid in container"):
        table.add_column(col)
    for rank, r in enumerate(ranks):
        index = int(r["host"].rsplit("-", 1)[-1])
        node = nodes[index] if index < len(nodes) else "?"
        table.add_row(str(rank), r["host"], ", ".join(r["addresses"]), node, r["user"],
                      str(r["pid"]))
    return table


def _ring_started(plan: Any, job_id: int) -> bool:
    """The job's second `hpcmig run` (the ring; the first is whereami) has its launcher up."""
    return (plan.base / "shared" / "jobs" / str(job_id) / "run-0-1" / "heartbeat").exists()


def _degrade(say: Any, node: str) -> float | None:
    """Inject memory errors into node while the job runs and follow what hpcmigd does on
    its own; returns the moved container's pause."""
    import re

    from hpcmig.controller.client import ControllerClient
    from hpcmig.testbed import cluster

    say(f"[bold]3.[/bold] `hpcmig testbed fail {node} --degrade memory-errors` while the job "
        "runs: its memory controller starts reporting corrected errors. Nobody runs an hpcmig "
        "command: hpcmigd notices, drains the node and moves its container live")
    t0 = time.time()
    say(f"   [dim]+  0.0 s[/dim]  {cluster.fail(node, 'memory-errors')}")
    client = ControllerClient()
    seen: set[tuple[float, str]] = set()
    pause = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        doc = client.call("status", timeout=30)["data"]
        done = False
        for d in reversed(doc["decisions"]):
            key = (d["time"], d["what"])
            if d["time"] < t0 or key in seen:
                continue
            seen.add(key)
            say(f"   [dim]+{d['time'] - t0:5.1f} s[/dim]  hpcmigd: {d['what']}")
            if (m := re.search(r"container \d+ done, pause ([0-9.]+) s", d["what"])):
                pause = float(m.group(1))
            done = done or d["what"].startswith((f"{node}: evacuated", f"{node}: DRAINED"))
        if done:
            break
        time.sleep(0.3)
    return pause
