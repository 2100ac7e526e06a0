"""Credential binding rules, with a fake MUNGE codec (no munged needed)."""

from __future__ import annotations

import ctypes.util

import pytest

from hpcmig.auth import credential, munge
from hpcmig.auth.credential import AuthError


class FakeMunge:
    """Encodes 'FAKE:<uid>:<gid>:<payload hex>'; refuses a second decode like munged."""

    def __init__(self, uid: int = 1000, gid: int = 1000) -> None:
        self.uid, self.gid = uid, gid
        self.seen: set[str] = set()

    def encode(self, payload: bytes) -> str:
        return f"FAKE:{self.uid}:{self.gid}:{payload.hex()}:{len(self.seen)}"

    def decode(self, cred: str) -> munge.Decoded:
        if cred in self.seen:
            raise munge.MungeError("MUNGE credential replayed", munge.EMUNGE_CRED_REPLAYED)
        self.seen.add(cred)
        _, uid, gid, hexed, _ = cred.split(":")
        return munge.Decoded(bytes.fromhex(hexed), int(uid), int(gid))


def test_credential_verifies_for_its_request_only() -> None:
    fake = FakeMunge(uid=1234, gid=99)
    cred = credential.sign(b'{"argv":["id"]}', encoder=fake.encode)
    who = credential.verify(cred, b'{"argv":["id"]}', decoder=fake.decode)
    assert (who.uid, who.gid) == (1234, 99)
    other = credential.sign(b'{"argv":["id"]}', encoder=fake.encode)
    with pytest.raises(AuthError, match="not made for this request"):
        credential.verify(other, b'{"argv":["rm","-rf","/"]}', decoder=fake.decode)


def test_replayed_credential_is_refused() -> None:
    fake = FakeMunge()
    cred = credential.sign(b"req", encoder=fake.encode)
    credential.verify(cred, b"req", decoder=fake.decode)
    with pytest.raises(AuthError, match="replayed"):
        credential.verify(cred, b"req", decoder=fake.decode)


def test_unreachable_munged_is_not_blamed_on_the_requester() -> None:
    def down(_cred: str) -> munge.Decoded:
        raise munge.MungeError("munged is not reachable", munge.EMUNGE_SOCKET)

    with pytest.raises(munge.MungeError) as info:
        credential.verify("MUNGE:x", b"req", decoder=down)
    assert not isinstance(info.value, AuthError)


def test_digest_is_tagged_and_depends_on_every_byte() -> None:
    a = credential.request_digest(b"abc")
    assert a.startswith(credential.PAYLOAD_PREFIX)
    assert a != credential.request_digest(b"abd")


@pytest.mark.skipif(ctypes.util.find_library("munge") is None, reason="libmunge not installed")
def test_real_libmunge_says_clearly_when_munged_is_not_running(tmp_path: object) -> None:
    sock = f"{tmp_path}/no-munged-here.socket"
    with pytest.raises(munge.MungeError) as info:
        munge.encode(b"x", socket=sock)
    assert info.value.code == munge.EMUNGE_SOCKET
    assert sock in str(info.value) and "start munged" in str(info.value)


def test_socket_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(munge.SOCKET_ENV, raising=False)
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/slurm.conf")  # no AuthInfo socket=
    assert munge.socket_path() == munge.DEFAULT_SOCKET
    monkeypatch.setenv(munge.SOCKET_ENV, "/tmp/env.sock")
    assert munge.socket_path() == "/tmp/env.sock"
    assert munge.socket_path("/tmp/arg.sock") == "/tmp/arg.sock"
