"""Root filesystems of image containers: a `.sif` (or a directory tree) under a writable layer.

Design note: this module owns the mounts that make a container's root on its node, all at a
stable path in the node's mount namespace, `<state_dir>/<name>/root`:
- `image/`: the SIF's squashfs partition, read-only (`hpcmig.runtime.sif`); a directory
  image is used in place;
- `rw/`: a tmpfs holding the overlay's `upper/` and `work/`, and `shm/` (the container's
  /dev/shm). Everything the job writes outside its binds lands here, and it is what
  `save_writable` archives for a migration;
- `root/`: overlay(image, rw/upper), then binds: /proc, /sys, /dev, /dev/pts (the node's),
  rw/shm on /dev/shm, /etc/passwd and /etc/group (read-only, so the job's user resolves),
  the munged socket's directory (read-only), hpcmig's tools on /.hpcmig (read-only:
  `bin/hpcmig-rsh`, `lib/libmunge.so.2`, `python/hpcmig`), /etc/hosts made from the job's
  $HPCMIG_HOSTS (if it exists at start), the job user's home, the cwd and `spec.binds`
  (read-write, each at its own path).
The container's init chroots into `root/` (hpcmig.runtime.init); it and CRIU stay in the
node's mount namespace, so a dump needs no mount described: on the target node,
`prepare_root` rebuilds the same tree at the same path (plus the writable layer from the
archive) before `criu restore`. The directory is bind-mounted private onto itself first so
none of this propagates to other mount namespaces. `release_root` unmounts everything
under the directory, deepest first. Pure parts (`bind_plan`) are unit
tested. It must not start or signal processes.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
from dataclasses import dataclass

import hpcmig
from hpcmig import _proc, _procfs, mpi
from hpcmig.auth import munge
from hpcmig.errors import CommandError, HpcmigError
from hpcmig.runtime import sif
from hpcmig.runtime.base import ContainerSpec

TOOLS = "/.hpcmig"
RSH = f"{TOOLS}/bin/hpcmig-rsh"
TOOLS_PATH = f"{TOOLS}/bin"
RSH_SCRIPT = """#!/bin/sh
# hpcmig-rsh inside an image container: the image's python3 (>= 3.11) runs hpcmig's rsh,
# bound read-only from the node under /.hpcmig (docs/runtime.md, "Images").
PYTHONPATH=/.hpcmig/python LD_LIBRARY_PATH=/.hpcmig/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \\
  exec python3 -m hpcmig.runtime.rsh "$@"
"""


class ImageError(HpcmigError):
    """A container's root filesystem could not be built or taken down."""


@dataclass(frozen=True)
class Layout:
    """Where one container's mounts live on its node."""

    base: str  # <state_dir>/<name>

    @property
    def image(self) -> str:
        return f"{self.base}/image"

    @property
    def rw(self) -> str:
        return f"{self.base}/rw"

    @property
    def root(self) -> str:
        return f"{self.base}/root"

    @property
    def tools(self) -> str:
        return f"{self.base}/tools"


def layout(spec: ContainerSpec) -> Layout:
    return Layout(os.path.join(spec.state_dir, spec.name))


@dataclass(frozen=True)
class Bind:
    source: str  # on the node
    target: str  # inside the container's root (absolute)
    readonly: bool = False


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def bind_plan(spec: ContainerSpec, lay: Layout, *, home: str | None, munge_dir: str | None,
              package_dir: str) -> list[Bind]:
    """The binds onto the root, in mount order. Same-path binds nested in an earlier one are
    dropped (they would create their mount point in the node's own directory)."""
    binds = [
        Bind("/proc", "/proc"), Bind("/sys", "/sys"), Bind("/dev", "/dev"),
        Bind("/dev/pts", "/dev/pts"), Bind(f"{lay.rw}/shm", "/dev/shm"),
        Bind("/etc/passwd", "/etc/passwd", True), Bind("/etc/group", "/etc/group", True),
        Bind(lay.tools, TOOLS, True), Bind(package_dir, f"{TOOLS}/python/hpcmig", True),
    ]
    same_path: list[str] = []
    if munge_dir:
        binds.append(Bind(munge_dir, munge_dir, True))
        same_path.append(munge_dir)
    for path in (home, spec.cwd if spec.cwd != "/" else None, *spec.binds):
        if path is None or any(_under(path, done) for done in same_path):
            continue
        binds.append(Bind(path, path))
        same_path.append(path)
    return binds


