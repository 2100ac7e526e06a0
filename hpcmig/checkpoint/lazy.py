"""Post-copy: the memory of a moved container follows it after it runs again (CRIU lazy pages).

Design note: this module owns the CRIU processes of a post-copy move and nothing else; the
order of the steps is the controller's (`hpcmig.controller.migration`). On the source,
`criu dump --lazy-pages` writes every image but the private anonymous memory, then serves
that memory from its page server (node address, one port) and keeps the dumped tree frozen
until the target has every page; `start_dump` returns as soon as the page server listens
(CRIU's `--status-fd`), so the pause holds the non-memory state only. On the target,
`start_daemon` runs `criu lazy-pages`, which takes the restored processes' userfaultfds over
the image directory's `lazy-pages.socket`, fetches a page from the source when a process
touches it and the rest in the background; `criu restore --lazy-pages` (criu.restore) hands
them over. `wait_done` waits for the daemon's end and says whether every page arrived.

What can go wrong is the reason post-copy is not the only mode: once restored, the copy
runs on memory that is still on the source. If the source or the link dies before the last
page, the copy cannot go on (a process touching a missing page would be served a zero page
once the daemon is gone), so `wait_done` reports the failure and the caller kills that copy;
the job then needs its last checkpoint. Until the restore, `cancel` ends the page server
the way the target would (CRIU's close command), so the dump ends well and leaves the tree
stopped where it was, ready to be resumed (a rollback). The page server does not
authenticate its client: like the stream transport's listeners it listens on the node's
address for one move only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping

from hpcmig.checkpoint import _tree
from hpcmig.checkpoint.base import CheckpointError, EngineError, log_tail

STATE_FILE = "lazy.json"  # the source's page server: {"address", "port", "pid"}
DAEMON_PID = "lazy-pages.pid"
DAEMON_LOG = "lazy-pages.log"
DAEMON_STATUS = "lazy-pages.status"  # its exit status, once it ended
READY_TIMEOUT = 300.0  # the dump of everything but the lazy memory
PS_IOV_CLOSE = 0x1023  # CRIU page server protocol (criu/page-xfer.c)

# image_dir -> the CRIU process this agent started for it (exit status: wait_done, cancel)
_children: dict[str, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _keep(image_dir: str, proc: subprocess.Popen[bytes]) -> None:
    with _children_lock:
        _children[os.path.realpath(image_dir)] = proc


def _child(image_dir: str) -> subprocess.Popen[bytes] | None:
    with _children_lock:
        return _children.get(os.path.realpath(image_dir))


def _forget(image_dir: str) -> None:
    with _children_lock:
        _children.pop(os.path.realpath(image_dir), None)


def _start(argv: list[str], image_dir: str, log: str, what: str,
           env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Run a CRIU command with `--status-fd`; return once it says it is ready (it goes on
    working). Raise EngineError with its log if it ends first."""
    rfd, wfd = os.pipe()
    err = tempfile.TemporaryFile()  # noqa: SIM115 (not a pipe: nobody reads it while CRIU works)
    try:
        proc = subprocess.Popen([*argv, "--status-fd", str(wfd)], pass_fds=(wfd,),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True,
                                env=dict(env) if env is not None else None)
    except OSError as exc:
        os.close(rfd)
        os.close(wfd)
        err.close()
        raise EngineError(what, argv, None, str(exc)) from None
    os.close(wfd)
    try:
        ready, _w, _x = select.select([rfd], [], [], READY_TIMEOUT)
        byte = os.read(rfd, 1) if ready else b""
    finally:
        os.close(rfd)
    if byte:
        err.close()
        _keep(image_dir, proc)
        return proc
    if not ready:
        proc.kill()
    code = proc.wait()
    err.seek(0)
    text = err.read().decode(errors="replace")
    err.close()
    raise EngineError(what, argv, code if ready else None,
                      text + log_tail(os.path.join(image_dir, log)),
                      hint=f"full log: {os.path.join(image_dir, log)}")


def start_dump(argv: list[str], image_dir: str, address: str,
               env: Mapping[str, str] | None = None) -> int:
    """On the source: `argv` (a `criu dump ... --leave-stopped`) plus the lazy options on a
    free port of `address`; returns that port once everything but the lazy memory is in
    image_dir. The state file lets `cancel` find the page server after an agent restart."""
    with socket.socket() as s:
        s.bind((address, 0))
        port = int(s.getsockname()[1])
    proc = _start([*argv, "--lazy-pages", "--address", address, "--port", str(port)],
                  image_dir, "dump.log", "criu dump --lazy-pages", env)
    tmp = os.path.join(image_dir, STATE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"address": address, "port": port, "pid": proc.pid}, fh)
    os.replace(tmp, os.path.join(image_dir, STATE_FILE))
    return port


