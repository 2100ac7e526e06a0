"""Whole-job checkpoint, requeue and restore under Slurm (`hpcmig checkpoint` / `restore`).

Design note: `checkpoint` runs the journaled whole-job machine (jobckpt) over the agents with
`then=stop`, writes the job's restart record next to its images and requeues the job held
(`scontrol requeuehold`: it keeps its id, its address block and its shared directory; Slurm
counts the restart). `restore` optionally excludes nodes and releases it. When the job runs
again, every node's prolog sees the record and builds its part of the virtual cluster with
the checkpointed incarnation's names and addresses but no container (`restoring`); the first
`hpcmig run` of the batch script asks its node's agent to restore the whole job on the new
allocation (`restore_on_allocation`, the agent acting as controller), then steps that ended
before the checkpoint return their recorded exit code and the step that was running is
reattached (hpcmig/cli/run.py). The record is root's (images hold process memory); the
epilog removes it with the images when the job ends.

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
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.jobckpt import JobSpec, Placement, checkpoint_job, restore_job
from hpcmig.controller.journal import Journal
from hpcmig.controller.ops import ContainerRef
from hpcmig.errors import HpcmigError
from hpcmig.vcluster import VCluster

RECORD = "restart.json"
TAG = "job"  # image tag of whole-job checkpoints (migrations use move-<ms>)


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
    path = record_path(checkpoint_dir, rec.job_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(rec.to_json(), fh)
    tmp.replace(path)


def pending(checkpoint_dir: str, job_id: str) -> RestartRecord | None:
    """The record of a checkpoint still to be restored (None: none, or already restored)."""
    rec = load(checkpoint_dir, job_id)
    return rec if rec is not None and not rec.restored else None


def _ref(vc: VCluster, index: int) -> ContainerRef:
    return ContainerRef(vc.job_id, vc.restart, index, vc.member(index).address, vc.uid)


def checkpoint_spec(vc: VCluster, checkpoint_dir: str, then: str = "stop") -> JobSpec:
    """Every container of the job where it runs, images under the job's checkpoint tree."""
    return JobSpec(vc.job_id, tuple(
        Placement(m.node, _ref(vc, m.index),
                  images.image_dir(checkpoint_dir, vc.job_id, vc.restart, m.index, TAG))
        for m in sorted(vc.members, key=lambda m: m.index)), tuple(vc.nodes()), then)


def restore_spec(vc: VCluster, rec: RestartRecord) -> JobSpec:
    """Container i on the node the new allocation's plan gives it, from its images."""
    missing = sorted(set(rec.containers) ^ {m.index for m in vc.members})
    if missing:
        raise HpcmigError(f"job {vc.job_id}: the checkpoint's containers and the new plan "
                          f"differ (containers {missing}); was the job resized?")
    return JobSpec(vc.job_id, tuple(
        Placement(m.node, _ref(vc, m.index), rec.containers[m.index]["image_dir"],
                  rec.containers[m.index].get("manifest_sha256"))
        for m in sorted(vc.members, key=lambda m: m.index)), tuple(vc.nodes()))


def checkpoint(journal: Journal, ops: AgentOps, vc: VCluster, checkpoint_dir: str,
               then: str = "stop") -> RestartRecord:
    """Checkpoint the whole job; with `stop`, leave the restart record for its next run."""
    spec = checkpoint_spec(vc, checkpoint_dir, then)
    outcome = checkpoint_job(journal, ops, spec)
    if outcome.state != "done":
        raise HpcmigError(f"job {vc.job_id}: checkpoint {outcome.state}: {outcome.error}")
    dumps = outcome.data.get("dumps", {})
    rec = RestartRecord(vc.job_id, vc.restart, vc.uid, {
        p.ref.index: {"image_dir": p.image_dir,
                      "manifest_sha256": dumps.get(str(p.ref.index), {}).get("manifest_sha256")}
        for p in spec.containers}, restored=then != "stop")
    if then == "stop":
        save(checkpoint_dir, rec)
    return rec


def restore_on_allocation(journal: Journal, ops: AgentOps, vc: VCluster,
                          checkpoint_dir: str) -> bool:
    """Restore the job's pending checkpoint on the nodes of `vc`; False if none is pending."""
    rec = pending(checkpoint_dir, vc.job_id)
    if rec is None:
        return False
    outcome = restore_job(journal, ops, restore_spec(vc, rec))
    if outcome.state != "done":
        raise HpcmigError(f"job {vc.job_id}: restore {outcome.state}: {outcome.error}")
    rec.restored = True
    save(checkpoint_dir, rec)
    return True
