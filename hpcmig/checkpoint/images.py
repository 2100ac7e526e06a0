"""Checkpoint image directories: where they live, who may read them, and their manifest.

Design note: this module owns the on-disk layout under a root (default
/var/spool/hpcmig/ckpt, a shared directory or a node-local spool), the permissions, and the
manifest that makes a corrupted or tampered image refusable before root restores it. It runs
no engine and no network.

Layout: `<root>/<job id>/r<restart count>/c<container index>/<tag>/` holds one dump (flat:
CRIU's *.img files, `container.json`, `MANIFEST.json`, logs); `tag` is `ckpt` for a whole-job
checkpoint and `m<migration id>` for a migration, so a migration never clobbers a checkpoint.

Permissions: root restores these files, so the job's user must never be able to write them
(a forged core-*.img could carry uid 0). `<root>` is root:root 0711 (traverse, no listing);
the job directory and everything below are root:root 0700 (files 0600) plus a POSIX ACL entry
granting the job's user read (r-x on directories, r-- on files), so the user can read their
own images and nobody else can. Without ACL support the tree stays root-only (safe, stricter).

Manifest: written after the dump, `{"version", "hash", "files": {name: {"size", "digest"}},
"streamed", "meta"}` (`hash`: xxh3_128, or sha256 without the xxhash module); the caller
journals the manifest's own sha256 and the target verifies
the directory against both before restoring. Files that arrived through CRIU's page server
(`pagemap-*`, `pages-*`) are not on the source, so they are not hashed: the manifest names the
patterns, `verify` requires a pagemap for every mm-<pid>.img and as many page bytes as the
dump reported writing (`meta.streamed_bytes`). Any other *.img file not in
the manifest (injected, or left from another dump) is refused.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

try:
    import xxhash
except ImportError:  # pragma: no cover - the package depends on it; stay usable without
    xxhash = None  # type: ignore[assignment]

from hpcmig.checkpoint import _acl
from hpcmig.checkpoint.base import CheckpointError, CorruptImage
from hpcmig.errors import UsageError

DEFAULT_ROOT = "/var/spool/hpcmig/ckpt"
MANIFEST = "MANIFEST.json"
CONTAINER_FILE = "container.json"
STREAM_PATTERNS = ("pagemap-*.img", "pages-*.img")
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_READ = 4 << 20
# Image files are checksummed with xxh3-128 (~20 GB/s; both the dump's manifest and the
# target's verification sit inside the pause) where the xxhash module is installed, sha256
# otherwise (~1.8 GB/s with SHA-NI). Corruption is what the checksums catch; tampering is
# prevented by the permissions (only root can write), and the manifest's own digest, which
# the controller journals, is always sha256.
FILE_HASH = "xxh3_128" if xxhash is not None else "sha256"


def _key(value: object, what: str) -> str:
    text = str(value)
    if not _KEY_RE.match(text) or text in (".", ".."):
        raise UsageError(f"invalid {what} {text!r} for an image directory")
    return text


def job_dir(root: str, job_id: str | int) -> str:
    return os.path.join(root, _key(job_id, "job id"))


def image_dir(root: str, job_id: str | int, restart: int, index: int, tag: str = "ckpt") -> str:
    """The directory of one container's dump: keyed by job id, restart count, index, tag."""
    if int(restart) < 0 or int(index) < 0:
        raise UsageError("restart count and container index must be >= 0")
    return os.path.join(job_dir(root, job_id), f"r{int(restart)}", f"c{int(index)}",
                        _key(tag, "image tag"))


def _job_root(root: str, path: str) -> str:
    rel = os.path.relpath(path, root)
    if rel.startswith("..") or rel == ".":
        raise UsageError(f"{path} is not below the image root {root}")
    return os.path.join(root, rel.split(os.sep)[0])


