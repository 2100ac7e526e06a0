"""A command CRIU runs the moment it has frozen the tree it dumps: its network-lock action.

Design note: `criu dump --network-lock skip` leaves the network to us, but CRIU still runs
its action scripts, and "network-lock" comes right after the tree is frozen and before
anything is dumped. The migration's lock uses that moment to make the container quiet
(docs/runtime.md, "The network lock"): earlier, an answer the container had just written
never left and waited for the restored socket's first retransmission timeout (1 s); later,
the stopped copy's kernel could retransmit with timestamps the restored copy lags behind.
CRIU executes a script by path, so one fixed script, root's and writable by nobody else,
runs the command it finds in its environment (`env`); every other action passes.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Mapping, Sequence

from hpcmig.checkpoint.base import CheckpointError

ENV = "HPCMIG_CRIU_ON_FREEZE"
NAME = "criu-action.sh"
SCRIPT = f"""#!/bin/sh
# hpcmig (hpcmig/checkpoint/_action.py): CRIU runs this at each of its actions. Once it has
# frozen the tree it dumps (network-lock), this runs ${ENV}; a failure there does not
# fail the dump.
if [ "$CRTOOLS_SCRIPT_ACTION" = network-lock ] && [ -n "${ENV}" ]; then
  sh -c "${ENV}" || echo "hpcmig: on freeze: '${ENV}' failed" >&2
fi
exit 0
"""


def script(directory: str) -> str:
    """The script's path in directory (made if needed): a directory and a file of this user
    that nobody else can write, since CRIU runs the file as root."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise CheckpointError(f"{directory} is not a directory of uid {os.geteuid()} that "
                              "only it can write: CRIU's action script cannot live there",
                              hint=f"chown root {directory}; chmod go-w {directory}")
    path = os.path.join(directory, NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == SCRIPT and os.stat(path).st_mode & 0o777 == 0o700:
                return path
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(SCRIPT)
    os.chmod(tmp, 0o700)
    os.replace(tmp, path)
    return path


def env(command: Sequence[str]) -> Mapping[str, str]:
    """CRIU's environment: ours, and the command the script runs once the tree is frozen."""
    return {**os.environ, ENV: shlex.join(command)}
