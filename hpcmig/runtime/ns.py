"""The `ns` runtime: a container is PID+UTS+IPC namespaces around hpcmig's init.

Design note: this backend owns starting, finding and stopping container inits on this node.
A container shares the node's mount namespace, and joins a network namespace made beforehand
by `hpcmig.network` (so CRIU sees it as external). Its root is the node's (image None), or
an image (`.sif` or directory) that `hpcmig.runtime.image` mounts at <state>/<name>/root and
the init chroots into; `stop` unmounts it, `prepare_restore` rebuilds it on a migration
target. Starting runs
`python -m hpcmig.runtime.init launch SPEC.json` through `_proc` and returns once the init
serves exec requests. It does not make or remove network namespaces, and never signals a pid
without first checking that the pid is still this container's init.

The init's parent exits right after the launch, so the init is reparented to the nearest
child subreaper, else the node's PID 1: the agent should call `become_subreaper()` once at
start so that it reaps stopped inits (a zombie init counts as stopped here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

from hpcmig import _proc, _procfs
from hpcmig.errors import HpcmigError
from hpcmig.runtime import _linux, image
from hpcmig.runtime.base import Container, ContainerSpec, Runtime, register

INIT_MODULE = "hpcmig.runtime.init"
LAUNCH_TIMEOUT = 60.0


class ContainerError(HpcmigError):
    """A container could not be started or stopped."""


def become_subreaper() -> None:
    """Make the calling process (the agent) reap container inits it started."""
    _linux.set_child_subreaper(True)


def _is_init_of(pid: int, spec_path: str) -> bool:
    argv = _procfs.argv(pid)
    return INIT_MODULE in argv and spec_path in argv


def init_alive(pid: int, spec_path: str) -> bool:
    return _procfs.live_cmdline(pid) is not None and _is_init_of(pid, spec_path)


def find_inits(state_dir: str = "/run/hpcmig/containers") -> dict[str, int]:
    """{container name: init pid} of live inits on this node (e.g. after an agent restart)."""
    found: dict[str, int] = {}
    prefix = os.path.join(state_dir, "")
    own_mnt = _mnt_ns("self")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _procfs.argv(int(entry))
        if (INIT_MODULE in argv and argv[-1].startswith(prefix)
                and _procfs.state(int(entry)) != "Z" and _mnt_ns(entry) == own_mnt):
            found[os.path.basename(os.path.dirname(argv[-1]))] = int(entry)
    return found


def saved_spec(state_dir: str, name: str) -> ContainerSpec | None:
    """The spec a container's state directory on this node holds (written by `start` and
    `prepare_restore`), None if there is none: what a restore cut short left behind."""
    try:
        with open(os.path.join(state_dir, name, "spec.json"), encoding="utf-8") as fh:
            return ContainerSpec.from_json(json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ContainerError(f"container {name}: unreadable spec.json in {state_dir}: {exc}"
                             ) from None


def _mnt_ns(pid: str) -> int | None:
    """Mount namespace inode: a node's containers share its mount namespace, so the same state
    path on another node of one machine (the testbed) is told apart by it."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


