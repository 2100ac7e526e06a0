"""PID 1 of an hpcmig container: reap, forward signals, serve exec requests.

Design note: this module owns the container's first process. `launch` (run by the ns runtime
as `python -m hpcmig.runtime.init launch SPEC.json`) joins the container's network namespace,
unshares PID+UTS+IPC, forks the init and returns once the init serves. The init stays in the
node's mount namespace (CRIU can then dump it; see docs/runtime.md) and is one thread around a
selector: no threads, no open files besides /dev/null, its listening socket, pipes to its
children and an epoll fd, so a `criu dump` of the container carries nothing node-specific.
The log file is opened per line for the same reason. It must never run job code as root:
exec children go through `_session.Session`, which switches to the job's uid first.

Image containers (`spec.image`): the runtime has built the root at <state>/<name>/root
(`hpcmig.runtime.image`). The init does everything that needs the node's files first (users,
groups, libmunge, the listening socket), then chroots into root/. Its children (every exec)
therefore see only the image. Every init's cwd is its container's directory <state>/<name>
(outside root/, so an image container's log stays `init.log` next to spec.json on the node;
and never shared, see `_become_init`).

Signals: SIGTERM/SIGINT are forwarded to every process of the container and start the stop
(SIGKILL to what is left after `stop_grace`, then exit); SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 are
forwarded only. An init of a PID namespace ignores signals it has no handler for, hence these.

Under LXC (`serve`, the host's root), two things LXC leaves would stop CRIU from moving the
container, so the init undoes them before it serves: LXC's parent-death signal (SIGKILL when
`lxc-start` goes, which a restored copy would get the moment `criu restore` exits), and the
node's namespace files (nsfs mounts such as /run/netns/*), which LXC's recursive bind of `/`
copied into the container's mount namespace and CRIU cannot recreate (docs/runtime.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pwd
import resource
import selectors
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from hpcmig import _procfs
from hpcmig.auth import credential, munge
from hpcmig.runtime import _linux
from hpcmig.runtime._session import ExecContext, Session, current_limits
from hpcmig.runtime.base import RLIMIT_NAMES, Container, ContainerSpec

IMAGE_TOOLS_BIN = "/.hpcmig/bin"  # hpcmig.runtime.image binds hpcmig's tools here

log = logging.getLogger("hpcmig.runtime.init")
READY_TIMEOUT = 20.0
FLUSH_SECONDS = 2.0  # after the last child: time to send the clients their EXIT frames
FORWARD_ONLY = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT)
Callback = Callable[[int, int], None]


class _AppendPerLine(logging.Handler):
    """Opens the log file for each record: no file stays open across a CRIU dump."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(self.format(record) + "\n")
        except OSError:
            pass


