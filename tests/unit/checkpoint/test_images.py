"""Image layout, manifest verification and the streamed-file receiver (no root needed)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hpcmig.checkpoint import CheckpointError, CorruptImage, _acl, images, stream
from hpcmig.errors import UsageError


def test_layout_is_keyed_by_job_restart_index_and_tag() -> None:
    assert images.image_dir("/r", "42", 1, 3) == "/r/42/r1/c3/ckpt"
    assert images.image_dir("/r", 42, 0, 0, "m7") == "/r/42/r0/c0/m7"
    for bad in ("../etc", "a/b", ".", ""):
        with pytest.raises(UsageError):
            images.image_dir("/r", bad, 0, 0)
    with pytest.raises(UsageError):
        images.image_dir("/r", "1", -1, 0)


def dump_dir(tmp_path: Path) -> str:
    d = tmp_path / "dump"
    d.mkdir()
    (d / "core-1.img").write_bytes(b"core" * 100)
    (d / "mm-1.img").write_bytes(b"mm")
    (d / "pagemap-1.img").write_bytes(b"pm")
    (d / "pages-1.img").write_bytes(os.urandom(8192))
    (d / "container.json").write_text("{}")
    (d / "dump.log").write_text("log lines are not part of the dump")
    return str(d)


def test_manifest_round_trip_and_each_kind_of_corruption(tmp_path: Path) -> None:
    d = dump_dir(tmp_path)
    digest = images.write_manifest(d, meta={"engine": "criu"})
    m = images.verify(d, digest)
    assert set(m.files) == {"core-1.img", "mm-1.img", "pagemap-1.img", "pages-1.img",
                            "container.json"}
    with pytest.raises(CorruptImage, match="not the dumped one"):
        images.verify(d, "0" * 64)
    pages = os.path.join(d, "pages-1.img")
    raw = bytearray(Path(pages).read_bytes())
    raw[100] ^= 0xFF  # one flipped bit, same size
    Path(pages).write_bytes(bytes(raw))
    with pytest.raises(CorruptImage, match="checksum"):
        images.verify(d, digest)
    Path(pages).write_bytes(bytes(raw[:-1]))
    with pytest.raises(CorruptImage, match="bytes"):
        images.verify(d, digest)
    os.unlink(pages)
    with pytest.raises(CorruptImage, match="missing"):
        images.verify(d, digest)


def test_injected_file_and_missing_manifest_are_refused(tmp_path: Path) -> None:
    d = dump_dir(tmp_path)
    with pytest.raises(CorruptImage, match="manifest"):
        images.verify(d)
    digest = images.write_manifest(d)
    Path(d, "core-666.img").write_bytes(b"x")
    with pytest.raises(CorruptImage, match="core-666.img is not part of the dump"):
        images.verify(d, digest)


def test_streamed_pages_are_accepted_only_complete(tmp_path: Path) -> None:
    d = dump_dir(tmp_path)
    os.unlink(os.path.join(d, "pages-1.img"))
    os.unlink(os.path.join(d, "pagemap-1.img"))
    digest = images.write_manifest(d, streamed=images.STREAM_PATTERNS,
                                   meta={"streamed_bytes": 8192})
    with pytest.raises(CorruptImage, match="pagemap-1.img never arrived"):
        images.verify(d, digest)
    Path(d, "pagemap-1.img").write_bytes(b"pm")
    Path(d, "pages-1.img").write_bytes(b"x" * 4096)
    with pytest.raises(CorruptImage, match="4096 bytes of streamed pages"):
        images.verify(d, digest)
    Path(d, "pages-1.img").write_bytes(b"x" * 8192)
    images.verify(d, digest)


def test_acl_encoding_round_trip() -> None:
    raw = _acl.owner_plus_reader(1234, is_dir=True)
    entries = _acl.decode(raw)
    assert (_acl.USER, 5, 1234) in entries and (_acl.MASK, 5, _acl.UNDEFINED_ID) in entries
    assert (_acl.OTHER, 0, _acl.UNDEFINED_ID) in entries
    assert [e[0] for e in entries] == sorted(e[0] for e in entries)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_create_and_seal_give_root_ownership_and_user_read(tmp_path: Path) -> None:
    root = str(tmp_path / "ckpt")
    d = images.image_dir(root, "42", 0, 1)
    images.create(root, d, uid=4321)
    assert os.stat(root).st_mode & 0o777 == 0o711
    Path(d, "core-1.img").write_bytes(b"x")
    os.chmod(os.path.join(d, "core-1.img"), 0o666)
    images.seal(d, 4321)
    for path in (images.job_dir(root, "42"), d, os.path.join(d, "core-1.img")):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert st.st_mode & 0o007 == 0  # nothing for others
        assert 4321 in _acl.readers(path)
        assert not _acl.readers(path)[4321] & _acl.W  # never writable by the user
    assert images.remove_job(root, "42") and not os.path.exists(d)
    assert not images.remove_job(root, "42")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_create_takes_a_directory_another_agent_made_at_the_same_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes' agents prepare one job's shared tree at once (a whole-job checkpoint):
    the directory the other made between our look and our mkdir is taken as it is."""
    root = str(tmp_path / "ckpt")
    mkdir = os.mkdir

    def racing(path: str, mode: int = 0o777) -> None:
        if not os.path.exists(path):
            mkdir(path, 0o700)  # the other agent was first
        mkdir(path, mode)

    monkeypatch.setattr(os, "mkdir", racing)
    d = images.image_dir(root, "42", 0, 1)
    assert images.create(root, d, uid=4321) == d and os.path.isdir(d)
    assert os.stat(images.job_dir(root, "42")).st_uid == 0
    monkeypatch.undo()
    (tmp_path / "elsewhere").mkdir()
    link = images.image_dir(root, "43", 0, 1)
    os.symlink(tmp_path / "elsewhere", images.job_dir(root, "43"))
    with pytest.raises(CheckpointError, match="not a directory"):
        images.create(root, link, uid=4321)