def serving(image_dir: str) -> dict[str, object] | None:
    """The source's page server for image_dir if its dump still runs, else None."""
    try:
        with open(os.path.join(image_dir, STATE_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return None
    proc = _child(image_dir)
    if proc is not None and proc.poll() is not None:
        return None
    return state if _tree.live(int(state["pid"])) else None


def cancel(image_dir: str, timeout: float = 60.0) -> bool:
    """On the source, before any restore used the dump: close its page server as a finished
    target would, so `criu dump` ends and leaves the tree stopped (resumable). True if a
    page server was running. A dump that does not end is killed (its tree then runs on,
    which a rollback wants anyway)."""
    state = serving(image_dir)
    if state is None:
        _forget(image_dir)
        return False
    pid = int(str(state["pid"]))
    with contextlib.suppress(OSError), socket.create_connection(
            (str(state["address"]), int(str(state["port"]))), timeout=10) as conn:
        conn.sendall(struct.pack("<IIQQ", PS_IOV_CLOSE, 0, 0, 0))
        conn.recv(4)
    deadline = time.monotonic() + timeout
    while _tree.live(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _tree.live(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc = _child(image_dir)
    if proc is not None:
        proc.wait()
    _forget(image_dir)
    return True


def start_daemon(criu: str, image_dir: str, source: tuple[str, int]) -> int:
    """On the target, before `criu restore --lazy-pages`: the lazy-pages daemon, connected
    to the source's page server once the restore hands it the processes. Returns its pid."""
    for name in (DAEMON_PID, DAEMON_STATUS, "lazy-pages.socket"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(image_dir, name))
    # through sh, which keeps CRIU's exit status for an agent that restarts meanwhile
    status = shlex.quote(os.path.join(image_dir, DAEMON_STATUS))
    argv = ["sh", "-c", f'"$@"; s=$?; echo $s > {status}; exit $s', "sh", criu,
            "lazy-pages", "-D", image_dir, "-o", DAEMON_LOG, "--page-server",
            "--address", source[0], "--port", str(int(source[1]))]
    proc = _start(argv, image_dir, DAEMON_LOG, "criu lazy-pages")
    with open(os.path.join(image_dir, DAEMON_PID), "w", encoding="ascii") as fh:
        fh.write(f"{proc.pid}\n")
    return proc.pid


def run_restore(argv: list[str], image_dir: str, timeout: float) -> None:
    """Run `criu restore --lazy-pages` (argv) next to this image_dir's daemon. CRIU 4.1
    deadlocks when the daemon dies during the restore (it waits for the restored init, which
    waits for a zombie only CRIU, its tracer, could reap): if the daemon ends first, the
    restore gets a second to end too, then it is killed. Raise EngineError on failure."""
    daemon = _child(image_dir)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    why = ""
    while proc.poll() is None:
        now = time.monotonic()
        if daemon is not None and daemon.poll() is not None and not why:
            why, deadline = "the lazy-pages daemon ended during the restore", now + 1.0
        if now > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            why = why or f"timed out after {timeout:g} s"
            break
        time.sleep(0.02)
    if proc.returncode != 0 or why:
        log = os.path.join(image_dir, "restore.log")
        raise EngineError("criu restore", argv, proc.returncode, log_tail(log) + (
            "\n" + log_tail(os.path.join(image_dir, DAEMON_LOG), 5) if daemon else ""),
            hint=why or f"full log: {log}")


def stop_daemon(image_dir: str) -> None:
    """Kill a lazy-pages daemon whose restore failed (idempotent)."""
    proc = _child(image_dir)
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # sh and CRIU (their own session)
        proc.wait()
    _forget(image_dir)


def wait_done(image_dir: str, timeout: float) -> float:
    """On the target: wait until the daemon has every page; returns the seconds waited.
    Raise CheckpointError if it failed (the restored copy is then unusable)."""
    t0 = time.monotonic()
    proc = _child(image_dir)
    log = os.path.join(image_dir, DAEMON_LOG)
    late = CheckpointError(f"post-copy: pages still arriving after {timeout:g} s",
                           hint=f"see {log}")
    if proc is not None:
        try:
            status = str(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            raise late from None
        _forget(image_dir)
    else:  # started by an earlier life of this agent: its pid and the status sh kept
        try:
            with open(os.path.join(image_dir, DAEMON_PID), encoding="ascii") as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            return 0.0  # nothing was started here, or a finished move's files are gone
        deadline = time.monotonic() + timeout
        while _tree.live(pid):
            if time.monotonic() > deadline:
                raise late
            time.sleep(0.05)
        try:
            with open(os.path.join(image_dir, DAEMON_STATUS), encoding="ascii") as fh:
                status = fh.read().strip()
        except OSError:
            status = "unknown (killed?)"
    if status != "0":
        raise CheckpointError(f"post-copy transfer failed (criu lazy-pages exit {status}): "
                              f"{log_tail(log, 5).strip()}", hint=f"full log: {log}")
    return time.monotonic() - t0
