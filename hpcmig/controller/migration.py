"""Moving one container to another node: the journaled, crash-safe state machine.

Design note: this module decides the order of a live migration, what is journaled, and
whether a half-done migration goes forward or back; every effect is a `MigrationOps` call.
The order is the one docs/runtime.md verified ("Migration hooks"):

| step | effect (node) | undo if rolled back |
|---|---|---|
| check | refuse_reasons (source); target has no copy | - |
| images | prepare image dirs; stream: page server + receiver (target) | close, remove images |
| lock | hold the /32's packets (source) | point_local (source) |
| dump | criu dump --leave-stopped (source) | wait while BUSY, resume (source) |
| transfer | stream: send the non-page files, close the stream | - |
| verify | manifest + checksums (target) | - |
| target_net | netns + veth, /32 held (target) | remove_net, route via source (target) |
| route | route the /32 via target (every peer) | route via source (every peer) |
| restore | criu restore (target): **no return once it succeeded** | kill any copy (target) |
| unlock | point_local (target): the held packets go to the copy | (forward only) |
| pages | post-copy: all the memory arrived (target), end the dump (source) | (forward) |
| cleanup | route via target, kill the stopped source, remove its net (source) | (forward only) |
| done | remove images | (forward only) |

Post-copy (`postcopy`, docs/checkpoint.md): the dump leaves the container's memory on the
source, served by CRIU's page server, and the restore on the target fetches it while the
copy runs again; the pause holds everything but the memory. Until the restore the move
rolls back as any other (the page server is ended first, so the source stays stopped where
it was); after it, the copy needs the source until `pages` finished: if the transfer fails,
both copies are killed and the move stays `stuck` with the reason (the job then needs its
last checkpoint).

A failure before the restore succeeded rolls back (source resumed where it was, exactly
once: the target's copy is killed and confirmed gone before the source is resumed). After a
successful restore the restored copy has run, so the only way is forward; a failing forward
step leaves the operation `stuck` and `recovery.recover` retries it. `resume_after_crash`
applies the same rule to what the journal shows after a SIGKILL: no restore journaled ->
roll back; restore journaled but not finished -> ask the target (container_state, after any
criu still running settled) whether the copy runs. A restore is never run twice, not even
one whose answer was lost: forward goes on from `unlock`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcmig.checkpoint.base import DumpStats, Refused
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.checkpoint.stream import Stream
from hpcmig.config import MIGRATION_MODES as MODES  # how the memory moves
from hpcmig.controller._machine import FaultHook, Machine, Outcome, Stuck
from hpcmig.controller.journal import Journal
from hpcmig.controller.ops import MigrationOps
from hpcmig.errors import HpcmigError, UsageError

KIND = "migrate"
FORWARD = ("check", "images", "lock", "dump", "transfer", "verify", "target_net", "route",
           "restore", "unlock", "pages", "cleanup", "done")
TRANSPORTS = ("shared", "stream")


def check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise UsageError(f"unknown image transport {transport!r}",
                         hint=f"choose one of {', '.join(TRANSPORTS)}")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"unknown migration mode {mode!r}", hint=f"choose one of "
                         f"{', '.join(MODES)}")
    return mode


def _at(name: str) -> int:
    return FORWARD.index(name)


@dataclass(frozen=True)
class MigrationSpec:
    """One container move. `peers`: every other node that must route the address (the
    job's nodes, or the whole cluster), not the source or the target."""

    ref: ContainerRef
    source: str
    target: str
    peers: tuple[str, ...]
    src_images: str  # image directory on the source
    dst_images: str  # on the target (the same path for the shared transport)
    transport: str = "shared"
    postcopy: bool = False  # the memory follows the restored copy (see the module note)

    def validate(self) -> None:
        if self.source == self.target:
            raise UsageError(f"{self.ref.name}: source and target are both {self.source}")
        if self.transport not in TRANSPORTS:
            raise UsageError(f"unknown image transport {self.transport!r}",
                             hint=f"choose one of {', '.join(TRANSPORTS)}")
        if self.transport == "shared" and self.src_images != self.dst_images:
            raise UsageError("the shared transport uses one image directory for both nodes")
        if {self.source, self.target} & set(self.peers):
            raise UsageError("peers must not include the source or the target")

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref.to_json(), "source": self.source, "target": self.target,
                "peers": list(self.peers), "src_images": self.src_images,
                "dst_images": self.dst_images, "transport": self.transport,
                "postcopy": self.postcopy}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MigrationSpec:
        return cls(ContainerRef.from_json(data["ref"]), data["source"], data["target"],
                   tuple(data["peers"]), data["src_images"], data["dst_images"],
                   data.get("transport", "shared"), bool(data.get("postcopy", False)))