def create(root: str, path: str, uid: int, *, fresh: bool = True) -> str:
    """Make `path` (below `root`) with the permissions above; `fresh` empties it first."""
    os.makedirs(root, mode=0o711, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.chown(root, 0, 0)
        os.chmod(root, 0o711)
    top = _job_root(root, path)
    if fresh and os.path.isdir(path):
        shutil.rmtree(path)
    current = top
    parts = os.path.relpath(path, top).split(os.sep)
    for part in ["", *parts]:
        current = os.path.normpath(os.path.join(current, part))
        with contextlib.suppress(FileExistsError):  # another node's agent, at the same time
            os.mkdir(current, 0o700)
        if not os.path.isdir(current) or os.path.islink(current):
            raise CheckpointError(f"{current} exists and is not a directory")
        os.chown(current, 0, 0)
        _acl.grant_read(current, uid)
    return path


def seal(path: str, uid: int) -> bool:
    """Make every file under path root-owned, 0600 + read for `uid`; False without ACLs."""
    ok = _acl.grant_read(path, uid)
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.islink(full):
            os.unlink(full)  # nothing an engine writes is a symlink: refuse to follow one
            continue
        os.chown(full, 0, 0, follow_symlinks=False)
        ok = _acl.grant_read(full, uid) and ok
    return ok


def _new_hash(algorithm: str) -> Any:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh3_128":
        if xxhash is None:
            raise CorruptImage("this manifest needs the xxhash module to be verified",
                               hint="pip install 'xxhash>=3.0'")
        return xxhash.xxh3_128()
    raise CorruptImage(f"unknown checksum algorithm {algorithm!r} in the manifest")


def file_digest(path: str, algorithm: str | None = None) -> str:
    """Checksum of one image file (FILE_HASH unless told): read once, 4 MiB at a time."""
    h = _new_hash(algorithm or FILE_HASH)
    buf = bytearray(_READ)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return str(h.hexdigest())


def _content(path: str) -> list[str]:
    names = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name == MANIFEST or name.endswith((".log", ".pid", ".tmp")):
            continue
        if not os.path.isfile(full) or os.path.islink(full):
            raise CorruptImage(f"{full}: not a regular file in an image directory")
        names.append(name)
    return names


@dataclass(frozen=True)
class Manifest:
    files: Mapping[str, Mapping[str, Any]]  # name -> {"size", "digest"}
    streamed: tuple[str, ...] = ()  # patterns of files that arrive through a page server
    meta: Mapping[str, Any] = field(default_factory=dict)
    hash: str = "sha256"  # algorithm of the files' digests

    def to_bytes(self) -> bytes:
        data = {"version": 1, "hash": self.hash,
                "files": {k: dict(v) for k, v in self.files.items()},
                "streamed": list(self.streamed), "meta": dict(self.meta)}
        return json.dumps(data, sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        if data.get("version") != 1:
            raise ValueError("unknown manifest version")
        return cls(data["files"], tuple(data.get("streamed", ())), data.get("meta", {}),
                   str(data["hash"]))


def write_manifest(path: str, *, streamed: Iterable[str] = (),
                   meta: Mapping[str, Any] | None = None) -> str:
    """Checksum every image file in path into MANIFEST.json; return the manifest's sha256."""
    algorithm = FILE_HASH
    files = {name: {"size": os.path.getsize(os.path.join(path, name)),
                    "digest": file_digest(os.path.join(path, name), algorithm)}
             for name in _content(path)}
    raw = Manifest(files, tuple(streamed), dict(meta or {}), algorithm).to_bytes()
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(path, MANIFEST))
    return hashlib.sha256(raw).hexdigest()


def verify(path: str, expected_sha256: str | None = None) -> Manifest:
    """Refuse (CorruptImage) unless path holds exactly what its manifest lists, unchanged."""
    try:
        with open(os.path.join(path, MANIFEST), "rb") as fh:
            raw = fh.read()
        manifest = Manifest.from_bytes(raw)
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptImage(f"{path}: no readable manifest ({exc})",
                           hint="the dump did not finish; roll back") from None
    digest = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise CorruptImage(f"{path}: manifest sha256 {digest[:12]} is not the dumped one "
                           f"({expected_sha256[:12]})")
    present = set(_content(path))
    for name, info in manifest.files.items():
        full = os.path.join(path, name)
        if name not in present:
            raise CorruptImage(f"{path}: {name} is missing")
        if os.path.getsize(full) != info["size"]:
            raise CorruptImage(f"{path}: {name} has {os.path.getsize(full)} bytes, "
                               f"the dump wrote {info['size']}")
        if file_digest(full, manifest.hash) != info["digest"]:
            raise CorruptImage(f"{path}: {name} does not match its checksum")
    for name in sorted(present - set(manifest.files)):
        if not any(fnmatch.fnmatchcase(name, p) for p in manifest.streamed):
            raise CorruptImage(f"{path}: {name} is not part of the dump")
    if manifest.streamed:
        for name in manifest.files:
            if name.startswith("mm-") and name.endswith(".img"):
                pagemap = "pagemap-" + name[3:]
                if pagemap not in present:
                    raise CorruptImage(f"{path}: streamed {pagemap} never arrived")
        want = int(manifest.meta.get("streamed_bytes", 0) or 0)
        got = sum(os.path.getsize(os.path.join(path, n)) for n in present
                  if fnmatch.fnmatchcase(n, "pages-*.img"))
        if want and got != want:
            raise CorruptImage(f"{path}: {got} bytes of streamed pages arrived, "
                               f"the dump sent {want}")
    return manifest


def tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def remove(path: str) -> None:
    """Remove one dump directory (idempotent)."""
    shutil.rmtree(path, ignore_errors=True)


def remove_job(root: str, job_id: str | int) -> bool:
    """At job end: remove every image of the job under root. True if something was there."""
    path = job_dir(root, job_id)
    existed = os.path.isdir(path)
    shutil.rmtree(path, ignore_errors=True)
    return existed
