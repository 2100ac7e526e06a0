"""SIF object lists (recorded `siftool list` output) and the root partition choice."""

from __future__ import annotations

import pytest

from hpcmig.runtime import sif
from hpcmig.runtime.sifbuild import parse_ldd

LIST = """\
------------------------------------------------------------------------------
ID   |GROUP   |LINK    |SIF POSITION (start-end)  |TYPE
------------------------------------------------------------------------------
1    |NONE    |NONE    |32176-32497               |Def.FILE
2    |NONE    |NONE    |32768-105385984           |FS (Squashfs/*System/amd64)
3    |1       |NONE    |105385984-105390080       |FS (Ext3/Overlay/amd64)
"""


def test_parse_list_reads_every_object() -> None:
    objs = sif.parse_list(LIST)
    assert [(o.id, o.start, o.end, o.type) for o in objs] == [
        (1, 32176, 32497, "Def.FILE"),
        (2, 32768, 105385984, "FS (Squashfs/*System/amd64)"),
        (3, 105385984, 105390080, "FS (Ext3/Overlay/amd64)"),
    ]


def test_root_partition_is_the_primary_squashfs() -> None:
    part = sif.root_partition(sif.parse_list(LIST))
    assert (part.id, part.offset, part.size, part.fs, part.primary) == \
        (2, 32768, 105385984 - 32768, "Squashfs", True)
    argv = sif.mount_argv("/i.sif", part, "/mnt")
    assert argv == ["mount", "-t", "squashfs", "-o",
                    f"loop,ro,nodev,offset=32768,sizelimit={part.size}", "/i.sif", "/mnt"]
    assert "offset=32768" in " ".join(sif.mount_argv("/i.sif", part, "/mnt", sif.FUSE))


@pytest.mark.parametrize("rows, match", [
    ("1 |NONE |NONE |100-200 |Def.FILE", "no system partition"),
    ("2 |NONE |NONE |100-200 |FS (Ext3/*System/amd64)", "not squashfs"),
    ("2 |NONE |NONE |100-200 |FS (Squashfs/System/amd64)\n"
     "3 |NONE |NONE |200-300 |FS (Squashfs/System/amd64)", "none is primary"),
])
def test_unusable_sifs_are_refused(rows: str, match: str) -> None:
    with pytest.raises(sif.SifError, match=match):
        sif.root_partition(sif.parse_list(rows))


def test_single_non_primary_system_partition_is_used() -> None:
    row = "4 |NONE |NONE |4096-8192 |FS (Squashfs/System/amd64)"
    part = sif.root_partition(sif.parse_list(row))
    assert (part.id, part.primary) == (4, False)


def test_parse_ldd() -> None:
    out = ("/usr/bin/x:\n\tlinux-vdso.so.1 (0x00007ffd)\n"
           "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n"
           "\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
           "\tlibmissing.so => not found\n/usr/lib/y.so:\n\tstatically linked\n")
    assert parse_ldd(out) == {"/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