def test_stream_receiver_takes_files_from_its_peer_only(tmp_path: Path) -> None:
    src = dump_dir(tmp_path)
    os.unlink(os.path.join(src, "pages-1.img"))
    os.unlink(os.path.join(src, "pagemap-1.img"))
    images.write_manifest(src)
    dst = tmp_path / "target"
    dst.mkdir()
    Path(dst, "pages-1.img").write_bytes(b"from the page server")
    port_file = str(dst / "port")
    result: list[int] = []
    uid = os.getuid()
    t = threading.Thread(target=lambda: result.append(
        stream.receive(str(dst), "127.0.0.1", "127.0.0.1", uid, port_file)))
    t.start()
    try:
        port = int(stream._wait_file(port_file, 0, "receiver", "-"))
        sent = stream.send_files(src, "127.0.0.1", port)
    finally:
        t.join(10)
    assert result == [0]
    assert sent == sum(os.path.getsize(os.path.join(src, n)) for n in os.listdir(src)
                       if not n.endswith(".log"))
    for name in ("core-1.img", "mm-1.img", "container.json", images.MANIFEST):
        assert Path(dst, name).read_bytes() == Path(src, name).read_bytes()
    assert Path(dst, "pages-1.img").read_bytes() == b"from the page server"
    assert not Path(dst, "dump.log").exists()


def test_stream_receiver_refuses_to_overwrite_streamed_pages(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Path(src, "pages-1.img").write_bytes(b"forged")
    dst = tmp_path / "dst"
    dst.mkdir()
    Path(dst, "pages-1.img").write_bytes(b"from the page server")
    result = _receive_from(src, dst, ok=False)
    assert result == [1] and Path(dst, "pages-1.img").read_bytes() == b"from the page server"


def test_stream_receiver_takes_the_page_files_of_a_postcopy_dump(tmp_path: Path) -> None:
    """A post-copy dump streams no pages: its few non-lazy ones come as files."""
    src = tmp_path / "src"
    src.mkdir()
    Path(src, "pages-1.img").write_bytes(b"non-lazy pages")
    Path(src, "core-1.img").write_bytes(b"core")
    dst = tmp_path / "dst"
    dst.mkdir()
    assert _receive_from(src, dst, ok=True) == [0]
    assert Path(dst, "pages-1.img").read_bytes() == b"non-lazy pages"


def _receive_from(src: Path, dst: Path, ok: bool) -> list[int]:
    port_file = str(dst.parent / f"port-{dst.name}")
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        stream.receive(str(dst), "127.0.0.1", "127.0.0.1", os.getuid(), port_file)))
    t.start()
    try:
        port = int(stream._wait_file(port_file, 0, "receiver", "-"))
        if ok:
            stream.send_files(str(src), "127.0.0.1", port)
        else:
            with pytest.raises(Exception, match="refused"):
                stream.send_files(str(src), "127.0.0.1", port)
    finally:
        t.join(10)
    return result


def test_file_checksums_follow_the_manifest_algorithm(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    data = os.urandom((4 << 20) * 2 + 100)  # spans several reads
    f = tmp_path / "pages-1.img"
    f.write_bytes(data)
    assert images.file_digest(str(f), "sha256") == hashlib.sha256(data).hexdigest()
    if images.xxhash is not None:
        assert images.file_digest(str(f), "xxh3_128") == \
            images.xxhash.xxh3_128(data).hexdigest()
    with pytest.raises(CorruptImage, match="unknown checksum"):
        images.file_digest(str(f), "md4")
    # a manifest written with sha256 (no xxhash where it was dumped) still verifies
    monkeypatch.setattr(images, "FILE_HASH", "sha256")
    digest = images.write_manifest(str(tmp_path))
    monkeypatch.setattr(images, "FILE_HASH", "xxh3_128")
    assert images.verify(str(tmp_path), digest).hash == "sha256"
    changed = bytearray(data)
    changed[(4 << 20) + 7] ^= 1  # inside the second read
    f.write_bytes(bytes(changed))
    with pytest.raises(CorruptImage, match="pages-1.img does not match its checksum"):
        images.verify(str(tmp_path), digest)
