"""The client side of the exec protocol: run a command in a container, stream its I/O.

Design note: this module owns connecting to a container's init (address:port), signing the
request with MUNGE and relaying stdin/stdout/stderr/signals until the EXIT frame. `run_in`
captures output (for the agent, prolog and tests); `exec_stream` wires it to file
descriptors and forwards our SIGTERM/SIGINT/SIGHUP (for `hpcmig-rsh`). It decides nothing
about who may run what (the init does) and never resolves host names (rsh does).
A connection made from one container to another lives in the virtual network and migrates
with them under CRIU; one made from a node (the agent) does not, so keep those short.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hpcmig.auth import credential
from hpcmig.errors import HpcmigError, PermissionDenied
from hpcmig.runtime import protocol as P
from hpcmig.runtime.base import DEFAULT_EXEC_PORT

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
Sink = Callable[[bytes], None]


class ExecError(HpcmigError):
    """The exec service could not be reached or broke off."""


class ExecRefused(PermissionDenied):
    """The container's init refused the request (authentication or authorization)."""


@dataclass(frozen=True)
class ExecResult:
    code: int
    stdout: bytes
    stderr: bytes


def _fd_sink(fd: int) -> Sink:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                selectors.DefaultSelector().select(0.01)
                continue
            view = view[n:]

    return write


def _read_stdin(fd: int, outbuf: bytearray) -> bool:
    """Move one chunk of stdin into outbuf as a STDIN frame; False once at EOF."""
    try:
        chunk = os.read(fd, P.MAX_CHUNK)
    except BlockingIOError:
        return True
    except OSError:
        chunk = b""
    outbuf += P.encode_frame(P.Kind.STDIN, chunk)
    return bool(chunk)


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise ExecError(
            f"cannot reach the exec service of {address}:{port}: {exc.strerror or exc}",
            hint="is the container running, and is its address routed on this node?",
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def exec_stream(
    address: str,
    argv: list[str],
    *,
    port: int = DEFAULT_EXEC_PORT,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    rlimits: Mapping[str, Any] | None = None,
    user: str | None = None,
    stdin_fd: int | None = None,
    input: bytes | None = None,
    stdout: Sink | None = None,
    stderr: Sink | None = None,
    forward_signals: bool = False,
    timeout: float | None = None,
    connect_timeout: float = 10.0,
    munge_socket: str | None = None,
) -> int:
    """Run argv in the container at address:port; return its exit code (128+N if signalled).

    stdin comes from `stdin_fd` (read until EOF) or `input`; with neither, the command's stdin
    is /dev/null. Output goes to the sinks (default: our fds 1 and 2).
    """
    req = P.ExecRequest(
        argv=list(argv), target=f"{address}:{port}", env=dict(env or {}), cwd=cwd,
        rlimits={k: [int(v[0]), int(v[1])] for k, v in (rlimits or {}).items()},
        user=user, stdin=stdin_fd is not None or input is not None,
    )
    req.validate()
    body = req.to_bytes()
    cred = credential.sign(body, socket=munge_socket)
    out = stdout or _fd_sink(1)
    err = stderr or _fd_sink(2)
    sock = _connect(address, port, connect_timeout)
    sel = selectors.DefaultSelector()
    outbuf = bytearray(P.pack_request(cred, body))
    if input is not None:
        for i in range(0, len(input), P.MAX_CHUNK):
            outbuf += P.encode_frame(P.Kind.STDIN, input[i:i + P.MAX_CHUNK])
        outbuf += P.encode_frame(P.Kind.STDIN)
    pending_signals: list[int] = []
    old_handlers: dict[int, Any] = {}
    wake_r = wake_w = -1
    old_wakeup = -1
    if forward_signals and threading.current_thread() is threading.main_thread():
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in FORWARDED:
            old_handlers[sig] = signal.signal(sig, lambda s, _f: pending_signals.append(s))
        sel.register(wake_r, selectors.EVENT_READ, "wake")
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, "sock")
    stdin_open = stdin_fd is not None
    stdin_polled = False  # regular files and /dev/null cannot be polled: read them directly
    if stdin_fd is not None:
        os.set_blocking(stdin_fd, False)
        try:
            sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
            stdin_polled = True
        except PermissionError:
            pass
    decoder = P.FrameDecoder()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if stdin_open and not stdin_polled and len(outbuf) < P.MAX_FRAME:
                stdin_open = _read_stdin(stdin_fd, outbuf)  # type: ignore[arg-type]
                wait = 0.0
            if deadline is not None and time.monotonic() >= deadline:
                try:  # best effort: kill what we started
                    sock.setblocking(True)
                    sock.settimeout(1.0)
                    sock.sendall(bytes(outbuf) + P.int_frame(P.Kind.SIGNAL, signal.SIGKILL))
                except OSError:
                    pass
                raise ExecError(f"command {argv[0]!r} in {address} timed out after {timeout:g}s")
            for key, mask in sel.select(wait):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                elif key.data == "stdin":
                    stdin_open = _read_stdin(key.fd, outbuf)
                    if not stdin_open:
                        sel.unregister(key.fd)
                elif mask & selectors.EVENT_WRITE and outbuf:
                    try:
                        del outbuf[:sock.send(outbuf)]
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        raise ExecError(f"connection to {address}:{port} lost: {exc}") from None
                if key.data == "sock" and mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        raise ExecError(f"connection to {address}:{port} lost: {exc}") from None
                    if not data:
                        raise ExecError(
                            f"{address}:{port} closed the connection before the command ended"
                        )
                    for frame in decoder.feed(data):
                        if frame.kind is P.Kind.STDOUT and frame.payload:
                            out(frame.payload)
                        elif frame.kind is P.Kind.STDERR and frame.payload:
                            err(frame.payload)
                        elif frame.kind is P.Kind.EXIT:
                            return P.frame_int(frame)
                        elif frame.kind is P.Kind.ERROR:
                            raise ExecRefused(
                                f"{address} refused to run {argv[0]!r}: "
                                f"{frame.payload.decode(errors='replace')}"
                            )
            while pending_signals:
                outbuf += P.int_frame(P.Kind.SIGNAL, pending_signals.pop(0))
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if outbuf else 0),
                       "sock")
    finally:
        sel.close()
        sock.close()
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, True)
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        if wake_r >= 0:
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)


def run_in(
    address: str,
    argv: list[str],
    *,
    port: int = DEFAULT_EXEC_PORT,
    input: bytes | None = None,
    timeout: float | None = 60.0,
    **kwargs: Any,
) -> ExecResult:
    """Run argv in the container and capture its output (for the agent and tests)."""
    out = bytearray()
    err = bytearray()
    code = exec_stream(address, argv, port=port, input=input, stdout=out.extend,
                       stderr=err.extend, timeout=timeout, **kwargs)
    return ExecResult(code, bytes(out), bytes(err))
