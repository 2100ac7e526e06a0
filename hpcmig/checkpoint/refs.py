"""Which container an operation acts on, and the state its copy on a node is in.

Design note: shared vocabulary of the controller (which decides) and the agents (which act):
it sits here, below both, so that neither has to import the other. Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from hpcmig.runtime.base import container_name


class ContainerState(StrEnum):
    ABSENT = "absent"  # no process of this container on the node
    RUNNING = "running"  # its init is alive and not stopped, no engine command on it
    STOPPED = "stopped"  # left stopped by a dump
    BUSY = "busy"  # criu dump/restore of it still running on the node


@dataclass(frozen=True)
class ContainerRef:
    """Which container: job, restart count, index; its address and the job's uid."""

    job_id: str
    restart: int
    index: int
    address: str
    uid: int

    @property
    def name(self) -> str:
        return container_name(self.job_id, self.restart, self.index)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRef:
        return cls(str(data["job_id"]), int(data["restart"]), int(data["index"]),
                   str(data["address"]), int(data["uid"]))
