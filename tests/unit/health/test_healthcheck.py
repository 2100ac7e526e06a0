"""`hpcmig-healthcheck`: one sample reported to hpcmigd, exit 0 whatever it says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcmig.controller import client
from hpcmig.controller.client import ControllerDown
from hpcmig.health import healthcheck
from hpcmig.health.sample import Sample
from tests.unit.health.fake import Tree


class FakeClient:
    calls: list[tuple[str, dict[str, Any]]] = []
    error: Exception | None = None

    def __init__(self, cfg: Any, timeout: float = 3600.0) -> None:
        self.cfg = cfg

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        if FakeClient.error is not None:
            raise FakeClient.error
        FakeClient.calls.append((op, args))
        return {"ok": True}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    checks = tmp_path / "checks.d"
    checks.mkdir()
    failing = checks / "10-fail"
    failing.write_text("#!/bin/sh\necho 'injected failure'\nexit 1\n")
    failing.chmod(0o755)
    conf = tmp_path / "hpcmig.toml"
    conf.write_text(f'state_dir = "{tmp_path}"\nrun_dir = "{tmp_path}"\n'
                    f'checkpoint_dir = "{tmp_path}"\nhealth_check_dir = "{checks}"\n'
                    f'health_paths = ["/"]\n\n[health]\ntemperature_max = 60\n')
    FakeClient.calls = []
    FakeClient.error = None
    monkeypatch.setattr(client, "ControllerClient", FakeClient)
    monkeypatch.setenv("SLURMD_NODENAME", "node9")
    return conf


def test_the_sample_is_reported_to_hpcmigd(site: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    tree = Tree(tmp_path / "fake")
    tree.hwmon(0, "coretemp", {1: (70000, "Package id 0")})
    assert healthcheck.main(["--config", str(site), "--sys-root", str(tree.sys)]) == 0
    ((op, args),) = FakeClient.calls
    assert op == "health.report" and args["node"] == "node9"
    sample = Sample.from_json(args["sample"])
    assert sample.node == "node9" and sample.temperatures == {"Package id 0": 70.0}
    assert sorted(sample.free) == sorted([str(tmp_path), "/"])
    assert [(c.name, c.ok, c.reason) for c in sample.checks] == [
        ("10-fail", False, "injected failure")]
    assert capsys.readouterr() == ("", "")


def test_hpcmigd_unreachable_is_one_line_and_exit_0(site: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    FakeClient.error = ControllerDown("hpcmigd is not running (connection refused)")
    assert healthcheck.main(["--config", str(site), "--node", "n3"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("hpcmig-healthcheck: sample of n3 not reported: hpcmigd is not")
    assert err.count("\n") == 1


def test_a_broken_configuration_reports_nothing_and_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[health]\nce_rise = 'many'\n")
    assert healthcheck.main(["--config", str(bad)]) == 0
    assert "ce_rise must be an integer" in capsys.readouterr().err


def test_a_sample_that_cannot_be_taken_exits_1(site: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*_: Any, **__: Any) -> Sample:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(healthcheck, "take", broken)
    assert healthcheck.main(["--config", str(site)]) == 1
    assert "cannot take a health sample of node9" in capsys.readouterr().err
    assert FakeClient.calls == []


def test_dry_run_prints_the_sample_and_the_findings(
        site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = Tree(tmp_path / "fake")
    tree.hwmon(0, "coretemp", {1: (70000, "Package id 0")})
    assert healthcheck.main(["--config", str(site), "--sys-root", str(tree.sys),
                             "--dry-run"]) == 0
    out = capsys.readouterr().out
    body, _, reasons = out.rpartition("}\n")
    assert json.loads(body + "}")["node"] == "node9"
    assert reasons.splitlines() == ["hpcmig: temperature: Package id 0 70 C > 60 C",
                                    "hpcmig: check: 10-fail: injected failure"]
    assert FakeClient.calls == []


def test_node_name_falls_back_to_the_short_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURMD_NODENAME", raising=False)
    monkeypatch.setattr(healthcheck.socket, "gethostname", lambda: "cn17.cluster.example")
    assert healthcheck.node_name(None) == "cn17"
    assert healthcheck.node_name("given") == "given"
