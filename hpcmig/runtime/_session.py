"""One exec connection inside a container's init: authenticate, start the child, stream.

Design note: a `Session` is a small state machine driven by the init's selector loop (no
threads: CRIU dumps stay simple). It owns one client connection and at most one child: it
checks the MUNGE credential and the authorization rule (`protocol.authorize`), starts the
child as the job's user in its own session/process group, relays STDIN/STDOUT/STDERR frames,
delivers SIGNAL frames to the child's process group, and sends EXIT once the child is reaped
and its output drained. It never runs anything as root and never reaps (the init reaps every
child and hands statuses back through `child_exited`).

Children are started with subprocess.Popen directly rather than `hpcmig._proc`: they are the
product of this service (streamed, uid-switched, long-lived), not commands hpcmig runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcmig.auth.credential import AuthError, Identity
from hpcmig.errors import HpcmigError
from hpcmig.runtime import protocol as P
from hpcmig.runtime.base import RLIMIT_NAMES

log = logging.getLogger("hpcmig.runtime.init")

HIGH_WATER = 1 << 20  # bytes buffered before we stop reading the other side
Verifier = Callable[[str, bytes], Identity]
# Registers (fd, want_read, want_write, callback) with the loop; want both False = forget.
Watch = Callable[[int, bool, bool, Callable[[int, int], None]], None]
# callbacks are called as callback(fd, selector event mask)


@dataclass(frozen=True)
class ExecContext:
    """What every session of one container shares: who the job is and how children start."""

    uid: int
    gid: int
    user: str | None
    groups: list[int]
    base_env: dict[str, str]
    cwd: str
    targets: frozenset[str] | None  # "addr:port" requests must name; None: don't check
    verify: Verifier
    setgroups: bool = True  # False only when not root (unit tests)
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)


def current_limits() -> dict[str, tuple[int, int]]:
    return {name: resource.getrlimit(num) for name, num in RLIMIT_NAMES.items()}


def _child_setup(limits: dict[str, tuple[int, int]], cwd: str) -> None:
    """Runs in the child after setuid, before exec: rlimits and cwd as the job's user."""
    try:
        for name, (soft, hard) in limits.items():
            resource.setrlimit(RLIMIT_NAMES[name], (soft, hard))
        os.chdir(cwd)
    except OSError as exc:
        os.write(2, f"hpcmig: cannot prepare the command: {exc}\n".encode())
        os._exit(126)


