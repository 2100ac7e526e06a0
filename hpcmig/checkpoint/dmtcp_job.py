"""engine=dmtcp inside the job: what `hpcmig run` asks for in the job's containers.

Design note: `hpcmig run` of an engine=dmtcp job keeps one directory per job on storage every
node sees (`job_dir`: `hpcmig-dmtcp-<job>` in the batch script's working directory, 0700, the
job's user) with one DMTCP checkpoint directory per step (`step-<k>`, see
hpcmig.checkpoint.dmtcp for its layout), and runs the commands below, as the job's user, in
the batch host's container of the job (from the node, only a local container is reachable;
the job's other containers are reached from there with hpcmig-rsh, as MPI does):

    python -m hpcmig.checkpoint.dmtcp_job start STEP --host ADDR [--prefix P]
        the step's coordinator in this container (ADDR: this container's address, which
        every process of the job can reach); writes STEP/coordinator.json
    python -m hpcmig.checkpoint.dmtcp_job checkpoint STEP [--timeout S] [--keep K]
            [--hosts N] [--peers P] [--keep-hung]
        one generation of the running step, through its coordinator, once at least P
        processes run under DMTCP and their number settled; dropped unless it spans N hosts.
        One not complete after S seconds ends the step (its coordinator stopped), or with
        --keep-hung leaves it suspended for the caller to decide: exit code HUNG
    python -m hpcmig.checkpoint.dmtcp_job stop STEP
        ends the step: its coordinator stopped, its processes die with it
    python -m hpcmig.checkpoint.dmtcp_job restart STEP --host ADDR --member I=ADDR ...
            --root I --status DIR --stdout F --stderr F [--prefix P] -- PYTHON...
        after a requeue: a new coordinator here, then in every container I the
        `dmtcp_restart` of the images its old copy (same index, same address) held, each
        detached under hpcmig.runtime.launch (container ROOT's, the launcher's, records the
        step's exit code in DIR; the others in DIR/c<I>); returns once every process runs.
        The restored processes write to a pipe that `cat` appends to F: DMTCP gives a
        restored process whose stderr was a pipe a new open of dmtcp_restart's stderr, with
        the pipe's flags (no O_APPEND), at the file's end of that moment, so on a file its
        messages overwrote what the job wrote after them.

Each prints one JSON line; a failure is one line on stderr and exit 1 (HUNG: a checkpoint that
never completed, the step left suspended). The images' host names are the containers' names
(`hpcmig-<job>-<run>-<index>`), which is how a generation's images find their container again
after the requeue changed `<run>`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from hpcmig import _proc
from hpcmig.checkpoint import dmtcp
from hpcmig.checkpoint.base import CheckpointError
from hpcmig.checkpoint.record import write_private_json
from hpcmig.errors import HpcmigError

COORDINATOR = "coordinator.json"
MARK = ".hpcmig-dmtcp"  # in a job_dir: what hpcmigd checks before it removes one
REQUEST = "request"  # in a job_dir: hpcmigd asks the running step for a generation
RESTART_TIMEOUT = 180.0
HUNG = 3  # exit code of `checkpoint --keep-hung` when the checkpoint did not complete
# dmtcp_restart's output through a pipe (see restart above); its exit code (the restored
# launcher's, in the root container) stands
THROUGH_PIPE = ["bash", "-c", 'set -o pipefail; "$@" 2>&1 | cat', "dmtcp_restart"]
_HOST = re.compile(r"^hpcmig-\d+-\d+-(\d+)$")


def job_dir(cwd: str, job_id: str) -> str:
    return os.path.join(cwd, f"hpcmig-dmtcp-{int(job_id)}")


def container_index(host: str) -> int:
    """The container index in a job container's host name."""
    m = _HOST.match(host.split(".", 1)[0])
    if m is None:
        raise CheckpointError(f"DMTCP image host {host!r} is not a container of an hpcmig job")
    return int(m.group(1))


def newest(directory: str) -> dmtcp.Generation | None:
    """The newest complete generation of any step of a job_dir (links are not followed)."""
    try:
        steps = [os.path.join(directory, n) for n in os.listdir(directory)
                 if n.startswith("step-") and not os.path.islink(os.path.join(directory, n))]
    except OSError:
        return None
    gens = [g for s in steps for g in dmtcp.generations(s)[-1:]]
    return max(gens, key=lambda g: g.created, default=None)


def start(step: str, host: str, prefix: str = "") -> dmtcp.Coordinator:
    coord = dmtcp.start_coordinator(dmtcp.find_dmtcp(prefix), step, host=host)
    write_private_json(Path(step, COORDINATOR), coord.to_json())
    return coord


def coordinator(step: str) -> dmtcp.Coordinator:
    try:
        with open(os.path.join(step, COORDINATOR), encoding="utf-8") as fh:
            return dmtcp.Coordinator.from_json(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"no DMTCP coordinator recorded in {step}: {exc}") from None


