"""`hpcmig run [-n N] [--ppn K] -- PROG ARGS`: MPI inside the job's virtual cluster.

Used in a batch script of a job that opted in (`#SBATCH --hpcmig` or `--comment=hpcmig`). Asks
the local agent (as the job's user, MUNGE-authenticated) for the job's containers, writes a
hostfile of their virtual addresses, and starts MPICH's or Open MPI's launcher inside the
container on this node through the exec service. When the batch script's output is a file (the
usual sbatch case) the launcher runs detached (hpcmig.runtime.launch) and writes to that file
itself, and this command waits for its recorded exit code: no connection ties the running job
to this process, so every container, the launcher's included, can move. Otherwise (a terminal
or a pipe) output is streamed through the exec connection. SIGTERM/SIGINT (scancel) are passed
on to the launcher; the exit code is the launcher's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcmig import _cmdline

HEARTBEAT_TIMEOUT = 180.0
ASK_FOR, ASK_EVERY = 300.0, 5.0  # how long and how often a failed step asks hpcmigd
RESTART_WAIT = 300.0  # a step whose job hpcmigd requeued waits for Slurm to end it
STOP_GRACE = 15.0  # after scancel's SIGTERM, wait this long for the launcher's exit code


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="launch an MPI program inside this job's containers "
                       "(in a batch script of an hpcmig job)")
    p.add_argument("-n", "--ntasks", type=_cmdline.count(1), default=None,
                   help="ranks (default: $SLURM_NTASKS, else one per container)")
    p.add_argument("--ppn", type=_cmdline.count(1), default=None,
                   help="ranks per container (default: as even as possible, in blocks)")
    p.add_argument("--mpi", choices=["mpich", "openmpi"], default=None,
                   help="MPI implementation (default: the job's mpi= option, else the site's)")
    p.add_argument("--stream", action="store_true",
                   help="stream output through the exec connection even to a file")
    p.add_argument("--map", metavar="FILE.h5|auto",
                   help="place ranks in containers by this traffic matrix (HDF5 /comm, N x N "
                        "for the N ranks; `hpcmig traffic -o` writes one), or `auto`: the "
                        "one hpcmig measured in the last run of this job name (one rank per "
                        "container); the ranks that talk most share a container, a switch")
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    p.set_defaults(func=run)


def _regular_file(fd: int) -> str | None:
    """The path behind fd when it is a regular file (the sbatch output), else None."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return path if path.startswith("/") and os.path.exists(path) else None


