"""The systemd units shipped for admins start programs that exist, with flags they take."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "slurm-plugins" / "systemd").glob("*.service"))


def scripts() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(data["project"]["scripts"])


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_a_unit_runs_an_entry_point_with_options_it_knows(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(unit)
    argv = shlex.split(parser["Service"]["ExecStart"])
    program = Path(argv[0]).name
    assert argv[0].startswith("/opt/hpcmig/venv/bin/"), argv
    target = scripts()[program]  # a console script of this package
    module, _, func = target.partition(":")
    helped = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {func}; "
                             f"sys.argv[0] = {program!r}; {func}(['--help'])"],
                            capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    for flag in (a for a in argv[1:] if a.startswith("--")):
        assert flag in helped.stdout, (flag, helped.stdout)
    assert parser["Service"]["KillMode"] == "process"  # containers outlive an agent restart
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_both_daemons_have_a_unit() -> None:
    assert {u.stem for u in UNITS} == {"hpcmigd", "hpcmig-agent"}