class Session:
    def __init__(self, conn: socket.socket, peer: str, ctx: ExecContext, watch: Watch) -> None:
        self.conn = conn
        self.peer = peer
        self.ctx = ctx
        self.watch = watch
        self.decoder = P.FrameDecoder()
        self.outbuf = bytearray()
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.pipes: dict[int, P.Kind] = {}  # child's stdout/stderr read fds
        self.stdin_fd: int | None = None
        self.status: int | None = None
        self.closing = False  # flush outbuf, then close
        self.closed = False
        conn.setblocking(False)
        self._update()

    # -- loop plumbing --------------------------------------------------------------------
    @property
    def child_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _update(self) -> None:
        if self.closed:
            return
        read = not self.closing and len(self.stdin_buf) < HIGH_WATER
        self.watch(self.conn.fileno(), read, bool(self.outbuf), self._on_conn)
        for fd in self.pipes:
            self.watch(fd, len(self.outbuf) < HIGH_WATER, False, self._on_pipe)
        if self.stdin_fd is not None:
            self.watch(self.stdin_fd, False, bool(self.stdin_buf) or self.stdin_eof,
                       self._on_stdin)

    def _send(self, kind: P.Kind, payload: bytes = b"") -> None:
        self.outbuf += P.encode_frame(kind, payload)

    def _refuse(self, message: str) -> None:
        log.warning("refused exec request from %s: %s", self.peer, message)
        self._send(P.Kind.ERROR, message.encode())
        self.closing = True

    # -- events ---------------------------------------------------------------------------
    def _on_conn(self, _fd: int, mask: int) -> None:
        if mask & 2 and self.outbuf:  # EVENT_WRITE
            try:
                sent = self.conn.send(self.outbuf)
                del self.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._lost()
                return
            if self.closing and not self.outbuf:
                self.close()
                return
        if mask & 1 and not self.closing:  # EVENT_READ
            try:
                data = self.conn.recv(P.MAX_CHUNK * 2)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._lost()
                return
            if data:
                try:
                    for frame in self.decoder.feed(data):
                        self._on_frame(frame)
                except HpcmigError as exc:
                    self._refuse(str(exc))
        self._update()

    def _on_frame(self, frame: P.Frame) -> None:
        if self.proc is None and self.status is None:
            self._start(frame)
        elif frame.kind is P.Kind.STDIN:
            if self.stdin_fd is None:
                return
            if frame.payload:
                self.stdin_buf += frame.payload
            else:
                self.stdin_eof = True
        elif frame.kind is P.Kind.SIGNAL:
            sig = P.frame_int(frame)
            if sig not in P.FORWARDABLE_SIGNALS:
                raise P.ProtocolError(f"signal {sig} may not be forwarded")
            self.signal(sig)
        else:
            raise P.ProtocolError(f"unexpected {frame.kind.name} frame from the client")

    def _start(self, frame: P.Frame) -> None:
        cred, body = P.unpack_request(frame)
        try:
            who = self.ctx.verify(cred, body)
        except AuthError as exc:
            self._refuse(exc.message)
            return
        except HpcmigError as exc:  # munged unreachable: our fault, say so
            log.error("cannot check exec credential: %s", exc)
            self._refuse(f"container cannot check credentials: {exc.message}")
            return
        req = P.ExecRequest.from_bytes(body)
        P.authorize(requester_uid=who.uid, job_uid=self.ctx.uid, job_user=self.ctx.user,
                    request=req, own_targets=self.ctx.targets)
        limits = P.rlimits_for_child(req.rlimits, self.ctx.limits)
        env = {**self.ctx.base_env, **req.env}
        cwd = req.cwd or self.ctx.cwd
        log.info("exec for uid %d from %s: %s", who.uid, self.peer, " ".join(req.argv)[:200])
        try:
            self.proc = subprocess.Popen(
                req.argv,
                stdin=subprocess.PIPE if req.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, user=self.ctx.uid, group=self.ctx.gid,
                extra_groups=self.ctx.groups if self.ctx.setgroups else None,
                start_new_session=True, close_fds=True,
                preexec_fn=lambda: _child_setup(limits, cwd),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            code = 126 if isinstance(exc, PermissionError) else 127
            self._send(P.Kind.STDERR, f"hpcmig: cannot run {req.argv[0]}: {exc}\n".encode())
            self._send(P.Kind.EXIT, P.int_payload(code))
            self.status = code << 8
            self.closing = True
            return
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, kind in ((self.proc.stdout, P.Kind.STDOUT), (self.proc.stderr, P.Kind.STDERR)):
            os.set_blocking(stream.fileno(), False)
            self.pipes[stream.fileno()] = kind
        if self.proc.stdin is not None:
            self.stdin_fd = self.proc.stdin.fileno()
            os.set_blocking(self.stdin_fd, False)

    def _on_pipe(self, fd: int, _mask: int) -> None:
        kind = self.pipes[fd]
        try:
            data = os.read(fd, P.MAX_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._send(kind, data)
        if not data:
            self.watch(fd, False, False, self._on_pipe)
            del self.pipes[fd]
            self._close_stream(fd)
            self._maybe_exit()
        self._update()

    def _on_stdin(self, fd: int, _mask: int) -> None:
        try:
            if self.stdin_buf:
                n = os.write(fd, self.stdin_buf[:P.MAX_CHUNK])
                del self.stdin_buf[:n]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # child closed its stdin: drop what it will never read
            self.stdin_buf.clear()
            self.stdin_eof = True
        if self.stdin_eof and not self.stdin_buf:
            self.watch(fd, False, False, self._on_stdin)
            self.stdin_fd = None
            self._close_stream(fd)
        self._update()

    def _close_stream(self, fd: int) -> None:
        assert self.proc is not None
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed and stream.fileno() == fd:
                stream.close()

    # -- called by the init ---------------------------------------------------------------
    def child_exited(self, status: int) -> None:
        self.status = status
        if self.proc is not None:
            self.proc.returncode = P.exit_code(status)  # we reaped it, not Popen
        self._maybe_exit()
        self._update()

    def _maybe_exit(self) -> None:
        if self.status is None or self.pipes or self.closed or self.closing:
            return
        self._send(P.Kind.EXIT, P.int_payload(P.exit_code(self.status)))
        self.closing = True

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def _lost(self) -> None:
        if self.proc is not None and self.status is None:
            log.info("client %s went away; SIGTERM to process group %d", self.peer, self.proc.pid)
            self.signal(signal.SIGTERM)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.watch(self.conn.fileno(), False, False, self._on_conn)
        for fd in list(self.pipes):
            self.watch(fd, False, False, self._on_pipe)
            self._close_stream(fd)
        self.pipes.clear()
        if self.stdin_fd is not None:
            self.watch(self.stdin_fd, False, False, self._on_stdin)
            self._close_stream(self.stdin_fd)
            self.stdin_fd = None
        self.closed = True
        self.conn.close()

    @property
    def finished(self) -> bool:
        """Nothing left to do: connection closed and no child still running."""
        return self.closed and (self.proc is None or self.status is not None)