def _next_run_dir(job_dir: Path, restart: int) -> Path:
    """run-<restart>-<k>: the k-th `hpcmig run` of this execution of the batch script."""
    job_dir.mkdir(parents=True, exist_ok=True)
    with open(job_dir / f".seq-{restart}", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        k = int(fh.read().strip() or 0)
        fh.seek(0)
        fh.truncate()
        fh.write(str(k + 1))
    d = job_dir / f"run-{restart}-{k}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def run(args: argparse.Namespace) -> int:
    from hpcmig import config as site_config
    from hpcmig import mpi, mpi_launch
    from hpcmig.agent.rpc import AgentClient
    from hpcmig.errors import HpcmigError, PermissionDenied, UsageError
    from hpcmig.runtime import client
    from hpcmig.runtime.launch import EXIT as LAUNCHER_EXIT
    from hpcmig.vcluster import VCluster

    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        raise UsageError("nothing to run", hint="hpcmig run -n 6 -- python3 app.py")
    job_id = os.environ.get("SLURM_JOB_ID")
    node = os.environ.get("SLURMD_NODENAME")
    if not job_id or not node:
        raise UsageError("hpcmig run works inside a Slurm job",
                         hint="put it in a batch script submitted with sbatch")
    cfg = site_config.load()
    munge = cfg.munge_socket or None
    agent = AgentClient(node, "127.0.0.1", cfg.agent_port, munge)
    try:
        info: dict[str, Any] = agent.call("job.info", job_id=job_id)
    except PermissionDenied as exc:
        raise UsageError(f"job {job_id} has no hpcmig virtual cluster on {node} ({exc})",
                         hint="submit with `#SBATCH --hpcmig` or `#SBATCH --comment=hpcmig`",
                         ) from None
    if info.get("error"):
        raise HpcmigError(f"hpcmig could not build this job's virtual cluster: {info['error']}")
    vc = VCluster.from_json(info["vc"])
    here = vc.on_node(node) or list(vc.members)
    head = min(here, key=lambda m: m.index)
    flavour = mpi.flavour(args.mpi or vc.mpi)
    n = args.ntasks or int(os.environ.get("SLURM_NTASKS") or 0) or len(vc.members)
    members = sorted(vc.members, key=lambda m: m.index)
    slots = mpi_launch.block_slots(n, len(members), args.ppn)
    incarnation = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    run_dir = _next_run_dir(Path(cfg.state_dir) / "jobs" / job_id, incarnation)
    if vc.restart != incarnation:
        # a requeued job restored from a whole-job checkpoint (the prolog planned it with the
        # checkpointed run's count; hpcmig.controller.wholejob): hpcmigd brings the containers
        # back on this allocation (the first step asks), then each step of the batch script either
        # ended before the checkpoint (its recorded exit code), was running (reattach), or runs
        from hpcmig.controller.client import ControllerClient

        restored: Any = ControllerClient(cfg).call("restore_allocation", timeout=1800,
                                                    job_id=job_id)
        if restored["restored"]:
            print(f"hpcmig run: job {job_id} restored from the checkpoint of run "
                  f"{restored['from_restart']} ({len(members)} container(s))",
                  file=sys.stderr, flush=True)
        before = run_dir.parent / run_dir.name.replace(f"run-{incarnation}-",
                                                       f"run-{vc.restart}-", 1)
        if (before / LAUNCHER_EXIT).exists():
            code = int(json.loads((before / LAUNCHER_EXIT).read_text())["exit_code"])
            print(f"hpcmig run: this step ended before the checkpoint (exit {code})",
                  file=sys.stderr, flush=True)
            return code
        if before.is_dir():
            print("hpcmig run: reattaching to the step the checkpoint caught running",
                  file=sys.stderr, flush=True)
            return _after(cfg, vc, job_id, _wait(
                before, head.address, {"env": {}, "cwd": "/", "munge_socket": munge},
                grace=HEARTBEAT_TIMEOUT))
    placement = _placement(args, cfg, job_id, n, members, slots) if args.map else None
    if placement is not None:
        slots = mpi_launch.placed_slots([m.address for m in members], placement)
    prrte = flavour.name == "openmpi" and mpi.openmpi_on_prrte()
    hostfile = run_dir / "hostfile"
    hostfile.write_text(mpi_launch.hostfile(flavour, [m.address for m in members], slots,
                                            placement, prrte=prrte))
    venv_bin = os.path.dirname(sys.executable)
    env = mpi_launch.launch_env(os.environ, flavour.environment("eth0"))
    if vc.runtime != "lxc" and (why := flavour.unlisted_device("eth0")):  # LXC mounts its own
        print(f"hpcmig run: warning: {why}", file=sys.stderr, flush=True)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}"
    rsh, python = os.path.join(venv_bin, "hpcmig-rsh"), [sys.executable]
    if vc.image:  # the image's own python3 and MPI; hpcmig's tools are bound on /.hpcmig
        from hpcmig.runtime import image

        rsh = image.RSH
        env["PYTHONPATH"] = ":".join(p for p in (image.TOOLS + "/python",
                                                 env.get("PYTHONPATH")) if p)
        python = ["env", f"PYTHONPATH={image.TOOLS}/python", "python3"]
        if "LD_PRELOAD" in env:  # the image layer carries a copy (image.TOOLS/lib)
            env["LD_PRELOAD"] = f"{image.TOOLS}/lib/{os.path.basename(env['LD_PRELOAD'])}"
    env["HPCMIG_HOSTS"] = info["hosts_file"]
    if vc.engine == "app" and vc.ckpt:
        env["HPCMIG_APP_CKPT_DIR"] = _app_directory(cfg, job_id, env)
    if munge:
        env["HPCMIG_MUNGE_SOCKET"] = munge
    argv = mpi_launch.launcher_argv(
        flavour, rsh=rsh, hostfile_path=str(hostfile), n=n,
        env_names=[k for k in env if k not in ("HOME", "USER", "LOGNAME")], program=program,
        prrte=prrte, placement=placement)
    out, err = _regular_file(1), _regular_file(2)
    common: dict[str, Any] = {"env": env, "cwd": os.getcwd(), "munge_socket": munge}
    step = None
    if vc.engine == "dmtcp":
        from hpcmig.cli.run_dmtcp import Step

        step = Step(cfg, vc, run_dir, head, python, {"cwd": os.getcwd(), "munge_socket": munge},
                    hosts=sum(1 for k in slots if k), ranks=n)
        if (ended := step.ended()) is not None:
            print(f"hpcmig run: this step ended in an earlier run of the job (exit {ended})",
                  file=sys.stderr, flush=True)
            return ended
        step.register()
        if incarnation and step.restartable():
            if out is None:
                raise UsageError("a restarted engine=dmtcp step writes to the job's output "
                                 "file", hint="run the batch script with sbatch --output")
            step.restart(members, out, err or out)
            return _ended(step, _after(cfg, vc, job_id, _wait(
                run_dir, head.address, common, grace=HEARTBEAT_TIMEOUT, tick=step.tick,
                on_stop=step.stopped)))
        argv, env = step.launch(argv, env, flavour.name, rsh)
        common["env"] = env
    print(f"hpcmig run: {n} rank(s) of {flavour.name} in {len(members)} container(s) "
          f"({', '.join(f'{m.address} on {m.node}' for m in members)})", file=sys.stderr,
          flush=True)
    if args.stream or out is None:
        return _ended(step, client.exec_stream(head.address, argv, forward_signals=True,
                                               **common))
    launch = [*python, "-m", "hpcmig.runtime.launch", "--status", str(run_dir),
              "--stdout", out, "--stderr", err or out, "--", *argv]
    res = client.run_in(head.address, launch, **common)
    if res.code != 0:
        raise HpcmigError(f"could not start {flavour.mpiexec} in {head.address}: "
                          f"{res.stderr.decode(errors='replace').strip()}")
    return _ended(step, _after(cfg, vc, job_id, _wait(
        run_dir, head.address, common, tick=step.tick if step else None,
        on_stop=step.stopped if step else None)))


