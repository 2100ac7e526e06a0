"""hpcmigd's remap rule: off by default; when on, each running job is remapped once per
`remap_every` seconds from when it was first seen; jobs it cannot remap are skipped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hpcmig.controller import remap
from hpcmig.controller.report import Report
from hpcmig.errors import HpcmigError, UsageError
from hpcmig.slurm.parse import JobInfo


def service(every: float, jobs: list[JobInfo]) -> Any:
    return SimpleNamespace(cfg=SimpleNamespace(remap_every=every),
                           slurm=SimpleNamespace(jobs=lambda: jobs))


def test_each_running_job_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake(svc: Any, jid: str, *a: Any) -> Report:
        calls.append(jid)
        if jid == "3":
            raise UsageError("job 3 does not run in an hpcmig virtual cluster")
        if jid == "4":
            raise HpcmigError("agent of node2 did not answer")
        report = Report("remap")
        if jid == "1":
            report.add(result="moved")
        return report

    monkeypatch.setattr(remap, "remap", fake)
    jobs = [JobInfo(job_id=i, name="j", user="u", state="RUNNING") for i in (1, 2, 3, 4)]
    jobs.append(JobInfo(job_id=5, name="j", user="u", state="PENDING"))
    rule = remap.AutoRemap(service(60.0, jobs))
    assert rule.round(now=100.0) == [] and calls == []  # first sight starts the interval
    assert rule.round(now=159.0) == [] and calls == []
    assert rule.round(now=160.0) == ["1"] and calls == ["1", "2", "3", "4"]
    assert rule.round(now=200.0) == [] and len(calls) == 4
    jobs[:] = jobs[:1]  # the others ended: forgotten
    assert set(rule.last) == {"1", "2", "3", "4"}
    rule.round(now=210.0)
    assert set(rule.last) == {"1"}


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remap, "remap", lambda *a: pytest.fail("remapped while off"))
    rule = remap.AutoRemap(service(0.0, [JobInfo(job_id=1, name="j", user="u",
                                                  state="RUNNING")]))
    assert rule.round(now=0.0) == [] and rule.round(now=1e9) == []
    from hpcmig.config import Config

    assert Config().remap_every == 0.0
