"""A process holding verified memory behind a TCP counter: the migration tests' workload.

`python -m hpcmig.workloads.holder serve --memory-mb M [--port 9000]` fills M MiB with a
deterministic pattern (every page touched, not compressible), records its sha256, and serves
TCP lines: `PING <n>` -> `PONG <n> <pings this server answered so far>`, `CHECK` -> `CHECK ok
<pings>` if the memory still hashes to the recorded value (`CHECK bad` otherwise).
`python -m hpcmig.workloads.holder client HOST --progress FILE [--interval S]` pings over one
connection and requires the server's count to equal its own every time: a server restored from
an older state, or answered twice, breaks that at once. It rewrites FILE (atomically) with
`<pings> <largest gap between two answers, ms>`, or `ERROR ...` and exits; `--gaps FILE`
also logs every gap over 50 ms with its wall-clock end. A gap is the pause the peer saw
across a migration (TCP retransmission included).
The zdtm habit: set up state, keep running through the checkpoint, verify explicitly after.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import socket
import socketserver
import sys
import threading
import time

BLOCK = 1 << 20


def fill(megabytes: int, seed: int = 7) -> bytearray:
    """megabytes MiB: one random MiB, each copy of it xor-ed with its index's low byte so no
    two MiB are equal (no page could be shared or deduplicated)."""
    base = random.Random(seed).randbytes(BLOCK)
    buf = bytearray(base) * megabytes
    for i in range(megabytes):
        buf[i * BLOCK] ^= i & 0xFF or 1  # touches each MiB, makes it distinct
    return buf


class _State:
    def __init__(self, megabytes: int) -> None:
        self.memory = fill(megabytes)
        self.digest = hashlib.sha256(self.memory).hexdigest()
        self.pings = 0
        self.lock = threading.Lock()


class _Handler(socketserver.StreamRequestHandler):
    state: _State

    def handle(self) -> None:
        for raw in self.rfile:
            words = raw.decode(errors="replace").split()
            if words[:1] == ["PING"] and len(words) == 2:
                with self.state.lock:
                    self.state.pings += 1
                    reply = f"PONG {words[1]} {self.state.pings}\n"
            elif words == ["CHECK"]:
                ok = hashlib.sha256(self.state.memory).hexdigest() == self.state.digest
                reply = f"CHECK {'ok' if ok else 'bad'} {self.state.pings}\n"
            else:
                reply = "ERR unknown request\n"
            self.wfile.write(reply.encode())
            self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(megabytes: int, port: int) -> int:
    state = _State(megabytes)
    handler = type("Handler", (_Handler,), {"state": state})
    with _Server(("0.0.0.0", port), handler) as server:
        print(f"holder: {megabytes} MiB, sha256 {state.digest[:16]}, port {port}", flush=True)
        server.serve_forever()
    return 0


def _note(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def read_gaps(path: str) -> list[tuple[float, float]]:
    """The client's `--gaps` log: (wall-clock end, seconds) of every gap over 50 ms; [] if
    it wrote none."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [(float(end), float(gap)) for end, gap in (ln.split() for ln in fh
                                                                if ln.strip())]
    except FileNotFoundError:
        return []


def client(host: str, port: int, progress: str, interval: float,
           gaps: str | None = None) -> int:
    pings, gap = 0, 0.0
    try:
        conn = socket.create_connection((host, port), timeout=120)
        reader = conn.makefile("rb")
        last = time.monotonic()
        while True:
            conn.sendall(f"PING {pings + 1}\n".encode())
            words = reader.readline().decode().split()
            if words != ["PONG", str(pings + 1), str(pings + 1)]:
                raise RuntimeError(f"ping {pings + 1} answered {words}")
            pings += 1
            now = time.monotonic()
            if gaps and now - last > 0.05:
                with open(gaps, "a", encoding="utf-8") as fh:  # wall clock: other processes
                    fh.write(f"{time.time():.6f} {now - last:.6f}\n")  # compare with theirs
            gap = max(gap, now - last)
            last = now
            _note(progress, f"{pings} {gap * 1000:.1f}")
            time.sleep(interval)
    except Exception as exc:  # noqa: BLE001 - recorded for the test to read
        _note(progress, f"ERROR {type(exc).__name__}: {exc} after {pings}")
        return 1


def check(host: str, port: int) -> str:
    """Ask a server to verify its memory: 'ok <pings>' or 'bad <pings>'."""
    with socket.create_connection((host, port), timeout=120) as conn:
        conn.sendall(b"CHECK\n")
        return conn.makefile("rb").readline().decode().split(None, 1)[1].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcmig.workloads.holder")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--memory-mb", type=int, default=64)
    s.add_argument("--port", type=int, default=9000)
    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("--port", type=int, default=9000)
    c.add_argument("--progress", required=True)
    c.add_argument("--interval", type=float, default=0.01)
    c.add_argument("--gaps", help="append '<time> <seconds>' for every gap over 50 ms")
    k = sub.add_parser("check")
    k.add_argument("host")
    k.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.memory_mb, args.port)
    if args.cmd == "client":
        return client(args.host, args.port, args.progress, args.interval, args.gaps)
    print(check(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