def _ended(step: Any, code: int) -> int:
    if step is not None:
        step.end(code)
    return code


def _placement(args: argparse.Namespace, cfg: Any, job_id: str, n: int, members: list[Any],
               slots: list[int]) -> list[str]:
    """The container address of every rank, by the mapper (`--map`), at most the block
    placement's ranks per container. `auto`: the matrix hpcmig measured in the last run of
    this job's name by its user (hpcmigd keeps it)."""
    from hpcmig import rankmap

    comm: Any = args.map
    what = args.map
    if args.map == "auto":
        from hpcmig.controller.client import ControllerClient

        last = ControllerClient(cfg).call("traffic_history", timeout=60, job_id=job_id)
        comm, what = last["bytes"], f"the traffic measured in job {last['job_id']}"
    per = args.ppn or max(slots)
    found = rankmap.place(comm, n, [m.node for m in members], [per] * len(members),
                          rankmap.topology_conf(), what=what)
    print(f"hpcmig run: ranks placed by {what} ({found.topology}): "
          f"{found.hop_bytes:.6g} hop-bytes against {found.block_hop_bytes:.6g} in blocks",
          file=sys.stderr, flush=True)
    return [members[i].address for i in found.container_of]


def _app_directory(cfg: Any, job_id: str, env: dict[str, str]) -> str:
    """An engine=app job's checkpoint directory (the ranks get it), registered with hpcmigd
    so it asks the program for checkpoints and restarts the job from them."""
    from hpcmig.ckpt.checkpointer import default_directory
    from hpcmig.controller.client import ControllerClient
    from hpcmig.errors import HpcmigError

    # (the launcher's environment carries no SLURM_* variable: name the job)
    directory = os.path.abspath(default_directory({**env, "SLURM_JOB_ID": job_id}))
    try:
        ControllerClient(cfg).call("app_checkpoints", timeout=60, job_id=job_id,
                                   directory=directory)
    except HpcmigError as exc:
        print(f"hpcmig run: {exc}; the program checkpoints only by itself and the job does "
              "not restart by itself", file=sys.stderr, flush=True)
    return directory


