"""ContainerSpec validation and the runtime registry."""

from __future__ import annotations

import pytest

from hpcmig.errors import MissingDependency, UsageError
from hpcmig.runtime import base
from hpcmig.runtime.base import Container, ContainerSpec, Runtime, get_runtime, register


def _spec(**kw: object) -> ContainerSpec:
    args: dict[str, object] = dict(name="hpcmig-42-0-1", job_id="42", uid=1000, gid=1000,
                                   netns="/run/netns/hpcmig-10.252.0.2")
    args.update(kw)
    return ContainerSpec(**args)  # type: ignore[arg-type]


def test_valid_spec_roundtrips_through_json() -> None:
    spec = _spec(env={"A": "1"}, limits={"NOFILE": (1024, 4096)}, address="10.252.0.2")
    spec.validate()
    assert ContainerSpec.from_json(spec.to_json()) == spec
    c = Container("x", "ns", 123, spec.netns, spec.address, 7100, "/l", spec)
    assert Container.from_json(c.to_json()) == c
    assert base.container_name(42, 1, 3) == "hpcmig-42-1-3"


@pytest.mark.parametrize("kw, match", [
    ({"uid": 0}, "may not run as root"),
    ({"gid": 0}, "may not run as root"),
    ({"name": "../evil"}, "invalid container name"),
    ({"netns": "hpcmig-x"}, "must be a path"),
    ({"exec_port": 0}, "bad exec port"),
    ({"env": {"1A": "x"}}, "bad environment name"),
    ({"limits": {"NOFILE": (10, 5)}}, "soft 10 above hard 5"),
    ({"limits": {"NOPE": (1, 1)}}, "unknown resource limit"),
])
def test_invalid_specs(kw: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _spec(**kw).validate()


def test_registry_imports_backends_lazily_and_rejects_unknown_names() -> None:
    rt = get_runtime("ns")
    assert rt.name == "ns" and type(rt).__module__ == "hpcmig.runtime.ns"
    assert "ns" in base.runtime_names()
    with pytest.raises(UsageError, match="unknown container runtime"):
        get_runtime("docker-please")


def test_backend_with_missing_tool_registers_but_fails_when_used() -> None:
    @register("test-missing")
    class Missing(Runtime):
        required_tools = ("hpcmig-no-such-tool",)

        def start(self, spec: ContainerSpec) -> Container:
            self.check_available()
            raise AssertionError("unreachable")

        def stop(self, container: Container, grace: float | None = None) -> None: ...

        def is_running(self, container: Container) -> bool:
            return False

    try:
        rt = get_runtime("test-missing")
        with pytest.raises(MissingDependency, match="hpcmig-no-such-tool"):
            rt.start(_spec())
    finally:
        base._REGISTRY.pop("test-missing", None)