@register("ns")
class NsRuntime(Runtime):
    required_tools = ("nsenter",)

    def _spec_path(self, spec: ContainerSpec) -> str:
        return os.path.join(spec.state_dir, spec.name, "spec.json")

    def start(self, spec: ContainerSpec) -> Container:
        spec.validate()
        self.check_available()
        if os.geteuid() != 0:
            raise ContainerError("starting a container needs root", hint="run as root")
        if not os.path.exists(spec.netns):
            raise ContainerError(
                f"container {spec.name}: network namespace {spec.netns} does not exist",
                hint="create it first with hpcmig.network.create_container_net",
            )
        spec_path = self._spec_path(spec)
        running = find_inits(spec.state_dir)
        if spec.name in running:
            raise ContainerError(
                f"container {spec.name} is already running (init pid {running[spec.name]})",
                hint="stop it first, or choose another name",
            )
        if spec.image is not None:
            image.image_kind(spec.image)  # exists?
        self._write_state(spec)
        try:
            if spec.image is not None:
                image.prepare_root(spec)
            result = _proc.run([sys.executable, "-m", INIT_MODULE, "launch", spec_path],
                               timeout=LAUNCH_TIMEOUT)
        except HpcmigError as exc:
            log_tail = _tail(os.path.join(os.path.dirname(spec_path), "init.log"))
            self._remove_state(spec)
            raise ContainerError(f"container {spec.name} did not start: {exc}{log_tail}",
                                 hint=exc.hint) from None
        return Container.from_json(json.loads(result.stdout))

    def _write_state(self, spec: ContainerSpec) -> None:
        write_spec(spec, self._spec_path(spec))

    def _remove_state(self, spec: ContainerSpec) -> None:
        """Unmount the image root (if any), then remove the state directory; never removes
        anything below a mount that is still there (a bound home, for one)."""
        directory = os.path.dirname(self._spec_path(spec))
        if spec.image is not None:
            image.release_root(spec)
        if image.mounts_under(directory):
            raise ContainerError(f"container {spec.name}: {directory} still has mounts; "
                                 "not removing it")
        shutil.rmtree(directory, ignore_errors=True)

    def prepare_restore(self, spec: ContainerSpec, writable_archive: str | None = None) -> None:
        """Migration target, before `criu restore`: the state directory (spec.json, init.log,
        found by `find_inits` and `stop`) and, for an image, its root at the same path with the
        source's writable layer. Undo with `stop` (after a restore) or `abort_restore`."""
        spec.validate()
        if spec.name in find_inits(spec.state_dir):
            raise ContainerError(f"container {spec.name} already runs on this node")
        self._write_state(spec)
        try:
            if spec.image is not None:
                image.prepare_root(spec, writable_archive)
        except BaseException:
            self._remove_state(spec)
            raise

    def abort_restore(self, spec: ContainerSpec) -> None:
        """Undo `prepare_restore` when the restore failed, or release what a killed copy left
        on this node: its image root's mounts and its state directory. No process of the
        copy may be left (they would lose their root). Idempotent."""
        self._remove_state(spec)

    def movable(self, spec: ContainerSpec) -> str | None:
        return None

    def save_writable(self, container: Container, archive: str) -> bool:
        if container.spec.image is None:
            return False
        image.save_writable(container.spec, archive)
        return True

    def is_running(self, container: Container) -> bool:
        return init_alive(container.init_pid, self._spec_path(container.spec))

    def stop(self, container: Container, grace: float | None = None) -> None:
        """SIGTERM the init (it forwards, waits `stop_grace`, kills the rest), then SIGKILL
        it if it is still there after `grace` + 5 s. Removes the state directory."""
        wait = (container.spec.stop_grace if grace is None else grace) + 5.0
        stop_init(container.name, container.init_pid, self._spec_path(container.spec), wait)
        self._remove_state(container.spec)

    def enter_argv(self, container: Container) -> list[str]:
        """nsenter prefix to run a command as root in the container (not the job's user);
        in an image container, with the image as root (and / as cwd)."""
        argv = ["nsenter", "-t", str(container.init_pid), "--pid", "--uts", "--ipc", "--net"]
        return [*argv, "--root"] if container.spec.image is not None else argv


def write_spec(spec: ContainerSpec, path: str) -> None:
    """spec.json at path, atomically (its directory made, private to root)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(spec.to_json(), fh)
    os.replace(path + ".tmp", path)


def stop_init(name: str, pid: int, spec_path: str, wait: float) -> None:
    """SIGTERM a container's init (it forwards, waits its grace, kills the rest), SIGKILL it
    if it is still there after `wait` s (the kernel then kills its whole PID namespace),
    reap it. Signals pid only while it is the init of spec_path."""
    if init_alive(pid, spec_path):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while init_alive(pid, spec_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        if init_alive(pid, spec_path):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while init_alive(pid, spec_path) and time.monotonic() < deadline:
                time.sleep(0.02)
        if init_alive(pid, spec_path):
            raise ContainerError(f"container {name}: init {pid} survived SIGKILL")
    reap_child(pid)


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.readlines()[-lines:]
    except OSError:
        return ""
    return ("; init.log: " + " | ".join(t.strip() for t in text)) if text else ""


def reap_child(pid: int, timeout: float = 10.0) -> None:
    """Reap pid if it is this process's child, once it has finished exiting (at most
    `timeout` s). A container init's cmdline empties (so `_alive` says no) while it is still
    exiting: a PID namespace's init first waits for the kernel to end the namespace's other
    processes. Reaped too early (WNOHANG once), it stayed a zombie of its namespace for as
    long as this process lived."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid or time.monotonic() > deadline:
                return
        except ChildProcessError:  # not ours (an adopted init), or reaped already
            return
        time.sleep(0.01)
