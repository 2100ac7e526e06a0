"""The one way hpcmig runs external commands.

Every subprocess starts in its own session, has a timeout, and on timeout its whole process
group is killed. Failures raise `CommandError` carrying argv, exit code, stdout and stderr.
`spawn` starts long-lived daemons detached from us (their pid is the caller's to record).
This module must not know about Slurm, namespaces or anything else it runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpcmig.errors import CommandError, MissingDependency

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Result:
    """Run argv to completion; raise CommandError on failure (if check) or timeout."""
    args = [str(a) for a in argv]
    if shutil.which(args[0]) is None and not os.path.exists(args[0]):
        raise MissingDependency(f"'{args[0]}' is not installed or not on PATH")
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise CommandError(
            args, None, out or "", err or "", timed_out=True, timeout=timeout
        ) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    result = Result(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, out, err)
    return result


def spawn(
    argv: Sequence[str],
    *,
    log_path: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> int:
    """Start a daemon in its own session, output appended to log_path; return its pid."""
    args = [str(a) for a in argv]
    if shutil.which(args[0]) is None and not os.path.exists(args[0]):
        raise MissingDependency(f"'{args[0]}' is not installed or not on PATH")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            close_fds=True,
        )
    return proc.pid
