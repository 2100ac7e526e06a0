"""`make_node_namespaces` tries `unshare --mount=FILE` again when binding the new mount
namespace fails with EINVAL (seen on Linux 6.18 while other namespaces were being made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcmig.errors import CommandError
from hpcmig.testbed import host
from hpcmig.testbed.plan import Plan

EINVAL = "unshare: mount /proc/2892/ns/mnt on /x/node1.mnt failed: Invalid argument"


def _fake(monkeypatch: pytest.MonkeyPatch, failures: list[str]) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(argv: list[str], **_kw: object) -> None:
        calls.append(list(argv))
        if failures:
            raise CommandError(list(argv), 1, "", failures.pop(0))

    monkeypatch.setattr(host._proc, "run", run)
    monkeypatch.setattr(host.time, "sleep", lambda _s: None)
    return calls


def test_einval_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan(nodes_count=2, controller_host="h", base=tmp_path)
    plan.ns_dir.mkdir()
    calls = _fake(monkeypatch, [EINVAL])
    host.make_node_namespaces(plan, plan.nodes[0])
    assert len(calls) == 2 and calls[0] == calls[1]


@pytest.mark.parametrize("failures", [[EINVAL] * host.NS_BIND_ATTEMPTS,
                                      ["unshare: cannot open /x: No such file or directory"]])
def test_other_errors_or_too_many_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             failures: list[str]) -> None:
    plan = Plan(nodes_count=2, controller_host="h", base=tmp_path)
    plan.ns_dir.mkdir()
    calls = _fake(monkeypatch, list(failures))
    with pytest.raises(CommandError):
        host.make_node_namespaces(plan, plan.nodes[0])
    assert len(calls) == len(failures)