def mounts_under(top: str) -> list[str]:
    """Mount points at or below `top` in our mount namespace, to be unmounted in this order."""
    found = [(m.id, m.point) for m in _procfs.mounts() if _under(m.point, top)]
    # children before parents; among equals (stacked mounts) the newest first
    found.sort(key=lambda m: (m[1].count("/"), m[0]), reverse=True)
    return [point for _, point in found]


def _mount(*argv: str) -> None:
    try:
        _proc.run(["mount", *argv], timeout=60)
    except CommandError as exc:
        raise ImageError(f"mount failed: {exc}") from None


def _safe_target(root: str, target: str, is_file: bool) -> str:
    """root + target, made if missing, refusing symlinks inside the image (an absolute link
    would lead outside the root, onto the node's own files)."""
    path = root
    parts = [p for p in target.split("/") if p]
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        if os.path.islink(path):
            link = "/" + "/".join(parts[:i + 1])
            raise ImageError(f"cannot bind {target}: {link} is a symlink in the image",
                             hint="bind the path it points to")
        last = i == len(parts) - 1
        if not os.path.lexists(path):
            if last and is_file:
                with open(path, "a"):
                    pass
            else:
                os.mkdir(path, 0o755)
    return path


def _libmunge_path() -> str:
    ctypes.CDLL("libmunge.so.2")
    with open("/proc/self/maps", encoding="utf-8") as fh:
        for line in fh:
            path = line.split()[-1]
            if "/libmunge.so" in path:
                return path
    raise ImageError("libmunge.so.2 is loaded but not found in /proc/self/maps")


def _write_tools(lay: Layout) -> None:
    for sub in ("bin", "lib", "python/hpcmig", "state"):
        os.makedirs(f"{lay.tools}/{sub}", mode=0o755, exist_ok=True)
    rsh = f"{lay.tools}/bin/hpcmig-rsh"
    with open(rsh, "w", encoding="utf-8") as fh:
        fh.write(RSH_SCRIPT)
    os.chmod(rsh, 0o755)
    os.utime(rsh, (0, 0))  # identical on every node: CRIU compares what it restores
    shutil.copy2(_libmunge_path(), f"{lay.tools}/lib/libmunge.so.2")
    for lib in mpi.preloads():  # the MPI fixes `hpcmig run` preloads into ranks
        if os.path.isfile(lib):
            shutil.copy2(lib, f"{lay.tools}/lib/")


def _write_hosts(spec: ContainerSpec, lay: Layout) -> str | None:
    """<base>/hosts = localhost + the job's hosts file ($HPCMIG_HOSTS, `addr name...` lines,
    the /etc/hosts format), so MPI launchers in the image resolve the job's containers."""
    source = spec.env.get("HPCMIG_HOSTS")
    if not source or not os.path.isfile(source):
        return None
    with open(source, encoding="utf-8") as fh:
        text = fh.read()
    path = f"{lay.base}/hosts"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("127.0.0.1 localhost\n" + text)
    os.chmod(path, 0o644)
    return path


def _home(uid: int) -> str | None:
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None
    return home if home and home != "/" and os.path.isdir(home) else None


def image_kind(image: str) -> str:
    """"dir" for a directory tree, "sif" for a SIF file; ImageError if neither."""
    if os.path.isdir(image):
        return "dir"
    if os.path.isfile(image):
        return "sif"
    raise ImageError(f"image {image} does not exist", hint="give the path of a .sif file")


