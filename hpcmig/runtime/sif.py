"""Singularity/Apptainer `.sif` files: find the root filesystem partition and mount it.

Design note: this module owns reading a SIF's object list (`siftool list`, Debian's
`siftool`) and mounting its squashfs system partition read-only at a directory. Parsing is
pure (`parse_list`, `root_partition`) so it is unit-tested on recorded output. Mounting prefers
the kernel's squashfs on a loop device (`mount -t squashfs -o loop,ro,offset=,sizelimit=`):
no daemon, the pages live in the page cache, and CRIU sees ordinary files on a block-device
filesystem, which it can dump and restore by path (docs/runtime.md, "Images"). Only when the
node has no loop devices does it fall back to `squashfuse -o offset=` (a FUSE daemon outside
the container; CRIU then depends on that daemon being there on both nodes). It knows nothing
about containers, overlays or binds (`hpcmig.runtime.image` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcmig import _proc
from hpcmig.errors import CommandError, HpcmigError, MissingDependency, UsageError

KERNEL = "squashfs"
FUSE = "squashfuse"
_ROW = re.compile(r"^\s*(\d+)\s*\|([^|]*)\|([^|]*)\|\s*(\d+)-(\d+)\s*\|\s*(.+?)\s*$")
_FS = re.compile(r"^FS \((\w+)/(\*?)(\w+)/(\w+)\)$")


class SifError(HpcmigError):
    """A SIF file cannot be used as a root filesystem."""


@dataclass(frozen=True)
class SifObject:
    """One data object of a SIF (a row of `siftool list`)."""

    id: int
    start: int  # byte offset in the file
    end: int
    type: str  # e.g. "Def.FILE", "FS (Squashfs/*System/amd64)"

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Partition:
    """A filesystem partition object of a SIF."""

    id: int
    offset: int
    size: int
    fs: str  # Squashfs, Ext3, Raw, ...
    part_type: str  # System, Data, Overlay
    primary: bool  # the primary system partition (`*System`)
    arch: str


def parse_list(text: str) -> list[SifObject]:
    """The objects in `siftool list` output."""
    objects = []
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            objects.append(SifObject(int(m[1]), int(m[4]), int(m[5]), m[6]))
    return objects


def partitions(objects: list[SifObject]) -> list[Partition]:
    parts = []
    for obj in objects:
        m = _FS.match(obj.type)
        if m:
            parts.append(Partition(obj.id, obj.start, obj.size, m[1], m[3], m[2] == "*", m[4]))
    return parts


def root_partition(objects: list[SifObject], path: str = "image") -> Partition:
    """The squashfs partition a container runs on: the primary system partition, else the
    only system partition. Anything else (ext3 roots, encrypted images) is refused."""
    system = [p for p in partitions(objects) if p.part_type == "System"]
    chosen = [p for p in system if p.primary] or system
    if not chosen:
        raise SifError(f"{path}: no system partition in this SIF",
                       hint="build the image with a squashfs root filesystem")
    if len(chosen) > 1:
        raise SifError(f"{path}: {len(chosen)} system partitions and none is primary",
                       hint="mark one with `siftool setprim`")
    part = chosen[0]
    if part.fs != "Squashfs":
        raise SifError(f"{path}: the system partition is {part.fs}, not squashfs",
                       hint="hpcmig runs SIF images whose root filesystem is squashfs")
    return part


def read_partition(sif_path: str) -> Partition:
    """The root partition of the SIF at sif_path (runs `siftool list`)."""
    try:
        out = _proc.run(["siftool", "list", sif_path], timeout=30).stdout
    except MissingDependency:
        raise MissingDependency("reading .sif images needs siftool",
                                hint="apt-get install siftool") from None
    except CommandError as exc:
        raise SifError(f"{sif_path} is not a readable SIF: {exc}") from None
    return root_partition(parse_list(out), sif_path)


def mount_argv(sif_path: str, part: Partition, target: str, how: str = KERNEL) -> list[str]:
    """The command that mounts the partition read-only at target."""
    if how == KERNEL:
        return ["mount", "-t", "squashfs", "-o",
                f"loop,ro,nodev,offset={part.offset},sizelimit={part.size}", sif_path, target]
    if how == FUSE:
        return ["squashfuse", "-o", f"ro,allow_other,offset={part.offset}", sif_path, target]
    raise UsageError(f"unknown squashfs mount method {how!r}")


def mount(sif_path: str, target: str) -> str:
    """Mount the SIF's root partition at target; returns the method used (KERNEL or FUSE)."""
    part = read_partition(sif_path)
    try:
        _proc.run(mount_argv(sif_path, part, target, KERNEL), timeout=60)
        return KERNEL
    except CommandError as kernel_exc:
        if "loop" not in (kernel_exc.stderr + kernel_exc.stdout).lower():
            raise SifError(f"cannot mount {sif_path}: {kernel_exc}") from None
        try:  # no loop devices on this node: FUSE
            _proc.run(mount_argv(sif_path, part, target, FUSE), timeout=60)
        except (CommandError, MissingDependency) as exc:
            raise SifError(f"cannot mount {sif_path}: {kernel_exc}; squashfuse: {exc}",
                           hint="make loop devices available, or install squashfuse") from None
        return FUSE
