"""`hpcmig run` of an engine=dmtcp job, without DMTCP or a testbed: what it refuses, the step
directory, and a step that ended."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpcmig.checkpoint import dmtcp, dmtcp_job
from hpcmig.cli import run_dmtcp
from hpcmig.cli.run_dmtcp import Step
from hpcmig.errors import UsageError
from hpcmig.slurm import JobInfo


@pytest.fixture
def prefix(tmp_path: Path) -> str:
    """A directory that looks like a DMTCP install (the programs are never run here)."""
    bin_dir = tmp_path / "dmtcp" / "bin"
    bin_dir.mkdir(parents=True)
    for name in dmtcp.TOOLS.values():
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir.parent)


def step(tmp_path: Path, prefix: str, members: int = 1, image: str | None = None) -> Step:
    vc = SimpleNamespace(job_id="42", image=image, members=list(range(members)))
    cfg = SimpleNamespace(dmtcp_prefix=prefix)
    head = SimpleNamespace(address="10.252.0.1", index=0)
    return Step(cfg, vc, tmp_path / "run-0-3", head, ["python3"], {})


class _Slurm:
    """What Slurm says of job 42: running, run `restart` (the steps here are of run 0)."""

    state, restart = "RUNNING", 0

    def job(self, job_id: int) -> JobInfo:
        return JobInfo(job_id, "j", "u", self.state, ("n1",), restart_count=self.restart)


@pytest.fixture(autouse=True)
def slurm(monkeypatch: Any) -> type[_Slurm]:
    monkeypatch.setattr(run_dmtcp, "Slurm", _Slurm)
    return _Slurm


@pytest.fixture(autouse=True)
def plugin(tmp_path: Path, monkeypatch: Any) -> Path:
    """hpcmig's DMTCP plugin, installed (an empty file: it is never loaded here)."""
    path = tmp_path / "lib" / "libhpcmig-dmtcp.so"
    path.parent.mkdir()
    path.write_bytes(b"")
    monkeypatch.setattr(dmtcp, "PLUGIN", str(path))
    return path


def test_a_job_in_an_image_or_without_the_plugin_is_refused(
        tmp_path: Path, prefix: str, plugin: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="not in a .sif image"):
        step(tmp_path, prefix, image="/images/app.sif")
    plugin.unlink()
    for members in (1, 2):
        with pytest.raises(UsageError, match="needs hpcmig's DMTCP plugin") as refused:
            step(tmp_path, prefix, members=members)
        assert "over the generation it restarted from" in str(refused.value)
        assert "make -C native install" in str(refused.value.hint)
    assert not Path(dmtcp_job.job_dir(str(tmp_path), "42")).exists()
    plugin.write_bytes(b"")
    assert step(tmp_path, prefix, members=2).step.is_dir()


