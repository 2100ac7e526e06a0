"""The whole-job restart record and the specs built from it (no root, no Slurm)."""

from __future__ import annotations

import dataclasses
import stat
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from hpcmig import vcluster
from hpcmig.checkpoint import record
from hpcmig.controller import wholejob as restart
from hpcmig.errors import HpcmigError


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
