"""hpcmig-rsh: an rsh-compatible launcher agent that runs commands in job containers.

Design note: this module owns the rsh command line (`hpcmig-rsh [-l user] [-n] HOST CMD...`)
and host-name resolution through the job's hosts file ($HPCMIG_HOSTS, lines `addr name...`);
the exec itself is `client.exec_stream`. The remote command gets the exec service's
environment plus the variables `$HPCMIG_RSH_ENV` names (engine=dmtcp uses it). Like rsh, the
command words are joined with spaces and run by `/bin/sh -c`, so both MPICH Hydra
(`-launcher rsh -launcher-exec hpcmig-rsh`, separate words) and Open MPI
(`plm_rsh_agent=hpcmig-rsh`, one shell string) work. Unknown names are an error, never looked
up in DNS: a container talks only to its job's containers.
Exit status: the remote command's, or 255 for hpcmig-rsh's own failures, bad usage included
(like ssh: a launcher must not mistake them for the remote command's exit 2).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass

from hpcmig.errors import HpcmigError, UsageError
from hpcmig.runtime import protocol as P
from hpcmig.runtime.base import DEFAULT_EXEC_PORT

HOSTS_ENV = "HPCMIG_HOSTS"
PORT_ENV = "HPCMIG_EXEC_PORT"
PASS_ENV = "HPCMIG_RSH_ENV"  # names of our variables the remote command gets, comma-separated
USAGE = "usage: hpcmig-rsh [-n] [-l user] [-p port] host command [args...]"
_IGNORED_FLAGS = {"-x", "-4", "-6", "-d", "-T", "-a"}


@dataclass(frozen=True)
class RshArgs:
    host: str
    command: list[str]
    user: str | None = None
    no_stdin: bool = False
    port: int | None = None


def parse_args(argv: list[str]) -> RshArgs:
    """Parse rsh options up to the host; everything after the host is the command."""
    user: str | None = None
    no_stdin = False
    port: int | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        opt = argv[i]
        if opt == "--":
            i += 1
            break
        if opt in ("-l", "-p"):
            if i + 1 >= len(argv):
                raise UsageError(f"option {opt} needs a value", hint=USAGE)
            value = argv[i + 1]
            i += 2
        elif opt.startswith(("-l", "-p")) and len(opt) > 2:
            value = opt[2:]
            opt = opt[:2]
            i += 1
        elif opt == "-n":
            no_stdin = True
            i += 1
            continue
        elif opt in _IGNORED_FLAGS:
            i += 1
            continue
        else:
            raise UsageError(f"unknown option {opt}", hint=USAGE)
        if opt == "-l":
            if not value.strip():
                raise UsageError("option -l needs a user name", hint=USAGE)
            user = value
        else:
            port = parse_port(value, "-p")
    rest = argv[i:]
    if not rest:
        raise UsageError("no host given", hint=USAGE)
    host, command = rest[0], rest[1:]
    if not command:
        raise UsageError("remote login is not supported: give a command", hint=USAGE)
    return RshArgs(host=host, command=command, user=user, no_stdin=no_stdin, port=port)


def parse_port(value: str, what: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        port = int(value.strip())
    except ValueError:
        raise UsageError(f"bad port {value!r} ({what}): a port is a number",
                         hint=USAGE) from None
    if not 1 <= port <= 65535:
        raise UsageError(f"bad port {value!r} ({what}): ports run from 1 to 65535", hint=USAGE)
    return port


def parse_hosts(text: str) -> dict[str, str]:
    """`addr name [alias...]` lines (comments with #) -> {name: addr}; first mapping wins."""
    table: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 2:
            raise UsageError(f"hosts file line {lineno}: expected 'address name', got {raw!r}")
        try:
            addr = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            raise UsageError(f"hosts file line {lineno}: bad address {fields[0]!r}") from None
        for name in fields[1:]:
            table.setdefault(name, addr)
    return table


def resolve(host: str, hosts_path: str | None) -> str:
    """The virtual address of `host`: an IPv4 literal as is, else from the hosts file."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if not hosts_path:
        raise UsageError(f"cannot resolve {host!r}: ${HOSTS_ENV} is not set",
                         hint="hpcmig-rsh runs inside a job container, which sets it")
    try:
        with open(hosts_path, encoding="utf-8") as fh:
            table = parse_hosts(fh.read())
    except OSError as exc:
        raise UsageError(f"cannot read hosts file {hosts_path}: {exc.strerror}") from None
    if host not in table:
        short = host.split(".", 1)[0]
        if short in table:
            return table[short]
        raise UsageError(f"unknown host {host!r}: not in {hosts_path}",
                         hint="only the containers of this job can be reached")
    return table[host]


def remote_argv(command: list[str]) -> list[str]:
    """What rshd would run: the words joined by spaces, interpreted by the shell."""
    return ["/bin/sh", "-c", " ".join(command)]


def passed_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The variables $HPCMIG_RSH_ENV names (those set), for the remote command: like ssh's
    SendEnv, for daemons whose launcher passes them no environment (DMTCP's, Open MPI's)."""
    names = [n.strip() for n in environ.get(PASS_ENV, "").split(",") if n.strip()]
    return {n: environ[n] for n in names if n in environ}


def _stdin_usable() -> bool:
    try:
        os.fstat(0)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    from hpcmig.runtime.client import exec_stream  # keep `--help`-style failures cheap

    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        address = resolve(args.host, os.environ.get(HOSTS_ENV))
        env_port = os.environ.get(PORT_ENV)
        port = args.port or (parse_port(env_port, f"${PORT_ENV}") if env_port
                             else DEFAULT_EXEC_PORT)
        stdin_fd = None if args.no_stdin or not _stdin_usable() else 0
        return exec_stream(address, remote_argv(args.command), port=port, user=args.user,
                           env=passed_env(os.environ) or None, stdin_fd=stdin_fd,
                           forward_signals=True)
    except HpcmigError as exc:
        print(f"hpcmig-rsh: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return P.EXIT_REMOTE_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line for the MPI launcher's log, not a traceback
        if os.environ.get("HPCMIG_DEBUG", "") not in ("", "0"):
            raise
        print(f"hpcmig-rsh: internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
              " (please report it; HPCMIG_DEBUG=1 shows the traceback)", file=sys.stderr)
        return P.EXIT_REMOTE_ERROR


if __name__ == "__main__":
    sys.exit(main())
