"""Exec protocol: framing, request validation, authorization rules."""

from __future__ import annotations

import resource
import signal
import time

import pytest

from hpcmig.errors import PermissionDenied, UsageError
from hpcmig.runtime import protocol as P


def test_frames_roundtrip_when_fed_one_byte_at_a_time() -> None:
    stream = (P.encode_frame(P.Kind.STDOUT, b"hello") + P.encode_frame(P.Kind.STDIN)
              + P.int_frame(P.Kind.EXIT, 143))
    dec = P.FrameDecoder()
    frames = [f for i in range(len(stream)) for f in dec.feed(stream[i:i + 1])]
    assert frames == [P.Frame(P.Kind.STDOUT, b"hello"), P.Frame(P.Kind.STDIN, b""),
                      P.Frame(P.Kind.EXIT, b"\x00\x00\x00\x8f")]
    assert P.frame_int(frames[2]) == 143 and dec.pending == 0


def test_oversized_and_unknown_frames_are_protocol_errors() -> None:
    with pytest.raises(P.ProtocolError):
        P.FrameDecoder().feed(P.HEADER.pack(int(P.Kind.STDIN), P.MAX_FRAME + 1))
    with pytest.raises(P.ProtocolError, match="unknown frame type"):
        P.FrameDecoder().feed(P.HEADER.pack(99, 0))
    with pytest.raises(P.ProtocolError):
        P.encode_frame(P.Kind.STDIN, b"x" * (P.MAX_FRAME + 1))
    with pytest.raises(P.ProtocolError):
        P.frame_int(P.Frame(P.Kind.EXIT, b"\x01"))


def test_request_roundtrip_and_credential_split() -> None:
    req = P.ExecRequest(argv=["/bin/sh", "-c", "echo hi"], target="10.252.0.1:7100",
                        env={"OMP_NUM_THREADS": "2"}, cwd="/tmp", rlimits={"NOFILE": [64, 128]})
    body = req.to_bytes()
    assert P.ExecRequest.from_bytes(body) == req
    cred, got = P.unpack_request(P.FrameDecoder().feed(P.pack_request("MUNGE:abc:", body))[0])
    assert (cred, got) == ("MUNGE:abc:", body)
    with pytest.raises(P.ProtocolError, match="no credential"):
        P.unpack_request(P.Frame(P.Kind.REQUEST, body))
    with pytest.raises(P.ProtocolError, match="REQUEST frame first"):
        P.unpack_request(P.Frame(P.Kind.STDIN, b""))


@pytest.mark.parametrize("bad", [
    b'{"argv": [], "target": "x"}',
    b'{"argv": "ls", "target": "x"}',
    b'{"argv": ["ls"], "target": "x", "env": {"BAD=NAME": "1"}}',
    b'{"argv": ["ls"], "target": "x", "env": {"A": 1}}',
    b'{"argv": ["ls"], "target": "x", "cwd": "relative"}',
    b'{"argv": ["ls"], "target": "x", "rlimits": {"NOFILE": [1]}}',
    b'{"argv": ["ls"], "target": "x", "sneaky": true}',
    b'{"argv": ["l\\u0000s"], "target": "x"}',
    b'[1, 2]',
    b'\xff\xfe',
])
def test_bad_requests_are_rejected(bad: bytes) -> None:
    with pytest.raises(P.ProtocolError):
        P.ExecRequest.from_bytes(bad)


def _req(**kw: object) -> P.ExecRequest:
    return P.ExecRequest(argv=["true"], target="10.252.0.1:7100", **kw)  # type: ignore[arg-type]


def test_only_the_job_user_or_root_may_exec() -> None:
    targets = frozenset({"10.252.0.1:7100"})
    for uid in (0, 1000):
        P.authorize(requester_uid=uid, job_uid=1000, job_user="alice", request=_req(),
                    own_targets=targets)
    with pytest.raises(PermissionDenied, match="uid 1001 may not exec"):
        P.authorize(requester_uid=1001, job_uid=1000, job_user="alice", request=_req())
    with pytest.raises(PermissionDenied, match="login name 'bob'"):
        P.authorize(requester_uid=1000, job_uid=1000, job_user="alice", request=_req(user="bob"))
    P.authorize(requester_uid=1000, job_uid=1000, job_user="alice", request=_req(user="alice"))


def test_requests_for_another_container_or_stale_ones_are_refused() -> None:
    with pytest.raises(PermissionDenied, match="made for 10.252.0.1:7100"):
        P.authorize(requester_uid=0, job_uid=1000, job_user=None, request=_req(),
                    own_targets=frozenset({"10.252.0.2:7100"}))
    with pytest.raises(PermissionDenied, match="old"):
        P.authorize(requester_uid=0, job_uid=1000, job_user=None,
                    request=_req(time=time.time() - 3600))


def test_a_request_may_lower_but_not_raise_hard_limits() -> None:
    cur = {"NOFILE": (1024, 4096)}
    assert P.rlimits_for_child({"NOFILE": [256, 512]}, cur) == {"NOFILE": (256, 512)}
    with pytest.raises(P.ProtocolError, match="above the container"):
        P.rlimits_for_child({"NOFILE": [256, 8192]}, cur)
    with pytest.raises(P.ProtocolError):
        P.rlimits_for_child({"NOFILE": [256, -1]}, cur)  # unlimited > 4096
    assert P.rlimits_for_child({"CORE": [0, -1]}, {"CORE": (0, resource.RLIM_INFINITY)}) == {
        "CORE": (0, resource.RLIM_INFINITY)}
    with pytest.raises(UsageError, match="unknown resource limit"):
        P.rlimits_for_child({"BOGUS": [1, 1]}, cur)


def test_exit_codes_follow_the_shell_convention() -> None:
    assert P.exit_code(3 << 8) == 3
    assert P.exit_code(signal.SIGTERM) == 128 + signal.SIGTERM
