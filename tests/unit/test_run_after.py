"""`hpcmig run` after its launcher ended: when does a ckpt= job's step ask hpcmigd for a restart,
and what does it return (hpcmig.cli.run._after, with hpcmigd replaced by a recording fake)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hpcmig.agent.rpc import RpcError
from hpcmig.cli import run
from hpcmig.controller import client


class FakeHpcmigd:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, _cfg: Any) -> FakeHpcmigd:
        return self

    def call(self, verb: str, timeout: float = 0.0, **params: Any) -> Any:
        self.calls.append((verb, params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def hpcmigd(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(*answers: Any) -> FakeHpcmigd:
        fake = FakeHpcmigd(list(answers))
        monkeypatch.setattr(client, "ControllerClient", fake)
        return fake

    monkeypatch.setattr(run, "RESTART_WAIT", 0.0)
    monkeypatch.setattr(run, "ASK_EVERY", 0.0)
    return install


CKPT = SimpleNamespace(ckpt="10")
LOST = {"restarted": True, "lost": ["node2"], "generation": 3}
DOWN = RpcError("cannot reach hpcmigd")


def test_a_step_that_ended_well_while_its_node_was_lost_restarts(hpcmigd: Any, capsys: Any
                                                                 ) -> None:
    """Open MPI 5's prterun exits 0 after losing a daemon: the step is not a success."""
    fake = hpcmigd(LOST)
    assert run._after(None, CKPT, "7", 0) == 1
    assert fake.calls == [("restart_lost", {"job_id": "7"})]
    err = capsys.readouterr().err
    assert "ended (exit 0) while a node of the job was lost" in err
    assert "node2 lost; the job restarts from its last checkpoint (generation 3)" in err


@pytest.mark.parametrize("answer", [
    {"restarted": False, "why": "every node of the job answers"},
    {"restarted": True, "why": "restarted already", "lost": [], "generation": None},
])
def test_a_step_that_ended_well_with_every_node_there_stands(hpcmigd: Any, capsys: Any,
                                                             answer: dict[str, Any]) -> None:
    fake = hpcmigd(answer)
    assert run._after(None, CKPT, "7", 0) == 0
    assert len(fake.calls) == 1
    assert capsys.readouterr().err == ""


def test_a_step_that_ended_well_does_not_wait_for_hpcmigd(hpcmigd: Any) -> None:
    fake = hpcmigd(DOWN, LOST)
    assert run._after(None, CKPT, "7", 0) == 0
    assert len(fake.calls) == 1  # asked once, not again until hpcmigd is back


def test_a_failed_step_asks_again_until_hpcmigd_answers(hpcmigd: Any) -> None:
    fake = hpcmigd(DOWN, DOWN, LOST)
    assert run._after(None, CKPT, "7", 255) == 255
    assert len(fake.calls) == 3


def test_a_failed_step_without_a_lost_node_keeps_its_exit_code(hpcmigd: Any, capsys: Any
                                                               ) -> None:
    hpcmigd({"restarted": False, "why": "every node of the job answers"})
    assert run._after(None, CKPT, "7", 3) == 3
    assert "no restart: every node of the job answers" in capsys.readouterr().err


def test_a_job_without_checkpoints_never_asks(hpcmigd: Any) -> None:
    fake = hpcmigd()
    assert run._after(None, SimpleNamespace(ckpt=None), "7", 0) == 0
    assert run._after(None, SimpleNamespace(ckpt=None), "7", 1) == 1
    assert fake.calls == []
