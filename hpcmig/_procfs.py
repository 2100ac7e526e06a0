"""Reading one process's /proc entries: its argv, its state, its mount table.

The one place hpcmig looks a pid up in /proc, so that "is this still our process" means the
same thing to the testbed and to the container runtime: a zombie (Z) or dead (X) process counts
as gone. Reads only; it never signals anything.
"""

from __future__ import annotations

from typing import NamedTuple


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


class Mount(NamedTuple):
    id: int
    point: str
    fstype: str
    dev: str  # major:minor of the filesystem
    root: str  # the directory of that filesystem mounted here


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a /proc/<pid>/mountinfo text, paths' escapes (\\040 for a space)
    decoded (pure)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 6 and "-" in fields[6:]:
            sep = fields.index("-", 6)
            mounts.append(Mount(int(fields[0]), _unescape(fields[4]),
                                fields[sep + 1] if sep + 1 < len(fields) else "",
                                fields[2], _unescape(fields[3])))
    return mounts


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape").encode("latin-1").decode()


def mounts(pid: int | str = "self") -> list[Mount]:
    """The mount table of pid's mount namespace, as pid sees it."""
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as fh:
        return parse_mountinfo(fh.read())
