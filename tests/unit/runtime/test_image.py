"""Image roots: bind plan, bind validation, mountinfo parsing (no root needed)."""

from __future__ import annotations

import pytest

from hpcmig.errors import UsageError
from hpcmig.runtime import image
from hpcmig.runtime.base import ContainerSpec


def _spec(**kw: object) -> ContainerSpec:
    args: dict[str, object] = dict(name="hpcmig-42-0-1", job_id="42", uid=1000, gid=1000,
                                   netns="/run/netns/x", image="/img/app.sif",
                                   state_dir="/run/hpcmig/containers")
    args.update(kw)
    return ContainerSpec(**args)  # type: ignore[arg-type]


def test_layout_is_under_the_state_directory() -> None:
    lay = image.layout(_spec())
    assert lay.root == "/run/hpcmig/containers/hpcmig-42-0-1/root"
    assert (lay.image, lay.rw, lay.tools) == (f"{lay.base}/image", f"{lay.base}/rw",
                                              f"{lay.base}/tools")


def test_bind_plan_order_and_dedup() -> None:
    spec = _spec(cwd="/home/u/run", binds=("/scratch/job", "/home/u/data", "/etc/hpc"))
    lay = image.layout(spec)
    plan = image.bind_plan(spec, lay, home="/home/u", munge_dir="/run/munge",
                           package_dir="/src/hpcmig")
    targets = [(b.source, b.target, b.readonly) for b in plan]
    assert targets[:5] == [("/proc", "/proc", False), ("/sys", "/sys", False),
                           ("/dev", "/dev", False), ("/dev/pts", "/dev/pts", False),
                           (f"{lay.rw}/shm", "/dev/shm", False)]
    assert ("/etc/passwd", "/etc/passwd", True) in targets
    assert (lay.tools, "/.hpcmig", True) in targets
    assert ("/src/hpcmig", "/.hpcmig/python/hpcmig", True) in targets
    assert ("/run/munge", "/run/munge", True) in targets
    user = [t[0] for t in targets if not t[2] and t[0] == t[1] and not t[0].startswith(
        ("/proc", "/sys", "/dev"))]
    # cwd and /home/u/data live in the bound home: not bound again (their mount points would
    # be made in the node's own home directory)
    assert user == ["/home/u", "/scratch/job", "/etc/hpc"]


@pytest.mark.parametrize("binds, match", [
    (("relative",), "absolute"), (("/a/../b",), "normalised"), (("/",), "not /"),
    (("/proc/x",), "belong to hpcmig"), (("/.hpcmig",), "belong to hpcmig"),
])
def test_bad_binds_are_refused(binds: tuple[str, ...], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _spec(binds=binds).validate()


def test_image_must_be_absolute_and_binds_need_an_image() -> None:
    with pytest.raises(UsageError, match="absolute path"):
        _spec(image="app.sif").validate()
    with pytest.raises(UsageError, match="binds need an image"):
        _spec(image=None, binds=("/scratch",)).validate()
    spec = _spec(binds=("/scratch",))
    assert ContainerSpec.from_json(spec.to_json()) == spec


def test_parse_mountinfo_decodes_escapes_and_reads_the_type() -> None:
    from hpcmig import _procfs
    text = ("36 35 98:0 /mnt1 /mnt/with\\040space rw - ext3 /dev/root rw\n"
            "37 36 0:5 / /run/hpcmig/containers/c/root rw shared:3 master:2 - overlay o rw\n"
            "258 255 0:4 net:[4026532382] /run/netns/a rw shared:29 - nsfs nsfs rw\n")
    assert _procfs.parse_mountinfo(text) == [
        (36, "/mnt/with space", "ext3", "98:0", "/mnt1"),
        (37, "/run/hpcmig/containers/c/root", "overlay", "0:5", "/"),
        (258, "/run/netns/a", "nsfs", "0:4", "net:[4026532382]")]


def test_safe_target_refuses_symlinks_in_the_image(tmp_path: object) -> None:
    import os
    root = str(tmp_path)
    os.symlink("/etc", os.path.join(root, "home"))
    with pytest.raises(image.ImageError, match="symlink in the image"):
        image._safe_target(root, "/home/u", is_file=False)
    made = image._safe_target(root, "/scratch/job", is_file=False)
    assert os.path.isdir(made) and made == os.path.join(root, "scratch", "job")
    assert os.path.isfile(image._safe_target(root, "/etc2/hosts", is_file=True))


def test_exec_children_of_an_image_container_find_hpcmigs_tools() -> None:
    from hpcmig.runtime.init import exec_context

    ctx = exec_context(_spec(env={"PATH": "/usr/bin"}), "/run/munge/munge.socket.2")
    assert ctx.base_env["PATH"] == "/usr/bin:/.hpcmig/bin"
    assert ctx.base_env["HPCMIG_RSH"] == "/.hpcmig/bin/hpcmig-rsh"
    host = exec_context(_spec(image=None), "/run/munge/munge.socket.2")
    assert host.base_env["HPCMIG_RSH"].endswith("hpcmig-rsh")
    assert "/.hpcmig" not in host.base_env["PATH"]
