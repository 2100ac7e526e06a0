"""hpcmig.runtime: containers for the virtual cluster.

Design note: the package surface is the backend-neutral part only (`ContainerSpec`,
`Container`, `Runtime`, `get_runtime`); backends (`ns`) are imported lazily by name, and the
init, the exec client and `hpcmig-rsh` are their own modules so that a container's PID 1 and
the rsh agent import as little as possible.
"""

from hpcmig.runtime.base import (
    DEFAULT_EXEC_PORT,
    Container,
    ContainerSpec,
    Runtime,
    container_name,
    get_runtime,
    register,
    runtime_names,
)

__all__ = [
    "DEFAULT_EXEC_PORT",
    "Container",
    "ContainerSpec",
    "Runtime",
    "container_name",
    "get_runtime",
    "register",
    "runtime_names",
]
