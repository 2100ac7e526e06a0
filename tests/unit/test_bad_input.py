"""Bad input everywhere: every verb and option answers with one line and exit 2, never a
traceback, and never reaches hpcmigd, an agent, Slurm or the testbed (issue 12).

`hpcmig` runs in-process (`hpcmig.cli.main`); the other entry points (hpcmig-agent,
hpcmig-rsh, hpcmigd) in a subprocess, as a user or a launcher runs them. Only bad arguments
are given: nothing here may start a daemon or touch the machine's testbed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcmig import _cmdline
from hpcmig.cli import build_parser, main

Row = tuple[list[str], int, str]

EXPLICIT = "ignored explicit argument"  # a flag given a value: --json=yes

ROWS: list[Row] = [
    # hpcmig itself
    ([], 2, "required: COMMAND"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    (["--bogus", "status"], 2, "unrecognized arguments: --bogus"),
    (["--version=1"], 2, EXPLICIT),
    # testbed up|down|status|exec
    (["testbed"], 2, "required: ACTION"),
    (["testbed", "sideways"], 2, "invalid choice: 'sideways'"),
    (["testbed", "up", "--nodes", "9"], 2, "--nodes: must be between 2 and 8, not 9"),
    (["testbed", "up", "--nodes", "1"], 2, "must be between 2 and 8, not 1"),
    (["testbed", "up", "--nodes", "three"], 2, "must be a whole number, not 'three'"),
    (["testbed", "up", "--nodes"], 2, "expected one argument"),
    (["testbed", "up", "--leaves", "0"], 2, "--leaves: must be between 1 and 8, not 0"),
    (["testbed", "up", "--nodes", "2", "--leaves", "3"], 2,
     "--leaves must be between 1 and the node count (2), not 3"),
    (["testbed", "up", "--spine-rate", "fast"], 2, "give a rate like 1gbit"),
    (["testbed", "down", "now"], 2, "unrecognized arguments: now"),
    (["testbed", "status", "--json"], 2, "unrecognized arguments: --json"),
    (["testbed", "exec"], 2, "required: NODE"),
    (["testbed", "exec", "node1"], 2, "no command given"),
    (["testbed", "exec", "node1", "--"], 2, "no command given"),
    (["testbed", "exec", "bad/node", "--", "true"], 2, "bad node name 'bad/node'"),
    (["testbed", "exec", "", "--", "true"], 2, "a node name must not be empty"),
    (["testbed", "fail", "node2"], 2, "one of the arguments --degrade --crash is required"),
    (["testbed", "fail", "node2", "--degrade", "fire"], 2, "invalid choice: 'fire'"),
    (["testbed", "fail", "node2", "--degrade", "nic", "--crash"], 2, "not allowed with"),
    (["testbed", "fail", "node[1-2]", "--crash"], 2, "is a list of nodes"),
    (["testbed", "heal"], 2, "required: NODE"),
    (["testbed", "heal", "a b"], 2, "node names have no spaces"),
    # demo
    (["demo", "--nodes", "9"], 2, "--nodes: must be between 2 and 8, not 9"),
    (["demo", "--nodes", "x"], 2, "must be a whole number"),
    (["demo", "--mpi", "lam"], 2, "--mpi: invalid choice: 'lam'"),
    (["demo", "--rounds", "0"], 2, "--rounds: must be at least 1, not 0"),
    (["demo", "--rounds", "-3"], 2, "--rounds: must be at least 1, not -3"),
    (["demo", "--seconds", "0"], 2, "--seconds: must be more than 0 seconds"),
    (["demo", "--seconds", "-1"], 2, "--seconds: must be more than 0 seconds"),
    (["demo", "--seconds", "nan"], 2, "--seconds: must be more than 0 seconds, not 'nan'"),
    (["demo", "--seconds", "soon"], 2, "must be a number of seconds, not 'soon'"),
    (["demo", "--memory-mb", "-5"], 2, "--memory-mb: must be at least 1, not -5"),
    (["demo", "--memory-mb", "0"], 2, "--memory-mb: must be at least 1, not 0"),
    (["demo", "--memory-mb", "1.5"], 2, "must be a whole number, not '1.5'"),
    (["demo", "--down=yes"], 2, EXPLICIT),
    # run (outside a job, and with bad numbers)
    (["run", "-n", "0"], 2, "--ntasks: must be at least 1, not 0"),
    (["run", "--ntasks", "-2", "--", "true"], 2, "must be at least 1, not -2"),
    (["run", "-n", "six", "--", "true"], 2, "must be a whole number, not 'six'"),
    (["run", "--ppn", "0", "--", "true"], 2, "--ppn: must be at least 1, not 0"),
    (["run", "--mpi", "lam", "--", "true"], 2, "--mpi: invalid choice: 'lam'"),
    (["run", "--map"], 2, "--map: expected one argument"),
    (["run", "--stream=1", "--", "true"], 2, EXPLICIT),
    (["run"], 2, "nothing to run"),
    (["run", "--", "true"], 2, "hpcmig run works inside a Slurm job"),
    # status
    (["status", "extra"], 2, "unrecognized arguments: extra"),
    (["status", "--json=yes"], 2, EXPLICIT),
    # migrate
    (["migrate", "abc", "--from", "x"], 2, "bad job id 'abc': a job id is a number"),
    (["migrate", "12_3", "--from", "x"], 2, "job array ids like '12_3' are not supported"),
    (["migrate", "12_[1-3]", "--from", "x"], 2, "job array ids"),
    (["migrate", "12.0", "--from", "x"], 2, "'12.0' is a job step: give the job id (12)"),
    (["migrate", "12+1", "--from", "x"], 2, "heterogeneous job components"),
    (["migrate", "0", "--from", "x"], 2, "Slurm job ids run from 1"),
    (["migrate", "-5", "--from", "x"], 2, "bad job id '-5'"),
    (["migrate", "", "--from", "x"], 2, "bad job id ''"),
    (["migrate", "99999999999", "--from", "x"], 2, "Slurm job ids run from 1 to 4294967293"),
    (["migrate", "12"], 2, "required: --from"),
    (["migrate", "--from", "node1"], 2, "required: JOBID"),
    (["migrate", "12", "--from", ""], 2, "--from: a node name must not be empty"),
    (["migrate", "12", "--from", "node 1"], 2, "node names have no spaces"),
    (["migrate", "12", "--from", "node[1-2]"], 2, "is a list of nodes: give one node name"),
    (["migrate", "12", "--from", "node1", "--to", "no/de"], 2, "--to: bad node name"),
    (["migrate", "12", "--from", "node1", "--to", "node1"], 2,
     "--to names the node the container leaves"),
    (["migrate", "12", "--from", "node1", "--transport", "ftp"], 2, "invalid choice: 'ftp'"),
    (["migrate", "12", "--from", "node1", "--mode", "lazy"], 2, "invalid choice: 'lazy'"),
    (["migrate", "12", "--from", "node1", "--dry-run=yes"], 2, EXPLICIT),
    (["migrate", "12", "--from", "node1", "--json=yes"], 2, EXPLICIT),
    # recover
    (["recover", "abc"], 2, "bad job id 'abc'"),
    (["recover", "12_3"], 2, "job array ids"),
    (["recover", "1", "2"], 2, "unrecognized arguments: 2"),
    (["recover", "--dry-run=yes"], 2, EXPLICIT),
    (["recover", "--json=yes"], 2, EXPLICIT),
    # drain
    (["drain"], 2, "required: NODE"),
    (["drain", "node 1"], 2, "node names have no spaces"),
    (["drain", "node[1-3]"], 2, "is a list of nodes"),
    (["drain", "n1,n2"], 2, "is a list of nodes"),
    (["drain", ""], 2, "a node name must not be empty"),
    (["drain", "nödé"], 2, "a Slurm node name is letters, digits"),
    (["drain", "node1", "--reason", ""], 2, "--reason: a reason must not be empty"),
    (["drain", "node1", "--reason", "two\nlines"], 2, "one line of printable text"),
    (["drain", "node1", "--transport", "ftp"], 2, "invalid choice: 'ftp'"),
    (["drain", "node1", "--mode", "precopy"], 2, "invalid choice: 'precopy'"),
    (["drain", "node1", "--timeout", "0"], 2, "--timeout: must be more than 0 seconds"),
    (["drain", "node1", "--timeout", "-1"], 2, "must be more than 0 seconds"),
    (["drain", "node1", "--timeout", "inf"], 2, "must be more than 0 seconds, not 'inf'"),
    (["drain", "node1", "--timeout", "soon"], 2, "must be a number of seconds"),
    (["drain", "node1", "--dry-run=yes"], 2, EXPLICIT),
    (["drain", "node1", "--json=yes"], 2, EXPLICIT),
    # resume
    (["resume"], 2, "required: NODE"),
    (["resume", ""], 2, "a node name must not be empty"),
    (["resume", "a b"], 2, "node names have no spaces"),
    (["resume", "node[1-2]"], 2, "is a list of nodes"),
    (["resume", "node1", "--json=yes"], 2, EXPLICIT),
    # checkpoint
    (["checkpoint"], 2, "required: JOBID"),
    (["checkpoint", "abc"], 2, "bad job id 'abc': a job id is a number"),
    (["checkpoint", "12_3"], 2, "job array ids like '12_3' are not supported"),
    (["checkpoint", "0"], 2, "Slurm job ids run from 1"),
    (["checkpoint", "1e3"], 2, "bad job id '1e3'"),
    (["checkpoint", "12", "--resume=yes"], 2, EXPLICIT),
    (["checkpoint", "12", "--json=yes"], 2, EXPLICIT),
    # restore
    (["remap"], 2, "required: JOBID"),
    (["remap", "x1"], 2, "bad job id 'x1'"),
    (["remap", "12", "--topology"], 2, "expected one argument"),
    (["remap", "12", "--force=1"], 2, EXPLICIT),
    (["remap", "12", "--dry-run=1"], 2, EXPLICIT),
    (["remap", "12", "--json=1"], 2, EXPLICIT),
    (["traffic"], 2, "required: JOBID"),
    (["traffic", "abc"], 2, "bad job id 'abc': a job id is a number"),
    (["traffic", "12", "--top", "0"], 2, "--top: must be at least 1, not 0"),
    (["traffic", "12", "-o"], 2, "expected one argument"),
    (["traffic", "12", "--plot"], 2, "expected one argument"),
    (["traffic", "12", "--json=yes"], 2, EXPLICIT),
    (["restore"], 2, "required: JOBID"),
    (["restore", "abc"], 2, "bad job id 'abc'"),
    (["restore", "12", "--exclude", "node[1-"], 2, "bad hostlist 'node[1-': unbalanced '['"),
    (["restore", "12", "--exclude", "node1]"], 2, "unbalanced ']'"),
    (["restore", "12", "--exclude", "node[3-1]"], 2, "bad range '3-1'"),
    (["restore", "12", "--exclude", "node[x]"], 2, "bad item 'x'"),
    (["restore", "12", "--exclude", "a b"], 2, "in hostlist 'a b': bad node name 'a b'"),
    (["restore", "12", "--json=yes"], 2, EXPLICIT),
    # map (files are never reached: each row fails before reading or writing any)
    (["map"], 2, "required: --topology, --comm, --ranks-per-node, -o/--output"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "0", "-o",
      "out"], 2, "--ranks-per-node: must be at least 1, not 0"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "two", "-o",
      "out"], 2, "must be a whole number"),
    (["map", "--topology", "bogus", "--comm", "c.h5", "--ranks-per-node", "2", "-o", "out"],
     2, "bad topology spec 'bogus'"),
    (["map", "--topology", "fattree:2,2", "--comm", "missing.h5", "--ranks-per-node", "2",
      "-o", "out"], 2, "missing.h5 does not exist"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "2",
      "--output", "/nonexistent/dir/out"], 2, "--output: cannot write /nonexistent/dir/out"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "2", "-o",
      "out", "--plot", "/nonexistent/dir/p.png"], 2, "--plot: cannot write"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "2", "-o",
      "out", "--nodes", "n[1-"], 2, "--nodes: bad hostlist 'n[1-'"),
    (["map", "--topology", "fattree:2,2", "--comm", "missing.h5", "--ranks-per-node", "2",
      "-o", "out", "--nodes", "zz"], 2, "not in the topology: zz"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "2", "-o",
      "out", "--format", "pdf"], 2, "--format: invalid choice: 'pdf'"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "2", "-o",
      "out", "--seed", "x"], 2, "--seed: must be a whole number"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "2", "-o",
      "out", "--seed", str(2**64)], 2, "--seed: must be between"),
    (["map", "--topology", "fattree:2,2", "--comm", "c.h5", "--ranks-per-node", "2", "-o",
      "out", "--no-bound=yes"], 2, EXPLICIT),
]


def _fail(what: str) -> Any:
    def reached(*_a: Any, **_k: Any) -> Any:
        pytest.fail(f"bad input reached {what}")

    return reached


@pytest.fixture(autouse=True)
def nothing_is_reached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RPC, no subprocess, no testbed for bad input; no Slurm job around."""
    from hpcmig import _proc
    from hpcmig.agent.rpc import AgentClient
    from hpcmig.controller.client import ControllerClient
    from hpcmig.testbed import cluster

    monkeypatch.setattr(ControllerClient, "call", _fail("hpcmigd (an RPC)"))
    monkeypatch.setattr(AgentClient, "call", _fail("an agent (an RPC)"))
    for name in ("up", "down", "status", "current_plan", "healthy", "fail", "heal"):
        monkeypatch.setattr(cluster, name, _fail(f"the testbed (cluster.{name})"))
    monkeypatch.setattr(_proc, "run", _fail("a subprocess"))
    monkeypatch.setattr(_proc, "spawn", _fail("a daemon"))
    monkeypatch.setattr(os, "execvp", _fail("exec"))
    for name in ("SLURM_JOB_ID", "SLURMD_NODENAME", "HPCMIG_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def one_error_line(capsys: pytest.CaptureFixture[str], prefix: str = "hpcmig: error: ") -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "code", "fragment"), ROWS, ids=[" ".join(r[0]) or "(none)"
                                                                   for r in ROWS])
