"""What a container is to hpcmig, and the registry of runtimes that make one.

Design note: this module owns the data that crosses the runtime boundary (`ContainerSpec` in,
`Container` out), the abstract `Runtime` with the few methods a backend fills in, and the
name -> backend registry (ReFrame habit: `@register("ns")`, the backend module imported only
when asked for by `get_runtime`; a backend whose tools are missing still registers and fails
with MissingDependency only when used). It does no I/O and knows no namespace or network
detail: the network namespace a container joins is made beforehand by `hpcmig.network`.
"""

from __future__ import annotations

import importlib
import os
import re
import resource
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from hpcmig.errors import MissingDependency, UsageError

DEFAULT_EXEC_PORT = 7100
RESERVED_PATHS = ("/proc", "/sys", "/dev", "/.hpcmig")  # in image roots, hpcmig's own binds

# backend name -> module that registers it when imported
_BACKEND_MODULES: dict[str, str] = {"ns": "hpcmig.runtime.ns", "lxc": "hpcmig.runtime.lxc"}
_REGISTRY: dict[str, type[Runtime]] = {}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RLIMIT_NAMES = {
    name[len("RLIMIT_"):]: getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_")
}


def container_name(job_id: str | int, restart_count: int, index: int) -> str:
    """The name of container `index` of a job run (stable across migration)."""
    return f"hpcmig-{job_id}-{restart_count}-{index}"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a runtime needs to start one container of a job."""

    name: str
    job_id: str
    uid: int
    gid: int
    netns: str  # path of the network namespace to join, made outside (/run/netns/...)
    address: str | None = None  # virtual address the exec service listens on (None: any)
    restart_count: int = 0
    image: str | None = None  # None = the host root, shared; else a .sif file or a directory
    binds: tuple[str, ...] = ()  # image containers: node paths bound read-write, same path
    hostname: str | None = None  # default: the container name
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    limits: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # "NOFILE": (s, h)
    exec_port: int = DEFAULT_EXEC_PORT
    state_dir: str = "/run/hpcmig/containers"
    stop_grace: float = 10.0  # seconds between SIGTERM to the children and SIGKILL

    def validate(self) -> None:
        """Raise UsageError for anything a runtime must not be asked to do."""
        if not _NAME_RE.match(self.name):
            raise UsageError(f"invalid container name {self.name!r} (letters, digits, ._-)")
        if not str(self.job_id):
            raise UsageError("a container needs a job id")
        if self.uid == 0 or self.gid == 0:
            raise UsageError(
                f"container {self.name}: job processes may not run as root (uid/gid 0)",
                hint="pass the job owner's uid and gid",
            )
        if self.uid < 0 or self.gid < 0:
            raise UsageError(f"container {self.name}: negative uid/gid")
        if not self.netns.startswith("/"):
            raise UsageError(f"container {self.name}: netns must be a path, got {self.netns!r}")
        if not 0 < self.exec_port < 65536:
            raise UsageError(f"container {self.name}: bad exec port {self.exec_port}")
        for key in self.env:
            if not _ENV_RE.match(key):
                raise UsageError(f"container {self.name}: bad environment name {key!r}")
        for key, value in self.env.items():
            if "\0" in value:
                raise UsageError(f"container {self.name}: NUL byte in ${key}")
        check_limits(self.limits)
        if self.image is not None and (not self.image.startswith("/") or "\0" in self.image):
            raise UsageError(f"container {self.name}: image must be an absolute path, "
                             f"got {self.image!r}")
        if self.binds and self.image is None:
            raise UsageError(f"container {self.name}: binds need an image (the host root "
                             "already shows every path)")
        check_binds(tuple(self.binds))
        if self.stop_grace < 0:
            raise UsageError("stop_grace must be >= 0")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["env"] = dict(self.env)
        data["limits"] = {k: list(v) for k, v in self.limits.items()}
        data["binds"] = list(self.binds)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerSpec:
        data = dict(data)
        data["limits"] = {k: (int(v[0]), int(v[1])) for k, v in data.get("limits", {}).items()}
        data["env"] = dict(data.get("env", {}))
        data["binds"] = tuple(data.get("binds", ()))
        return cls(**data)


def check_binds(paths: tuple[str, ...]) -> None:
    """UsageError for a bind hpcmig must not make into an image root."""
    for path in paths:
        if not path.startswith("/") or os.path.normpath(path) != path or path == "/":
            raise UsageError(f"bind {path!r} must be an absolute, normalised path, not /")
        if any(path == r or path.startswith(r + "/") for r in RESERVED_PATHS):
            raise UsageError(f"bind {path!r}: {', '.join(RESERVED_PATHS)} belong to hpcmig")


def check_limits(limits: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Validate {"NOFILE": (soft, hard), ...}; -1 means unlimited. Returns a clean copy."""
    clean: dict[str, tuple[int, int]] = {}
    for key, value in limits.items():
        if key not in RLIMIT_NAMES:
            raise UsageError(f"unknown resource limit {key!r}",
                             hint="use names like NOFILE, STACK, MEMLOCK, CORE")
        try:
            soft, hard = (int(v) for v in value)
        except (TypeError, ValueError):
            raise UsageError(f"limit {key} must be a pair [soft, hard]") from None
        inf = resource.RLIM_INFINITY
        soft_n = inf if soft < 0 else soft
        hard_n = inf if hard < 0 else hard
        if hard_n != inf and (soft_n == inf or soft_n > hard_n):
            raise UsageError(f"limit {key}: soft {soft} above hard {hard}")
        clean[key] = (soft_n, hard_n)
    return clean