def take(step: str, timeout: float, keep: int = dmtcp.KEEP,
         hosts: int | None = None, peers: int | None = None,
         end_hung: bool = True) -> dmtcp.Generation:
    """One generation of the running step, spanning `hosts` containers (dmtcp.checkpoint).
    DMTCP suspends the job for a checkpoint and has no way to call one off: one that does not
    complete within `timeout` ends the job (`stop`) rather than leave it suspended, unless
    not `end_hung` (the caller decides: `hpcmig run` has hpcmigd restart the job from its
    generation before); CheckpointHung either way."""
    coord = coordinator(step)
    try:
        return dmtcp.checkpoint(coord, timeout, keep=keep, hosts=hosts, peers=peers)
    except dmtcp.CheckpointHung as exc:
        if not end_hung:
            raise
        coord.stop()
        raise dmtcp.CheckpointHung(f"{exc}; DMTCP kept the job suspended, so it was ended",
                                   hint="see the job's DMTCP logs in " + step) from None


def stop(step: str) -> dict:
    """End the step: its coordinator stopped (its processes die with it)."""
    coordinator(step).stop()
    return {"stopped": True}


def restart_plan(tools: dmtcp.DmtcpTools, step: str, coord: dmtcp.Coordinator,
                 root: int) -> tuple[dmtcp.Generation, dict[int, list[str]]]:
    """The step's last generation, and the dmtcp_restart command of every container index
    that held images of it (a job in one container: `root`, the launcher's)."""
    argv = dmtcp.restart_argv(tools, step, coord)
    gen = dmtcp.last_generation(step)
    common = argv[:len(argv) - len(gen.images)]
    if not gen.hosts:
        return gen, {root: argv}
    return gen, {container_index(h): [*common, *images] for h, images in gen.hosts.items()}


def restart(step: str, host: str, members: dict[int, str], root: int, status: str,
            stdout: str, stderr: str, python: Sequence[str], prefix: str = "") -> dict:
    tools = dmtcp.find_dmtcp(prefix)
    dmtcp.last_generation(step)  # nothing to restart from: say so before a coordinator runs
    coord = start(step, host, prefix)
    try:
        gen, plan = restart_plan(tools, step, coord, root)
        rsh = os.environ.get("HPCMIG_RSH", "hpcmig-rsh")
        for index, argv in sorted(plan.items()):
            if index not in members:
                raise CheckpointError(f"generation {gen.number} has images of container "
                                      f"{index}, which this job no longer has")
            where = status if index == root else os.path.join(status, f"c{index}")
            launch = [*python, "-m", "hpcmig.runtime.launch", "--status", where,
                      "--stdout", stdout, "--stderr", stderr, "--", *THROUGH_PIPE, *argv]
            if members[index] == host:
                _proc.run(launch, timeout=60)
            else:
                _proc.run([rsh, members[index], shlex.join(launch)], timeout=60)
        seconds = dmtcp.wait_running(coord, len(gen.images), timeout=RESTART_TIMEOUT)
    except BaseException:
        coord.stop()  # the processes that joined die with it
        raise
    return {"generation": gen.number, "processes": len(gen.images),
            "containers": sorted(plan), "seconds": round(seconds, 3)}


def _member(text: str) -> tuple[int, str]:
    index, _, address = text.partition("=")
    return int(index), address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcmig.checkpoint.dmtcp_job")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("start")
    p.add_argument("step")
    p.add_argument("--host", required=True)
    p.add_argument("--prefix", default="")
    p = sub.add_parser("checkpoint")
    p.add_argument("step")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--keep", type=int, default=dmtcp.KEEP)
    p.add_argument("--hosts", type=int, default=None,
                   help="containers the job runs in: a checkpoint of fewer is dropped")
    p.add_argument("--peers", type=int, default=None,
                   help="processes the job runs under DMTCP at least: none is asked for before")
    p.add_argument("--keep-hung", action="store_true",
                   help=f"a checkpoint that did not complete leaves the step suspended (exit "
                        f"{HUNG}) instead of ending it")
    p = sub.add_parser("stop")
    p.add_argument("step")
    p = sub.add_parser("restart")
    p.add_argument("step")
    p.add_argument("--host", required=True)
    p.add_argument("--member", type=_member, action="append", required=True)
    p.add_argument("--root", type=int, required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--stdout", required=True)
    p.add_argument("--stderr", required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("python", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.verb == "start":
            out: dict = start(args.step, args.host, args.prefix).to_json()
        elif args.verb == "checkpoint":
            gen = take(args.step, args.timeout, args.keep, args.hosts, args.peers,
                       end_hung=not args.keep_hung)
            out = {"generation": gen.number, "seconds": round(gen.seconds, 3),
                   "image_bytes": gen.image_bytes, "processes": len(gen.images)}
        elif args.verb == "stop":
            out = stop(args.step)
        else:
            out = restart(args.step, args.host, dict(args.member), args.root, args.status,
                          args.stdout, args.stderr, args.python, args.prefix)
    except HpcmigError as exc:
        print(f"dmtcp: {' '.join(str(exc).split())}", file=sys.stderr)
        hung = isinstance(exc, dmtcp.CheckpointHung) and getattr(args, "keep_hung", False)
        return HUNG if hung else 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
