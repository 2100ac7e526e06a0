"""The RPC server of the agents and of hpcmigd: authenticate, authorize, dispatch.

Design note: operations register in a `Registry` with `@registry.operation(name, access)`
(Flux habit; the agent's registry is `AGENT`, hpcmigd has its own) and receive a `Call` (who
asks, the server's context) plus their JSON arguments. Access is one of
- "any": every authenticated user (ping, reading public state);
- "admin": root, SlurmUser, or a configured admin user (build/tear down, migrate);
- "job": an admin, or the owner of the job named by the `job_id` argument.
Authentication is MUNGE (`hpcmig.auth`); a request meant for another node, too old, or with a
credential made for other bytes is refused. Refusals are logged. Each connection is served in
its own thread; operations on one job are serialized by a per-job lock.
"""

from __future__ import annotations

import json
import logging
import pwd
import socket
import socketserver
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hpcmig.agent import rpc
from hpcmig.auth import AuthError, Identity, MungeError, credential
from hpcmig.errors import HpcmigError, PermissionDenied, UsageError

Access = Literal["any", "admin", "job"]
log = logging.getLogger("hpcmig.rpc")


class Context(Protocol):
    node: str
    munge_socket: str | None

    def job_owner(self, job_id: str) -> int | None: ...

    def is_admin(self, uid: int) -> bool: ...


@dataclass(frozen=True)
class Call:
    who: Identity
    ctx: Any  # the agent's context (hpcmig.agent.node.NodeAgent)


Handler = Callable[..., Any]


@dataclass(frozen=True)
class Operation:
    name: str
    access: Access
    handler: Handler


class Registry:
    """The operations one kind of server offers."""

    def __init__(self) -> None:
        self.operations: dict[str, Operation] = {}

    def operation(self, name: str, access: Access) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.operations[name] = Operation(name, access, fn)
            return fn
        return deco


AGENT = Registry()
operation = AGENT.operation


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def authorize(op: Operation, who: Identity, args: dict[str, Any], ctx: Context) -> None:
    """Raise PermissionDenied unless `who` may run `op` with `args` (pure policy)."""
    if op.access == "any" or ctx.is_admin(who.uid):
        return
    if op.access == "admin":
        raise PermissionDenied(f"{op.name} is for root and the Slurm admin, not "
                               f"{user_name(who.uid)}")
    job_id = str(args.get("job_id", ""))
    owner = ctx.job_owner(job_id) if job_id else None
    if owner is None:
        raise PermissionDenied(f"{op.name}: no hpcmig job {job_id or '(none given)'} on "
                               f"{ctx.node}")
    if owner != who.uid:
        raise PermissionDenied(f"{op.name}: job {job_id} is not yours "
                               f"({user_name(who.uid)} asked, {user_name(owner)} owns it)")


def check_body(body: dict[str, Any], node: str, now: float,
               registry: Registry = AGENT) -> tuple[str, dict[str, Any]]:
    """Validate a request body; return (op name, args)."""
    op, args, target, stamp = (body.get(k) for k in ("op", "args", "target", "time"))
    if not isinstance(op, str) or not isinstance(args, dict):
        raise UsageError("malformed request: op and args are required")
    if target != node:
        raise AuthError(f"request meant for {target!r} reached {node!r}")
    if not isinstance(stamp, (int, float)) or abs(now - stamp) > rpc.MAX_AGE:
        raise AuthError("request too old (or clocks apart by more than 5 minutes)")
    if op not in registry.operations:
        raise UsageError(f"unknown operation {op!r}",
                         hint=f"known: {', '.join(sorted(registry.operations))}")
    return op, args


def error_answer(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, HpcmigError):
        return {"ok": False, "error": exc.message, "kind": type(exc).__name__, "hint": exc.hint}
    if isinstance(exc, TypeError):  # bad arguments for the handler
        return {"ok": False, "error": f"bad arguments: {exc}", "kind": "UsageError"}
    log.exception("operation failed")
    return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}",
            "kind": "HpcmigError"}


def handle(request: dict[str, Any], ctx: Context, peer: str,
           registry: Registry = AGENT) -> dict[str, Any]:
    """Serve one request: the whole pipeline, socket-free (unit-tested with fakes)."""
    try:
        cred, body_text = request.get("cred"), request.get("body")
        if not isinstance(cred, str) or not isinstance(body_text, str):
            raise AuthError("request carries no credential")
        try:
            body = json.loads(body_text)
        except ValueError:
            raise UsageError("malformed request body") from None
        op_name, args = check_body(body, ctx.node, time.time(), registry)
        who = credential.verify(cred, body_text.encode(), socket=ctx.munge_socket)
        op = registry.operations[op_name]
        try:
            authorize(op, who, args, ctx)
        except PermissionDenied as exc:
            log.warning("refused %s from uid %d at %s: %s", op_name, who.uid, peer, exc.message)
            raise
        log.info("%s by %s from %s", op_name, user_name(who.uid), peer)
        return {"ok": True, "result": op.handler(Call(who, ctx), **args)}
    except AuthError as exc:
        log.warning("refused unauthenticated request from %s: %s", peer, exc.message)
        return error_answer(exc)
    except MungeError as exc:
        return error_answer(HpcmigError(f"this node's munged is unreachable: {exc.message}",
                                        hint="the node is faulty; check munged"))
    except Exception as exc:  # noqa: BLE001 - every failure becomes an answer
        return error_answer(exc)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30.0)
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        try:
            request = rpc.recv_message(sock)
        except (OSError, rpc.RpcError) as exc:
            log.warning("bad request from %s: %s", peer, exc)
            return
        sock.settimeout(None)
        server: Server = self.server  # type: ignore[assignment]
        answer = handle(request, server.ctx, peer, server.registry)
        try:
            rpc.send_message(sock, answer)
        except (OSError, rpc.RpcError) as exc:
            log.warning("could not answer %s: %s", peer, exc)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ctx: Context, host: str, port: int, registry: Registry = AGENT) -> None:
        self.ctx = ctx
        self.registry = registry
        super().__init__((host, port), _Handler)