@dataclass(frozen=True)
class Container:
    """A running container as a runtime reports it; enough to stop, dump or exec into it."""

    name: str
    runtime: str
    init_pid: int  # pid of the container's init in the node's PID namespace
    netns: str
    address: str | None
    exec_port: int
    log_path: str
    spec: ContainerSpec

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Container:
        data = dict(data)
        data["spec"] = ContainerSpec.from_json(data["spec"])
        return cls(**data)


class Runtime(ABC):
    """A way to run containers. Backends fill in `start`, `stop` and `is_running`."""

    name: str = ""
    required_tools: tuple[str, ...] = ()

    def check_available(self) -> None:
        """Raise MissingDependency naming every missing tool."""
        missing = [tool for tool in self.required_tools if shutil.which(tool) is None]
        if missing:
            raise MissingDependency(
                f"container runtime {self.name!r} needs {', '.join(missing)}",
                hint="install the missing programs, or choose another runtime",
            )

    @abstractmethod
    def start(self, spec: ContainerSpec) -> Container:
        """Start the container's init; return once it serves exec requests."""

    @abstractmethod
    def stop(self, container: Container, grace: float | None = None) -> None:
        """Stop everything in the container (TERM, then KILL after `grace`); idempotent."""

    @abstractmethod
    def is_running(self, container: Container) -> bool:
        """Whether the container's init is alive."""

    def enter_argv(self, container: Container) -> list[str]:
        """argv prefix that runs a command as root inside the container's namespaces."""
        raise NotImplementedError(f"runtime {self.name!r} cannot enter containers")

    def prepare_restore(self, spec: ContainerSpec, writable_archive: str | None = None) -> None:
        """Migration target, before `criu restore`: recreate on this node what the dumped
        container needs besides its network (state directory, image root at the same path,
        the writable layer from `save_writable`'s archive)."""
        raise NotImplementedError(f"runtime {self.name!r} cannot restore containers")

    def abort_restore(self, spec: ContainerSpec) -> None:
        """Undo `prepare_restore` (a restore that failed), or release what a killed copy
        left on this node (mounts, state directory); no process of it may be left."""
        raise NotImplementedError(f"runtime {self.name!r} cannot restore containers")

    def movable(self, spec: ContainerSpec) -> str | None:
        """Why CRIU cannot move or checkpoint a container of this spec; None if it can."""
        return f"containers of the {self.name} runtime cannot move or be checkpointed"

    def save_writable(self, container: Container, archive: str) -> bool:
        """Migration source, after the dump: archive the container's writable layer for
        `prepare_restore`; False (nothing written) if the container has none."""
        raise NotImplementedError(f"runtime {self.name!r} cannot migrate containers")


R = TypeVar("R", bound=type[Runtime])


def register(name: str) -> Callable[[R], R]:
    """Class decorator: make a Runtime subclass available as `get_runtime(name)`."""

    def deco(cls: R) -> R:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def runtime_names() -> list[str]:
    return sorted(set(_BACKEND_MODULES) | set(_REGISTRY))


def get_runtime(name: str) -> Runtime:
    """An instance of the runtime called `name`, importing its module on first use."""
    if name not in _REGISTRY and name in _BACKEND_MODULES:
        importlib.import_module(_BACKEND_MODULES[name])
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown container runtime {name!r}", hint=f"choose one of {runtime_names()}"
        ) from None
    return cls()
