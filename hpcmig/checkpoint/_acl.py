"""POSIX access ACLs through their xattr, without the `acl` package's tools.

Design note: only the encoding of `system.posix_acl_access` (version 2: a u32 header, then
sorted (u16 tag, u16 perm, u32 id) entries) and the one grant images need: owner full, one
extra user read (+ search on directories), group and others nothing. The kernel derives the
mode bits from the ACL (group bits = mask). Nothing else about files is decided here.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
R, W, X = 4, 2, 1


def encode(entries: list[tuple[int, int, int]]) -> bytes:
    """(tag, perm, id) entries -> xattr bytes; entries are sorted as the kernel requires."""
    body = b"".join(struct.pack("<HHI", tag, perm, ident)
                    for tag, perm, ident in sorted(entries, key=lambda e: (e[0], e[2])))
    return struct.pack("<I", VERSION) + body


def decode(data: bytes) -> list[tuple[int, int, int]]:
    (version,) = struct.unpack_from("<I", data)
    if version != VERSION or (len(data) - 4) % 8:
        raise ValueError("not a POSIX ACL xattr")
    return [struct.unpack_from("<HHI", data, off) for off in range(4, len(data), 8)]


def owner_plus_reader(uid: int, is_dir: bool) -> bytes:
    """Owner rw(x); user `uid` r(-x); owning group and others nothing."""
    owner = R | W | X if is_dir else R | W
    reader = R | X if is_dir else R
    return encode([(USER_OBJ, owner, UNDEFINED_ID), (USER, reader, uid),
                   (GROUP_OBJ, 0, UNDEFINED_ID), (MASK, reader, UNDEFINED_ID),
                   (OTHER, 0, UNDEFINED_ID)])


def grant_read(path: str, uid: int) -> bool:
    """Give `uid` read access to path (search too for a directory), nobody else but the owner.
    False if the filesystem has no POSIX ACLs (the path then stays owner-only)."""
    is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
    os.chmod(path, 0o700 if is_dir else 0o600)
    try:
        os.setxattr(path, XATTR, owner_plus_reader(uid, is_dir), follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENODATA):
            return False
        raise
    return True


def readers(path: str) -> dict[int, int]:
    """{uid: perm} of the named-user entries of path's access ACL ({} if none)."""
    try:
        data = os.getxattr(path, XATTR, follow_symlinks=False)
    except OSError:
        return {}
    return {ident: perm for tag, perm, ident in decode(data) if tag == USER}