def test_bad_input_is_one_line(argv: list[str], code: int, fragment: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    assert fragment in one_error_line(capsys)


def _verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
           ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _verbs(sub, (*path, name))
    return found


def test_the_table_covers_every_verb_and_option() -> None:
    """A verb or option added without a bad-input row fails here."""
    missing = []
    for path, parser in _verbs(build_parser()):
        rows = [argv for argv, _, _ in ROWS if tuple(argv[:len(path)]) == path]
        if not rows:
            missing.append(" ".join(path))
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            if not any(arg.split("=", 1)[0] in action.option_strings
                       for argv in rows for arg in argv[len(path):]):
                missing.append(f"{' '.join(path)} {action.option_strings[-1]}")
    assert missing == []


def test_a_bug_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from hpcmig.cli import status

    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("rows\nsecond line")

    monkeypatch.setattr(status, "run", broken)
    assert main(["status"]) == 70
    line = one_error_line(capsys, "hpcmig: internal error: ")
    assert line == ("hpcmig: internal error: RuntimeError: rows second line "
                    "(please report it; HPCMIG_DEBUG=1 shows the traceback)")
    monkeypatch.setenv("HPCMIG_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["status"])


def test_help_and_version_still_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert main(["drain", "--help"]) == 0
    assert "NODE" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["1", "42", " 7 ", "007", "4294967293"])
def test_good_job_ids_agree_with_the_service(text: str) -> None:
    from hpcmig.controller.service import job_number

    assert _cmdline.job_id(text) == job_number(text) == int(text)


@pytest.mark.parametrize("text", ["abc", "", "-5", "1e3", "12_3", "12.0", "12+1", "²", "0x1"])
def test_bad_job_ids_are_refused_by_the_service_too(text: str) -> None:
    """What the client refuses as not a number, hpcmigd would refuse too (UsageError)."""
    from hpcmig.controller.service import job_number
    from hpcmig.errors import UsageError

    with pytest.raises(argparse.ArgumentTypeError):
        _cmdline.job_id(text)
    if text != "²":  # str.isdigit() is true for '²' and int() then fails: the client guards
        with pytest.raises(UsageError):
            job_number(text)


@pytest.mark.parametrize("name", ["node1", "n0000", "gpu-a.rack_2", "1node", "NODE7"])
def test_good_node_names(name: str) -> None:
    assert _cmdline.node_name(name) == name


# -- the other entry points, run as their users run them --------------------------------------

def script(module: str, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from {module} import main; sys.exit(main())"
    full = {k: v for k, v in os.environ.items()
            if k not in ("HPCMIG_HOSTS", "HPCMIG_EXEC_PORT", "HPCMIG_DEBUG")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, env={**full, **env})


@pytest.mark.parametrize(("args", "fragment"), [
    ([], "required: --node"),
    (["--node", ""], "--node: a node name must not be empty"),
    (["--node", "a b"], "node names have no spaces"),
    (["--node", "node[1-2]"], "is a list of nodes"),
    (["--node", "node1", "--listen", "nowhere"], "--listen: bad address 'nowhere'"),
    (["--node", "node1", "--bogus"], "unrecognized arguments: --bogus"),
    (["--node", "node1", "--sys-root", "fixture/sys"], "--sys-root: must be an absolute path"),
    (["--node", "node1", "--health-path", "scratch"], "--health-path: must be an absolute"),
])
def test_agent_bad_arguments(args: list[str], fragment: str) -> None:
    out = script("hpcmig.agent.main", args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcmig-agent: error: "), out.stderr
    assert fragment in lines[0] and "(see hpcmig-agent --help)" in lines[0]


@pytest.mark.parametrize(("args", "env", "fragment"), [
    ([], {}, "no host given"),
    (["node1"], {}, "remote login is not supported"),
    (["-l"], {}, "option -l needs a value"),
    (["-l", "", "node1", "true"], {}, "option -l needs a user name"),
    (["-z", "node1", "true"], {}, "unknown option -z"),
    (["-p", "x", "node1", "true"], {}, "bad port 'x' (-p)"),
    (["-p", "0", "node1", "true"], {}, "ports run from 1 to 65535"),
    (["-p70000", "node1", "true"], {}, "ports run from 1 to 65535"),
    (["node1", "true"], {}, "HPCMIG_HOSTS is not set"),
    (["10.0.0.1", "true"], {"HPCMIG_EXEC_PORT": "abc"}, "bad port 'abc' ($HPCMIG_EXEC_PORT)"),
])
def test_rsh_bad_arguments(args: list[str], env: dict[str, str], fragment: str) -> None:
    """Exit 255, like ssh: a launcher must not take it for the remote command's own code."""
    out = script("hpcmig.runtime.rsh", args, **env)
    assert out.returncode == 255
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcmig-rsh: error: "), out.stderr
    assert fragment in lines[0]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--config"], "expected one argument"),
    (["extra"], "unrecognized arguments: extra"),
])
def test_hpcmigd_bad_arguments(args: list[str], fragment: str) -> None:
    """hpcmigd keeps argparse's own usage line before the error (a daemon's log reads it)."""
    out = script("hpcmig.controller.daemon", args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    last = out.stderr.splitlines()[-1]
    assert last.startswith("hpcmigd: error: ") and fragment in last
