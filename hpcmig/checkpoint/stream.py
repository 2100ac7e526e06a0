"""Streamed image transport: node to node, with no intermediate file on a shared directory.

Design note: this module owns the two listeners a migration target runs and the sender the
source runs; both sides act in the caller's network namespace (the node's). Pages, the bulk
of a dump, go through CRIU's own page server: the target runs `criu page-server --daemon`
into its image directory and the source's `criu dump --page-server --address --port` writes
them straight into it. CRIU writes the rest of the images (core, mm, fds, sockets: kilobytes
to a few MB) into the source's local directory; `send_files` then copies those, the
container.json and the manifest over a second small TCP connection to a one-shot receiver
(`python -m hpcmig.checkpoint.stream receive`) on the target. The receiver accepts only the
source node's address, writes each file atomically, never overwrites a streamed page file
(a post-copy dump streams none: its few non-lazy pages come as files), and seals the
directory for the job's user. Integrity is the manifest's job (images.verify).
Neither listener authenticates its peer beyond the address check: they listen on the node's
address for one dump only, and the manifest (whose sha256 the controller journals) covers
every file but the streamed pages.

Frames (sender -> receiver): b"HPCMIG-IMG1\\n", then per file `u16 name length, name,
u64 size, data`, then a u16 0; the receiver answers b"OK\\n" or b"ERR <reason>\\n".
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from hpcmig import _proc, _procfs
from hpcmig.checkpoint import _tree, images
from hpcmig.checkpoint.base import CheckpointError
from hpcmig.checkpoint.criu import criu_binary

MAGIC = b"HPCMIG-IMG1\n"
READY_TIMEOUT = 20.0
IDLE_TIMEOUT = 900.0  # a receiver nobody sends to exits after this
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Stream:
    """The target's listeners for one container's images."""

    address: str  # the target node's address (both listen there)
    page_port: int
    file_port: int
    page_server_pid: int
    receiver_pid: int
    image_dir: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stream:
        return cls(**data)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _wait_file(path: str, pid: int, what: str, log: str) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
            if text:
                return text
        if pid and not _tree.live(pid):
            break
        time.sleep(0.01)
    raise CheckpointError(f"{what} did not start", hint=f"see {log}")


def start_page_server(image_dir: str, address: str, port: int = 0) -> tuple[int, int]:
    """`criu page-server --daemon` into image_dir on address; returns (pid, port) once it
    listens. It serves one dump, then exits."""
    pidfile = os.path.join(image_dir, "page-server.pid")
    for attempt in range(5):
        p = port or _free_port(address)
        argv = [criu_binary(), "page-server", "--daemon", "--pidfile", pidfile, "-D", image_dir,
                "--address", address, "--port", str(p), "-o", "page-server.log"]
        result = _proc.run(argv, check=False, timeout=30)
        if result.returncode == 0:
            return int(_wait_file(pidfile, 0, "criu page-server", image_dir)), p
        if port or attempt == 4:
            raise CheckpointError(f"criu page-server failed (exit {result.returncode}): "
                                  f"{' '.join(argv)}", hint=f"see {image_dir}/page-server.log")
    raise AssertionError("unreachable")


def start_receiver(image_dir: str, address: str, peer: str, uid: int) -> tuple[int, int]:
    """Spawn the one-shot file receiver; returns (pid, port) once it listens."""
    port_file = os.path.join(image_dir, "receiver.port.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(port_file)
    log = os.path.join(image_dir, "receiver.log")
    pid = _proc.spawn([sys.executable, "-m", "hpcmig.checkpoint.stream", "receive", image_dir,
                       "--address", address, "--peer", peer, "--uid", str(uid),
                       "--port-file", port_file], log_path=log)
    port = int(_wait_file(port_file, pid, "image receiver", log))
    os.unlink(port_file)
    return pid, port


def open_stream(image_dir: str, address: str, peer: str, uid: int) -> Stream:
    """On the target: both listeners on address for images coming from node address peer.
    image_dir must exist (images.create)."""
    ps_pid, ps_port = start_page_server(image_dir, address)
    try:
        rx_pid, rx_port = start_receiver(image_dir, address, peer, uid)
    except BaseException:
        _stop(ps_pid, "page-server")
        raise
    return Stream(address, ps_port, rx_port, ps_pid, rx_pid, image_dir)


def _stop(pid: int, marker: str) -> None:
    argv = _procfs.argv(pid)
    if _tree.live(pid) and any(marker in a for a in argv):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def close_stream(stream: Stream) -> None:
    """Stop whatever of the stream is still listening (idempotent; after a rollback)."""
    _stop(stream.page_server_pid, "page-server")
    _stop(stream.receiver_pid, "hpcmig.checkpoint.stream")


def stop_listeners(image_dir: str) -> None:
    """SIGKILL page servers and receivers still serving image_dir (a stream whose opener died
    before journaling it)."""
    for pid in _tree.pids():
        argv = _procfs.argv(pid)
        if image_dir in argv and ("page-server" in argv or
                                  "hpcmig.checkpoint.stream" in argv) and _tree.live(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), _CHUNK))
        if not chunk:
            raise ConnectionError("sender closed the connection early")
        buf += chunk
    return bytes(buf)


def send_files(image_dir: str, address: str, port: int, timeout: float = 300.0) -> int:
    """On the source: send every non-page file of the dump; returns the bytes sent."""
    names = [n for n in sorted(os.listdir(image_dir))
             if os.path.isfile(os.path.join(image_dir, n)) and not n.endswith((".log", ".pid"))]
    sent = 0
    try:
        conn = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise CheckpointError(f"cannot reach the image receiver at {address}:{port}: {exc}"
                              ) from None
    with conn:
        failure: OSError | None = None
        try:
            conn.sendall(MAGIC)
            for name in names:
                raw = name.encode()
                path = os.path.join(image_dir, name)
                size = os.path.getsize(path)
                conn.sendall(struct.pack("!H", len(raw)) + raw + struct.pack("!Q", size))
                with open(path, "rb") as fh:
                    conn.sendfile(fh)
                sent += size
            conn.sendall(struct.pack("!H", 0))
        except OSError as exc:  # the receiver may have refused and closed: read why
            failure = exc
        try:
            answer = conn.makefile("rb").readline().decode(errors="replace").strip()
        except OSError:
            answer = ""
    if answer != "OK":
        why = answer or f"no answer ({failure})"
        raise CheckpointError(f"the image receiver at {address}:{port} refused: {why}")
    return sent


def _receive_one(conn: socket.socket, image_dir: str) -> list[str]:
    if _recv_exact(conn, len(MAGIC)) != MAGIC:
        raise ValueError("not an hpcmig image stream")
    got: list[str] = []
    while True:
        (length,) = struct.unpack("!H", _recv_exact(conn, 2))
        if length == 0:
            return got
        name = _recv_exact(conn, length).decode()
        if "/" in name or name.startswith("."):
            raise ValueError(f"refusing file name {name!r}")
        if any(fnmatch.fnmatchcase(name, p) for p in images.STREAM_PATTERNS) and \
                os.path.lexists(os.path.join(image_dir, name)):  # the page server's
            raise ValueError(f"refusing to overwrite streamed pages {name!r}")
        (size,) = struct.unpack("!Q", _recv_exact(conn, 8))
        tmp = os.path.join(image_dir, f".{name}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            left = size
            while left:
                chunk = conn.recv(min(left, _CHUNK))
                if not chunk:
                    raise ConnectionError("sender closed the connection early")
                fh.write(chunk)
                left -= len(chunk)
        os.replace(tmp, os.path.join(image_dir, name))
        got.append(name)


def receive(image_dir: str, address: str, peer: str, uid: int, port_file: str) -> int:
    """The receiver's main loop: serve one good session from `peer`, seal, exit."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, 0))
        listener.listen(4)
        listener.settimeout(IDLE_TIMEOUT)
        with open(port_file + ".w", "w", encoding="ascii") as fh:
            fh.write(str(listener.getsockname()[1]))
        os.replace(port_file + ".w", port_file)
        while True:
            conn, (host, _port) = listener.accept()
            with conn:
                if host != peer:
                    print(f"refused a connection from {host} (expecting {peer})", flush=True)
                    continue
                conn.settimeout(IDLE_TIMEOUT)
                try:
                    got = _receive_one(conn, image_dir)
                    images.seal(image_dir, uid)
                except (OSError, ValueError, struct.error) as exc:
                    with contextlib.suppress(OSError):
                        conn.sendall(f"ERR {exc}\n".encode())
                    print(f"receive failed: {exc}", flush=True)
                    return 1
                conn.sendall(b"OK\n")
                print(json.dumps({"received": got}), flush=True)
                return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcmig.checkpoint.stream")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rx = sub.add_parser("receive", help="one-shot image file receiver (run by open_stream)")
    rx.add_argument("image_dir")
    rx.add_argument("--address", required=True)
    rx.add_argument("--peer", required=True)
    rx.add_argument("--uid", type=int, required=True)
    rx.add_argument("--port-file", required=True)
    args = parser.parse_args(argv)
    try:
        return receive(args.image_dir, args.address, args.peer, args.uid, args.port_file)
    except TimeoutError:
        print("no sender came; exiting", flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