def migrate(journal: Journal, ops: MigrationOps, spec: MigrationSpec,
            fault: FaultHook | None = None) -> Outcome:
    """Journal and run one migration; returns how it ended (done/rolled_back/refused/stuck)."""
    spec.validate()
    op_id = journal.begin(KIND, spec.ref.job_id, spec.to_json())
    return Migration(journal, ops, op_id, fault).run()


class Migration(Machine):
    kind = KIND

    def __init__(self, journal: Journal, ops: MigrationOps, op_id: int,
                 fault: FaultHook | None = None) -> None:
        super().__init__(journal, ops, op_id, fault)
        self.spec = MigrationSpec.from_json(journal.get(op_id).spec)

    # -- running -------------------------------------------------------------------------
    def run(self, start: str = "check") -> Outcome:
        return self.run_steps((name, getattr(self, f"_{name}")) for name in FORWARD[_at(start):])

    def _fail(self, exc: Exception) -> Outcome:
        try:
            restored = self._restored(after_failure=True)
        except Exception as query:  # cannot tell whether the target's copy runs: wait
            self.journal.update_data(self.op_id, stuck_in="forward")
            self.journal.set_state(self.op_id, "stuck", f"{exc}; and the target's state is "
                                   f"unknown: {query}")
            return self.outcome()
        if restored:
            # the restored copy has run: never go back; what failed is retried by recover()
            failed = self.last_forward()
            if failed and failed[0] == "restore":
                return self._after_restore()
            self.journal.update_data(self.op_id, stuck_in="forward")
            self.journal.set_state(self.op_id, "stuck", str(exc))
            return self.outcome()
        return self.rollback(str(exc))

    def _restored(self, after_failure: bool = False) -> bool:
        """Whether the restore succeeded (the point of no return)."""
        if self.data.get("restored"):
            return True
        last = self.last_forward()
        if not after_failure or last is None or last[0] != "restore":
            return False
        if self.settle(self.spec.target, self.spec.ref) is ContainerState.RUNNING:
            self.journal.update_data(self.op_id, restored=True, restored_by="state query")
            return True
        return False

    def resume_after_crash(self) -> Outcome:
        """Finish or roll back according to the journal (see the module's design note)."""
        op = self.journal.get(self.op_id)
        if op.state == "rolling_back" or op.data.get("stuck_in") == "rollback":
            return self.rollback(op.error or "recovering an interrupted rollback")
        last = self.last_forward()
        if last is None:
            self.journal.set_state(self.op_id, "rolled_back", "interrupted before any step")
            return self.outcome()
        name, status = last
        if not op.data.get("restored") and _at(name) <= _at("restore"):
            if name == "restore":
                state = self.settle(self.spec.target, self.spec.ref)
                if state is ContainerState.BUSY:
                    self.journal.set_state(self.op_id, "stuck",
                                           "criu restore still running on the target")
                    return self.outcome()
                if state is ContainerState.RUNNING:
                    self.journal.update_data(self.op_id, restored=True,
                                             restored_by="recovery")
                    return self._after_restore()
            return self.rollback(op.error or f"interrupted at step {name}")
        if name == "restore":
            return self._after_restore()
        if status == "done":
            if name == "done":
                return self.outcome()
            return self.run(FORWARD[_at(name) + 1])
        return self.run(name)

    def _after_restore(self) -> Outcome:
        """Go forward from a restore whose copy runs on the target: from `unlock`, never
        through the restore again (a second restore next to the running copy would make a
        second copy, or fail only because something refuses it). Keeping the target's
        records true about a copy whose restore answer was lost is the node's business."""
        return self.run("unlock")

    # -- forward steps -------------------------------------------------------------------
    def _check(self) -> dict[str, Any]:
        s = self.spec
        reasons = self.ops.refuse_reasons(s.source, s.ref)
        if reasons:
            raise Refused(reasons)
        src = self.ops.container_state(s.source, s.ref)
        if src is not ContainerState.RUNNING:
            raise HpcmigError(f"{s.ref.name} on {s.source} is {src.value}, not running")
        dst = self.ops.container_state(s.target, s.ref)
        if dst is not ContainerState.ABSENT:
            raise HpcmigError(f"{s.target} already has a copy of {s.ref.name} ({dst.value})",
                              hint="remove the leftover first")
        return {}

    def _images(self) -> dict[str, Any]:
        s = self.spec
        self.ops.prepare_images(s.source, s.src_images, s.ref.uid)
        if s.transport == "stream":
            self.ops.prepare_images(s.target, s.dst_images, s.ref.uid)
            stream = self.ops.open_stream(s.target, s.dst_images, s.ref.uid, s.source)
            self.journal.update_data(self.op_id, stream=stream.to_json())
            return {"stream": stream.to_json()}
        return {}

    def _stream(self) -> Stream | None:
        raw = self.data.get("stream")
        return Stream.from_json(raw) if raw else None

    def _lock(self) -> dict[str, Any]:
        # "hold", or "blackhole" where the source cannot hold packets (journaled: it says
        # why the peers of this move backed off)
        how = self.ops.hold(self.spec.source, self.spec.ref.address)
        self.journal.update_data(self.op_id, lock=how)
        return {"lock": how}

    def _dump(self) -> dict[str, Any]:
        s = self.spec
        if s.postcopy:  # the non-memory files go as the transport says, the memory later
            stats = self.ops.dump(s.source, s.ref, s.src_images, None, postcopy=True)
        else:
            stats = self.ops.dump(s.source, s.ref, s.src_images, self._stream())
        self.journal.update_data(self.op_id, dump=stats.to_json())
        return stats.to_json()

    def _transfer(self) -> dict[str, Any]:
        stream = self._stream()
        if stream is None:
            return {}
        sent = self.ops.send_images(self.spec.source, self.spec.src_images, stream)
        self.ops.close_stream(self.spec.target, stream)
        return {"bytes": sent}

    def _verify(self) -> None:
        stats = DumpStats.from_json(self.data["dump"])
        self.ops.verify_images(self.spec.target, self.spec.dst_images, stats.manifest_sha256)

    def _target_net(self) -> None:
        self.ops.create_net(self.spec.target, self.spec.ref)

    def _route(self) -> None:
        for peer in self.spec.peers:
            self.ops.route_via(peer, self.spec.ref.address, self.spec.target)

    def _restore(self) -> dict[str, Any]:
        s = self.spec
        lazy_from = None
        if s.postcopy:
            stats = DumpStats.from_json(self.data["dump"])
            if stats.lazy_address is None:
                raise HpcmigError(f"the post-copy dump on {s.source} serves no memory")
            lazy_from = (stats.lazy_address, stats.lazy_port)
        pid = self.ops.restore(s.target, s.ref, s.dst_images, lazy_from=lazy_from)
        self.journal.update_data(self.op_id, restored=True, pid=pid)
        return {"pid": pid}

    def _unlock(self) -> None:
        self.ops.point_local(self.spec.target, self.spec.ref)

    def _pages(self) -> dict[str, Any]:
        s = self.spec
        if not s.postcopy:
            return {}
        try:
            waited = self.ops.postcopy_wait(s.target, s.ref, s.dst_images)
        except HpcmigError as exc:
            # the target killed its copy; the source's dump may have let the tree run on
            for effect in (lambda: self.ops.postcopy_end(s.source, s.ref, s.src_images),
                           lambda: self.ops.kill(s.source, s.ref)):
                with contextlib.suppress(HpcmigError):
                    effect()
            raise HpcmigError(f"{s.ref.name}: the memory did not reach {s.target}: {exc}; "
                              "both copies are gone, the job needs its last checkpoint"
                              ) from None
        self.ops.postcopy_end(s.source, s.ref, s.src_images)
        return {"seconds": round(waited, 4)}

    def _cleanup(self) -> None:
        s = self.spec
        self.ops.route_via(s.source, s.ref.address, s.target)
        self.ops.kill(s.source, s.ref)
        self.ops.remove_net(s.source, s.ref)

    def _done(self) -> None:
        s = self.spec
        self.ops.remove_images(s.target, s.dst_images)
        if s.transport == "stream":
            self.ops.remove_images(s.source, s.src_images)
        self.journal.set_state(self.op_id, "done")

    # -- rollback ------------------------------------------------------------------------
    def rollback(self, reason: str) -> Outcome:
        """Undo everything up to the last forward step journaled; the source resumes."""
        s, ops = self.spec, self.ops
        self.journal.set_state(self.op_id, "rolling_back", reason)
        last = self.last_forward()
        reached = _at(last[0]) if last else -1
        stream = self._stream()
        actions: list[tuple[str, bool, Callable[[], dict[str, Any] | None]]] = []
        if reached >= _at("restore"):
            actions.append(("kill_target", True, self._kill_target))
        if reached >= _at("route"):
            actions.append(("route_back", False, lambda: _each(
                s.peers, lambda p: ops.route_via(p, s.ref.address, s.source))))
        if reached >= _at("target_net"):
            actions.append(("target_net", False, lambda: _seq(
                lambda: ops.remove_net(s.target, s.ref),
                lambda: ops.route_via(s.target, s.ref.address, s.source))))
        if stream is not None:
            actions.append(("close_stream", False, lambda: ops.close_stream(s.target, stream)))
        if reached >= _at("dump") and s.postcopy:
            actions.append(("end_pages", True, lambda: {
                "was_serving": ops.postcopy_end(s.source, s.ref, s.src_images)}))
        if reached >= _at("dump"):
            actions.append(("resume", True, self._resume_source))
        if reached >= _at("lock"):
            actions.append(("unlock", True, lambda: ops.point_local(s.source, s.ref)))
        if reached >= _at("images"):
            actions.append(("images", False, self._remove_all_images))
        try:
            errors = self.undo(actions)
        except Stuck as exc:
            self.journal.update_data(self.op_id, stuck_in="rollback")
            self.journal.set_state(self.op_id, "stuck", f"{reason}; {exc}")
            return self.outcome()
        note = reason + (f" (cleanup left: {'; '.join(errors)})" if errors else "")
        self.journal.update_data(self.op_id, stuck_in=None)
        self.journal.set_state(self.op_id, "rolled_back", note)
        return self.outcome()

    def _kill_target(self) -> dict[str, Any]:
        s = self.spec
        self.settle(s.target, s.ref)
        self.ops.kill(s.target, s.ref)
        state = self.ops.container_state(s.target, s.ref)
        if state is not ContainerState.ABSENT:
            raise HpcmigError(f"the copy on {s.target} is still {state.value}")
        return {}

    def _resume_source(self) -> dict[str, Any]:
        s = self.spec
        state = self.settle(s.source, s.ref)
        if state is ContainerState.BUSY:
            raise HpcmigError(f"criu still works on {s.ref.name} on {s.source}")
        if state is ContainerState.ABSENT:
            raise HpcmigError(f"{s.ref.name} is gone from {s.source}: nothing to resume")
        self.ops.resume(s.source, s.ref)
        return {"was": state.value}

    def _remove_all_images(self) -> None:
        s = self.spec
        self.ops.remove_images(s.source, s.src_images)
        if s.transport == "stream":
            self.ops.remove_images(s.target, s.dst_images)


def _each(nodes: tuple[str, ...], fn: Callable[[str], None]) -> dict[str, Any]:
    """Apply fn to every node, all of them even if some fail; raise the failures together."""
    failed = []
    for node in nodes:
        try:
            fn(node)
        except HpcmigError as exc:
            failed.append(f"{node}: {exc}")
    if failed:
        raise HpcmigError("; ".join(failed))
    return {}


def _seq(*fns: Callable[[], None]) -> dict[str, Any]:
    for fn in fns:
        fn()
    return {}
