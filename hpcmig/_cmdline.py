"""What every hpcmig command line shares: one-line usage errors and checked argument types.

Design note: `Parser` is an `ArgumentParser` whose `error()` prints one line,
`<tool>: error: <what is wrong> (see <prog> --help)`, and exits 2 (argparse's own two-line
usage dump is gone). The type functions (`job_id`, `node_name`, `hostlist`, `count`, ...)
raise `argparse.ArgumentTypeError`, so bad input is refused while parsing, before any work or
RPC. Pure: no I/O, nothing heavy imported, so every entry point (`hpcmig`, `hpcmig-agent`)
can use it.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable
from typing import NoReturn

from hpcmig.errors import UsageError
from hpcmig.hostlist import expand

# Slurm job ids are uint32; NO_VAL (0xfffffffe) and above are never real jobs.
MAX_JOB_ID = 0xFFFFFFFD
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed: an error is always one line."""
    return " ".join(text.split())


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        tool = self.prog.split()[0]
        self.exit(2, f"{tool}: error: {one_line(message)} (see {self.prog} --help)\n")


def job_id(text: str) -> int:
    """A Slurm job id: a whole number from 1 (array tasks and steps named as such)."""
    t = text.strip()
    if re.fullmatch(r"[0-9]+_(?:[0-9]+|\[.*\]|\*)", t):
        raise argparse.ArgumentTypeError(
            f"job array ids like {t!r} are not supported: give the task's own job id, "
            "which `squeue -r -o '%A %i'` lists")
    if re.fullmatch(r"[0-9]+\.(?:[0-9]+|batch|extern|interactive)", t):
        raise argparse.ArgumentTypeError(
            f"{t!r} is a job step: give the job id ({t.split('.', 1)[0]})")
    if re.fullmatch(r"[0-9]+\+[0-9]+", t):
        raise argparse.ArgumentTypeError(
            f"heterogeneous job components like {t!r} are not supported")
    if not re.fullmatch(r"[0-9]+", t):
        raise argparse.ArgumentTypeError(
            f"bad job id {text!r}: a job id is a number, as squeue shows it")
    number = int(t)
    if not 1 <= number <= MAX_JOB_ID:
        raise argparse.ArgumentTypeError(
            f"bad job id {text!r}: Slurm job ids run from 1 to {MAX_JOB_ID}")
    return number


def node_name(text: str) -> str:
    """One Slurm node name: letters, digits, '-', '_', '.', starting with a letter or digit."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a node name must not be empty")
    if any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"bad node name {text!r}: node names have no spaces")
    if any(ch in text for ch in "[],"):
        raise argparse.ArgumentTypeError(f"{text!r} is a list of nodes: give one node name")
    if not _NODE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"bad node name {text!r}: a Slurm node name is letters, digits, '-', '_' and '.', "
            "starting with a letter or digit, as `sinfo -N` lists them")
    return text


def hostlist(text: str) -> str:
    """A Slurm hostlist (`node[1-3],gpu7`; may be empty): syntax and every name checked."""
    try:
        names = expand(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message}; a hostlist looks like "
                                          "node[1-3],gpu7") from None
    for name in names:
        try:
            node_name(name)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"in hostlist {text!r}: {exc}") from None
    return text.strip()


def _whole(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None


def count(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """A whole number from `low` (to `high`)."""

    def parse(text: str) -> int:
        n = _whole(text)
        if high is not None and not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {n}")
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {n}")
        return n

    return parse


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text!r}")
    return value


def reason(text: str) -> str:
    """A drain reason: one line of printable text, not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a reason must not be empty")
    if not text.isprintable():
        raise argparse.ArgumentTypeError(f"a reason is one line of printable text, not {text!r}")
    return text.strip()


def ip_address(text: str) -> str:
    """An IPv4 or IPv6 address (to listen on)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad address {text!r}: give an IP address such as 0.0.0.0 or 10.251.0.1"
        ) from None


def absolute_path(text: str) -> str:
    """An absolute path (a daemon's flags are read from anywhere; relative ones are a trap)."""
    if not text.startswith("/") or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be an absolute path, not {text!r}")
    return text.rstrip("/") or "/"
