"""`hpcmig-healthcheck`: Slurm's `HealthCheckProgram=`, reporting this node's sample to hpcmigd.

Design note: for sites that let Slurm drive the health interval (`HealthCheckInterval=`),
slurmd runs this program on every node; it takes one sample with the site configuration's
watched paths, check directory and load source (hpcmig.health.sample.take) and sends it to
hpcmigd (`health.report`), which runs the rules and decides. It never judges and never drains:
Slurm drains a node whose health check program fails, so it exits 0 whatever the sample says
and when hpcmigd cannot be reached (one line on stderr); only a sample that could not be
taken at all exits 1. The controller's client is imported inside `main`: the health package
itself never imports the controller (tests/unit/health/test_layering.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from hpcmig import config as site_config
from hpcmig.errors import HpcmigError
from hpcmig.health.rules import NodeHistory
from hpcmig.health.sample import Roots, Sample, take

PROG = "hpcmig-healthcheck"


def node_name(given: str | None) -> str:
    """--node, else $SLURMD_NODENAME (slurmd sets it), else the short host name."""
    return given or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def sample_for(node: str, cfg: site_config.Config, roots: Roots) -> Sample:
    return take(node, roots=roots, paths=cfg.watched_paths,
                check_dir=cfg.health_check_dir or None, load_source=cfg.health_load)


def _say(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--node", default=None,
                        help="this node's Slurm name (default: $SLURMD_NODENAME, else the "
                             "short host name)")
    parser.add_argument("--config", default=None,
                        help="hpcmig.toml (default: $HPCMIG_CONFIG or /etc/hpcmig/hpcmig.toml)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for hpcmigd (default 10)")
    parser.add_argument("--proc-root", default="/proc",
                        help="read /proc here instead (tests; default /proc)")
    parser.add_argument("--sys-root", default="/sys",
                        help="read /sys here instead (a testbed node's fixture view; "
                             "default /sys)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sample and what the rules say about it alone; "
                             "send nothing")
    args = parser.parse_args(argv)
    node = node_name(args.node)
    try:
        cfg = site_config.load(args.config)
    except HpcmigError as exc:  # a site-wide mistake, not this node's fault
        _say(f"{exc}; nothing reported")
        return 0
    try:
        sample = sample_for(node, cfg, Roots(args.proc_root, args.sys_root))
    except (HpcmigError, OSError) as exc:
        _say(f"cannot take a health sample of {node}: {exc}")
        return 1
    if args.dry_run:
        print(json.dumps(sample.to_json(), indent=2))
        for finding in NodeHistory(node).observe(sample, cfg.health):
            print(finding.reason())
        return 0
    from hpcmig.controller.client import ControllerClient  # the one upward import: lazy

    try:
        ControllerClient(cfg, timeout=args.timeout).call(
            "health.report", node=node, sample=sample.to_json())
    except (HpcmigError, OSError) as exc:
        _say(f"sample of {node} not reported: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
