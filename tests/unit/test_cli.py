"""Bad input gives one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hpcmig.cli import main
from hpcmig.testbed import cluster


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcmig", *args], capture_output=True,
                          text=True, timeout=60)


def test_help_lists_the_subcommands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for word in ("testbed", "demo"):
        assert word in out.stdout


def test_node_count_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["testbed", "up", "--nodes", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hpcmig: error: argument --nodes: must be between 2 and 8, not 9 "
                   "(see hpcmig testbed up --help)"]


def test_not_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 1000)
    assert main(["testbed", "up", "--nodes", "3"]) == 13
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0] and "sudo" in err[0]


def test_slurm_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cluster.shutil, "which",
                        lambda name: None if name.startswith("slurm") else f"/usr/bin/{name}")
    assert main(["testbed", "up"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "missing programs: slurmctld, slurmd" in err[0] and "bootstrap.sh" in err[0]


def test_exec_on_an_unknown_node(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cluster, "current_plan", lambda: cluster.plan_for(3))
    assert main(["testbed", "exec", "node9", "--", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hpcmig: error: unknown node 'node9' (the testbed has node1, node2, node3)"


def test_exec_when_the_testbed_is_down(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cluster, "current_plan", lambda: None)
    assert main(["testbed", "exec", "node1", "--", "true"]) == 1
    assert "testbed is not up" in capsys.readouterr().err


def test_unknown_subcommand_is_argparse_usage_error() -> None:
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "Traceback" not in out.stderr
