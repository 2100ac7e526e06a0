"""MUNGE credentials through ctypes on libmunge.so.2.

Design note: this module owns the binding to libmunge (encode, decode, error mapping) and
nothing else. It knows no request format and makes no policy decision (which uid may do what):
`hpcmig.auth.credential` binds a credential to a request, callers decide who is allowed.
It must not shell out to `munge`/`unmunge` (a fork per request is too slow for MPI launch) and
must not cache decoded credentials (replay detection is munged's job; see `decode`).

The socket of munged is, in order: the `socket` argument, `$HPCMIG_MUNGE_SOCKET`, the
`socket=` of slurm.conf's AuthInfo (hpcmig authenticates with the munged Slurm uses),
libmunge's default (/run/munge/munge.socket.2). Errors are `MungeError` with the MUNGE error
code, so a caller can tell "munged not running" (EMUNGE_SOCKET) from "credential replayed".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import NamedTuple

from hpcmig.errors import HpcmigError, MissingDependency

SOCKET_ENV = "HPCMIG_MUNGE_SOCKET"
DEFAULT_SOCKET = "/run/munge/munge.socket.2"

# munge.h (MUNGE 0.5.x): munge_opt_t and munge_err_t values used here.
_OPT_SOCKET = 8
EMUNGE_SUCCESS = 0
EMUNGE_SOCKET = 6
EMUNGE_BAD_CRED = 8
EMUNGE_CRED_INVALID = 14
EMUNGE_CRED_EXPIRED = 15
EMUNGE_CRED_REWOUND = 16
EMUNGE_CRED_REPLAYED = 17
EMUNGE_CRED_UNAUTHORIZED = 18


class MungeError(HpcmigError):
    """libmunge refused to encode or decode; `code` is the munge_err_t value."""

    def __init__(self, message: str, code: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code


class Decoded(NamedTuple):
    """What a valid credential says: its payload and who encoded it (unpacks as a tuple)."""

    payload: bytes
    uid: int
    gid: int


_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    global _lib, _libc
    if _lib is None or _libc is None:
        try:
            lib = ctypes.CDLL("libmunge.so.2")
        except OSError as exc:
            raise MissingDependency(
                f"cannot load libmunge.so.2: {exc}",
                hint="install the MUNGE library (Debian: apt-get install libmunge2)",
            ) from None
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_create.argtypes = []
        lib.munge_ctx_destroy.restype = None
        lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_strerror.restype = ctypes.c_char_p
        lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
        lib.munge_strerror.restype = ctypes.c_char_p
        lib.munge_strerror.argtypes = [ctypes.c_int]
        lib.munge_encode.restype = ctypes.c_int
        lib.munge_encode.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
        ]
        lib.munge_decode.restype = ctypes.c_int
        lib.munge_decode.argtypes = [
            ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint32),
            ctypes.POINTER(ctypes.c_uint32),
        ]
        # munge_ctx_set is variadic: leave argtypes unset, pass ctypes objects explicitly.
        lib.munge_ctx_set.restype = ctypes.c_int
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
        _lib, _libc = lib, libc
    return _lib, _libc


def socket_path(socket: str | None = None) -> str:
    """The munged socket this process talks to."""
    return socket or os.environ.get(SOCKET_ENV) or slurm_socket() or DEFAULT_SOCKET


def slurm_socket(conf: str | None = None) -> str | None:
    """`AuthInfo=socket=PATH,...` from slurm.conf ($SLURM_CONF or /etc/slurm/slurm.conf)."""
    conf = conf or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        with open(conf, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.split("#", 1)[0].strip().partition("=")
                if key.strip().lower() == "authinfo":
                    for item in value.split(","):
                        k, _, v = item.strip().partition("=")
                        if k.strip().lower() == "socket" and v.strip():
                            return v.strip()
    except OSError:
        return None
    return None


def _error(lib: ctypes.CDLL, ctx: int, code: int, action: str, sock: str) -> MungeError:
    raw = lib.munge_ctx_strerror(ctx) or lib.munge_strerror(code) or b"unknown error"
    detail = raw.decode(errors="replace")
    if code == EMUNGE_SOCKET:
        return MungeError(
            f"cannot {action} a MUNGE credential: munged is not reachable at {sock} ({detail})",
            code,
            hint=f"start munged, or point ${SOCKET_ENV} at the socket of the running munged",
        )
    if code == EMUNGE_CRED_REPLAYED:
        return MungeError(f"MUNGE credential replayed: {detail}", code)
    if code == EMUNGE_CRED_EXPIRED:
        return MungeError(
            f"MUNGE credential expired: {detail}", code,
            hint="check that the clocks of the nodes agree",
        )
    return MungeError(f"cannot {action} a MUNGE credential: {detail}", code)


def _context(lib: ctypes.CDLL, sock: str) -> int:
    ctx = lib.munge_ctx_create()
    if not ctx:
        raise MungeError("munge_ctx_create failed (out of memory?)", 5)
    err = lib.munge_ctx_set(ctypes.c_void_p(ctx), ctypes.c_int(_OPT_SOCKET),
                            ctypes.c_char_p(sock.encode()))
    if err != EMUNGE_SUCCESS:
        exc = _error(lib, ctx, err, "configure", sock)
        lib.munge_ctx_destroy(ctx)
        raise exc
    return int(ctx)


def encode(payload: bytes = b"", socket: str | None = None) -> str:
    """Return a credential carrying `payload`, stamped by munged with our uid/gid."""
    lib, libc = _load()
    sock = socket_path(socket)
    ctx = _context(lib, sock)
    out = ctypes.c_void_p()
    try:
        err = lib.munge_encode(ctypes.byref(out), ctx, payload, len(payload))
        if err != EMUNGE_SUCCESS:
            raise _error(lib, ctx, err, "encode", sock)
        assert out.value is not None
        return ctypes.string_at(out.value).decode("ascii")
    finally:
        if out.value:
            libc.free(out.value)
        lib.munge_ctx_destroy(ctx)


def decode(cred: str, socket: str | None = None) -> Decoded:
    """Validate `cred` with munged; return its payload and the encoder's uid/gid.

    munged keeps a replay cache: a credential decoded once is refused the second time
    (EMUNGE_CRED_REPLAYED), and so are expired or rewound ones. All of those raise here,
    even though libmunge still hands back the payload for them.
    """
    lib, libc = _load()
    sock = socket_path(socket)
    ctx = _context(lib, sock)
    buf = ctypes.c_void_p()
    length = ctypes.c_int(0)
    uid = ctypes.c_uint32(0)
    gid = ctypes.c_uint32(0)
    try:
        err = lib.munge_decode(cred.encode("ascii", errors="replace"), ctx, ctypes.byref(buf),
                               ctypes.byref(length), ctypes.byref(uid), ctypes.byref(gid))
        if err != EMUNGE_SUCCESS:
            raise _error(lib, ctx, err, "decode", sock)
        payload = ctypes.string_at(buf.value, length.value) if buf.value else b""
        return Decoded(payload, int(uid.value), int(gid.value))
    finally:
        if buf.value:
            libc.free(buf.value)
        lib.munge_ctx_destroy(ctx)