def _after(cfg: Any, vc: Any, job_id: str, code: int) -> int:
    """A step of a job with periodic checkpoints (ckpt=) that ended while a node of the job
    was lost: hpcmigd requeues the job to restart from its last checkpoint and Slurm ends this
    step with the requeue; otherwise the launcher's exit code stands. A step that ended well
    is asked about too (once, not waiting for an hpcmigd that is down): Open MPI 5's prterun
    exits 0 when it loses a daemon with its node (docs/platforms.md)."""
    from hpcmig.controller.client import ControllerClient
    from hpcmig.errors import HpcmigError

    if not vc.ckpt:
        return code
    controller = ControllerClient(cfg)
    if code == 0:
        try:
            answer = controller.call("restart_lost", timeout=600, job_id=job_id)
        except HpcmigError:
            return 0
        if not (answer.get("restarted") and answer.get("lost")):
            return 0
        print("hpcmig run: the MPI launcher ended (exit 0) while a node of the job was lost",
              file=sys.stderr, flush=True)
    else:
        print(f"hpcmig run: the MPI launcher failed (exit {code}); asking hpcmigd whether a "
              "node of the job was lost", file=sys.stderr, flush=True)
        try:
            answer = _ask_restart(controller, "restart_lost", job_id=job_id)
        except HpcmigError as exc:
            print(f"hpcmig run: {exc}", file=sys.stderr, flush=True)
            return code
        if not answer.get("restarted"):
            print(f"hpcmig run: no restart: {answer.get('why')}", file=sys.stderr, flush=True)
            return code
    lost = ", ".join(answer.get("lost") or []) or "a node"
    gen = answer.get("generation")
    print(f"hpcmig run: {lost} lost; the job restarts from its last checkpoint"
          + (f" (generation {gen})" if gen is not None else ""), file=sys.stderr, flush=True)
    time.sleep(RESTART_WAIT)  # the requeue ends this step before
    return code or 1


def _ask_restart(controller: Any, op: str, timeout: float = 600, **args: Any) -> Any:
    """hpcmigd's answer to a restart it is asked for (restart_lost, restart_stuck), asked
    again while hpcmigd is down or went away in the middle, up to ASK_FOR s."""
    from hpcmig.controller import client

    return client.ask(controller, op, within=ASK_FOR, every=ASK_EVERY, timeout=timeout,
                      say=lambda text: print(f"hpcmig run: {text}", file=sys.stderr,
                                             flush=True), **args)


def _wait(run_dir: Path, address: str, common: dict[str, Any], grace: float = 0.0,
          tick: Callable[[], None] | None = None,
          on_stop: Callable[[int], None] | None = None) -> int:
    """The launcher's exit code; `grace`: seconds before a stale heartbeat counts (a restored
    launcher's last beat is as old as its checkpoint); `tick`: called every round; `on_stop`:
    told the signal that stopped the step (Slurm cancelling or requeueing the job)."""
    from hpcmig.errors import HpcmigError
    from hpcmig.runtime import client, launch
    from hpcmig.runtime.launch import EXIT as LAUNCHER_EXIT

    beats_from = time.time() + grace
    stopping: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: stopping.append(n))
           for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    sent: float | None = None
    try:
        while True:
            result = run_dir / LAUNCHER_EXIT
            if result.exists():
                return int(json.loads(result.read_text())["exit_code"])
            if stopping and sent is None:
                sent = time.monotonic()
                if on_stop is not None:
                    on_stop(stopping[0])
                if (run_dir / "pid").exists():
                    pid = (run_dir / "pid").read_text().strip()
                    with contextlib.suppress(HpcmigError):
                        client.run_in(address, launch.stop_argv(run_dir, pid, stopping[0]),
                                      timeout=10, **common)
            if sent is not None and time.monotonic() - sent > STOP_GRACE:
                return 128 + stopping[0]
            if tick is not None and not stopping:
                tick()
            beat = run_dir / "heartbeat"
            if (beat.exists() and time.time() > beats_from
                    and time.time() - beat.stat().st_mtime > HEARTBEAT_TIMEOUT):
                raise HpcmigError(f"the MPI launcher in {address} stopped reporting "
                                  f"(no heartbeat for {HEARTBEAT_TIMEOUT:g} s)")
            time.sleep(0.25)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
