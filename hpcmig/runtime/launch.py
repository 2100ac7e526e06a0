"""The in-container side of `hpcmig run`: start the MPI launcher detached, record its end.

Design note: `python -m hpcmig.runtime.launch --status DIR [--stdout F] [--stderr F] -- ARGV`
is run by an exec request inside container 0 of a job, as the job's user. It detaches (double
fork, new session) so the exec request returns at once, then runs ARGV with its output going
straight to the job's output files (opened for append). The outcome goes to files in DIR, a
job directory every node sees: `pid` (the launcher's pid in the container), `heartbeat`
(touched every 2 s) and, at the end, `exit.json`. Nothing here holds a connection to a node
daemon or to the batch script, so the container can be checkpointed and restored elsewhere
mid-run and the outcome still reaches `hpcmig run`. SIGTERM/SIGINT/SIGHUP are forwarded to
ARGV's process group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

HEARTBEAT_SECONDS = 2.0
EXIT = "exit.json"  # in the status directory, once the launcher ended: its exit code


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def stop_argv(status: Path | str, pid: str, signum: int) -> list[str]:
    """The command, run in the launcher's container, that sends `signum` to the launcher at
    `pid` only while that process is the launcher of `status`: a run that outlived its job's
    requeue (process tracking that lost it) must not signal the pid, which in the next run's
    container at the same address may belong to the next run's launcher."""
    check = 'grep -qzxF -e "$3" "/proc/$2/cmdline" 2>/dev/null && kill "-$1" "$2"'
    return ["sh", "-c", check, "hpcmig-stop", str(signum), str(pid), str(status)]


def _open_out(path: str | None, fallback: str) -> int:
    if not path:
        return os.open(fallback, os.O_WRONLY)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def supervise(argv: list[str], status: Path, stdout: str | None, stderr: str | None) -> int:
    """Run argv to its end (we are the detached grandchild); return its exit code."""
    out = _open_out(stdout, os.devnull)
    err = _open_out(stderr, os.devnull) if stderr != stdout or not stdout else os.dup(out)
    child = os.fork()
    if child == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(err, f"hpcmig run: cannot start {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)
    os.close(out)
    os.close(err)
    with contextlib.suppress(OSError):
        os.setpgid(child, child)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    beat = status / "heartbeat"
    while True:
        beat.touch()
        try:
            pid, wstatus = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            return 255
        if pid == child:
            return os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else (
                128 + os.WTERMSIG(wstatus))
        time.sleep(min(HEARTBEAT_SECONDS, 0.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcmig-launch")
    parser.add_argument("--status", required=True, type=Path)
    parser.add_argument("--stdout")
    parser.add_argument("--stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("nothing to run")
    args.status.mkdir(parents=True, exist_ok=True)
    if os.fork() > 0:
        return 0  # the exec request ends here; the grandchild carries on
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # let the exec request see EOF and end now
        os.dup2(null, fd)
    write_atomic(args.status / "pid", str(os.getpid()))
    code = 255
    try:
        code = supervise(command, args.status, args.stdout, args.stderr)
    finally:
        write_atomic(args.status / EXIT,
                     json.dumps({"exit_code": code, "time": time.time()}))
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
