"""Talk to Slurm through its commands: read nodes and jobs, drain/resume, requeue, submit.

JSON where the installed Slurm offers it, `scontrol show -o` text otherwise; the choice is
made once per adapter from `sinfo --json`: Slurm 22.05's lists nodes and its `squeue --json`
every job, Slurm 24.11's lists node groups, so there nodes and jobs come from `scontrol show
node|job --json` (parse.py knows both shapes). Every command goes through `_proc.run`,
and a failure becomes the SlurmError that says whether Slurm is not configured, not reachable
or refused, with what to check (`diagnose.py`); a missing command says what to install.
Reason ownership rules live in `reasons.py`; parsing in `parse.py`. pyslurm is not used here:
its releases match Slurm 25.11 only, none of the Slurm versions Debian ships (22.05, 24.11,
26.05); a pyslurm backend would be another reader of the same NodeInfo/JobInfo records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

from hpcmig import _proc
from hpcmig.errors import (
    CommandError,
    MissingDependency,
    SlurmError,
    SlurmNotConfigured,
    SlurmUnreachable,
    UsageError,
)
from hpcmig.hostlist import compress
from hpcmig.slurm import diagnose, parse, reasons
from hpcmig.slurm.parse import JobInfo, NodeInfo

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


class Slurm:
    def __init__(self, use_json: bool | None = None, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._json = use_json
        self._generation = parse.LEGACY  # which JSON commands, once _json is known True

    def _run(self, argv: Sequence[str], **kw: object) -> str:
        try:
            return _proc.run(list(argv), timeout=self.timeout, **kw).stdout  # type: ignore[arg-type]
        except CommandError as exc:
            raise diagnose.slurm_error(exc) from exc
        except MissingDependency as exc:
            raise diagnose.missing_command(list(argv), exc) from None

    @property
    def uses_json(self) -> bool:
        if self._json is None:
            try:
                self._generation = parse.json_generation(self._run(["sinfo", "--json"]))
                self._json = True
            except (SlurmNotConfigured, SlurmUnreachable):
                raise  # says nothing about --json: ask again next time
            except SlurmError:
                self._json = False
        return self._json

    def _json_argv(self, what: str) -> list[str]:
        """The command listing every node / job as JSON in this Slurm's generation."""
        if self._generation == parse.SCONTROL:
            return ["scontrol", "show", what, "--json"]
        return ["sinfo", "--json"] if what == "node" else ["squeue", "--json"]

    # -- reading -----------------------------------------------------------------------------
    def config(self) -> dict[str, str]:
        """The running configuration (`scontrol show config`), key -> value."""
        return parse.config_from_text(self._run(["scontrol", "show", "config"]))

    def jobs(self, user: str | None = None) -> list[JobInfo]:
        if self.uses_json:
            jobs = parse.jobs_from_json(self._run(self._json_argv("job")))
        else:
            jobs = parse.jobs_from_text(self._run(["scontrol", "show", "job", "-o"]))
        return [j for j in jobs if user is None or j.user == user]

    def job(self, job_id: int) -> JobInfo:
        for job in self.jobs():
            if job.job_id == job_id:
                return job
        raise SlurmError(f"no job {job_id} in Slurm", "check the id with squeue")

    def time_left(self, job_id: int) -> float | None:
        """Seconds the running job may still run (its time limit); None: no limit."""
        return parse.duration(self._run(["squeue", "-h", "-j", str(job_id), "-o", "%L"]))

    def nodes(self) -> list[NodeInfo]:
        if self.uses_json:
            nodes = parse.nodes_from_json(self._run(self._json_argv("node")))
        else:
            nodes = parse.nodes_from_text(self._run(["scontrol", "show", "node", "-o"]))
        return parse.with_jobs(nodes, self.jobs())

    def node(self, name: str) -> NodeInfo:
        nodes = self.nodes()
        for node in nodes:
            if node.name == name:
                return node
        known = compress([n.name for n in nodes])
        raise UsageError(f"unknown node '{name}' (Slurm knows {known})")

    # -- changing ----------------------------------------------------------------------------
    def drain(self, name: str, reason: str) -> NodeInfo:
        """DRAIN `name` with an `hpcmig:` reason; a reason someone else set is kept."""
        node = self.node(name)
        wanted = reasons.drain_update(node, reason)
        if wanted is not None:
            self._run(["scontrol", "update", f"NodeName={name}", "State=DRAIN",
                       f"Reason={wanted}"])
        return self.node(name)

    def down(self, name: str, reason: str) -> None:
        """Set `name` DOWN (it is gone: Slurm ends its jobs there at once) with an `hpcmig:`
        reason; `resume` brings it back."""
        self._run(["scontrol", "update", f"NodeName={name}", "State=DOWN",
                   f"Reason={reasons.hpcmig_reason(reason)}"])

    def resume(self, name: str) -> NodeInfo:
        """Resume `name` if hpcmig drained it; refuse if somebody else did."""
        node = self.node(name)
        if not reasons.check_resume(node):
            return node
        self._run(["scontrol", "update", f"NodeName={name}", "State=RESUME"])
        # slurmctld marks a resumed node NOT_RESPONDING until its next ping (about a second).
        deadline = time.monotonic() + 15
        while True:
            node = self.node(name)
            if "NOT_RESPONDING" not in node.flags or time.monotonic() > deadline:
                return node
            time.sleep(0.3)

    def requeue(self, job_id: int, hold: bool = False) -> None:
        self._run(["scontrol", "requeuehold" if hold else "requeue", str(job_id)])

    def release(self, job_id: int) -> None:
        """Release a held job, to start as soon as it fits. Slurm gives a requeued job an
        EligibleTime about 20 s ahead, and nothing schedules it when that time comes but the
        next periodic pass (up to a minute later): StartTime=now takes that delay back, so
        the pass the release itself triggers starts it."""
        try:
            self._run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
        except SlurmError as exc:  # started meanwhile (released before): nothing to take back
            if "pending" not in str(exc).lower():
                raise
        self._run(["scontrol", "release", str(job_id)])

    def set_excluded(self, job_id: int, nodes: Sequence[str]) -> None:
        """Replace a pending job's excluded node list (Slurm refuses it for running jobs)."""
        self._run(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={compress(list(nodes))}"])

    def update_nodes(self, job_id: int, nodes: Sequence[str]) -> None:
        """Shrink a running job to `nodes` (Slurm releases the others to the idle pool)."""
        self._run(["scontrol", "update", f"JobId={job_id}", f"NodeList={compress(list(nodes))}"])

    def submit(self, args: Sequence[str], user: str | None = None, cwd: str | None = None,
               env: Mapping[str, str] | None = None) -> int:
        """`sbatch --parsable ARGS` (as `user` when running as root); returns the job id.

        `env` adds variables sbatch reads (e.g. SLURM_HOSTFILE) to this environment.
        """
        argv = ["sbatch", "--parsable", *args]
        if user is not None and os.geteuid() == 0:
            argv = ["runuser", "-u", user, "--", *argv]
        full_env = {**os.environ, **env} if env else None
        out = self._run(argv, cwd=cwd, env=full_env).strip()
        try:
            return int(out.split(";", 1)[0])
        except ValueError as exc:
            raise SlurmError(f"sbatch printed no job id: {out!r}") from exc

    def cancel(self, job_id: int) -> None:
        self._run(["scancel", str(job_id)])

    def wait(self, job_id: int, timeout: float = 300.0, states: set[str] | None = None,
             poll: float = 0.5) -> JobInfo:
        """Wait until the job reaches one of `states` (default: any terminal state)."""
        want = states or TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in want:
                return job
            if time.monotonic() > deadline:
                raise SlurmError(f"job {job_id} still {job.state} after {timeout:g}s")
            time.sleep(poll)
