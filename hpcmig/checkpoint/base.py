"""What a checkpoint engine is to hpcmig, the data it returns, and the registry of engines.

Design note: this module owns the engine boundary: `Engine` (the few methods a backend fills
in: refuse, dump, restore, resume, kill), `DumpStats` (what a dump reports, JSON-able so that
it crosses the agent's RPC), the errors, and the name -> backend registry (ReFrame habit:
`@register("criu")`, the backend module imported only when `get_engine` asks for it; a backend
whose tools are missing still registers and fails with MissingDependency when used). It does
no I/O. Engine methods act in the *calling* process's namespaces: the agent calls them inside
its node's network and mount namespaces; nothing here enters a namespace.
"""

from __future__ import annotations

import importlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from hpcmig.errors import HpcmigError, MissingDependency, UsageError
from hpcmig.runtime.base import Container

_BACKEND_MODULES: dict[str, str] = {
    "criu": "hpcmig.checkpoint.criu",
    "dmtcp": "hpcmig.checkpoint.dmtcp",
}
_REGISTRY: dict[str, type[Engine]] = {}


class CheckpointError(HpcmigError):
    """A dump, restore or image transfer failed; the caller rolls back."""


def log_tail(path: str, lines: int = 20) -> str:
    """The last `lines` lines of an engine's log, for an EngineError (a note if missing)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return f"(no {os.path.basename(path)} in {os.path.dirname(path)})"


class EngineError(CheckpointError):
    """The engine's command failed: carries the command, its exit code and its log's tail."""

    def __init__(self, what: str, argv: list[str], returncode: int | None, log_tail: str,
                 hint: str | None = None) -> None:
        self.what = what
        self.argv = list(argv)
        self.returncode = returncode
        self.log_tail = log_tail
        code = "timed out" if returncode is None else f"exit code {returncode}"
        msg = f"{what} failed ({code}): {' '.join(self.argv)}"
        if log_tail.strip():
            msg += "\n" + log_tail.rstrip()
        super().__init__(msg, hint)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across a fork/RPC boundary
        return (type(self), (self.what, self.argv, self.returncode, self.log_tail, self.hint))


class Refused(CheckpointError):
    """The container holds something the engine cannot checkpoint (RDMA, GPU...)."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("cannot checkpoint: " + "; ".join(self.reasons),
                         hint="the job uses devices the engine cannot dump; it cannot migrate")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reasons,))


class CorruptImage(CheckpointError):
    """An image directory does not match its manifest (or has none): never restore it."""


@dataclass(frozen=True)
class DumpStats:
    """What one container's dump produced."""

    seconds: float  # the engine's dump command, wall clock
    image_bytes: int  # bytes of image files (both sides, streamed pages included when known)
    manifest_sha256: str  # digest of MANIFEST.json: the target verifies against it
    streamed_bytes: int = 0  # bytes sent through the page server (0: shared directory)
    lazy_address: str | None = None  # post-copy: the source's page server, still serving
    lazy_port: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DumpStats:
        return cls(**data)


class Engine(ABC):
    """A checkpoint engine for one container at a time, in the caller's namespaces."""

    name: str = ""
    required_tools: tuple[str, ...] = ()

    def check_available(self) -> None:
        missing = [t for t in self.required_tools if shutil.which(t) is None]
        if missing:
            raise MissingDependency(f"checkpoint engine {self.name!r} needs "
                                    f"{', '.join(missing)}", hint="install it, or use criu")

    @abstractmethod
    def refuse_reasons(self, init_pid: int) -> list[str]:
        """What in the container this engine cannot dump; [] if nothing."""

    @abstractmethod
    def dump(self, container: Container, image_dir: str, *, leave_stopped: bool = True,
             page_server: tuple[str, int] | None = None, netns_key: str | None = None
             ) -> DumpStats:
        """Dump the container's process tree into image_dir (pages maybe to a page server)."""

    @abstractmethod
    def restore(self, image_dir: str, *, netns_path: str, key: str | None = None) -> int:
        """Restore the tree into the network namespace at netns_path; return the init's pid."""

    @abstractmethod
    def resume(self, init_pid: int) -> None:
        """Continue a tree a dump left stopped (rollback)."""

    @abstractmethod
    def kill_stopped(self, init_pid: int) -> None:
        """Kill a dumped tree (after the restore elsewhere succeeded)."""


E = TypeVar("E", bound=type[Engine])


def register(name: str) -> Callable[[E], E]:
    def deco(cls: E) -> E:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def engine_names() -> list[str]:
    return sorted(set(_BACKEND_MODULES) | set(_REGISTRY))


def get_engine(name: str = "criu") -> Engine:
    """An instance of the engine called `name`, importing its module on first use."""
    if name not in _REGISTRY and name in _BACKEND_MODULES:
        importlib.import_module(_BACKEND_MODULES[name])
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown checkpoint engine {name!r}",
                         hint=f"choose one of {engine_names()}") from None
    return cls()
