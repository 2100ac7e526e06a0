"""Bind a MUNGE credential to one request, and check that binding.

Design note: this module owns the rule "a credential authenticates exactly one request": the
credential's payload is a tagged SHA-256 of the request's bytes, so a credential lifted off
the wire cannot be attached to a different request, and munged's replay cache refuses it a
second time with the same request. The codec (encode/decode) is injected so the rule is
unit-testable without munged. It decides nothing about *who* may do what: callers compare
the returned `Identity` with their own policy (e.g. "the job's uid or root").
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from hpcmig.auth import munge
from hpcmig.errors import HpcmigError

PAYLOAD_PREFIX = b"hpcmig-req-v1:"

Encoder = Callable[[bytes], str]
Decoder = Callable[[str], "munge.Decoded"]


class AuthError(HpcmigError):
    """A request could not be authenticated (bad, replayed or mismatched credential)."""


@dataclass(frozen=True)
class Identity:
    """Who signed a request, as munged vouches for it."""

    uid: int
    gid: int


def request_digest(request: bytes) -> bytes:
    """The credential payload that binds a credential to `request`."""
    return PAYLOAD_PREFIX + hashlib.sha256(request).hexdigest().encode("ascii")


def sign(request: bytes, *, socket: str | None = None, encoder: Encoder | None = None) -> str:
    """Return a MUNGE credential whose payload binds it to `request`."""
    if encoder is not None:
        return encoder(request_digest(request))
    return munge.encode(request_digest(request), socket=socket)


def verify(
    cred: str, request: bytes, *, socket: str | None = None, decoder: Decoder | None = None
) -> Identity:
    """Check `cred` with munged and that it was made for exactly `request`.

    Raises AuthError for a credential that is invalid, expired, replayed or made for other
    bytes; lets MungeError(EMUNGE_SOCKET) through unchanged when munged is unreachable, since
    that is the verifier's problem, not the requester's.
    """
    try:
        decoded = decoder(cred) if decoder is not None else munge.decode(cred, socket=socket)
    except munge.MungeError as exc:
        if exc.code == munge.EMUNGE_SOCKET:
            raise
        raise AuthError(f"credential refused: {exc.message}") from None
    if not hmac.compare_digest(decoded.payload, request_digest(request)):
        raise AuthError("credential refused: it was not made for this request")
    return Identity(decoded.uid, decoded.gid)
