"""The engine registry and what CRIU is refused on (fixture /proc trees, no root)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from hpcmig.checkpoint import EngineError, Refused, engine_names, get_engine
from hpcmig.checkpoint import criu as criu_engine
from hpcmig.errors import UsageError


def test_registry_knows_criu_and_dmtcp() -> None:
    assert engine_names() == ["criu", "dmtcp"]
    assert get_engine("criu").name == "criu"
    with pytest.raises(UsageError):
        get_engine("blcr")


def test_dmtcp_registers_but_refuses_container_operations() -> None:
    engine = get_engine("dmtcp")
    with pytest.raises(UsageError, match="dmtcp"):
        engine.refuse_reasons(1)


def fake_proc(root: Path, procs: dict[int, dict[str, object]]) -> str:
    """A /proc with, per pid: ns (pid namespace id), maps lines, fds {n: target}, comm."""
    for pid, info in procs.items():
        d = root / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "fd").mkdir()
        os.symlink(f"pid:[{info['ns']}]", d / "ns" / "pid")
        (d / "comm").write_text(f"{info.get('comm', 'proc')}\n")
        (d / "maps").write_text("".join(
            f"7f0000000000-7f0000001000 rw-s 00000000 00:05 123 {m}\n"
            for m in info.get("maps", [])) +  # type: ignore[union-attr]
            "55d000000000-55d000001000 r-xp 00000000 08:01 99 /usr/bin/python3\n"
            "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
            "7ffd00030000-7ffd00031000 rw-p 00000000 00:00 0\n")
        for fd, target in info.get("fds", {}).items():  # type: ignore[union-attr]
            os.symlink(target, d / "fd" / str(fd))
    return str(root)


def test_refuse_reasons_finds_rdma_and_gpu_in_any_process(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {
        10: {"ns": 111, "comm": "init", "fds": {0: "/dev/null", 3: "socket:[5]"}},
        11: {"ns": 111, "comm": "rank0", "maps": ["/dev/infiniband/uverbs0"],
             "fds": {5: "/dev/infiniband/uverbs0", 6: "/dev/infiniband/rdma_cm"}},
        12: {"ns": 111, "comm": "rank1", "fds": {4: "/dev/nvidiactl", 7: "/dev/dri/renderD128",
                                                  8: "/dev/kfd"}},
        13: {"ns": 222, "comm": "other", "fds": {4: "/dev/nvidia0"}},  # another container
    })
    reasons = criu_engine.refuse_reasons(10, proc)
    assert reasons == [
        "InfiniBand/RDMA device /dev/infiniband/rdma_cm open by pid 11 (rank0)",
        "InfiniBand/RDMA device /dev/infiniband/uverbs0 mapped by pid 11 (rank0)",
        "GPU (DRM) device /dev/dri/renderD128 open by pid 12 (rank1)",
        "AMD GPU (KFD) device /dev/kfd open by pid 12 (rank1)",
        "NVIDIA GPU device /dev/nvidiactl open by pid 12 (rank1)",
    ]


def test_plain_tcp_container_is_dumpable(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {
        20: {"ns": 5, "fds": {0: "/dev/null", 1: "pipe:[3]", 2: "/dev/pts/0"}},
        21: {"ns": 5, "maps": ["/dev/shm/mpich_shm"], "fds": {3: "socket:[9]"}}})
    assert criu_engine.refuse_reasons(20, proc) == []


def test_missing_init_is_a_reason(tmp_path: Path) -> None:
    assert criu_engine.refuse_reasons(99, str(tmp_path)) == [
        "the container's init (pid 99) is not running"]


def test_engine_errors_carry_the_command_and_log_and_survive_pickling() -> None:
    err = EngineError("criu dump", ["criu", "dump", "-t", "5"], 1,
                      "Error (criu/sockets.c:676): Can't get 1:16 opt\n")
    text = str(err)
    assert "criu dump failed (exit code 1): criu dump -t 5" in text
    assert "Can't get 1:16 opt" in text
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == text and again.returncode == 1
    refused = pickle.loads(pickle.dumps(Refused(["a", "b"])))
    assert refused.reasons == ["a", "b"]


def test_failed_criu_command_raises_with_the_log_tail(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Error (criu/mem.c:1): boom' >> \"$3/restore.log\"\n"
                    "echo 'stderr line' >&2\nexit 7\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HPCMIG_CRIU", str(fake))
    images = tmp_path / "img"
    images.mkdir()
    # restore through a shell: fd 7 on the netns; the fake ignores its arguments but $3 (-D)
    (images / "container.json").write_text('{"container": {}, "netns_key": "k"}')
    netns = tmp_path / "netns"
    netns.write_text("")
    with pytest.raises(EngineError) as info:
        criu_engine.restore(str(images), netns_path=str(netns), key="k")
    assert info.value.returncode == 7
    assert "boom" in info.value.log_tail and "stderr line" in info.value.log_tail


def test_a_containers_own_mount_namespace_keeps_the_nodes_mounts_by_path() -> None:
    from hpcmig._procfs import Mount
    node = [Mount(1, "/", "ext4", "254:0", "/"),
            Mount(2, "/run/hpcmig", "ext4", "254:0", "/tb/node2/run-hpcmig"),
            Mount(3, "/tmp", "ext4", "254:0", "/tb/node2/tmp"),
            Mount(4, "/dev/shm", "tmpfs", "0:23", "/"),
            Mount(5, "/dev/shm", "tmpfs", "0:27", "/"),
            Mount(6, "/run/netns/x", "nsfs", "0:4", "net:[1]")]
    container = [Mount(31, "/", "ext4", "254:0", "/"),
                 Mount(32, "/run/hpcmig", "ext4", "254:0", "/tb/node2/run-hpcmig"),
                 Mount(33, "/tmp", "ext4", "254:0", "/tb/node1/tmp"),  # not the node's
                 Mount(34, "/dev/shm", "tmpfs", "0:23", "/"),  # stacked: CRIU's guess
                 Mount(35, "/dev/shm", "tmpfs", "0:27", "/"),
                 Mount(36, "/proc", "proc", "0:53", "/"),  # the container's own
                 Mount(37, "/run/netns/x", "nsfs", "0:4", "net:[1]")]
    assert criu_engine.same_path_mounts(container, node) == {"node32": "/run/hpcmig"}
