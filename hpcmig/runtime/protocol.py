"""The exec protocol between `hpcmig-rsh` (or the agent) and a container's init.

Design note: pure code only: frame encoding/decoding, the exec request with its validation,
and the authorization rule. No sockets, no MUNGE calls, no processes, so every rule here is
unit-tested without root. `init` (server) and `client` do the I/O.

Wire format: a stream of frames, each `type:u8 length:u32be payload`. The client's first
frame is REQUEST = `<MUNGE credential> "\\n" <request JSON>`, the credential's payload being
the tagged SHA-256 of the JSON bytes (`hpcmig.auth.credential`). Then the client sends STDIN
(empty payload = EOF) and SIGNAL (i32be signal number); the server sends STDOUT, STDERR
(empty = EOF), and at the end EXIT (i32be: exit code, 128+N when killed by signal N) or ERROR
(UTF-8 message) after which it closes the connection.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import signal
import struct
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

from hpcmig.errors import HpcmigError, PermissionDenied
from hpcmig.runtime.base import check_limits

HEADER = struct.Struct(">BI")
MAX_FRAME = 1 << 20  # payload bytes
MAX_CHUNK = 64 * 1024  # what senders put in one STDIN/STDOUT/STDERR frame
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FORWARDABLE_SIGNALS = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL,
     signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP,
     signal.SIGALRM}
)
EXIT_REMOTE_ERROR = 255  # rsh's own failures (connection, auth), like ssh


class ProtocolError(HpcmigError):
    """The peer sent something the exec protocol does not allow."""


class Kind(IntEnum):
    REQUEST = 1
    STDIN = 2
    STDOUT = 3
    STDERR = 4
    SIGNAL = 5
    EXIT = 6
    ERROR = 7


@dataclass(frozen=True)
class Frame:
    kind: Kind
    payload: bytes = b""


def encode_frame(kind: Kind, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(int(kind), len(payload)) + payload


def int_payload(value: int) -> bytes:
    return struct.pack(">i", value)


def int_frame(kind: Kind, value: int) -> bytes:
    return encode_frame(kind, int_payload(value))


def frame_int(frame: Frame) -> int:
    if len(frame.payload) != 4:
        raise ProtocolError(f"{frame.kind.name} frame needs a 4-byte payload")
    return int(struct.unpack(">i", frame.payload)[0])


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole frames back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            try:
                k = Kind(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame type {kind}") from None
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append(Frame(k, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


@dataclass(frozen=True)
class ExecRequest:
    """What to run. `target` is the address:port the client meant (stops cross-node replay)."""

    argv: list[str]
    target: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    rlimits: dict[str, list[int]] = field(default_factory=dict)
    user: str | None = None  # rsh -l: must name the job's user if given
    stdin: bool = True  # False: the child's stdin is /dev/null
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    time: float = field(default_factory=time.time)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ExecRequest:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"request is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProtocolError("request must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ProtocolError(f"unknown request fields: {sorted(unknown)}")
        req = cls(**data)
        req.validate()
        return req

    def validate(self) -> None:
        _expect(isinstance(self.argv, list) and bool(self.argv), "argv must be a non-empty list")
        _expect(all(isinstance(a, str) and "\0" not in a for a in self.argv),
                "argv entries must be strings without NUL")
        _expect(isinstance(self.target, str), "target must be a string")
        _expect(isinstance(self.env, dict), "env must be an object")
        for key, value in self.env.items():
            _expect(bool(_ENV_RE.match(key)), f"bad environment name {key!r}")
            _expect(isinstance(value, str) and "\0" not in value, f"bad value for ${key}")
        _expect(self.cwd is None or (isinstance(self.cwd, str) and self.cwd.startswith("/")),
                "cwd must be an absolute path")
        _expect(self.user is None or isinstance(self.user, str), "user must be a string")
        _expect(isinstance(self.stdin, bool), "stdin must be a boolean")
        _expect(isinstance(self.nonce, str) and isinstance(self.time, int | float),
                "bad nonce/time")
        _expect(isinstance(self.rlimits, dict), "rlimits must be an object")
        for key, pair in self.rlimits.items():
            _expect(isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(v, int) for v in pair),
                    f"rlimit {key} must be [soft, hard]")


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise ProtocolError(f"bad exec request: {message}")


def pack_request(cred: str, request: bytes) -> bytes:
    return encode_frame(Kind.REQUEST, cred.encode("ascii") + b"\n" + request)


def unpack_request(frame: Frame) -> tuple[str, bytes]:
    """Split a REQUEST frame into (credential, request bytes)."""
    if frame.kind is not Kind.REQUEST:
        raise ProtocolError(f"expected a REQUEST frame first, got {frame.kind.name}")
    cred, sep, body = frame.payload.partition(b"\n")
    if not sep or not cred:
        raise ProtocolError("REQUEST frame carries no credential")
    try:
        return cred.decode("ascii"), body
    except UnicodeDecodeError:
        raise ProtocolError("credential is not ASCII") from None


def authorize(
    *, requester_uid: int, job_uid: int, job_user: str | None, request: ExecRequest,
    own_targets: frozenset[str] | None = None, max_age: float = 300.0,
    now: float | None = None,
) -> None:
    """Raise PermissionDenied unless this requester may run this request.

    Rules: the credential's uid is the job's uid or root; `-l user`, if given, names the
    job's user; the request was made for this container (target) and is not stale.
    """
    if requester_uid not in (0, job_uid):
        raise PermissionDenied(
            f"uid {requester_uid} may not exec in this container (job uid {job_uid})"
        )
    if request.user is not None and request.user not in (job_user, str(job_uid)):
        raise PermissionDenied(
            f"login name {request.user!r} is not the job's user ({job_user or job_uid})"
        )
    if own_targets is not None and request.target not in own_targets:
        raise PermissionDenied(f"request was made for {request.target}, not for this container")
    age = (time.time() if now is None else now) - float(request.time)
    if abs(age) > max_age:
        raise PermissionDenied(f"request is {age:.0f}s old (clock skew or replay?)")


def rlimits_for_child(requested: Mapping[str, Any], current: Mapping[str, tuple[int, int]],
                      ) -> dict[str, tuple[int, int]]:
    """Validate requested rlimits against the container's: a request may only lower hard
    limits and must keep soft <= hard. `current` maps names to the init's (soft, hard)."""
    clean = check_limits(requested)
    inf = resource.RLIM_INFINITY
    for key, (_soft, hard) in clean.items():
        cur_hard = current[key][1] if key in current else inf
        if cur_hard != inf and (hard == inf or hard > cur_hard):
            raise ProtocolError(f"rlimit {key}: hard {hard} above the container's {cur_hard}")
    return clean


def exit_code(wait_status: int) -> int:
    """Shell-style exit code: the status, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code
