"""hpcmig.checkpoint: checkpoint engines, image directories and image transport.

Design note: the package surface is the engine-neutral part (`Engine`, `get_engine`,
`DumpStats`, the errors) and the image layout (`images`). Engines (`criu`, `dmtcp`) are
imported lazily by name; `criu` and `stream` act in the caller's namespaces (the node
agent's). Which container moves where, and rollback, belong to hpcmig.controller.
"""

from hpcmig.checkpoint.base import (
    CheckpointError,
    CorruptImage,
    DumpStats,
    Engine,
    EngineError,
    Refused,
    engine_names,
    get_engine,
    register,
)

__all__ = [
    "CheckpointError",
    "CorruptImage",
    "DumpStats",
    "Engine",
    "EngineError",
    "Refused",
    "engine_names",
    "get_engine",
    "register",
]
