"""hpcmig.checkpoint.lazy around stand-in CRIU processes: readiness through --status-fd, the
close command that ends a page server (CRIU's wire format), and the restore watchdog.
The real post-copy moves are in tests/integration (test_checkpoint_migration, test_postcopy).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpcmig.checkpoint import lazy
from hpcmig.checkpoint.base import CheckpointError, EngineError

# a stand-in for `criu ...  --status-fd N`: says ready, then works on for `secs`
READY = ("import os,sys,time; fd=int(sys.argv[sys.argv.index('--status-fd')+1]); "
         "os.write(fd,b'\\0'); os.close(fd); time.sleep(float(sys.argv[1]))")


def test_start_returns_once_ready_and_keeps_the_process(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = lazy._start([sys.executable, "-c", READY, "5"], str(tmp_path), "x.log", "stand-in")
    assert time.monotonic() - t0 < 3 and proc.poll() is None
    assert lazy._child(str(tmp_path)) is proc
    lazy.stop_daemon(str(tmp_path))
    assert proc.poll() is not None and lazy._child(str(tmp_path)) is None


def test_start_reports_a_process_that_ends_before_ready(tmp_path: Path) -> None:
    (tmp_path / "x.log").write_text("Error (criu/uffd.c:1): no userfaultfd\n")
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('bad option\\n'); sys.exit(1)"]
    with pytest.raises(EngineError) as err:
        lazy._start(argv, str(tmp_path), "x.log", "criu lazy-pages")
    text = str(err.value)
    assert "exit code 1" in text and "bad option" in text and "no userfaultfd" in text
    assert lazy._child(str(tmp_path)) is None


def test_cancel_sends_criu_close_and_waits_for_the_dump(tmp_path: Path) -> None:
    """The rollback's way to end a post-copy dump: CRIU's PS_IOV_CLOSE, as a finished
    lazy-pages daemon sends it (24 bytes: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id)."""
    got: list[bytes] = []
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        dump = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])

        def page_server() -> None:
            conn, _ = srv.accept()
            with conn:
                got.append(conn.recv(24))
                conn.sendall(struct.pack("<i", 0))
            dump.kill()  # CRIU's dump ends once its page server closed

        t = threading.Thread(target=page_server)
        t.start()
        lazy._keep(str(tmp_path), dump)
        (tmp_path / lazy.STATE_FILE).write_text(json.dumps(
            {"address": "127.0.0.1", "port": port, "pid": dump.pid}))
        assert lazy.serving(str(tmp_path)) is not None
        assert lazy.cancel(str(tmp_path), timeout=10) is True
        t.join(5)
    assert got == [struct.pack("<IIQQ", 0x1023, 0, 0, 0)]
    assert dump.poll() is not None and lazy.serving(str(tmp_path)) is None
    assert lazy.cancel(str(tmp_path)) is False  # idempotent


def test_restore_is_killed_when_the_daemon_dies_first(tmp_path: Path) -> None:
    """CRIU 4.1 hangs when its lazy-pages daemon dies during the restore: the watchdog ends
    it a second after the daemon and says why."""
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    lazy._keep(str(tmp_path), daemon)
    t0 = time.monotonic()
    with pytest.raises(EngineError) as err:
        lazy.run_restore(["sleep", "60"], str(tmp_path), timeout=60)
    assert time.monotonic() - t0 < 5
    assert "lazy-pages daemon ended during the restore" in str(err.value.hint)
    lazy.stop_daemon(str(tmp_path))


def test_wait_done_says_whether_every_page_arrived(tmp_path: Path) -> None:
    ok = subprocess.Popen([sys.executable, "-c", "pass"])
    lazy._keep(str(tmp_path), ok)
    assert lazy.wait_done(str(tmp_path), timeout=10) >= 0
    (tmp_path / lazy.DAEMON_LOG).write_text("Error (criu/page-xfer.c:1614): page-xfer: "
                                            "Connection reset by peer\n")
    bad = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(1)"])
    lazy._keep(str(tmp_path), bad)
    with pytest.raises(CheckpointError, match="Connection reset by peer"):
        lazy.wait_done(str(tmp_path), timeout=10)
    # an agent restarted meanwhile knows only the pid file and the exit status sh kept
    (tmp_path / lazy.DAEMON_PID).write_text(f"{os.getpid() + 10**6}\n")  # no such process
    with pytest.raises(CheckpointError, match="exit unknown"):
        lazy.wait_done(str(tmp_path), timeout=10)
    (tmp_path / lazy.DAEMON_STATUS).write_text("1\n")
    with pytest.raises(CheckpointError, match="exit 1"):
        lazy.wait_done(str(tmp_path), timeout=10)
    (tmp_path / lazy.DAEMON_STATUS).write_text("0\n")
    assert lazy.wait_done(str(tmp_path), timeout=10) >= 0


def test_the_daemon_wrapper_keeps_criu_exit_status(tmp_path: Path) -> None:
    """start_daemon runs CRIU through sh: sh must exit with CRIU's status (and write it)."""
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\n" + f"exec {sys.executable} -c \"{READY}\" 0.2 \"$@\"\n")
    fake.chmod(0o755)
    failing = tmp_path / "criu-fails"
    failing.write_text(f"#!/bin/sh\n{fake} \"$@\"; exit 3\n")
    failing.chmod(0o755)
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    lazy.start_daemon(str(fake), str(tmp_path / "ok"), ("127.0.0.1", 1))
    assert lazy.wait_done(str(tmp_path / "ok"), timeout=10) >= 0
    assert (tmp_path / "ok" / lazy.DAEMON_STATUS).read_text().strip() == "0"
    lazy.start_daemon(str(failing), str(tmp_path / "bad"), ("127.0.0.1", 1))
    with pytest.raises(CheckpointError, match="exit 3"):
        lazy.wait_done(str(tmp_path / "bad"), timeout=10)
    assert (tmp_path / "bad" / lazy.DAEMON_STATUS).read_text().strip() == "3"
