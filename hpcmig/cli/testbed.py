"""`hpcmig testbed up|down|status|exec|fail|heal`: the built-in multi-node Slurm cluster on one
machine, and faults injected into its nodes."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.table import Table

from hpcmig import _cmdline
from hpcmig.errors import TestbedError, UsageError
from hpcmig.testbed.faults import KINDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("testbed", help="a real Slurm cluster in network namespaces on this machine")
    tb = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    upp = tb.add_parser("up", help="build the testbed (removes leftovers of earlier runs first)")
    upp.add_argument("--nodes", type=_cmdline.count(2, 8), default=3,
                     help="number of nodes, 2 to 8 (default 3)")
    upp.add_argument("--leaves", type=_cmdline.count(1, 8), default=1,
                     help="leaf switches the nodes are split into, in order (default 1); "
                          "Slurm gets the tree as topology.conf")
    upp.add_argument("--spine-rate", default="1gbit", metavar="RATE",
                     help="bandwidth of each leaf's uplink, both ways (tc rate, default "
                          "1gbit): traffic between leaves costs")
    tb.add_parser("down", help="remove every namespace, bridge, mount, daemon and file it made")
    tb.add_parser("status", help="nodes, addresses, daemons and Slurm states")
    ex = tb.add_parser("exec", help="run a command inside a node's namespaces")
    ex.add_argument("node", metavar="NODE", type=_cmdline.node_name)
    ex.add_argument("command", metavar="-- COMMAND", nargs=argparse.REMAINDER)
    fl = tb.add_parser("fail", help="inject a fault into a node: a degradation its agent reads, "
                       "or a crash")
    fl.add_argument("node", metavar="NODE", type=_cmdline.node_name)
    how = fl.add_mutually_exclusive_group(required=True)
    how.add_argument("--degrade", metavar="KIND", choices=KINDS,
                     help=f"what the node's agent reads from now on: {', '.join(KINDS)}")
    how.add_argument("--crash", action="store_true",
                     help="SIGKILL everything of the node (daemons, job steps, containers)")
    hl = tb.add_parser("heal", help="undo a node's faults; a crashed node's daemons start again")
    hl.add_argument("node", metavar="NODE", type=_cmdline.node_name)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hpcmig.testbed import cluster

    err = Console(stderr=True)

    def progress(msg: str) -> None:
        err.print(f"[dim]testbed:[/dim] {msg}", highlight=False)

    if args.action == "up":
        cluster.plan_for(args.nodes, args.leaves, args.spine_rate)  # bad knobs: one line
        cluster.up(args.nodes, progress=progress, leaves=args.leaves,
                   spine_rate=args.spine_rate)
        print_status(cluster)
        return 0
    if args.action == "down":
        cluster.down(progress=progress)
        progress("testbed down")
        return 0
    if args.action == "status":
        return print_status(cluster)
    if args.action == "fail":
        print(cluster.fail(args.node, "crash" if args.crash else args.degrade))
        return 0
    if args.action == "heal":
        print(cluster.heal(args.node))
        return 0
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
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given: hpcmig testbed exec NODE -- COMMAND ...")
    plan = cluster.current_plan()
    if plan is None:
        raise TestbedError("the testbed is not up", "start it with: hpcmig testbed up")
    target = plan.node(node)
    argv = [*plan.nsenter(target), *command]
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127  # not reached
