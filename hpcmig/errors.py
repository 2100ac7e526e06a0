"""The one exception root of hpcmig.

Every error a user can cause or meet derives from `HpcmigError`; the CLI turns it into one line
(`hpcmig: error: ...`) and an exit code. Messages say what is wrong and, where it helps, what
to do next (`hint`). Nothing here does I/O.
"""

from __future__ import annotations


class HpcmigError(Exception):
    """Root of every error hpcmig raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(HpcmigError):
    """Bad input from the command line or a file."""

    exit_code = 2


class PermissionDenied(HpcmigError):
    """The caller may not do this (not root, not the job's owner)."""

    exit_code = 13


class CommandError(HpcmigError):
    """An external command failed or timed out; carries everything needed to diagnose it."""

    def __init__(
        self,
        argv: list[str],
        returncode: int | None,
        stdout: str,
        stderr: str,
        timed_out: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        self.timeout = timeout
        cmd = " ".join(argv)
        if timed_out:
            msg = f"command timed out after {timeout:g}s: {cmd}"
        else:
            msg = f"command failed with exit code {returncode}: {cmd}"
        detail = (stderr.strip() or stdout.strip()).splitlines()
        if detail:
            msg += f": {detail[-1]}"
        super().__init__(msg)


class MissingDependency(HpcmigError):
    """A program or package hpcmig needs is not installed."""

    exit_code = 3


class SlurmError(HpcmigError):
    """Slurm refused a request or answered something we cannot read."""


class SlurmNotConfigured(SlurmError):
    """Slurm's commands find no configuration (no slurm.conf, no configless source)."""

    exit_code = 3  # like MissingDependency: something must be set up first


class SlurmUnreachable(SlurmError):
    """Slurm's commands cannot reach slurmctld (down, wrong host, firewall, timeout)."""


class SlurmRefused(SlurmError):
    """slurmctld answered and refused (permission, bad id or name, wrong state)."""


class TestbedError(HpcmigError):
    """The built-in testbed could not be brought up, inspected or taken down."""

    __test__ = False  # not a pytest test class
