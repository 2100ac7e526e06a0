"""hpcmig.auth: who sent this request? MUNGE credentials bound to requests.

Design note: authentication only (who), never authorization (may they): `munge` is the
libmunge binding, `credential` binds one credential to one request's bytes.
"""

from hpcmig.auth.credential import AuthError, Identity, request_digest, sign, verify
from hpcmig.auth.munge import Decoded, MungeError, decode, encode, socket_path

__all__ = [
    "AuthError",
    "Decoded",
    "Identity",
    "MungeError",
    "decode",
    "encode",
    "request_digest",
    "sign",
    "socket_path",
    "verify",
]