class Init:
    """The selector loop: listener, sessions, signals, reaping."""

    def __init__(self, listener: socket.socket, ctx: ExecContext, grace: float) -> None:
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = listener
        self.ctx = ctx
        self.grace = grace
        self.sessions: list[Session] = []
        self.pending: list[int] = []
        self.watched: set[int] = set()
        self.stop_deadline: float | None = None
        self.killed = False
        self.is_pid1 = os.getpid() == 1
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, *STOPPING, *FORWARD_ONLY):
            signal.signal(sig, self._on_signal)
        listener.setblocking(False)
        self.watch(listener.fileno(), True, False, self._on_accept)
        self.watch(self._wake_r, True, False, self._on_wake)

    def watch(self, fd: int, read: bool, write: bool, callback: Callback) -> None:
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        if not events:
            if fd in self.watched:
                self.sel.unregister(fd)
                self.watched.discard(fd)
        elif fd in self.watched:
            self.sel.modify(fd, events, callback)
        else:
            self.sel.register(fd, events, callback)
            self.watched.add(fd)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.pending.append(signum)

    def _on_wake(self, fd: int, _mask: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def _on_accept(self, fd: int, _mask: int) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sessions.append(Session(conn, f"{addr[0]}:{addr[1]}", self.ctx, self.watch))

    def forward(self, sig: int) -> None:
        """Deliver sig to every process of the container (PID 1: kill(-1) in our PID ns)."""
        if self.is_pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, sig)
        else:  # not a namespace init (unit tests): only our exec children's groups
            for session in self.sessions:
                session.signal(sig)

    def _handle_signals(self) -> None:
        while self.pending:
            sig = self.pending.pop(0)
            if sig == signal.SIGCHLD:
                continue
            log.info("got %s, forwarding to the container", signal.Signals(sig).name)
            self.forward(sig)
            if sig in STOPPING and self.stop_deadline is None:
                self.stop_deadline = time.monotonic() + self.grace
                if self.listener is not None:
                    self.watch(self.listener.fileno(), False, False, self._on_accept)
                    self.listener.close()
                    self.listener = None

    def _reap(self) -> bool:
        """Reap every exited child; return False once we have no children at all."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            for session in self.sessions:
                if session.child_pid == pid:
                    session.child_exited(status)

    def run(self) -> int:
        while True:
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic()) if not self.killed \
                    else 0.1
            for key, mask in self.sel.select(timeout):
                key.data(key.fd, mask)
            self._handle_signals()
            children = self._reap()
            self.sessions = [s for s in self.sessions if not s.finished]
            if self.stop_deadline is None:
                continue
            if not children:
                if self.sessions and time.monotonic() < self.stop_deadline + FLUSH_SECONDS:
                    self.killed = True  # keeps the select timeout short while we flush
                    continue  # let sessions send their EXIT frames
                log.info("stopped: no process left in the container")
                return 0
            if not self.killed and time.monotonic() >= self.stop_deadline:
                log.warning("processes left after %.1fs grace: SIGKILL", self.grace)
                self.forward(signal.SIGKILL)
                self.killed = True


def exec_context(spec: ContainerSpec, munge_socket: str) -> ExecContext:
    """The job identity and base environment every exec child gets."""
    try:
        pw = pwd.getpwuid(spec.uid)
        user, home, shell = pw.pw_name, pw.pw_dir, pw.pw_shell or "/bin/sh"
        groups = os.getgrouplist(user, spec.gid)
    except KeyError:
        user, home, shell, groups = None, "/", "/bin/sh", [spec.gid]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "SHELL": shell,
        "HPCMIG_CONTAINER": spec.name,
        "HPCMIG_JOB_ID": str(spec.job_id),
        "HPCMIG_EXEC_PORT": str(spec.exec_port),
        munge.SOCKET_ENV: munge_socket,
    }
    if user:
        env.update(USER=user, LOGNAME=user)
    env.update(spec.env)
    if spec.image is not None:  # the image's own PATH, then hpcmig's tools
        env["PATH"] = env["PATH"].rstrip(":") + ":" + IMAGE_TOOLS_BIN
        env["HPCMIG_RSH"] = f"{IMAGE_TOOLS_BIN}/hpcmig-rsh"
    else:
        env["HPCMIG_RSH"] = (shutil.which("hpcmig-rsh", path=os.path.dirname(sys.executable))
                             or shutil.which("hpcmig-rsh") or "hpcmig-rsh")
    targets = frozenset({f"{spec.address}:{spec.exec_port}"}) if spec.address else None
    return ExecContext(
        uid=spec.uid, gid=spec.gid, user=user, groups=groups, base_env=env, cwd=spec.cwd,
        targets=targets, setgroups=os.geteuid() == 0, limits=current_limits(),
        verify=lambda cred, body: credential.verify(cred, body, socket=munge_socket),
    )


def listen(address: str | None, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address or "0.0.0.0", port))
    sock.listen(128)
    return sock


def _become_init(spec: ContainerSpec, log_path: str, ready_fd: int | None,
                 chroot: bool) -> None:
    """PID 1 of the container: set up, chroot into the image root (ns runtime), report
    ready (on ready_fd, and with the "serving" log line), serve; never returns."""
    with contextlib.suppress(PermissionError):  # LXC's init is a session leader already
        os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    socket.sethostname(spec.hostname or spec.name)
    sock_path = spec.env.get(munge.SOCKET_ENV) or munge.socket_path()
    ctx = exec_context(spec, sock_path)
    listener = listen(spec.address, spec.exec_port)
    # the container's own directory, never one it shares: CRIU's parasite makes
    # "proc.crtools" in the cwd of the init it dumps, so two containers dumped at once
    # (a whole-job checkpoint) with one cwd would collide (mkdir: EEXIST)
    os.chdir(os.path.dirname(log_path))
    if chroot:
        munge._load()  # dlopen libmunge before the chroot: the image need not have it
        os.chroot(os.path.join(os.path.dirname(log_path), "root"))
        log_path = os.path.basename(log_path)  # relative to the cwd, which is outside root/
    handler = _AppendPerLine(log_path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {spec.name} %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    init = Init(listener, ctx, spec.stop_grace)
    log.info("serving exec requests on %s:%d for uid %d", spec.address or "*", spec.exec_port,
             spec.uid)
    if ready_fd is not None:
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
    try:
        code = init.run()
    except BaseException:
        log.exception("init failed; the container ends")
        code = 70
    logging.shutdown()
    os._exit(code)


def launch(spec_path: str) -> int:
    """Start the container described in spec_path; print its Container JSON on stdout."""
    with open(spec_path, encoding="utf-8") as fh:
        spec = ContainerSpec.from_json(json.load(fh))
    spec.validate()
    log_path = os.path.join(os.path.dirname(os.path.abspath(spec_path)), "init.log")
    for name, pair in spec.limits.items():
        resource.setrlimit(RLIMIT_NAMES[name], pair)
    _linux.setns(spec.netns, _linux.CLONE_NEWNET)
    _linux.unshare(_linux.CLONE_NEWPID | _linux.CLONE_NEWUTS | _linux.CLONE_NEWIPC)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        try:
            _become_init(spec, log_path, ready_w, chroot=spec.image is not None)
        except BaseException as exc:  # noqa: BLE001 - report any failure to the launcher
            os.write(ready_w, f"error: {type(exc).__name__}: {exc}\n".encode())
        os._exit(1)
    os.close(ready_w)
    answer = _read_ready(ready_r, READY_TIMEOUT)
    if answer != "ok":
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(f"hpcmig: error: container {spec.name} did not start: "
              f"{answer or f'no answer within {READY_TIMEOUT:g}s'}", file=sys.stderr)
        return 1
    container = Container(name=spec.name, runtime="ns", init_pid=pid, netns=spec.netns,
                          address=spec.address, exec_port=spec.exec_port, log_path=log_path,
                          spec=spec)
    print(json.dumps(container.to_json()))
    return 0


def detach_namespace_files() -> None:
    """Unmount every nsfs mount of this mount namespace (a namespace of its own: LXC's)."""
    points = sorted((m.point for m in _procfs.mounts() if m.fstype == "nsfs"),
                    key=lambda p: p.count("/"), reverse=True)
    for point in points:
        with contextlib.suppress(FileNotFoundError):  # under one detached before
            _linux.detach_mount(point)


def serve(spec_path: str) -> int:
    """Be PID 1 of a container another tool made (LXC's `lxc.init.cmd`): its namespaces,
    root and hostname are in place. The runtime waits for the "serving" log line."""
    with open(spec_path, encoding="utf-8") as fh:
        spec = ContainerSpec.from_json(json.load(fh))
    spec.validate()
    log_path = os.path.join(os.path.dirname(os.path.abspath(spec_path)), "init.log")
    try:
        _linux.clear_parent_death_signal()
        if spec.image is None:
            detach_namespace_files()
        _become_init(spec, log_path, None, chroot=False)
    except BaseException as exc:  # noqa: BLE001 - the runtime reads the log
        _AppendPerLine(log_path).emit(logging.makeLogRecord(
            {"msg": f"error: init did not start: {type(exc).__name__}: {exc}",
             "levelno": logging.ERROR, "levelname": "ERROR"}))
    return 1


def _read_ready(fd: int, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        if not sel.select(deadline - time.monotonic()):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    sel.close()
    os.close(fd)
    return data.decode(errors="replace").strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcmig.runtime.init")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_launch = sub.add_parser("launch", help="start a container from a ContainerSpec JSON file")
    p_launch.add_argument("spec")
    p_serve = sub.add_parser("serve", help="be PID 1 of a container made by LXC")
    p_serve.add_argument("spec")
    args = parser.parse_args(argv)
    try:
        return launch(args.spec) if args.cmd == "launch" else serve(args.spec)
    except Exception as exc:  # noqa: BLE001 - the agent reads this line
        print(f"hpcmig: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
