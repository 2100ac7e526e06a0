"""The agent's checkpoint operations on image containers, without root, CRIU or mounts.

CRIU, the mounts (`hpcmig.runtime.image`) and killing are replaced by recorders; the agent's
records, the state directories, the image directory and its manifest are real (in tmp_path).
What is checked: the writable layer is part of the dump (manifest, verify), the target's root
is rebuilt from it before `criu restore` and released when the restore fails, and killing a
copy releases its root, with or without a record of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hpcmig.agent import ckpt
from hpcmig.agent.node import JobRecord, NodeAgent
from hpcmig.agent.server import Call
from hpcmig.auth import Identity
from hpcmig.checkpoint import _action, criu, images
from hpcmig.checkpoint.base import EngineError
from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.config import Config
from hpcmig.errors import HpcmigError
from hpcmig.network.plan import container_net
from hpcmig.runtime import image
from hpcmig.runtime.base import Container, ContainerSpec
from hpcmig.vcluster import Member, VCluster

JOB = "7"
UID = 1001
REF = ContainerRef(JOB, 0, 1, "10.252.0.2", UID)


@pytest.fixture
def agent(tmp_path: Path) -> NodeAgent:
    cfg = Config(state_dir=str(tmp_path / "state"), run_dir=str(tmp_path / "run"),
                 checkpoint_dir=str(tmp_path / "ckpt"))
    a = NodeAgent("node3", cfg)
    vc = VCluster(JOB, 0, "hpcuser", UID, UID, "10.252.0.0/26",
                  (Member(0, "node1", "10.0.0.1", "10.252.0.1"),
                   Member(1, "node2", "10.0.0.2", "10.252.0.2")),
                  spares=("node3",), image="/home/hpcuser/app.sif")
    a.save(JobRecord(vc, {}))
    return a


@pytest.fixture
def effects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every mount, kill and engine call, in order."""
    calls: list[tuple[str, Any]] = []

    def prepare_root(spec: ContainerSpec, archive: str | None = None) -> str:
        calls.append(("prepare_root", (spec, archive)))
        return image.layout(spec).root

    def save_writable(spec: ContainerSpec, archive: str) -> None:
        calls.append(("save_writable", archive))
        Path(archive).write_bytes(b"upper/ and shm/ of " + spec.name.encode())

    monkeypatch.setattr(image, "prepare_root", prepare_root)
    monkeypatch.setattr(image, "release_root", lambda spec: calls.append(("release", spec)))
    monkeypatch.setattr(image, "save_writable", save_writable)
    monkeypatch.setattr(criu, "kill_in_netns", lambda path, what: calls.append(("kill", path)))
    return calls


def call(agent: NodeAgent) -> Call:
    return Call(Identity(0, 0), agent)


def spec(agent: NodeAgent, img: str | None = "/home/hpcuser/app.sif",
         netns: str = "/run/netns/hpcmig-7-0-1.node2") -> ContainerSpec:
    return ContainerSpec(name=REF.name, job_id=JOB, uid=UID, gid=UID, netns=netns,
                         address=REF.address, image=img,
                         state_dir=agent.config.containers_dir)


def container(s: ContainerSpec, pid: int = 4242) -> Container:
    return Container(s.name, "ns", pid, s.netns, s.address, s.exec_port,
                     os.path.join(s.state_dir, s.name, "init.log"), s)


def image_dir(agent: NodeAgent) -> str:
    path = images.image_dir(agent.config.checkpoint_dir, JOB, 0, 1, "m1")
    os.makedirs(path)
    return path


def dump(agent: NodeAgent, c: Container, monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path, ran: list[Any] | None = None) -> tuple[str, str]:
    """The agent's dump of c (on its record) with a fake CRIU; (image dir, manifest sha).
    ran: gets CRIU's (argv, environment)."""
    netns = tmp_path / "netns"
    netns.touch()
    c = Container(**{**c.__dict__, "netns": str(netns)})
    rec = agent.load(JOB)
    assert rec is not None
    rec.containers[REF.index] = c
    agent.save(rec)

    def fake_criu(what: str, argv: list[str], d: str, log: str, timeout: float,
                  env: dict[str, str] | None = None) -> str:
        if ran is not None:
            ran.append((argv, env))
        Path(d, "core-1.img").write_bytes(b"core")
        return "Memory pages written: 0\n"

    monkeypatch.setattr(criu, "refuse_reasons", lambda pid: [])
    monkeypatch.setattr(criu, "_run", fake_criu)
    monkeypatch.setattr(images, "seal", lambda path, uid: True)  # chown to root needs root
    d = image_dir(agent)
    stats = ckpt.dump(call(agent), JOB, REF.to_json(), d)
    return d, str(stats["manifest_sha256"])


