"""Periodic checkpoints: the interval rule and the generations file (pure parts of
hpcmig.controller.periodic; the whole path runs in tests/integration/test_node_loss.py)."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest

from hpcmig.controller import periodic
from hpcmig.controller.journal import Journal


def test_seconds_are_taken_as_asked() -> None:
    assert periodic.interval("600", None, 4, 720.0) == 600.0
    assert periodic.interval("600", 3.0, 4, 720.0) == 600.0


def test_auto_waits_for_a_first_cost_then_follows_young() -> None:
    assert periodic.interval("auto", None, 4, 720.0) == periodic.FIRST_AUTO
    # C = 5 s, 4 nodes of 720 h MTBF: the job's MTBF is 180 h
    assert periodic.interval("auto", 5.0, 4, 720.0) == pytest.approx(
        math.sqrt(2 * 5.0 * 180 * 3600))
    assert periodic.interval("auto", 5.0, 8, 720.0) < periodic.interval("auto", 5.0, 4, 720.0)
    assert periodic.interval("auto", 1e-6, 4, 0.001) == periodic.MIN_INTERVAL


def test_generations_are_root_private_and_replaced_whole(tmp_path: Path) -> None:
    assert periodic.load(str(tmp_path), "42") == {"generations": []}
    data = {"generations": [{"n": 1, "restart": 0, "time": 1.0, "seconds": 0.5,
                             "containers": {"0": {"image_dir": "/x"}}}]}
    periodic._save(str(tmp_path), "42", data)
    path = tmp_path / "42" / periodic.GENERATIONS
    assert periodic.load(str(tmp_path), "42") == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not list(path.parent.glob("*.tmp"))


def test_exit_codes_recorded_after_the_checkpoint_are_forgotten(tmp_path: Path) -> None:
    run = tmp_path / "jobs" / "42" / "run-0-1"
    run.mkdir(parents=True)
    old, new = run.parent / "run-0-0" / "exit.json", run / "exit.json"
    old.parent.mkdir()
    old.write_text('{"exit_code": 0}')
    new.write_text('{"exit_code": 7}')
    os.utime(old, (100.0, 100.0))
    os.utime(new, (300.0, 300.0))
    periodic._forget_exits(str(tmp_path), "42", 0, since=200.0)
    assert old.exists() and not new.exists()  # the step that ended before stays ended


def test_the_checkpoints_of_ended_or_forgotten_jobs_are_the_ones_swept() -> None:
    states = {"1": "RUNNING", "2": "PENDING", "3": "CANCELLED", "4": "COMPLETED"}
    names = ["1", "2", "3", "4", "5", "lost+found"]
    # 2: requeued held after a checkpoint (kept for its restore); 5: Slurm forgot it
    assert periodic.ended_jobs(names, states) == ["3", "4", "5"]


def test_the_round_that_first_sees_a_job_ended_sweeps_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's own checkpoints (its memory) go as soon as hpcmigd sees it ended, not up to
    SWEEP_SECONDS later; otherwise the sweep stays every SWEEP_SECONDS."""
    from types import SimpleNamespace

    from hpcmig.slurm import JobInfo

    listed = [JobInfo(job_id=9, name="j", user="u", state="RUNNING", nodes=("a",))]
    svc = SimpleNamespace(slurm=SimpleNamespace(jobs=lambda: list(listed)))
    swept: list[float] = []
    clock = periodic.Periodic(svc)  # type: ignore[arg-type]
    monkeypatch.setattr(periodic, "sweep", lambda _svc, _jobs: swept.append(now))
    monkeypatch.setattr(clock, "_job", lambda job, now: None)
    for now in (100.0, 101.0, 102.0):
        clock.round(now)
    assert swept == [100.0]  # the first round, then not every second
    listed[0] = JobInfo(job_id=9, name="j", user="u", state="COMPLETED", nodes=("a",))
    for now in (103.0, 104.0):
        clock.round(now)
    assert swept == [100.0, 103.0]  # at once, once
    for now in (102.0 + periodic.SWEEP_SECONDS, 103.0 + periodic.SWEEP_SECONDS):
        clock.round(now)
    assert swept == [100.0, 103.0, 103.0 + periodic.SWEEP_SECONDS]


