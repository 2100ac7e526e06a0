"""A whole-job checkpoint's restart record: what a requeued job is restored from.

Design note: shared vocabulary of the controller (which writes it after a whole-job
checkpoint and marks it restored), the prolog and epilog (which read it to plan a requeued
job's virtual cluster and to keep its images) and `hpcmig run`. The record is root's, 0600
(it points at images holding process memory). Atomic writes; no other effects.

Record: `<checkpoint_dir>/<job>/restart.json` = {job_id, restart (the checkpointed
incarnation), uid, containers: {index: {image_dir, manifest_sha256}}, restored}.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcmig.checkpoint import images

RECORD = "restart.json"


@dataclass
class RestartRecord:
    job_id: str
    restart: int
    uid: int
    containers: dict[int, dict[str, Any]]  # index -> {image_dir, manifest_sha256}
    restored: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "restart": self.restart, "uid": self.uid,
                "containers": {str(i): c for i, c in self.containers.items()},
                "restored": self.restored}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RestartRecord:
        return cls(str(data["job_id"]), int(data["restart"]), int(data["uid"]),
                   {int(i): dict(c) for i, c in data["containers"].items()},
                   bool(data.get("restored", False)))


def record_path(checkpoint_dir: str, job_id: str) -> Path:
    return Path(images.job_dir(checkpoint_dir, job_id)) / RECORD


def load(checkpoint_dir: str, job_id: str) -> RestartRecord | None:
    try:
        return RestartRecord.from_json(json.loads(record_path(checkpoint_dir, job_id)
                                                  .read_text()))
    except FileNotFoundError:
        return None


def save(checkpoint_dir: str, rec: RestartRecord) -> None:
    write_private_json(record_path(checkpoint_dir, rec.job_id), rec.to_json())


def write_private_json(path: Path, data: Any) -> None:
    """Replace `path` atomically with `data` as JSON, root's (0600, its directory 0700): the
    job's checkpoint files point at images holding process memory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def pending(checkpoint_dir: str, job_id: str) -> RestartRecord | None:
    """The record of a checkpoint still to be restored (None: none, or already restored)."""
    rec = load(checkpoint_dir, job_id)
    return rec if rec is not None and not rec.restored else None
