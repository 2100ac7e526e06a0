"""CRIU's action script (hpcmig.checkpoint._action), run as CRIU runs it: by path, with
CRTOOLS_SCRIPT_ACTION set. It runs the on-freeze command at network-lock only, a failing
command does not fail the dump, and it is never kept where somebody else could change it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcmig.checkpoint import _action
from hpcmig.checkpoint.base import CheckpointError


def run(script: str, action: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script], env={**_action.env(command), "CRTOOLS_SCRIPT_ACTION": action},
                          capture_output=True, text=True, check=False)


def test_the_command_runs_once_the_tree_is_frozen_and_at_no_other_action(
        tmp_path: Path) -> None:
    script = _action.script(str(tmp_path / "run"))
    mark = tmp_path / "it ran"  # a space: the command is quoted whole
    for action in ("pre-dump", "post-dump", "network-unlock", "status-ready"):
        assert run(script, action, ["touch", str(mark)]).returncode == 0
        assert not mark.exists(), action
    assert run(script, "network-lock", ["touch", str(mark)]).returncode == 0
    assert mark.exists()


def test_a_failing_command_does_not_fail_the_dump_but_says_so(tmp_path: Path) -> None:
    script = _action.script(str(tmp_path))
    r = run(script, "network-lock", ["false"])
    assert r.returncode == 0
    assert "on freeze: 'false' failed" in r.stderr


def test_the_script_is_written_once_and_rewritten_when_changed(tmp_path: Path) -> None:
    path = Path(_action.script(str(tmp_path)))
    assert path.read_text() == _action.SCRIPT and path.stat().st_mode & 0o777 == 0o700
    before = path.stat().st_ino
    assert _action.script(str(tmp_path)) == str(path)
    assert path.stat().st_ino == before  # unchanged: not rewritten
    path.write_text("#!/bin/sh\nexit 1\n")
    _action.script(str(tmp_path))
    assert path.read_text() == _action.SCRIPT


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(CheckpointError, match="only it can write"):
        _action.script(str(shared))
    assert not (shared / _action.NAME).exists()
