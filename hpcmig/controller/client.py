"""How every client finds and calls hpcmigd: the address in hpcmig.toml, MUNGE RPC.

Design note: the same wire format and authentication as the agents (hpcmig.agent.rpc); the
request's target is `hpcmigd`. When nothing listens, the error says so in one line with how
to start it (`ControllerDown`). Imports nothing heavy: the CLI's verbs and `hpcmig run` use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hpcmig import config as site_config
from hpcmig.agent.rpc import AgentClient, RpcError, Unreachable

TARGET = "hpcmigd"
START_HINT = ("start it: `systemctl start hpcmigd` (unit in slurm-plugins/systemd), or "
              "`hpcmigd &` as root; on the testbed `hpcmig testbed up` starts it")


class ControllerDown(Unreachable):
    """hpcmigd does not run (or not where hpcmig.toml says)."""


class ControllerClient(AgentClient):
    what = "hpcmigd"
    hint = START_HINT

    def __init__(self, cfg: site_config.Config | None = None, timeout: float = 3600.0) -> None:
        cfg = cfg or site_config.load()
        super().__init__(TARGET, cfg.controller_host, cfg.controller_port,
                         cfg.munge_socket or None, timeout)

    @property
    def _on(self) -> str:
        return ""

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        try:
            return super().call(op, timeout=timeout, **args)
        except ControllerDown:
            raise
        except Unreachable as exc:
            raise ControllerDown(f"hpcmigd is not running ({exc.message})",
                                 hint=START_HINT) from None


def ask(controller: Any, op: str, *, within: float, every: float, say: Callable[[str], None],
        timeout: float, **args: Any) -> Any:
    """hpcmigd's answer to `op`, asked again while hpcmigd is down or went away in the middle
    of the call (no answer: RpcError), for up to `within` s; `say` tells each retry. For
    operations that hpcmigd finishes exactly once however often asked (restart_lost,
    restart_stuck: a restarted hpcmigd finishes the restart an earlier one began)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return controller.call(op, timeout=timeout, **args)
        except RpcError as exc:  # not an answer: hpcmigd stopped or is not there
            if time.monotonic() >= deadline:
                raise
            say(f"{exc.message}; asking again")
            time.sleep(every)