def prepare_root(spec: ContainerSpec, writable_archive: str | None = None,
                 extra_binds: tuple[Bind, ...] = ()) -> str:
    """Build the container's root at `layout(spec).root` (see the module note); returns it.

    writable_archive: a `save_writable` archive from the source node (migration), unpacked
    into the writable layer before the overlay is mounted."""
    assert spec.image is not None
    lay = layout(spec)
    if mounts_under(lay.base):
        raise ImageError(f"container {spec.name}: {lay.base} already has mounts",
                         hint="stop the container first (or release_root)")
    kind = image_kind(spec.image)
    os.makedirs(lay.base, mode=0o700, exist_ok=True)
    try:
        _mount("--bind", "--make-private", lay.base, lay.base)
        for d in (lay.image, lay.rw, lay.root):
            os.makedirs(d, mode=0o755, exist_ok=True)
        lower = spec.image
        if kind == "sif":
            sif.mount(spec.image, lay.image)
            lower = lay.image
        _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "hpcmig-rw", lay.rw)
        if writable_archive:
            _proc.run(["tar", "-C", lay.rw, "-xpf", writable_archive, "--numeric-owner",
                       "--xattrs", "--xattrs-include=trusted.overlay.opaque"], timeout=600)
        for sub, mode in (("upper", 0o755), ("work", 0o700), ("shm", 0o1777)):
            os.makedirs(f"{lay.rw}/{sub}", exist_ok=True)
            os.chmod(f"{lay.rw}/{sub}", mode)
        _mount("-t", "overlay", "-o",
               f"lowerdir={lower},upperdir={lay.rw}/upper,workdir={lay.rw}/work",
               "hpcmig-root", lay.root)
        _write_tools(lay)
        sock = spec.env.get(munge.SOCKET_ENV) or munge.socket_path()
        plan = bind_plan(spec, lay, home=_home(spec.uid), munge_dir=os.path.dirname(sock),
                         package_dir=os.path.dirname(hpcmig.__file__))
        hosts = _write_hosts(spec, lay)
        if hosts:
            plan.append(Bind(hosts, "/etc/hosts", True))
        plan += extra_binds
        for bind in plan:
            if not os.path.exists(bind.source):
                raise ImageError(f"container {spec.name}: cannot bind {bind.source}: "
                                 "no such file or directory")
            target = _safe_target(lay.root, bind.target, not os.path.isdir(bind.source))
            opts = ["-o", "ro"] if bind.readonly else []
            _mount("--bind", "--make-private", *opts, bind.source, target)
        tmp = os.path.join(lay.root, "tmp")
        if not os.path.lexists(tmp):
            os.mkdir(tmp)
            os.chmod(tmp, 0o1777)
    except BaseException:
        release_root(spec)
        raise
    return lay.root


def release_root(spec: ContainerSpec) -> None:
    """Unmount everything under the container's directory (idempotent)."""
    lay = layout(spec)
    for point in mounts_under(lay.base):
        r = _proc.run(["umount", point], check=False, timeout=60)
        if r.returncode != 0 and point in mounts_under(point):
            _proc.run(["umount", "-l", point], check=False, timeout=60)
    left = mounts_under(lay.base)
    if left:
        raise ImageError(f"container {spec.name}: still mounted: {', '.join(left)}",
                         hint="find the processes using them (fuser -m) and retry")


def save_writable(spec: ContainerSpec, archive: str) -> None:
    """Archive the container's writable layer (overlay upper and /dev/shm) for a migration:
    after the dump, before the source is released. `prepare_root(spec, archive)` on the target
    puts it back, so files the dumped processes hold open there are found by CRIU."""
    lay = layout(spec)
    if lay.rw not in mounts_under(lay.rw):
        raise ImageError(f"container {spec.name}: no writable layer at {lay.rw}")
    _proc.run(["tar", "-C", lay.rw, "-cpf", archive, "--numeric-owner", "--xattrs",
               "--xattrs-include=trusted.overlay.opaque", "upper", "shm"], timeout=600)