class _Svc:
    """Just enough of the service for Periodic._job: a job its agents learn of late."""

    def __init__(self, tmp: Path) -> None:
        from hpcmig.config import Config

        self.cfg = Config(state_dir=str(tmp), checkpoint_dir=str(tmp / "ckpt"))
        self.heartbeats: dict[str, float] = {}
        self.asked = 0

    def vcluster(self, job_id: str, job: object) -> object:
        from hpcmig.errors import UsageError

        self.asked += 1
        raise UsageError(f"job {job_id} does not run in an hpcmig virtual cluster")


def test_a_job_not_yet_known_to_its_agents_is_asked_about_again(tmp_path: Path) -> None:
    from hpcmig.slurm import JobInfo

    svc = _Svc(tmp_path)
    clock = periodic.Periodic(svc)  # type: ignore[arg-type]
    job = JobInfo(job_id=9, name="j", user="u", state="RUNNING", nodes=("a",))
    clock._job(job, now=100.0)
    clock._job(job, now=100.0 + periodic.NOT_OURS_AGAIN / 2)
    assert svc.asked == 1  # not asked every second
    clock._job(job, now=100.0 + periodic.NOT_OURS_AGAIN)
    assert svc.asked == 2  # but asked again: its prologs may have run since


class _CkptSvc(_Svc):
    """A ckpt=10 job on nodes a and b with one generation; its nodes' agents were never
    heard from (hpcmigd started after they died)."""

    def vcluster(self, job_id: str, job: object) -> object:
        from hpcmig.vcluster import Member, VCluster

        return VCluster(job_id, 0, "u", 1000, 1000, "10.0.0.0/30",
                        (Member(0, "a", "192.0.2.1", "10.0.0.1"),
                         Member(1, "b", "192.0.2.2", "10.0.0.2")),
                        ckpt="10")


def test_a_node_never_heard_from_since_hpcmigd_started_is_checked_for_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcmig.slurm import JobInfo

    svc = _CkptSvc(tmp_path)
    periodic._save(svc.cfg.checkpoint_dir, "9", {"generations": [{"n": 1}]})
    asked: list[str] = []
    monkeypatch.setattr(periodic, "restart_lost",
                        lambda _svc, jid: asked.append(jid) or {"restarted": True})
    clock = periodic.Periodic(svc)  # type: ignore[arg-type]
    job = JobInfo(job_id=9, name="j", user="u", state="RUNNING", nodes=("a", "b"))
    clock._job(job, now=0.0)
    assert asked == []  # just started: the agents may yet speak
    clock.started -= periodic.LOST_AFTER + 1
    svc.heartbeats["a"] = clock.started + 10**6  # a speaks, b never did
    clock._job(job, now=1.0)
    assert asked == ["9"]


def test_a_run_requeued_already_is_told_so_not_that_nothing_restarts(
        tmp_path: Path, journal: Journal) -> None:
    """Seen with a 3-node Open MPI engine=dmtcp job: its launcher failed while hpcmigd
    restarted the job (heartbeats stopped), and asked afterwards; the job was pending by then
    and the answer was "no restart: the job is pending", although it restarted."""
    import contextlib

    from hpcmig.slurm import JobInfo

    svc = _CkptSvc(tmp_path)
    journal.set_members("9", 0, svc.vcluster("9", None).to_json())  # type: ignore[attr-defined]
    svc.job = lambda jid: JobInfo(job_id=9, name="j", user="u", state="PENDING",  # type: ignore[attr-defined]
                                  nodes=(), restart_count=1)
    svc.job_lock = lambda jid: contextlib.nullcontext(True)  # type: ignore[attr-defined]
    svc.journal = lambda: contextlib.nullcontext(journal)  # type: ignore[attr-defined]
    answer = periodic.restart_lost(svc, "9")  # type: ignore[arg-type]
    assert answer["restarted"] and answer["why"] == "restarted already", answer


