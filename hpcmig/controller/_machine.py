"""What every journaled state machine shares: journal-then-run steps, faults, outcomes.

Design note: a step is journaled (`started`) *before* its effect runs and marked `done` or
`failed` after, so after a crash the journal names the step that may have been half done.
Fault injection sits exactly at those two points: `HPCMIG_FAULT=<step>:kill` SIGKILLs the
process right after the step is journaled (before its effect), `<step>:kill-after` right
after the effect (before it is marked done), `<step>:fail` raises instead of running it,
`<step>:stop` / `<step>:stop-after` SIGSTOP the process at those two points (a test does
something to the world, e.g. corrupts an image, then SIGCONTs it). Rollback actions are
named `undo:<action>`. Several entries: comma-separated. Unit tests pass a hook instead of
the environment. No effects here besides the journal and the fault.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hpcmig.checkpoint.base import Refused
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.controller.journal import Journal
from hpcmig.controller.ops import MigrationOps
from hpcmig.errors import HpcmigError

FaultHook = Callable[[str, str], None]  # (point: "before" | "after", step name)
ACTIONS = ("kill", "kill-after", "fail", "stop", "stop-after")  # HPCMIG_FAULT actions
SETTLE_TIMEOUT = 900.0  # how long recovery waits for an engine command still running


class InjectedFault(HpcmigError):
    """A failure HPCMIG_FAULT (or a test's hook) asked for."""


class Stuck(HpcmigError):
    """An action that must succeed did not; the operation waits for `recover`."""


def env_faults(value: str | None = None) -> FaultHook | None:
    """The hook HPCMIG_FAULT describes (None: no fault)."""
    text = os.environ.get("HPCMIG_FAULT", "") if value is None else value
    entries: list[tuple[str, str]] = []
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, _, action = item.rpartition(":")
        if not name or action not in ACTIONS:
            raise HpcmigError(f"bad HPCMIG_FAULT entry {item!r}",
                              hint="use <step>:ACTION, ACTION one of " + ", ".join(ACTIONS))
        entries.append((name, action))
    if not entries:
        return None

    def hook(point: str, step: str) -> None:
        for name, action in entries:
            if name != step:
                continue
            if (action, point) in (("kill", "before"), ("kill-after", "after")):
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(10)  # the signal is delivered before this returns
            if (action, point) in (("stop", "before"), ("stop-after", "after")):
                os.kill(os.getpid(), signal.SIGSTOP)  # returns once SIGCONT came
            if action == "fail" and point == "before":
                raise InjectedFault(f"injected failure at step {step}")

    return hook


@dataclass(frozen=True)
class Outcome:
    """How an operation ended (or where it waits): for the CLI, the controller, tests."""

    op_id: int
    kind: str
    state: str  # done, rolled_back, refused, stuck
    error: str | None = None
    pause: float | None = None  # lock -> unlock, seconds (what the job felt)
    steps: dict[str, float] = field(default_factory=dict)  # forward step -> seconds
    data: dict[str, Any] = field(default_factory=dict)


class Machine:
    """Base of the journaled machines: one operation, its journal, its ops."""

    kind = ""

    def __init__(self, journal: Journal, ops: MigrationOps, op_id: int,
                 fault: FaultHook | None = None) -> None:
        self.journal = journal
        self.ops = ops
        self.op_id = op_id
        self.fault = fault if fault is not None else env_faults()

    @property
    def data(self) -> dict[str, Any]:
        return self.journal.get(self.op_id).data

    def step(self, name: str, effect: Callable[[], dict[str, Any] | None],
             phase: str = "forward") -> dict[str, Any]:
        """Journal `name`, run its effect, journal the result."""
        seq = self.journal.step_started(self.op_id, phase, name)
        try:
            if self.fault:
                self.fault("before", name)
            result = effect() or {}
            if self.fault:
                self.fault("after", name)
        except Exception as exc:
            self.journal.step_ended(self.op_id, seq, "failed", error=_text(exc))
            raise
        self.journal.step_ended(self.op_id, seq, "done", result=result)
        return result

    def run_steps(self, steps: Iterable[tuple[str, Callable[[], dict[str, Any] | None]]]
                  ) -> Outcome:
        """Run forward steps in order. A refusal at `check` ends the operation `refused`;
        any other failure goes to the machine's `_fail` (roll back, or forward if past the
        point of no return)."""
        try:
            for name, effect in steps:
                self.step(name, effect)
        except Refused as exc:
            if self.last_forward() == ("check", "failed"):
                self.journal.set_state(self.op_id, "refused", str(exc))
                return self.outcome()
            return self._fail(exc)
        except Exception as exc:
            return self._fail(exc)
        return self.outcome()

    def _fail(self, exc: Exception) -> Outcome:
        raise NotImplementedError

    def resume_after_crash(self) -> Outcome:
        """Finish or roll back the operation according to its journal (recovery)."""
        raise NotImplementedError

    def last_forward(self) -> tuple[str, str] | None:
        """(name, status) of the last forward step journaled, None if none was."""
        steps = self.journal.steps(self.op_id, "forward")
        return (steps[-1].name, steps[-1].status) if steps else None

    def settle(self, node: str, ref: ContainerRef,
               timeout: float = SETTLE_TIMEOUT) -> ContainerState:
        """The copy's state once no engine command works on it (BUSY if that never came)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.ops.container_state(node, ref)
            if state is not ContainerState.BUSY or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def undo(self, actions: list[tuple[str, bool, Callable[[], dict[str, Any] | None]]]
             ) -> list[str]:
        """Run rollback actions in order; a failed must-action raises Stuck, a failed
        best-effort one is recorded and skipped. Returns the best-effort errors."""
        errors = []
        for name, must, effect in actions:
            try:
                self.step(f"undo:{name}", effect, phase="rollback")
            except Exception as exc:
                if must:
                    raise Stuck(f"rollback action {name} failed: {_text(exc)}") from None
                errors.append(f"{name}: {_text(exc)}")
        return errors

    def outcome(self, lock: str = "lock", unlock: str = "unlock") -> Outcome:
        op = self.journal.get(self.op_id)
        durations: dict[str, float] = {}
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for s in self.journal.steps(self.op_id):
            if s.ended is not None:
                durations[s.name] = durations.get(s.name, 0.0) + (s.ended - s.started)
                last[s.name] = s.ended
            first.setdefault(s.name, s.started)
        pause = None
        if op.state == "done" and lock in first and unlock in last:
            pause = last[unlock] - first[lock]
        return Outcome(op.id, op.kind, op.state, op.error, pause, durations, op.data)


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
