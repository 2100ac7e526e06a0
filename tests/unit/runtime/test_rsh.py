"""hpcmig-rsh command line and host resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcmig.errors import UsageError
from hpcmig.runtime import rsh


def test_rsh_command_lines_of_mpich_and_open_mpi() -> None:
    # MPICH Hydra: separate words; Open MPI: one shell string with env settings
    a = rsh.parse_args(["node2", '"/usr/bin/hydra_pmi_proxy"', "--control-port", "c0:4242"])
    assert (a.host, a.user, a.no_stdin) == ("node2", None, False)
    assert rsh.remote_argv(a.command) == [
        "/bin/sh", "-c", '"/usr/bin/hydra_pmi_proxy" --control-port c0:4242']
    b = rsh.parse_args(["-x", "node3", "PATH=/opt/ompi/bin:$PATH ; export PATH ; orted -mca x y"])
    assert rsh.remote_argv(b.command)[2].startswith("PATH=/opt/ompi/bin:$PATH ; export PATH")


def test_rsh_options() -> None:
    a = rsh.parse_args(["-n", "-l", "alice", "-p", "7200", "h", "cmd"])
    assert (a.no_stdin, a.user, a.port, a.host, a.command) == (True, "alice", 7200, "h", ["cmd"])
    b = rsh.parse_args(["-lbob", "-p7300", "--", "-weird-host", "cmd"])
    assert (b.user, b.port, b.host) == ("bob", 7300, "-weird-host")


@pytest.mark.parametrize("argv, match", [
    ([], "no host"),
    (["host"], "remote login"),
    (["-l"], "needs a value"),
    (["-z", "host", "cmd"], "unknown option"),
    (["-p", "x", "host", "cmd"], "bad port"),
])
def test_rsh_usage_errors(argv: list[str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        rsh.parse_args(argv)


def test_hosts_file_resolution(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# job 42\n10.252.0.1 node1 node1.cluster\n10.252.0.2 node2  # spare\n\n")
    path = str(hosts)
    assert rsh.resolve("node1", path) == "10.252.0.1"
    assert rsh.resolve("node1.cluster", path) == "10.252.0.1"
    assert rsh.resolve("node2.other.domain", path) == "10.252.0.2"  # short name fallback
    assert rsh.resolve("10.252.0.9", None) == "10.252.0.9"
    with pytest.raises(UsageError, match="unknown host 'node7'"):
        rsh.resolve("node7", path)
    with pytest.raises(UsageError, match="HPCMIG_HOSTS"):
        rsh.resolve("node1", None)
    with pytest.raises(UsageError, match="cannot read"):
        rsh.resolve("node1", str(tmp_path / "missing"))


def test_bad_hosts_lines() -> None:
    with pytest.raises(UsageError, match="line 1"):
        rsh.parse_hosts("10.252.0.1\n")
    with pytest.raises(UsageError, match="bad address"):
        rsh.parse_hosts("node1 10.252.0.1\n")


def test_rsh_main_reports_errors_with_ssh_style_status(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rsh.HOSTS_ENV, raising=False)
    assert rsh.main(["nowhere", "true"]) == 255
    assert "hpcmig-rsh: error: cannot resolve 'nowhere'" in capsys.readouterr().err
