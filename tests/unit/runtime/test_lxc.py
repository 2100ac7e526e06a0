"""The generated LXC configuration (pure) and the runtime's registration."""

from __future__ import annotations

import pytest

from hpcmig.runtime import base, get_runtime
from hpcmig.runtime.base import ContainerSpec
from hpcmig.runtime.lxc import LxcError, LxcRuntime, init_argv, lxc_config


def _spec(**kw: object) -> ContainerSpec:
    args: dict[str, object] = dict(name="hpcmig-42-0-1", job_id="42", uid=1000, gid=1000,
                                   netns="/run/netns/hpcmig-10.252.0.2")
    args.update(kw)
    return ContainerSpec(**args)  # type: ignore[arg-type]


def _conf(text: str) -> list[tuple[str, str]]:
    return [tuple(x.strip() for x in line.split("=", 1)) for line in text.splitlines()]  # type: ignore[misc]


def test_lxc_is_registered_and_joins_hpcmigs_network() -> None:
    assert "lxc" in base.runtime_names()
    rt = get_runtime("lxc")
    assert isinstance(rt, LxcRuntime) and rt.makes_own_network is False


def test_host_root_config() -> None:
    spec = _spec(limits={"NOFILE": (1024, 4096)}, hostname="n0")
    conf = _conf(lxc_config(spec, rootfs="/", init=init_argv(spec, "/s/spec.json"),
                            log_file="/s/lxc.log"))
    assert ("lxc.namespace.share.net", "/run/netns/hpcmig-10.252.0.2") in conf
    assert ("lxc.rootfs.path", "dir:/") in conf
    assert ("lxc.uts.name", "n0") in conf
    assert ("lxc.signal.halt", "SIGTERM") in conf
    assert ("lxc.prlimit.nofile", "1024:4096") in conf
    init = dict(conf)["lxc.init.cmd"].split()
    assert init[1:] == ["-m", "hpcmig.runtime.init", "serve", "/s/spec.json"]
    assert not any(k.startswith("lxc.net.") for k, _ in conf)  # no LXC-made network
    assert not any(k == "lxc.environment" for k, _ in conf)


def test_image_config_runs_the_images_python_with_hpcmig_bound() -> None:
    spec = _spec(image="/img/app.sif")
    conf = _conf(lxc_config(spec, rootfs="/r", init=init_argv(spec, "/.hpcmig/state/spec.json"),
                            log_file="/s/lxc.log", munge_socket="/run/tb/munge.socket"))
    assert dict(conf)["lxc.init.cmd"].startswith("/usr/bin/env python3 -m hpcmig.runtime.init")
    assert ("lxc.environment", "PYTHONPATH=/.hpcmig/python") in conf
    assert ("lxc.environment", "HPCMIG_MUNGE_SOCKET=/run/tb/munge.socket") in conf
    assert ("lxc.rootfs.path", "dir:/r") in conf


def test_spaces_in_the_init_command_are_refused() -> None:
    with pytest.raises(LxcError, match="spaces"):
        lxc_config(_spec(), rootfs="/", init=["/a b/python"], log_file="/l")


def test_lxc_containers_on_the_nodes_root_move_image_ones_are_refused() -> None:
    rt = LxcRuntime()
    assert rt.movable(_spec()) is None
    why = rt.movable(_spec(image="/images/app.sif"))
    assert why is not None and "image" in why
    assert get_runtime("ns").movable(_spec(image="/images/app.sif")) is None


def test_prepare_restore_writes_the_spec_the_restored_init_names(tmp_path: object) -> None:
    import json
    import os
    spec = _spec(state_dir=str(tmp_path))
    LxcRuntime().prepare_restore(spec)
    path = os.path.join(str(tmp_path), spec.name, "init", "spec.json")
    with open(path, encoding="utf-8") as fh:
        assert ContainerSpec.from_json(json.load(fh)) == spec
    assert init_argv(spec, path)[-1] == path  # what `start` gives the init
    LxcRuntime().abort_restore(spec)
    assert not os.path.exists(os.path.join(str(tmp_path), spec.name))
    with pytest.raises(LxcError, match="image"):
        LxcRuntime().prepare_restore(_spec(state_dir=str(tmp_path), image="/i.sif"))
