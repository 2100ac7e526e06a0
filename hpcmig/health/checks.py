"""Site check scripts, NHC style: every executable in one directory, each a pass/fail with a reason.

Design note: this module owns running the scripts of `health_check_dir` (default
/etc/hpcmig/checks.d) and turning each into a `CheckResult`. A script passes when it exits 0;
otherwise the first non-empty line it printed (stdout, else stderr) is the reason, `exit N`
when it printed nothing, `timed out after Ns` when it ran too long. Scripts run one after the
other, sorted by name, each in its own session through `hpcmig._proc.run` (on timeout its whole
process group is killed). Entries that are not executable regular files are skipped (a
README, a disabled `foo.off` with its x bit cleared), and a missing directory means no checks.
It never decides what a failure means: the `check` rule (hpcmig.health.rules) does.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from hpcmig import _proc
from hpcmig.errors import CommandError, HpcmigError

REASON_MAX = 80  # characters of a script's reason kept (a Slurm reason must stay short)


@dataclass(frozen=True)
class CheckResult:
    """One check script's verdict; `reason` is "" when ok."""

    name: str
    ok: bool
    reason: str


def first_line(*texts: str) -> str:
    """The first non-empty line of the first text that has one, stripped and shortened."""
    for text in texts:
        for line in text.splitlines():
            line = " ".join(line.split())
            if line:
                return line if len(line) <= REASON_MAX else line[: REASON_MAX - 3] + "..."
    return ""


def scripts(check_dir: str) -> list[str]:
    """The executable regular files of check_dir, sorted by name ([] when it is missing)."""
    try:
        names = sorted(os.listdir(check_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        path = os.path.join(check_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            found.append(path)
    return found


def run_one(path: str, timeout: float) -> CheckResult:
    name = os.path.basename(path)
    try:
        result = _proc.run([path], timeout=timeout, check=False, cwd="/")
    except CommandError as exc:
        if exc.timed_out:
            return CheckResult(name, False, f"timed out after {timeout:g}s")
        return CheckResult(name, False, first_line(exc.stdout, exc.stderr) or str(exc))
    except (HpcmigError, OSError) as exc:  # not runnable: no interpreter, exec format error
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return CheckResult(name, False, first_line(f"cannot run: {detail}"))
    if result.returncode == 0:
        return CheckResult(name, True, "")
    code = result.returncode
    silent = f"exit {code}" if code > 0 else f"killed by signal {-code}"
    reason = first_line(result.stdout, result.stderr) or silent
    return CheckResult(name, False, reason)


def run_checks(check_dir: str | None, timeout: float) -> tuple[CheckResult, ...]:
    """Run every check script of check_dir (None or "": no checks)."""
    if not check_dir:
        return ()
    return tuple(run_one(path, timeout) for path in scripts(check_dir))
