"""The `lxc` runtime: LXC 5.0 (`lxc-start`) makes the container, hpcmig's init is its PID 1.

Design note: this backend owns one generated LXC configuration per container and the
`lxc-start`/`lxc-info`/`lxc-stop` calls around it; everything inside is the same as in the
`ns` runtime: the init (`python -m hpcmig.runtime.init serve`) serves the exec protocol,
runs every request as the job's user, and `hpcmig-rsh` works unchanged.

Network: LXC joins the network namespace `hpcmig.network` made beforehand
(`lxc.namespace.share.net = /run/netns/...`, a path LXC 5.0 accepts), so addresses, routes,
isolation and the CRIU network recipe are those of the `ns` runtime; that layout already is
"veth in router mode" (the container's /32 routed to a host-side veth that has no address,
a fixed gateway neighbour inside), made by hpcmig rather than by LXC, which is why
`makes_own_network` is False (docs/runtime.md, "LXC runtime").

Root: the node's root (image None: `lxc.rootfs.path = dir:/`), or the root that
`hpcmig.runtime.image` builds for a `.sif` (then the init runs the image's python3 with
hpcmig bound on /.hpcmig). LXC adds its own mount namespace, /proc of the container's PID
namespace, a read-only /sys and a private /dev with a tmpfs /dev/shm. The LXC state
directory (`-P`) is the runtime's state directory, so a container's files stay in
<state_dir>/<name>/ (config, lxc.log, init/spec.json, init/init.log).

Moving (`movable`): a container on the node's root moves and is checkpointed by CRIU, which
dumps LXC's mount namespace (hpcmig.checkpoint.criu); the copy CRIU restores has no LXC
monitor, so `is_running`, `stop` and `enter_argv` also work through its init, and its
`lxc.payload` cgroup goes with it (docs/runtime.md, "Moving and checkpointing LXC
containers"). A container on an image does not move yet.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time

from hpcmig import _proc, _procfs
from hpcmig.auth import munge
from hpcmig.errors import HpcmigError
from hpcmig.runtime import image, ns
from hpcmig.runtime.base import Container, ContainerSpec, Runtime, register

INIT_MODULE = "hpcmig.runtime.init"
READY_LINE = "serving exec requests"
START_TIMEOUT = 60.0
IMAGE_STATE = "/.hpcmig/state"  # the init's directory, seen from inside an image root


class LxcError(HpcmigError):
    """LXC could not start or stop a container."""


def init_argv(spec: ContainerSpec, spec_path_inside: str) -> list[str]:
    if spec.image is None:
        return [sys.executable, "-m", INIT_MODULE, "serve", spec_path_inside]
    return ["/usr/bin/env", "python3", "-m", INIT_MODULE, "serve", spec_path_inside]


def lxc_config(spec: ContainerSpec, *, rootfs: str, init: list[str], log_file: str,
               munge_socket: str | None = None) -> str:
    """The LXC configuration of one container (pure). munge_socket: the node's munged socket,
    for an init in an image (LXC clears the environment, and the image has no slurm.conf
    to find a socket that is not the default one in)."""
    if any(" " in word for word in init):
        raise LxcError(f"container {spec.name}: lxc.init.cmd cannot hold spaces: {init}")
    lines = [
        f"lxc.uts.name = {spec.hostname or spec.name}",
        f"lxc.rootfs.path = dir:{rootfs}",
        f"lxc.namespace.share.net = {spec.netns}",
        f"lxc.init.cmd = {' '.join(init)}",
        "lxc.init.uid = 0",
        "lxc.init.gid = 0",
        "lxc.signal.halt = SIGTERM",  # the init stops on TERM (LXC's default is PWR)
        "lxc.mount.auto = proc:mixed sys:ro",
        "lxc.autodev = 1",
        "lxc.mount.entry = tmpfs dev/shm tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0",
        "lxc.tty.max = 0",
        "lxc.pty.max = 16",
        "lxc.console.path = none",
        "lxc.apparmor.profile = unconfined",
        "lxc.cap.drop = sys_module sys_time mac_admin mac_override",
        f"lxc.log.file = {log_file}",
        "lxc.log.level = NOTICE",
    ]
    if spec.image is not None:
        lines += ["lxc.environment = PYTHONPATH=/.hpcmig/python",
                  "lxc.environment = LD_LIBRARY_PATH=/.hpcmig/lib"]
        if munge_socket:
            lines.append(f"lxc.environment = {munge.SOCKET_ENV}={munge_socket}")
    for name, (soft, hard) in spec.limits.items():
        lines.append(f"lxc.prlimit.{name.lower()} = {_lim(soft)}:{_lim(hard)}")
    return "\n".join(lines) + "\n"


def _lim(value: int) -> str:
    return "unlimited" if value < 0 or value >= 2**63 - 1 else str(value)


@register("lxc")
class LxcRuntime(Runtime):
    required_tools = ("lxc-start", "lxc-stop", "lxc-info", "lxc-attach")
    makes_own_network = False  # joins the netns made by hpcmig.network (see module note)

    def _lxc(self, verb: str, spec: ContainerSpec, *args: str,
             check: bool = True, timeout: float = 60.0) -> _proc.Result:
        return _proc.run([f"lxc-{verb}", "-n", spec.name, "-P", spec.state_dir, *args],
                         check=check, timeout=timeout)

    def _state(self, spec: ContainerSpec) -> str:
        r = self._lxc("info", spec, "-s", "-H", check=False)
        return r.stdout.strip() if r.returncode == 0 else "STOPPED"

    def start(self, spec: ContainerSpec) -> Container:
        spec.validate()
        self.check_available()
        if os.geteuid() != 0:
            raise LxcError("starting a container needs root", hint="run as root")
        if not os.path.exists(spec.netns):
            raise LxcError(f"container {spec.name}: network namespace {spec.netns} does not "
                           "exist", hint="create it first with hpcmig.network")
        if self._state(spec) != "STOPPED":
            raise LxcError(f"container {spec.name} is already running",
                           hint="stop it first, or choose another name")
        if spec.image is not None:
            image.image_kind(spec.image)
        lay = image.layout(spec)
        ns.write_spec(spec, _spec_path(spec))
        init_dir = os.path.dirname(_spec_path(spec))
        log_path = f"{init_dir}/init.log"
        try:
            if spec.image is None:
                rootfs, inside = "/", f"{init_dir}/spec.json"
            else:
                rootfs = image.prepare_root(
                    spec, extra_binds=(image.Bind(init_dir, IMAGE_STATE),))
                inside = f"{IMAGE_STATE}/spec.json"
            with open(f"{lay.base}/config", "w", encoding="utf-8") as fh:
                fh.write(lxc_config(spec, rootfs=rootfs, init=init_argv(spec, inside),
                                    log_file=f"{lay.base}/lxc.log",
                                    munge_socket=spec.env.get(munge.SOCKET_ENV)
                                    or munge.socket_path()))
            self._lxc("start", spec, "-d", timeout=START_TIMEOUT)
            pid = self._wait_ready(spec, log_path)
        except HpcmigError as exc:
            detail = _tail(log_path) + _tail(f"{lay.base}/lxc.log")
            self._lxc("stop", spec, "-k", check=False)
            self._remove(spec)
            raise LxcError(f"container {spec.name} did not start: {exc}{detail}",
                           hint=exc.hint) from None
        return Container(name=spec.name, runtime="lxc", init_pid=pid, netns=spec.netns,
                         address=spec.address, exec_port=spec.exec_port, log_path=log_path,
                         spec=spec)

    def _wait_ready(self, spec: ContainerSpec, log_path: str) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = _read(log_path)
            if READY_LINE in text:
                return int(self._lxc("info", spec, "-p", "-H").stdout.strip())
            if "init did not start" in text or self._state(spec) == "STOPPED":
                raise LxcError("the init exited")
            time.sleep(0.05)
        raise LxcError(f"no answer within {START_TIMEOUT:g}s")

    def is_running(self, container: Container) -> bool:
        return self._state(container.spec) == "RUNNING" or self._restored(container)

    def _restored(self, container: Container) -> bool:
        """The container runs without an LXC monitor: CRIU restored it (see `movable`)."""
        spec = container.spec
        return spec.image is None and ns.init_alive(container.init_pid, _spec_path(spec))

    def stop(self, container: Container, grace: float | None = None) -> None:
        """lxc-stop: SIGTERM to the init (which forwards it and waits `stop_grace`), SIGKILL
        after `grace` + 5 s; then unmount the image root and remove the state directory."""
        spec = container.spec
        wait = (spec.stop_grace if grace is None else grace) + 5.0
        if self._state(spec) != "STOPPED":
            self._lxc("stop", spec, "-t", str(int(wait + 0.999)), check=False,
                      timeout=wait + 30)
        if self._state(spec) != "STOPPED":
            raise LxcError(f"container {spec.name} did not stop")
        if spec.image is None:  # a restored copy has no monitor: stop its init as ns does
            ns.stop_init(spec.name, container.init_pid, _spec_path(spec), wait)
        self._remove(spec)

    def _remove(self, spec: ContainerSpec) -> None:
        remove_payload_cgroups(spec.name)
        base = image.layout(spec).base
        if spec.image is not None:
            image.release_root(spec)
        if image.mounts_under(base):
            raise LxcError(f"container {spec.name}: {base} still has mounts; not removing it")
        shutil.rmtree(base, ignore_errors=True)

    def enter_argv(self, container: Container) -> list[str]:
        """lxc-attach prefix: a command as root in every namespace of the container (nsenter
        into all of them for a restored copy, which has no monitor to attach through)."""
        spec = container.spec
        if self._restored(container) and self._state(spec) == "STOPPED":
            return ["nsenter", "-t", str(container.init_pid), "--all", "--root"]
        return ["lxc-attach", "-n", spec.name, "-P", spec.state_dir, "--"]

    # -- moving: CRIU dumps the container's own mount namespace (docs/runtime.md) ------------
    def movable(self, spec: ContainerSpec) -> str | None:
        if spec.image is not None:
            return ("containers of the lxc runtime on an image cannot move or be "
                    "checkpointed yet (the ns runtime's can, and lxc ones on the node's root)")
        return None

    def prepare_restore(self, spec: ContainerSpec, writable_archive: str | None = None) -> None:
        """Migration target, before `criu restore`: the container's directory with its
        spec.json, where the restored init logs (its argv names it). No LXC monitor: the
        copy is stopped through its init (`stop`)."""
        if why := self.movable(spec):
            raise LxcError(f"container {spec.name}: {why}")
        spec.validate()
        ns.write_spec(spec, _spec_path(spec))

    def abort_restore(self, spec: ContainerSpec) -> None:
        self._remove(spec)

    def save_writable(self, container: Container, archive: str) -> bool:
        if why := self.movable(container.spec):
            raise LxcError(f"container {container.name}: {why}")
        return False  # the node's root: nothing of the container's own to carry


def remove_payload_cgroups(name: str) -> list[str]:
    """Remove the container's empty cgroups (LXC's `lxc.payload.<name>[-N]` at the top of
    each hierarchy): LXC's monitor removes its own, but a copy CRIU restored had none
    (CRIU made the cgroup again). One that still holds processes stays. Returns those
    removed."""
    pattern = re.compile(rf"lxc\.payload\.{re.escape(name)}(-\d+)?")
    removed = []
    for mount in _procfs.mounts():
        if mount.fstype not in ("cgroup", "cgroup2") or not os.path.isdir(mount.point):
            continue
        for entry in os.listdir(mount.point):
            top = os.path.join(mount.point, entry)
            if not pattern.fullmatch(entry) or not os.path.isdir(top):
                continue
            with contextlib.suppress(OSError):  # busy: processes left; gone: LXC's own
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    os.rmdir(dirpath)
                removed.append(top)
    return removed


def _spec_path(spec: ContainerSpec) -> str:
    """Where a host-root container's spec.json is (in the init's argv)."""
    return f"{image.layout(spec).base}/init/spec.json"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _tail(path: str, lines: int = 5) -> str:
    text = _read(path).splitlines()[-lines:]
    return f"; {os.path.basename(path)}: " + " | ".join(text) if text else ""
