"""`hpcmig testbed up|down|status|exec`: the built-in multi-node Slurm cluster on one machine."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.table import Table

from hpcmig.errors import TestbedError, UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("testbed", help="a real Slurm cluster in network namespaces on this machine")
    tb = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    upp = tb.add_parser("up", help="build the testbed (removes leftovers of earlier runs first)")
    upp.add_argument("--nodes", type=int, default=3, help="number of nodes, 2 to 8 (default 3)")
    tb.add_parser("down", help="remove every namespace, bridge, mount, daemon and file it made")
    tb.add_parser("status", help="nodes, addresses, daemons and Slurm states")
    ex = tb.add_parser("exec", help="run a command inside a node's namespaces")
    ex.add_argument("node")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcmig.testbed import cluster

    err = Console(stderr=True)

    def progress(msg: str) -> None:
        err.print(f"[dim]testbed:[/dim] {msg}", highlight=False)

    if args.action == "up":
        cluster.up(args.nodes, progress=progress)
        print_status(cluster)
        return 0
    if args.action == "down":
        cluster.down(progress=progress)
        progress("testbed down")
        return 0
    if args.action == "status":
        return print_status(cluster)
    return exec_on_node(cluster, args.node, args.command)


def print_status(cluster) -> int:
    result = cluster.status()
    if result is None:
        print("testbed: down")
        return 3
    plan, _, nodes, central = result
    console = Console()
    table = Table(title=f"hpcmig testbed ({len(nodes)} nodes, bridge {plan.bridge} "
                  f"{plan.bridge_address}, job user {plan.user})")
    for col in ("node", "address", "netns", "slurmd", "agent", "slurm state"):
        table.add_column(col)
    for n in nodes:
        table.add_row(n.name, n.address, _ok(n.netns), _ok(n.slurmd),
                      _ok(n.agent) + (f" ({n.agent_age:.0f}s)" if n.agent_age is not None else ""),
                      n.slurm_state)
    console.print(table)
    console.print("  ".join(f"{k}: {_ok(v)}" for k, v in central.items()))
    return 0 if cluster.healthy() else 1


def _ok(flag: bool) -> str:
    return "up" if flag else "DOWN"


def exec_on_node(cluster, node: str, command: list[str]) -> int:
    plan = cluster.current_plan()
    if plan is None:
        raise TestbedError("the testbed is not up", "start it with: hpcmig testbed up")
    target = plan.node(node)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given: hpcmig testbed exec NODE -- COMMAND ...")
    argv = [*plan.nsenter(target), *command]
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127  # not reached
