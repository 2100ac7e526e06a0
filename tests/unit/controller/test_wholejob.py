"""The whole-job restart record and the specs built from it (no root, no Slurm)."""

from __future__ import annotations

import dataclasses
import os
import stat
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from hpcmig import vcluster
from hpcmig.checkpoint import record
from hpcmig.config import Config
from hpcmig.controller import appckpt
from hpcmig.controller import wholejob as restart
from hpcmig.errors import HpcmigError, UsageError


def make(nodes: list[str], restart_count: int = 0) -> vcluster.VCluster:
    return vcluster.plan(job_id="42", restart=restart_count, user="u", uid=1001, gid=1001,
                         nodes=nodes, node_addrs={n: f"10.0.0.{i}" for i, n in enumerate(nodes)},
                         block=IPv4Network("10.252.0.0/26"))


def test_checkpoint_spec_covers_every_container_with_keyed_image_dirs(tmp_path: Path) -> None:
    vc = make(["a", "b", "c"])
    spec = restart.checkpoint_spec(vc, str(tmp_path))
    assert [(p.node, p.ref.index) for p in spec.containers] == [("a", 0), ("b", 1), ("c", 2)]
    assert spec.then == "stop" and set(spec.nodes) == {"a", "b", "c"}
    assert spec.containers[1].image_dir == str(tmp_path / "42" / "r0" / "c1" / "job")


def test_restore_spec_puts_each_container_on_the_new_plans_node(tmp_path: Path) -> None:
    old = make(["a", "b"])
    rec = record.RestartRecord("42", 0, 1001, {
        p.ref.index: {"image_dir": p.image_dir, "manifest_sha256": f"sha{p.ref.index}"}
        for p in restart.checkpoint_spec(old, str(tmp_path)).containers})
    # the requeued job got other nodes; the prolog plans it with the old incarnation's names
    new = dataclasses.replace(make(["b", "c"], restart_count=1), restart=rec.restart)
    spec = restart.restore_spec(new, rec)
    assert [(p.node, p.ref.index, p.manifest_sha256) for p in spec.containers] == [
        ("b", 0, "sha0"), ("c", 1, "sha1")]
    assert [p.ref.address for p in spec.containers] == [m.address for m in old.members]
    assert [p.ref.name for p in spec.containers] == [old.name(0), old.name(1)]


def test_restore_refuses_a_resized_job(tmp_path: Path) -> None:
    rec = record.RestartRecord("42", 0, 1001, {0: {"image_dir": "x"}, 1: {"image_dir": "y"}})
    with pytest.raises(HpcmigError, match="resized"):
        restart.restore_spec(make(["a", "b", "c"]), rec)


def test_the_record_is_private_and_pending_until_restored(tmp_path: Path) -> None:
    assert record.pending(str(tmp_path), "42") is None
    rec = record.RestartRecord("42", 3, 1001, {0: {"image_dir": "x", "manifest_sha256": None}})
    record.save(str(tmp_path), rec)
    path = record.record_path(str(tmp_path), "42")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert record.pending(str(tmp_path), "42") == rec
    rec.restored = True
    record.save(str(tmp_path), rec)
    assert record.pending(str(tmp_path), "42") is None
    assert record.load(str(tmp_path), "42") == rec


class _Requeued:
    """Just what finish_requeue uses of the service: the job's states in turn, and what it
    asked of Slurm, with the (fake) time it asked."""

    def __init__(self, states: list[str], clock: list[float]) -> None:
        self.states, self.clock = states, clock
        self.calls: list[tuple[str, float, list[str] | None]] = []
        self.slurm = self

    def job(self, job_id: str) -> object:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return dataclasses.make_dataclass("J", ["job_id", "state", "excluded"])(
            int(job_id), state, ())

    def set_excluded(self, job_id: int, nodes: list[str]) -> None:
        self.calls.append(("exclude", self.clock[0], list(nodes)))

    def release(self, job_id: int) -> None:
        self.calls.append(("release", self.clock[0], None))

    def decide(self, message: str, job: str) -> None:
        pass


def test_a_requeued_job_is_released_only_after_its_nodes_settle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """slurmd 22.05 skips the prolog of a job that comes back to a node within 2 s of that
    node's last credential sweep (the old run's epilog): the release waits SLURMD_SETTLE s
    from the moment the epilogs were seen done."""
    clock = [0.0]
    monkeypatch.setattr(restart.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    svc = _Requeued(["COMPLETING", "COMPLETING", "PENDING"], clock)
    assert restart.finish_requeue(svc, "42", {"node2"}) == ["node2"]  # type: ignore[arg-type]
    pending_seen = 1.0  # two polls 0.5 s apart
    assert [c[0] for c in svc.calls] == ["exclude", "release"]
    assert svc.calls[1][1] >= pending_seen + restart.SLURMD_SETTLE >= pending_seen + 2.0


def test_a_job_that_runs_again_already_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(restart.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    svc = _Requeued(["PENDING", "RUNNING"], clock)  # released by an earlier hpcmigd meanwhile
    assert restart.finish_requeue(svc, "42", {"node2"}) == []  # type: ignore[arg-type]
    assert svc.calls == []


def test_restore_releases_a_dmtcp_job_held_after_its_generation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hpcmig checkpoint` of an engine=dmtcp job leaves no restart record (its next run
    restarts from the DMTCP generation): `hpcmig restore` must release it all the same, and
    refuse while the job has no complete generation."""
    from tests.unit.controller.test_appckpt import publish

    clock = [0.0]
    monkeypatch.setattr(restart.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    svc = _Requeued(["PENDING"], clock)
    svc.cfg = Config(state_dir=str(tmp_path / "state"),  # type: ignore[attr-defined]
                     checkpoint_dir=str(tmp_path / "ckpt"))
    directory = tmp_path / "hpcmig-dmtcp-42"
    (directory / "step-1").mkdir(parents=True)
    appckpt.register(svc.cfg.state_dir, "42", appckpt.AppDir(  # type: ignore[attr-defined]
        str(directory), os.getuid(), os.getgid(), "dmtcp"))
    with pytest.raises(UsageError, match="no checkpoint waiting"):
        restart.restore(svc, "42", "node2")  # type: ignore[arg-type]
    publish(directory / "step-1", 1, 1000.0, uid=os.getuid())
    report = restart.restore(svc, "42", "node2")  # type: ignore[arg-type]
    assert [c[0] for c in svc.calls] == ["exclude", "release"]
    assert report.rows == [{"job": "42", "excluded": ["node2"]}]
