"""`hpcmig run` of an engine=dmtcp job: the launcher under DMTCP, checkpoints when hpcmigd asks,
the restart from the last one after a requeue.

Design note: the job's checkpoints live in `hpcmig-dmtcp-<job>/step-<k>` in the batch script's
working directory (hpcmig.checkpoint.dmtcp_job), the k-th `hpcmig run` of the script being step
k in every run of it. A fresh step starts its coordinator in the batch host's container, wraps
the MPI launcher in `dmtcp_launch` and hands the launcher hpcmig-rsh under the name `rsh`, also
first on the launcher's PATH (DMTCP follows a job across hosts only through a program called
ssh or rsh: it runs `dmtcp_sshd` under DMTCP on the other side and, after a restart, reconnects
it with `rsh <peer's address> dmtcp_sshd --listenAddr ...`). Every process of the job loads
hpcmig's DMTCP plugin (native/dmtcp_multihost.c), without which DMTCP 4.2.0 hangs across hosts
and a restarted job checkpoints over its own restart point: a job is refused without it.
`hpcmig run` registers the job directory with hpcmigd, which asks for a generation (the
`request` file, as the job's user) at the job's interval and counts the generations for a
restart (controller/appckpt.py); `tick` takes the asked-for checkpoint while the step runs.
After hpcmigd requeued the job, the step restarts from its last generation when it has one,
and a step that had ended returns its recorded exit code. A step stopped by a signal (Slurm
requeueing or cancelling the job), or whose job Slurm requeued meanwhile (its launcher failed
with a lost node while hpcmigd requeued it), records no end and keeps its generations: the
requeued job restarts from them. A checkpoint that does not complete within
`dmtcp_checkpoint_timeout` (DMTCP keeps the job suspended and cannot call it off) has hpcmigd
restart the job from its generation before (`restart_stuck`), or ends the step when there is
none. Images hold the job's memory: the directory is the user's, 0700, and hpcmigd removes it
when the job ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hpcmig.checkpoint import dmtcp, dmtcp_job
from hpcmig.errors import HpcmigError, UsageError
from hpcmig.runtime import client
from hpcmig.runtime.launch import EXIT as LAUNCHER_EXIT
from hpcmig.slurm import Slurm

LAUNCH = "launch.json"  # in a step: the container the launcher ran in, and its index
EXIT = "exit.json"  # in a step that ended: its exit code


class Step:
    """One `hpcmig run` of an engine=dmtcp job."""

    def __init__(self, cfg: Any, vc: Any, run_dir: Path, head: Any, python: list[str],
                 common: dict[str, Any], hosts: int = 1, ranks: int = 1) -> None:
        if vc.image:
            raise UsageError("engine=dmtcp runs on the node's own root, not in a .sif image",
                             hint="use engine=criu (the default) with image=")
        if not os.path.exists(dmtcp.PLUGIN):
            raise UsageError(
                f"engine=dmtcp needs hpcmig's DMTCP plugin {dmtcp.PLUGIN}, which is not "
                "installed: without it DMTCP 4.2.0 writes a restarted job's next checkpoint over "
                "the generation it restarted from, and hangs checkpointing or restarting a job "
                "across hosts (docs/checkpoint.md, \"DMTCP\")",
                hint="install it (make -C native install, as the bootstrap does), or use "
                     "engine=criu (the default) or engine=app")
        self.cfg, self.vc, self.head, self.python = cfg, vc, head, python
        self.signal: int | None = None  # the signal that stopped the step, if one did
        self.common, self.run_dir = common, run_dir
        self.hosts = hosts  # the containers that run ranks: each generation must span them
        self.ranks = ranks
        self.tools = dmtcp.find_dmtcp(cfg.dmtcp_prefix)
        self.job_dir = Path(dmtcp_job.job_dir(os.getcwd(), vc.job_id))
        self.step = self.job_dir / f"step-{run_dir.name.rsplit('-', 1)[1]}"
        for d in (self.job_dir, self.step):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        (self.job_dir / dmtcp_job.MARK).touch()

    def _in_head(self, verb: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        argv = [*self.python, "-m", "hpcmig.checkpoint.dmtcp_job", verb, str(self.step), *args]
        res = client.run_in(self.head.address, argv, timeout=timeout, **self.common)
        if res.code != 0:
            error = dmtcp.CheckpointHung if res.code == dmtcp_job.HUNG else HpcmigError
            raise error(res.stderr.decode(errors="replace").strip()
                        or f"dmtcp_job {verb} failed (exit {res.code})")
        out: dict[str, Any] = json.loads(res.stdout.decode().strip().splitlines()[-1])
        return out

    def register(self) -> None:
        from hpcmig.controller.client import ControllerClient

        try:
            ControllerClient(self.cfg).call("app_checkpoints", timeout=60,
                                            job_id=self.vc.job_id,
                                            directory=str(self.job_dir), engine="dmtcp")
        except HpcmigError as exc:
            print(f"hpcmig run: {exc}; no periodic DMTCP checkpoints and no restart",
                  file=sys.stderr, flush=True)

    def ended(self) -> int | None:
        """The exit code of this step if it ended in an earlier run of the job."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads((self.step / EXIT).read_text())["exit_code"])
        return None

    def restartable(self) -> bool:
        return bool(dmtcp.generations(str(self.step)))

    def launch(self, argv: list[str], env: dict[str, str], mpi: str, rsh: str
               ) -> tuple[list[str], dict[str, str]]:
        """The launcher's command under dmtcp_launch (rsh replaced by `rsh`, a link to it),
        with its environment; starts the step's coordinator."""
        link = self.job_dir / "bin" / "rsh"
        link.parent.mkdir(mode=0o700, exist_ok=True)
        if not link.is_symlink() or os.readlink(link) != rsh:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(rsh)
        argv = [str(link) if a == rsh else a for a in argv]
        coord = dmtcp.Coordinator.from_json(self._in_head(
            "start", "--host", self.head.address, "--prefix", self.cfg.dmtcp_prefix))
        (self.step / LAUNCH).write_text(json.dumps({"index": self.head.index}))
        env = dict(env)
        # DMTCP's tools, and `rsh` for the ssh plugin's reconnection after a restart
        env["PATH"] = f"{link.parent}:{os.path.dirname(self.tools.launch)}:{env.get('PATH', '')}"
        # hpcmig-rsh gives these to the commands it runs (DMTCP's and Open MPI's daemons)
        env["HPCMIG_RSH_ENV"] = ",".join(dmtcp.MPI_ENV[mpi])
        return dmtcp.launch_argv(coord, argv, env, mpi, plugin=dmtcp.PLUGIN, hosts=self.hosts)

    def restart(self, members: list[Any], out: str, err: str) -> None:
        """Every container's processes back from the step's last generation, the launcher's
        recording the step's end in the run directory (as a fresh launch would)."""
        root = int(json.loads((self.step / LAUNCH).read_text())["index"])
        args = ["--host", self.head.address, "--root", str(root), "--status", str(self.run_dir),
                "--stdout", out, "--stderr", err, "--prefix", self.cfg.dmtcp_prefix]
        for m in members:
            args += ["--member", f"{m.index}={m.address}"]
        done = self._in_head("restart", *args, "--", *self.python,
                             timeout=dmtcp_job.RESTART_TIMEOUT + 60)
        print(f"hpcmig run: restarted from DMTCP checkpoint generation {done['generation']} "
              f"({done['processes']} processes in {len(done['containers'])} container(s), "
              f"{done['seconds']:.1f} s)", file=sys.stderr, flush=True)

    def tick(self) -> None:
        """Take the checkpoint hpcmigd asked for, if it did."""
        request = self.job_dir / dmtcp_job.REQUEST
        if not request.exists():
            return
        limit = self.cfg.dmtcp_checkpoint_timeout
        try:
            gen = self._in_head("checkpoint", "--hosts", str(self.hosts),
                                "--peers", str(self.peers()), "--timeout", f"{limit:g}",
                                "--keep-hung", timeout=limit + 120)
            print(f"hpcmig run: DMTCP checkpoint generation {gen['generation']} "
                  f"({gen['processes']} processes, {gen['image_bytes'] / 2**20:.0f} MiB, "
                  f"{gen['seconds']:.1f} s)", file=sys.stderr, flush=True)
        except dmtcp.CheckpointHung as exc:
            self.hung(str(exc), limit)
        except HpcmigError as exc:
            if not (self.run_dir / LAUNCHER_EXIT).exists():  # else: the step ended meanwhile
                print(f"hpcmig run: DMTCP checkpoint failed: {exc}", file=sys.stderr,
                      flush=True)
        finally:
            request.unlink(missing_ok=True)

    def hung(self, error: str, limit: float) -> None:
        """The checkpoint did not complete and DMTCP keeps every process of the step suspended:
        hpcmigd requeues the job to restart from its generation before (Slurm then stops this
        run, whose generations stay); without one, or without hpcmigd (asked again for up to
        5 minutes while it is down, as `restart_lost`), the step is ended.
        hpcmigd answers once the job runs again: a run still alive then (Slurm's process
        tracking lost it) raises at once, before it could signal the new run's containers,
        which have the old ones' addresses."""
        from hpcmig.cli.run import _ask_restart
        from hpcmig.controller.client import ControllerClient

        print(f"hpcmig run: DMTCP checkpoint failed: {error}; DMTCP keeps the job suspended "
              "and cannot call the checkpoint off: asking hpcmigd to restart the job from its "
              "generation before", file=sys.stderr, flush=True)
        try:  # (Slurm's requeue usually ends this run before the answer; hpcmigd may first
            # wait for this generation itself, for `hpcmig checkpoint`)
            answer = _ask_restart(  # asked again while hpcmigd is down, as restart_lost
                ControllerClient(self.cfg), "restart_stuck", timeout=limit + 240,
                job_id=self.vc.job_id, why=f"its DMTCP checkpoint did not complete in {limit:g} s")
        except HpcmigError as exc:
            answer = {"why": str(exc)}
        if answer.get("restarted"):
            raise HpcmigError(f"hpcmigd requeued job {self.vc.job_id} to restart from DMTCP "
                              f"checkpoint generation {answer.get('generation')}: this run of "
                              "it is over")
        why = answer.get("why")
        print(f"hpcmig run: the job is not restarted ({why}), so it is ended", file=sys.stderr,
              flush=True)
        self._in_head("stop")

    def peers(self) -> int:
        """The fewest processes the running step has under DMTCP: its ranks, the launcher,
        and per other host a daemon (orted, or MPICH's proxy) with DMTCP's ssh pair that
        started it (dmtcp_ssh here, dmtcp_sshd there). A checkpoint waits for them."""
        return self.ranks + 1 + 3 * (self.hosts - 1)

    def stopped(self, signal: int) -> None:
        self.signal = signal

    def requeued(self) -> str | None:
        """Why this run of the job is over for Slurm (requeued since it began), if it is."""
        run = int(self.run_dir.name.split("-")[1])
        try:
            job = Slurm().job(int(self.vc.job_id))
        except HpcmigError:
            return None  # cannot tell: the step's end stands
        if job.restart_count != run or job.state != "RUNNING":
            return f"ended after its job was requeued (now {job.state}, run {job.restart_count})"
        return None

    def end(self, code: int) -> None:
        """The step ended: its exit code stays (a rerun of the job skips it); its images go.
        Not when a signal stopped it: a requeued job restarts it from them."""
        why = f"was stopped (signal {self.signal})" if self.signal is not None else \
            self.requeued()
        if why:
            print(f"hpcmig run: the step {why}; its DMTCP checkpoints stay for a restart of "
                  "the job", file=sys.stderr, flush=True)
            return
        (self.step / EXIT).write_text(json.dumps({"exit_code": code}))
        for gen in self.step.glob("gen-*"):  # complete or not: they hold the job's memory
            shutil.rmtree(gen, ignore_errors=True)
