"""The agent's RPC: wire format and the client.

Design note: one TCP connection carries one request and one answer, each a 4-byte big-endian
length and a JSON object. The request is `{"cred": MUNGE credential, "body": JSON text}`;
the body names the operation, its arguments, the node it is meant for (`target`), a time and
a nonce, and the credential's payload is a hash of exactly those bytes (`hpcmig.auth`), so a
credential vouches for one request to one node once (munged refuses replays). The answer is
`{"ok": true, "result": ...}` or `{"ok": false, "error": ..., "kind": ..., "hint": ...}`;
`kind` names the hpcmig error class, which the client raises again. This module makes no
authorization decision (server.py does).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

from hpcmig import errors
from hpcmig.auth import credential
from hpcmig.errors import HpcmigError

MAX_MESSAGE = 16 << 20
MAX_AGE = 300.0  # seconds a request may be old (clock skew included)
_LEN = struct.Struct(">I")


class RpcError(HpcmigError):
    """The agent could not be reached, or answered something unreadable."""


class Unreachable(RpcError):
    """Nothing accepted the connection: the server does not run (nothing was sent)."""


def send_message(sock: socket.socket, obj: Mapping[str, Any]) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise RpcError(f"message of {len(data)} bytes is over the {MAX_MESSAGE} limit")
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RpcError("connection closed in the middle of a message")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket) -> dict[str, Any]:
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if size > MAX_MESSAGE:
        raise RpcError(f"message of {size} bytes is over the {MAX_MESSAGE} limit")
    try:
        obj = json.loads(_recv_exact(sock, size))
    except ValueError as exc:
        raise RpcError(f"unreadable message: {exc}") from None
    if not isinstance(obj, dict):
        raise RpcError("unreadable message: not a JSON object")
    return obj


def make_body(op: str, args: Mapping[str, Any], target: str) -> str:
    return json.dumps({"op": op, "args": dict(args), "target": target, "time": time.time(),
                       "nonce": os.urandom(12).hex()}, separators=(",", ":"))


def raise_remote(answer: Mapping[str, Any], where: str) -> None:
    """Re-raise an error answer as the hpcmig error class the agent named."""
    kind = str(answer.get("kind", "HpcmigError"))
    cls = getattr(errors, kind, None)
    message = f"{where}: {answer.get('error', 'unknown error')}"
    hint = answer.get("hint")
    if isinstance(cls, type) and issubclass(cls, HpcmigError) and cls is not errors.CommandError:
        exc = cls.__new__(cls)
        HpcmigError.__init__(exc, message, hint)
        raise exc
    raise HpcmigError(message, hint)


class AgentClient:
    """Calls operations on the agent of one node."""

    what = "the agent"
    hint = "is hpcmig-agent running there? (`hpcmig testbed status` on the testbed)"

    def __init__(self, node: str, address: str, port: int = 7101,
                 munge_socket: str | None = None, timeout: float = 120.0) -> None:
        self.node = node
        self.address = address
        self.port = port
        self.munge_socket = munge_socket
        self.timeout = timeout

    @property
    def _on(self) -> str:
        return f" on {self.node}"

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        body = make_body(op, args, self.node)
        cred = credential.sign(body.encode(), socket=self.munge_socket)
        where = f"{self.what}{self._on} ({op})"
        try:
            sock = socket.create_connection((self.address, self.port),
                                            timeout=min(10.0, timeout or self.timeout))
        except OSError as exc:
            raise Unreachable(f"cannot reach {self.what}{self._on} at {self.address}:{self.port}: "
                              f"{exc.strerror or exc}", hint=self.hint) from None
        try:
            with sock:
                sock.settimeout(timeout or self.timeout)
                send_message(sock, {"cred": cred, "body": body})
                answer = recv_message(sock)
        except TimeoutError:
            raise RpcError(f"{where}: no answer within {timeout or self.timeout:g} s") from None
        except OSError as exc:
            raise RpcError(f"{where}: the connection broke before the answer "
                           f"({exc.strerror or exc})") from None
        if not answer.get("ok"):
            raise_remote(answer, where)
        return answer.get("result")