def test_a_dmtcp_or_app_job_is_asked_an_interval_after_its_last_generation_was_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an interval after the last ask: a checkpoint that suspends the job for 7 s of a
    10 s interval would leave it 3 s of work per interval."""
    import time

    from hpcmig.controller import appckpt

    svc = _CkptSvc(tmp_path)
    vc = svc.vcluster("9", None)
    newest: list[appckpt.Newest] = []
    asks: list[float] = []
    monkeypatch.setattr(appckpt, "load", lambda _state, _jid: object())
    monkeypatch.setattr(appckpt, "newest", lambda _app: newest[-1] if newest else None)
    monkeypatch.setattr(appckpt, "request", lambda _app: asks.append(time.time()) or True)
    clock = periodic.Periodic(svc)  # type: ignore[arg-type]
    clock._app(vc, now=100.0)  # type: ignore[arg-type]  (first seen: the interval starts)
    clock._app(vc, now=109.0)  # type: ignore[arg-type]
    assert asks == []
    clock._app(vc, now=110.0)  # type: ignore[arg-type]
    assert len(asks) == 1
    clock._app(vc, now=117.0)  # type: ignore[arg-type]
    assert len(asks) == 1
    newest.append(appckpt.Newest(1, asks[0] + 7.0))  # complete 7 s after the ask, just now
    monkeypatch.setattr(time, "time", lambda: asks[0] + 7.0)
    clock._app(vc, now=117.0)  # type: ignore[arg-type]
    assert clock.cost["9"] == pytest.approx(7.0)
    clock._app(vc, now=126.0)  # type: ignore[arg-type]  (16 s after the ask, 9 s after it)
    assert len(asks) == 1
    clock._app(vc, now=127.0)  # type: ignore[arg-type]
    assert len(asks) == 2
    clock._app(vc, now=137.0)  # type: ignore[arg-type]  (never answered: asked again)
    assert len(asks) == 3


class _StuckSvc(_CkptSvc):
    """A running engine=dmtcp job (or `engine`) whose `hpcmig run` found its checkpoint hung."""

    def __init__(self, tmp: Path, journal: Journal, engine: str = "dmtcp") -> None:
        import contextlib

        from hpcmig.slurm import JobInfo

        super().__init__(tmp)
        self.engine = engine
        self.requeued: list[tuple[int, bool]] = []
        self.decided: list[str] = []
        self.slurm = self
        self.job = lambda jid: JobInfo(job_id=9, name="j", user="u", state="RUNNING",
                                       nodes=("a", "b"))
        self.job_lock = lambda jid: contextlib.nullcontext(True)
        self.journal = lambda: contextlib.nullcontext(journal)
        journal.set_members("9", 0, self.vcluster("9", None).to_json())

    def vcluster(self, job_id: str, job: object) -> object:
        import dataclasses

        return dataclasses.replace(super().vcluster(job_id, job), engine=self.engine)

    def requeue(self, job_id: int, hold: bool = False) -> None:
        self.requeued.append((job_id, hold))

    def decide(self, text: str, job: str | None = None) -> None:
        self.decided.append(text)


def test_a_hung_dmtcp_checkpoint_requeues_the_job_from_its_generation_before(
        tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _StuckSvc(tmp_path, journal)
    monkeypatch.setattr(periodic, "newest", lambda *_: {"n": 4, "time": 0.0})
    monkeypatch.setattr(periodic, "node_lost", lambda *_: pytest.fail("no node is lost"))
    released: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(periodic, "finish_requeue",
                        lambda _svc, jid, lost: released.append((jid, list(lost))) or [])
    answer = periodic.restart_stuck(svc, "9", "its DMTCP checkpoint did not complete in 30 s")  # type: ignore[arg-type]
    assert answer == {"restarted": True, "lost": [], "excluded": [], "generation": 4}
    assert svc.requeued == [(9, True)] and released == [("9", [])]
    assert "did not complete in 30 s; requeued to restart from checkpoint generation 4" \
        in svc.decided[0]
    assert "restarting" not in periodic.load(svc.cfg.checkpoint_dir, "9")  # done: once


def test_a_hung_checkpoint_without_a_generation_before_or_of_a_criu_job_restarts_nothing(
        tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcmig.errors import UsageError

    svc = _StuckSvc(tmp_path, journal)
    monkeypatch.setattr(periodic, "newest", lambda *_: None)
    answer = periodic.restart_stuck(svc, "9", "hung")  # type: ignore[arg-type]
    assert not answer["restarted"] and "no periodic checkpoint" in answer["why"]
    criu = _StuckSvc(tmp_path / "criu", journal, engine="criu")
    with pytest.raises(UsageError, match="engine=criu"):
        periodic.restart_stuck(criu, "9", "hung")  # type: ignore[arg-type]
    assert svc.requeued == criu.requeued == []