def test_the_writable_layer_is_part_of_the_dump(
        agent: NodeAgent, effects: list, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    d, sha = dump(agent, container(spec(agent)), monkeypatch, tmp_path)
    assert effects == [("save_writable", os.path.join(d, ckpt.WRITABLE))]
    manifest = images.verify(d, sha)  # covered by the manifest the controller journals
    assert set(manifest.files) == {"core-1.img", "container.json", ckpt.WRITABLE}
    Path(d, ckpt.WRITABLE).write_bytes(b"tampered")
    with pytest.raises(HpcmigError, match="writable.tar"):
        images.verify(d, sha)


def test_the_dump_quiets_the_container_once_criu_has_frozen_it(
        agent: NodeAgent, effects: list, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Its host veth goes down from CRIU's network-lock action (hpcmig.checkpoint._action),
    not at the lock: an answer written before the freeze still leaves."""
    ran: list[Any] = []
    dump(agent, container(spec(agent)), monkeypatch, tmp_path, ran)
    [(argv, env)] = ran
    script = argv[argv.index("--action-script") + 1]
    assert os.stat(script).st_mode & 0o777 == 0o700
    assert env[_action.ENV] == f"ip link set {container_net(REF.address).host_veth} down"


def test_a_host_root_container_dumps_no_writable_layer(
        agent: NodeAgent, effects: list, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    d, sha = dump(agent, container(spec(agent, img=None)), monkeypatch, tmp_path)
    assert effects == [] and not os.path.exists(os.path.join(d, ckpt.WRITABLE))
    assert set(images.verify(d, sha).files) == {"core-1.img", "container.json"}


def saved(agent: NodeAgent, img: str | None = "/home/hpcuser/app.sif") -> str:
    """An image dir as the source's dump left it: container.json (+ writable.tar)."""
    d = image_dir(agent)
    with open(os.path.join(d, images.CONTAINER_FILE), "w") as fh:
        json.dump({"container": container(spec(agent, img)).to_json(), "netns_key": "k"}, fh)
    if img is not None:
        Path(d, ckpt.WRITABLE).write_bytes(b"layer")
    return d


def test_restore_rebuilds_the_root_from_the_dump_before_criu(
        agent: NodeAgent, effects: list, monkeypatch: pytest.MonkeyPatch) -> None:
    d = saved(agent)
    target_netns = "/run/netns/hpcmig-7-0-1.node3"

    def restore_container(image_dir: str, *, netns_path: str,
                          lazy_from: object = None) -> Container:
        effects.append(("criu restore", netns_path))
        s = ContainerSpec.from_json(json.loads(Path(
            agent.config.containers_dir, REF.name, "spec.json").read_text()))
        return container(s, pid=5151)

    monkeypatch.setattr(criu, "restore_container", restore_container)
    assert ckpt.restore(call(agent), JOB, REF.to_json(), d) == 5151
    (what, (got, archive)), restored = effects
    assert what == "prepare_root" and archive == os.path.join(d, ckpt.WRITABLE)
    assert got == spec(agent, netns=target_netns)  # the source's spec, in the target's netns
    assert restored == ("criu restore", target_netns)
    rec = agent.load(JOB)
    assert rec is not None and rec.containers[REF.index].init_pid == 5151


def test_a_failed_restore_kills_what_it_left_and_releases_the_root(
        agent: NodeAgent, effects: list, monkeypatch: pytest.MonkeyPatch) -> None:
    d = saved(agent)

    def restore_container(image_dir: str, *, netns_path: str,
                          lazy_from: object = None) -> Container:
        raise EngineError("criu restore", ["criu", "restore"], 1, "Error (criu/files.c)")

    monkeypatch.setattr(criu, "restore_container", restore_container)
    with pytest.raises(EngineError):
        ckpt.restore(call(agent), JOB, REF.to_json(), d)
    assert [what for what, _ in effects] == ["prepare_root", "kill", "release"]
    assert effects[2][1].name == REF.name
    assert not os.path.exists(os.path.join(agent.config.containers_dir, REF.name))
    rec = agent.load(JOB)
    assert rec is not None and rec.containers == {}


def test_restoring_a_host_root_container_mounts_nothing(
        agent: NodeAgent, effects: list, monkeypatch: pytest.MonkeyPatch) -> None:
    d = saved(agent, img=None)
    monkeypatch.setattr(criu, "restore_container",
                        lambda image_dir, netns_path, lazy_from=None:
                        container(spec(agent, None), 6000))
    assert ckpt.restore(call(agent), JOB, REF.to_json(), d) == 6000
    assert effects == []
    assert os.path.exists(os.path.join(agent.config.containers_dir, REF.name, "spec.json"))


@pytest.mark.parametrize("recorded", [True, False], ids=["on-record", "restore-cut-short"])
def test_killing_a_copy_releases_its_root(agent: NodeAgent, effects: list,
                                          recorded: bool) -> None:
    s = spec(agent)
    ckpt.NsRuntime()._write_state(s)  # what start / prepare_restore leave on the node
    rec = agent.load(JOB)
    assert rec is not None
    if recorded:
        rec.containers[REF.index] = container(s)
        agent.save(rec)
    ckpt.kill(call(agent), JOB, REF.to_json())
    assert [what for what, _ in effects] == ["kill", "release"]
    assert effects[1][1] == s
    assert not os.path.exists(os.path.join(agent.config.containers_dir, REF.name))
    rec = agent.load(JOB)
    assert rec is not None and rec.containers == {}
    ckpt.kill(call(agent), JOB, REF.to_json())  # idempotent: nothing left to release
    assert [what for what, _ in effects] == ["kill", "release", "kill"]


def test_kill_never_removes_a_state_directory_that_still_has_mounts(
        agent: NodeAgent, effects: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """A home bound into the root must never be walked into by the removal."""
    s = spec(agent)
    ckpt.NsRuntime()._write_state(s)
    base = os.path.join(agent.config.containers_dir, REF.name)
    monkeypatch.setattr(image, "mounts_under", lambda top: [f"{base}/root/home/hpcuser"])
    with pytest.raises(HpcmigError, match="still has mounts"):
        ckpt.kill(call(agent), JOB, REF.to_json())
    assert os.path.exists(os.path.join(base, "spec.json"))
