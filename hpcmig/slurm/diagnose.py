"""What a failed Slurm command means: Slurm is not configured, not reachable, or refused.

Design note: pure. `slurm_error` reads a failed command (`CommandError`: argv, exit code,
stderr, timeout) and returns the `SlurmError` to raise: `SlurmNotConfigured`,
`SlurmUnreachable` or `SlurmRefused`, each one line with Slurm's own words and what to check
(the daemon's errors travel to the CLI as that line), or a plain `SlurmError` when the words
are not ones we know. `missing_command` says what to install when a Slurm command is absent.
`config_warnings` says what in the cluster's configuration works against hpcmig.
The words are those of Slurm 22.05 and later (libslurm's error strings, the config loader);
match them case-insensitively, on any line of stderr, since Slurm often prints the cause
before the last line.
"""

from __future__ import annotations

import re

from hpcmig.errors import (
    CommandError,
    MissingDependency,
    SlurmError,
    SlurmNotConfigured,
    SlurmRefused,
    SlurmUnreachable,
)

SLURM_COMMANDS = {"sinfo", "squeue", "scontrol", "sbatch", "scancel", "sacct", "srun"}

NOT_CONFIGURED_HINT = ("install the cluster's slurm.conf as /etc/slurm/slurm.conf or set "
                       "SLURM_CONF to it; on one machine `hpcmig testbed up` makes one")
UNREACHABLE_HINT = ("is slurmctld running, and is SlurmctldHost in slurm.conf right? "
                    "check with `scontrol ping`")
INSTALL_HINT = "install Slurm's client commands (Debian: apt-get install slurm-client)"

NOT_CONFIGURED = re.compile(
    r"could not establish a configuration source"
    r"|unable to process configuration file"
    r"|(cannot|unable to) (stat|open|read) (config )?file \S*slurm\.conf", re.IGNORECASE)
UNREACHABLE = re.compile(
    r"unable to contact slurm controller"
    r"|connection refused"
    r"|socket timed out on send/recv operation"
    r"|communication connection failure"
    r"|zero bytes were transmitted or received"
    r"|no route to host"
    r"|network is unreachable", re.IGNORECASE)
AUTHENTICATION = re.compile(r"protocol authentication error|invalid authentication credential"
                            r"|munge (encode|decode) failed", re.IGNORECASE)
AUTHENTICATION_HINT = ("is munged running, with the cluster's key? "
                       "check with `munge -n | unmunge`")
# (pattern, what to check); the first pattern that matches a line wins
REFUSED: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"access/permission denied|invalid user id|permission denied", re.IGNORECASE),
     "hpcmig changes Slurm as root or a Slurm administrator (hpcmigd runs as root)"),
    (re.compile(r"invalid job id specified", re.IGNORECASE),
     "check the job id with squeue"),
    (re.compile(r"invalid node name specified", re.IGNORECASE),
     "check the node name with `sinfo -N`"),
    (re.compile(r"requested operation (is presently disabled|not supported)"
                r"|invalid node state specified"
                r"|job is no longer pending execution"
                r"|job is pending execution"
                r"|job/step already completing or completed"
                r"|requested node configuration is not available"
                r"|requested partition configuration not available"
                r"|invalid account or account/partition combination"
                r"|batch job submission failed", re.IGNORECASE),
     None),
)


def _words(text: str) -> str:
    return " ".join(text.split())


def _line(stderr: str, pattern: re.Pattern[str]) -> str | None:
    """The first line of stderr that pattern matches (whitespace collapsed)."""
    for raw in stderr.splitlines():
        if pattern.search(raw):
            return _words(raw)
    return None


def slurm_error(exc: CommandError) -> SlurmError:
    """The error a failed Slurm command stands for (one line, with what to check)."""
    cmd = " ".join(exc.argv)
    text = f"{exc.stderr}\n{exc.stdout}"
    said = _line(text, NOT_CONFIGURED)
    if said is not None:
        return SlurmNotConfigured(f"Slurm is not configured on this machine: `{cmd}` said: "
                                  f"{said}", NOT_CONFIGURED_HINT)
    said = _line(text, AUTHENTICATION)
    if said is not None:
        return SlurmRefused(f"Slurm did not accept the credentials of `{cmd}`: {said}",
                            AUTHENTICATION_HINT)
    for pattern, hint in REFUSED:
        said = _line(text, pattern)
        if said is not None:
            return SlurmRefused(f"Slurm refused `{cmd}`: {said}", hint)
    said = _line(text, UNREACHABLE)
    if said is not None:
        return SlurmUnreachable(f"cannot reach the Slurm controller: `{cmd}` said: {said}",
                                UNREACHABLE_HINT)
    if exc.timed_out:
        waited = f" within {exc.timeout:g} s" if exc.timeout is not None else ""
        return SlurmUnreachable(f"cannot reach the Slurm controller: `{cmd}` got no "
                                f"answer{waited}", UNREACHABLE_HINT)
    return SlurmError(exc.message)


def missing_command(argv: list[str], exc: MissingDependency) -> MissingDependency:
    """A missing Slurm command says what to install; anything else is left as it is."""
    if argv and argv[0] in SLURM_COMMANDS:
        return MissingDependency(f"Slurm's `{argv[0]}` command is not installed or not on "
                                 "PATH", INSTALL_HINT)
    return exc


def config_warnings(config: dict[str, str]) -> list[str]:
    """What in the cluster's configuration (`Slurm.config()`) works against hpcmig, one line
    each, with what to do (docs/admin.md)."""
    warnings = []
    flags = {f.strip().lower() for f in config.get("PrologFlags", "").split(",")}
    if "contain" in flags:
        version = config.get("SLURM_VERSION", "unknown")
        warnings.append(
            f"PrologFlags has Contain (Slurm {version}): when hpcmig moves a container off a "
            "node and shrinks its job, Slurm 22.05's slurmstepd can hang on the extern step "
            "and drain that node 'Kill task failed' UnkillableStepTimeout later with nothing "
            "left running; hpcmig needs only PrologFlags=Alloc (docs/admin.md)")
    if config.get("Prolog", "(null)") in ("", "(null)") or "alloc" not in flags:
        warnings.append("slurm.conf lacks Prolog=.../hpcmig-prolog with PrologFlags=Alloc: "
                        "jobs that opt in get no containers (docs/admin.md)")
    return warnings
