"""Check scripts, NHC style: exit 0 passes, anything else fails with a one-line reason."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hpcmig.health.checks import REASON_MAX, CheckResult, first_line, run_checks


def script(d: Path, name: str, body: str, mode: int = 0o755) -> Path:
    d.mkdir(exist_ok=True)
    path = d / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)
    return path


@pytest.fixture
def checks(tmp_path: Path) -> Path:
    return tmp_path / "checks.d"


def test_each_outcome_in_name_order(checks: Path) -> None:
    script(checks, "50-ok", "echo all good; exit 0")
    script(checks, "10-mounts", "echo\necho '  /scratch   not mounted  '\necho more\nexit 1")
    script(checks, "20-stderr-only", "echo 'ib0: link down' >&2; exit 2")
    script(checks, "30-silent", "exit 3")
    script(checks, "40-signal", "kill -9 $$")
    assert run_checks(str(checks), timeout=10) == (
        CheckResult("10-mounts", False, "/scratch not mounted"),
        CheckResult("20-stderr-only", False, "ib0: link down"),
        CheckResult("30-silent", False, "exit 3"),
        CheckResult("40-signal", False, "killed by signal 9"),
        CheckResult("50-ok", True, ""),
    )


def test_stdout_wins_over_stderr(checks: Path) -> None:
    script(checks, "a", "echo from-stderr >&2; echo from-stdout; exit 1")
    assert run_checks(str(checks), timeout=10) == (CheckResult("a", False, "from-stdout"),)


def test_a_hanging_check_times_out_with_its_children(checks: Path, tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    script(checks, "hang", f"(sleep 3; touch {marker}) & sleep 30")
    t0 = time.monotonic()
    assert run_checks(str(checks), timeout=0.5) == (
        CheckResult("hang", False, "timed out after 0.5s"),)
    assert time.monotonic() - t0 < 5
    time.sleep(3.5)
    assert not marker.exists()  # its whole process group was killed


def test_non_executables_and_directories_are_skipped(checks: Path) -> None:
    script(checks, "10-disabled", "exit 1", mode=0o644)
    (checks / "20-subdir").mkdir()
    (checks / "README").write_text("site checks\n")
    script(checks, "30-ok", "exit 0")
    os.symlink(checks / "30-ok", checks / "40-link")  # a link to an executable runs
    assert run_checks(str(checks), timeout=10) == (CheckResult("30-ok", True, ""),
                                                   CheckResult("40-link", True, ""))


def test_an_unrunnable_check_fails_with_the_reason(checks: Path) -> None:
    checks.mkdir()
    bad = checks / "no-interpreter"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    (result,) = run_checks(str(checks), timeout=10)
    assert (result.name, result.ok) == ("no-interpreter", False)
    assert result.reason.startswith("cannot run: ")


def test_missing_or_no_directory_means_no_checks(tmp_path: Path) -> None:
    assert run_checks(str(tmp_path / "absent"), timeout=10) == ()
    assert run_checks(None, timeout=10) == ()
    assert run_checks("", timeout=10) == ()
    (tmp_path / "file").write_text("")
    assert run_checks(str(tmp_path / "file"), timeout=10) == ()


def test_long_reasons_are_shortened() -> None:
    line = first_line("", "x" * 500)
    assert len(line) == REASON_MAX and line.endswith("...")
    assert first_line("\n \t\n", "  second  text ") == "second text"
    assert first_line("", "") == ""
