"""The on-disk store of application checkpoints: layout, index, commit, retention, requests.

Design note: this module owns everything under one checkpoint directory and needs neither MPI
nor h5py nor numpy: hpcmigd imports it (through `hpcmig.ckpt`) to ask a job for a checkpoint
and to see its generations. Inside a job only rank 0 calls it (hpcmig.ckpt.checkpointer).
It never decides when to save.

Layout of a directory (0700, every file 0600: generations hold process memory):

    gen-00000007.h5        one generation: every rank's arrays and scalars (hpcmig.ckpt._h5)
    generations.json       the index: the committed generations, oldest first
    request                hpcmigd asking for a checkpoint (`request()`)
    .gen-00000008.h5.tmp   a save in progress, or one a crash cut short (ignored; the next
                           save removes it)

Commit: a generation is written under its temporary name, fsynced and renamed to its final
name; then the index naming it, with its size and checksum, is written to a temporary file,
fsynced and renamed over generations.json, and the directory is fsynced. That last rename is
the commit point: a generation not in the index does not exist, whatever files are left, so a
crash at any moment leaves the previous generations usable. A generation counts as complete
while its file exists with the recorded size; `verify=True` also checks the checksum (load
always does). The index keeps the newest `keep`; older files are deleted after the commit.

A request is `{"after_generation": N, "time": T}`: "save a generation newer than N". A job
has served it once its newest generation is > N, so a stale request is harmless. A request
file that is not such JSON (`touch request`) asks for a save when its mtime is newer than the
newest generation's commit time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

try:
    import xxhash
except ImportError:  # pragma: no cover - the package depends on it; stay usable without
    xxhash = None  # type: ignore[assignment]

from hpcmig.errors import HpcmigError

INDEX = "generations.json"
REQUEST = "request"
FORMAT = 1
_DATA_RE = re.compile(r"^gen-(\d{8,})\.h5$")
_TEMP_RE = re.compile(r"^\.gen-(\d{8,})\.h5\.tmp$")
_READ = 4 << 20
HASH = "xxh3_128" if xxhash is not None else "sha256"


class CheckpointError(HpcmigError):
    """An application checkpoint could not be saved, found, read or verified."""


class NoCheckpoint(CheckpointError):
    """There is no complete generation to load."""


@dataclass(frozen=True)
class Generation:
    """One committed generation, as the index records it."""

    generation: int
    step: int
    time: float  # commit time, seconds since the epoch
    path: str  # absolute path of the HDF5 file
    ranks: int
    size: int  # bytes
    digest: str  # "<algorithm>:<hex>" over the whole file
    complete: bool = True  # the file exists with the recorded size (and checksum, if verified)

    def record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["file"] = os.path.basename(rec.pop("path"))
        rec.pop("complete")
        return rec


def data_name(generation: int) -> str:
    return f"gen-{generation:08d}.h5"


def temp_path(directory: str, generation: int) -> str:
    return os.path.join(directory, f".{data_name(generation)}.tmp")


def ensure_private(directory: str) -> str:
    """Create `directory` 0700 (tighten it if it is ours and looser); its absolute path."""
    path = os.path.abspath(directory)
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def file_digest(path: str, algorithm: str = HASH) -> str:
    if algorithm == "sha256":
        h: Any = hashlib.sha256()
    elif algorithm == "xxh3_128" and xxhash is not None:
        h = xxhash.xxh3_128()
    else:
        raise CheckpointError(f"cannot verify a {algorithm!r} checksum here",
                              hint="pip install 'xxhash>=3.0'")
    buf = bytearray(_READ)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return f"{algorithm}:{h.hexdigest()}"


def read_index(directory: str) -> list[Generation]:
    """The committed generations, oldest first ([] when there is no index yet)."""
    path = os.path.join(directory, INDEX)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        gens = [Generation(generation=int(g["generation"]), step=int(g["step"]),
                           time=float(g["time"]), path=os.path.join(directory, g["file"]),
                           ranks=int(g["ranks"]), size=int(g["size"]), digest=str(g["digest"]))
                for g in doc["generations"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"unreadable checkpoint index {path}: {exc}",
                              hint="hpcmig writes it by atomic rename; was it edited or "
                              "copied?") from None
    return sorted(gens, key=lambda g: g.generation)


def is_complete(gen: Generation, verify: bool = False) -> bool:
    try:
        if os.stat(gen.path).st_size != gen.size:
            return False
    except OSError:
        return False
    return not verify or file_digest(gen.path, gen.digest.partition(":")[0]) == gen.digest


def generations(directory: str, verify: bool = False) -> list[Generation]:
    """Every indexed generation, oldest first, with `complete` checked (no MPI, no h5py)."""
    return [replace(g, complete=is_complete(g, verify)) for g in read_index(directory)]


def latest(directory: str, verify: bool = False) -> Generation | None:
    """The newest complete generation in `directory`, or None (no MPI, no h5py)."""
    for gen in reversed(read_index(directory)):
        if is_complete(gen, verify):
            return gen
    return None


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(directory: str, name: str, data: bytes, mode: int = 0o600) -> None:
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, final)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def write_index(directory: str, gens: Iterable[Generation]) -> None:
    doc = {"format": FORMAT, "generations": [g.record() for g in gens]}
    _write_atomic(directory, INDEX, (json.dumps(doc, indent=1) + "\n").encode())


def commit(directory: str, generation: int, step: int, ranks: int, keep: int) -> Generation:
    """Publish the finished temporary file of `generation`; prune to the newest `keep`."""
    tmp = temp_path(directory, generation)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    digest = file_digest(tmp)  # read back: what the index vouches for is what is on disk
    final = os.path.join(directory, data_name(generation))
    os.replace(tmp, final)
    _fsync_dir(directory)
    new = Generation(generation=generation, step=step, time=time.time(), path=final,
                     ranks=ranks, size=size, digest=digest)
    old = [g for g in read_index(directory) if g.generation < generation]
    kept = [*old, new][-max(keep, 1):]
    write_index(directory, kept)  # the commit point
    for g in old:
        if g not in kept:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(g.path)
    return new


def drop(directory: str, generation: int) -> None:
    """Take a generation found corrupt out of the index (its file goes at the next sweep)."""
    write_index(directory, [g for g in read_index(directory) if g.generation != generation])


def sweep(directory: str) -> None:
    """Remove what no index entry names: interrupted saves, dropped or pruned generations."""
    named = {os.path.basename(g.path) for g in read_index(directory)}
    for name in os.listdir(directory):
        m = _DATA_RE.match(name)
        if _TEMP_RE.match(name) or (m and name not in named):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


def request(directory: str) -> None:
    """Ask the job checkpointing into `directory` for a new generation (no MPI, no h5py).

    Written atomically; when the caller is root (hpcmigd) the file is given to the
    directory's owner, so the job can read it."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint directory {directory}",
                              hint="the job has not opened an hpcmig.ckpt.Checkpointer there")
    gens = read_index(directory)
    doc = {"after_generation": gens[-1].generation if gens else 0, "time": time.time()}
    _write_atomic(directory, REQUEST, (json.dumps(doc) + "\n").encode())
    if os.geteuid() == 0:
        st = os.stat(directory)
        os.chown(os.path.join(directory, REQUEST), st.st_uid, st.st_gid)


def requested(directory: str, newest: int, newest_time: float) -> bool:
    """Whether the request file asks for more than generation `newest` (committed at
    `newest_time`) gives."""
    path = os.path.join(directory, REQUEST)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.loads(fh.read(4096))
        after = int(doc["after_generation"])
    except (OSError, ValueError, KeyError, TypeError):  # not ours: a touched file
        return st.st_mtime > newest_time
    return newest <= after
