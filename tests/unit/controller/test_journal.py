"""The journal: durable settings, steps in order, data merges, reopening after a crash."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from hpcmig.controller.journal import Journal


def test_settings_and_permissions(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "state", "journal.db")
    with Journal(path) as j:
        assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync'd commits
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_operations_steps_and_data(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "journal.db")
    with Journal(path) as j:
        op = j.begin("migrate", "42", {"a": 1})
        s1 = j.step_started(op, "forward", "lock")
        j.step_ended(op, s1, "done", {"ok": True})
        s2 = j.step_started(op, "forward", "dump")
        assert (s1, s2) == (1, 2)
        j.update_data(op, stream={"port": 1})
        j.update_data(op, dump={"seconds": 0.5})
        assert j.get(op).data == {"stream": {"port": 1}, "dump": {"seconds": 0.5}}
        assert [o.id for o in j.open_operations()] == [op]
        assert j.open_operations(job_id="43") == []
    # a second process (the recovering controller) sees exactly what was committed
    code = ("import sys; from hpcmig.controller.journal import Journal\n"
            "j = Journal(sys.argv[1]); [s.status for s in j.steps(1)]\n"
            "print([(s.name, s.status, s.result) for s in j.steps(1)])")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[('lock', 'done', {'ok': True}), ('dump', 'started', None)]"
    with Journal(path) as j:
        j.set_state(op, "rolled_back", "why")
        assert j.open_operations() == []
        assert j.get(op).error == "why"
        assert [o.state for o in j.operations(kind="migrate")] == ["rolled_back"]


def test_commits_survive_sigkill(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "journal.db")
    code = ("import os, signal, sys; from hpcmig.controller.journal import Journal\n"
            "j = Journal(sys.argv[1]); op = j.begin('migrate', '1', {})\n"
            "j.step_started(op, 'forward', 'lock'); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, path])
    assert r.returncode == -9
    with Journal(path) as j:
        [op] = j.open_operations()
        assert [(s.name, s.status) for s in j.steps(op.id)] == [("lock", "started")]
