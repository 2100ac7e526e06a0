"""Reading one process's /proc entries: its argv and its state.

The one place hpcmig looks a pid up in /proc, so that "is this still our process" means the
same thing to the testbed and to the container runtime: a zombie (Z) or dead (X) process counts
as gone. Reads only; it never signals anything.
"""

from __future__ import annotations


def state(pid: int) -> str | None:
    """The one-letter state of pid (R, S, Z, ...), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def argv(pid: int) -> list[str]:
    """The command line of pid; [] if it does not exist (or is in the middle of an exec)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def live_cmdline(pid: int) -> str | None:
    """argv joined by spaces for a live process; None if it is gone or a zombie.

    "" means the process exists but its command line reads empty (it is exec'ing).
    """
    args = argv(pid)
    if state(pid) in (None, "Z", "X"):
        return None
    return " ".join(args)


def ppid(pid: int) -> int:
    """Parent pid (0 when the process is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
