"""The agent's RPC pipeline without sockets or munged: authentication, policy, dispatch."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from hpcmig.agent import rpc, server
from hpcmig.auth import Decoded, request_digest
from hpcmig.errors import PermissionDenied

JOB_UID = 1001
OTHER_UID = 1002


class FakeCtx:
    node = "node1"
    munge_socket = None

    def job_owner(self, job_id: str) -> int | None:
        return JOB_UID if job_id == "7" else None

    def is_admin(self, uid: int) -> bool:
        return uid == 0


@pytest.fixture(autouse=True)
def ops(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    fake = {
        "t.any": server.Operation("t.any", "any", lambda call, **a: calls.append(("any", a))),
        "t.admin": server.Operation("t.admin", "admin",
                                    lambda call, **a: calls.append(("admin", a))),
        "t.job": server.Operation("t.job", "job",
                                  lambda call, job_id: calls.append(("job", {"job_id": job_id}))),
    }
    monkeypatch.setattr(server.AGENT, "operations", fake)
    return calls


def signed(op: str, args: dict[str, Any], uid: int, target: str = "node1",
           when: float | None = None, tamper: bool = False) -> tuple[dict[str, str], Any]:
    body = json.dumps({"op": op, "args": args, "target": target,
                       "time": time.time() if when is None else when, "nonce": "x"})
    digest = request_digest(body.encode())
    if tamper:
        body = body.replace('"nonce": "x"', '"nonce": "y"')

    def decode(cred: str, socket: str | None = None) -> Decoded:
        return Decoded(payload=digest, uid=uid, gid=uid)

    return {"cred": "MUNGE:fake", "body": body}, decode


def call(monkeypatch: pytest.MonkeyPatch, op: str, args: dict[str, Any], uid: int,
         **kw: Any) -> dict[str, Any]:
    request, decode = signed(op, args, uid, **kw)
    monkeypatch.setattr("hpcmig.auth.munge.decode", decode)
    return server.handle(request, FakeCtx(), "10.0.0.9:5000")


def test_root_may_run_admin_operations(monkeypatch: pytest.MonkeyPatch, ops: list) -> None:
    assert call(monkeypatch, "t.admin", {"x": 1}, uid=0) == {"ok": True, "result": None}
    assert ops == [("admin", {"x": 1})]


def test_a_user_may_not_run_admin_operations(monkeypatch: pytest.MonkeyPatch,
                                              ops: list) -> None:
    answer = call(monkeypatch, "t.admin", {}, uid=JOB_UID)
    assert answer["ok"] is False and answer["kind"] == "PermissionDenied"
    assert ops == []


def test_the_owner_may_act_on_their_job_and_nobody_else(monkeypatch: pytest.MonkeyPatch,
                                                        ops: list) -> None:
    assert call(monkeypatch, "t.job", {"job_id": "7"}, uid=JOB_UID)["ok"] is True
    other = call(monkeypatch, "t.job", {"job_id": "7"}, uid=OTHER_UID)
    assert other["kind"] == "PermissionDenied" and "not yours" in other["error"]
    unknown = call(monkeypatch, "t.job", {"job_id": "8"}, uid=JOB_UID)
    assert unknown["kind"] == "PermissionDenied"
    assert ops == [("job", {"job_id": "7"})]


def test_requests_for_another_node_old_or_tampered_are_refused(
        monkeypatch: pytest.MonkeyPatch, ops: list) -> None:
    assert call(monkeypatch, "t.any", {}, uid=0, target="node2")["kind"] == "AuthError"
    assert call(monkeypatch, "t.any", {}, uid=0, when=time.time() - 3600)["kind"] == "AuthError"
    assert call(monkeypatch, "t.any", {}, uid=0, tamper=True)["kind"] == "AuthError"
    assert server.handle({"body": "{}"}, FakeCtx(), "peer")["kind"] == "AuthError"
    assert ops == []


def test_unknown_operation_and_bad_arguments_are_usage_errors(
        monkeypatch: pytest.MonkeyPatch, ops: list) -> None:
    assert call(monkeypatch, "nope", {}, uid=0)["kind"] == "UsageError"
    assert call(monkeypatch, "t.job", {"job_id": "7", "extra": 1}, uid=0)["kind"] == "UsageError"


def test_client_raises_the_error_class_the_agent_named() -> None:
    with pytest.raises(PermissionDenied, match="agent on node1: job 7 is not yours"):
        rpc.raise_remote({"ok": False, "error": "job 7 is not yours",
                          "kind": "PermissionDenied"}, "agent on node1")