def test_the_launcher_loads_hpcmigs_dmtcp_plugin_and_finds_rsh_first_on_path(
        tmp_path: Path, prefix: str, plugin: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    s = step(tmp_path, prefix)
    coord = dmtcp.Coordinator(s.tools, str(s.step), "10.252.0.1", 7779, 1, 1)
    monkeypatch.setattr(dmtcp.Coordinator, "from_json", staticmethod(lambda _: coord))
    monkeypatch.setattr(Step, "_in_head", lambda self, *a, **k: {})
    rsh = str(tmp_path / "hpcmig-rsh")
    argv, env = s.launch(["mpiexec", "-launcher-exec", rsh, "ring"], {"PATH": "/usr/bin"},
                         "mpich", rsh)
    assert argv[0] == s.tools.launch
    # DMTCP's ssh plugin reconnects the hosts after a restart with `rsh` from PATH
    assert env["PATH"].split(":")[:2] == [str(s.job_dir / "bin"), str(Path(prefix) / "bin")]
    assert argv[-3:] == ["-launcher-exec", str(s.job_dir / "bin" / "rsh"), "ring"]
    assert argv[argv.index("--with-plugin") + 1] == str(plugin)


def test_the_step_directory_is_private_and_an_ended_step_keeps_only_its_exit_code(
        tmp_path: Path, prefix: str, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    s = step(tmp_path, prefix)
    assert s.step == tmp_path / "hpcmig-dmtcp-42" / "step-3"
    assert os.stat(s.job_dir).st_mode & 0o777 == 0o700
    assert (s.job_dir / dmtcp_job.MARK).exists()
    assert s.ended() is None and not s.restartable()
    gen = s.step / "gen-1"
    gen.mkdir()
    (gen / "ckpt_a.dmtcp").write_bytes(b"x")
    s.tick()  # hpcmigd asked for nothing: no checkpoint is taken
    s.end(3)
    assert s.ended() == 3 and not gen.exists()


def test_a_step_stopped_by_a_signal_keeps_its_generations_and_records_no_end(
        tmp_path: Path, prefix: str, monkeypatch: Any) -> None:
    """Slurm requeueing the job (after `hpcmig checkpoint` or a drain) stops the step with
    SIGTERM: its next run restarts from the generation, so the step must not end over it."""
    monkeypatch.chdir(tmp_path)
    s = step(tmp_path, prefix)
    gen = s.step / "gen-1"
    gen.mkdir()
    (gen / "ckpt_a.dmtcp").write_bytes(b"x")
    s.stopped(15)
    s.end(143)
    assert s.ended() is None and gen.exists()


@pytest.mark.parametrize(("state", "restart"), [("PENDING", 1), ("RUNNING", 1)])
def test_a_step_whose_job_slurm_requeued_meanwhile_keeps_its_generations(
        tmp_path: Path, prefix: str, monkeypatch: Any, slurm: type[_Slurm], state: str,
        restart: int) -> None:
    """Seen with a 3-node Open MPI job: a node crashed during DMTCP's refill, the launcher
    failed (exit 99) while hpcmigd requeued the job; the step recorded exit 99 and removed its
    generation, so the requeued job skipped the step and ended FAILED."""
    monkeypatch.chdir(tmp_path)
    s = step(tmp_path, prefix)
    gen = s.step / "gen-1"
    gen.mkdir()
    slurm.state, slurm.restart = state, restart
    s.end(99)
    assert s.ended() is None and gen.exists()


def test_a_checkpoint_waits_for_the_ranks_the_launcher_and_each_other_hosts_daemon(
        tmp_path: Path, prefix: str, monkeypatch: Any) -> None:
    """Its ranks, the launcher, and per other host a daemon with DMTCP's ssh pair (13 for 6
    ranks of Open MPI on 3 hosts, as counted; MPICH has one proxy more, on the launcher's)."""
    monkeypatch.chdir(tmp_path)
    s = step(tmp_path, prefix)
    s.hosts, s.ranks = 3, 6
    assert s.peers() == 13
    s.hosts, s.ranks = 1, 4
    assert s.peers() == 5


@pytest.mark.parametrize("answer", [{"restarted": True, "generation": 3},
                                    {"restarted": False, "why": "no periodic checkpoint yet"},
                                    "hpcmigd does not answer",
                                    "down, then restarted"])
def test_a_hung_checkpoint_has_hpcmigd_restart_the_job_or_ends_the_step(
        tmp_path: Path, prefix: str, monkeypatch: Any, answer: Any) -> None:
    """The checkpoint hpcmigd asked for never completed (DMTCP keeps the job suspended): the
    step asks hpcmigd to restart the job from its generation before. Restarted: this run is
    over (it raises, so that it does nothing more to containers whose addresses the new run
    has); not restarted, or no answer: the step is ended (`dmtcp_job stop`)."""
    from hpcmig.agent.rpc import RpcError
    from hpcmig.cli import run
    from hpcmig.controller import client as controller_client
    from hpcmig.errors import HpcmigError

    monkeypatch.chdir(tmp_path)
    s = step(tmp_path, prefix)
    s.cfg.dmtcp_checkpoint_timeout = 30.0
    asked: list[tuple[str, tuple[str, ...]]] = []

    def in_head(verb: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        asked.append((verb, args))
        if verb == "checkpoint":
            raise dmtcp.CheckpointHung("dmtcp: dmtcp checkpoint not complete after 30s")
        return {"stopped": True}

    class Controller:
        calls: list[tuple[str, dict[str, Any]]] = []

        def __init__(self, cfg: Any) -> None:
            pass

        def call(self, op: str, timeout: float, **kw: Any) -> Any:
            self.calls.append((op, kw))
            if answer == "down, then restarted":  # hpcmigd restarting: asked again
                if len(self.calls) == 1:
                    raise RpcError("cannot reach hpcmigd")
                return {"restarted": True, "generation": 3}
            if isinstance(answer, str):
                raise HpcmigError(answer)
            return answer

    monkeypatch.setattr(s, "_in_head", in_head)
    monkeypatch.setattr(controller_client, "ControllerClient", Controller)
    monkeypatch.setattr(run, "ASK_EVERY", 0.0)
    request = s.job_dir / dmtcp_job.REQUEST
    request.touch()
    restarted = answer == "down, then restarted" or (isinstance(answer, dict) and
                                                     answer["restarted"])
    if restarted:
        with pytest.raises(HpcmigError, match="generation 3: this run of it is over"):
            s.tick()
        assert [v for v, _ in asked] == ["checkpoint"]
    else:
        s.tick()
        assert [v for v, _ in asked] == ["checkpoint", "stop"]
    assert asked[0][1][-3:] == ("--timeout", "30", "--keep-hung")
    asks = 2 if answer == "down, then restarted" else 1
    assert Controller.calls == asks * [("restart_stuck", {
        "job_id": "42", "why": "its DMTCP checkpoint did not complete in 30 s"})]
    assert not request.exists()  # asked once: hpcmigd asks again at the next interval
