"""The DMTCP engine: registered, but not installable on this platform.

Design note: DMTCP checkpoints in user space (no root) by preloading a library into the job
at launch, so it cannot take over a container that was not started under `dmtcp_launch`.
It is in no Debian suite and not on PyPI (PLATFORM.md), so every use raises MissingDependency
with what to install; `get_engine("dmtcp")` itself works, so callers and tests can skip with
the reason (ReFrame habit). The interface is the same as CRIU's.
"""

from __future__ import annotations

from typing import NoReturn

from hpcmig.checkpoint.base import DumpStats, Engine, register
from hpcmig.errors import MissingDependency
from hpcmig.runtime.base import Container


@register("dmtcp")
class DmtcpEngine(Engine):
    required_tools = ("dmtcp_launch", "dmtcp_command", "dmtcp_restart")

    def _unavailable(self) -> NoReturn:
        self.check_available()
        raise MissingDependency(  # tools present: the container integration is still missing
            "checkpoint engine 'dmtcp' is not supported by hpcmig's containers yet",
            hint="use the criu engine")

    def refuse_reasons(self, init_pid: int) -> list[str]:
        self._unavailable()

    def dump(self, container: Container, image_dir: str, *, leave_stopped: bool = True,
             page_server: tuple[str, int] | None = None, netns_key: str | None = None
             ) -> DumpStats:
        self._unavailable()

    def restore(self, image_dir: str, *, netns_path: str, key: str | None = None) -> int:
        self._unavailable()

    def resume(self, init_pid: int) -> None:
        self._unavailable()

    def kill_stopped(self, init_pid: int) -> None:
        self._unavailable()
