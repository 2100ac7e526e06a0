"""The CRIU engine: dump and restore one container, in the caller's namespaces.

Design note: this module owns the CRIU command lines and what is checked around them; it
follows the recipe docs/runtime.md verified ("Migration hooks"). The caller (the node agent,
or a test through nsenter/setns) runs these functions inside the node's network and mount
namespaces, with the container's /32 already held (the network lock: CRIU's own lock
made peers see RSTs, so dumps use `--network-lock skip`). The container's network namespace
is made outside CRIU and is external on both sides: `--external net[<inode>]:<key>` on dump,
`--inherit-fd fd[7]:<key>` with fd 7 open on the fresh netns on restore. Dumps use
`--leave-stopped` so a rollback can `resume` the source exactly where it was; after a restore
elsewhere succeeded the caller `kill_stopped`s it. Every dump is refused up front if a process
of the container maps or holds a device CRIU cannot dump (`refuse_reasons`). Failures raise
`EngineError` with the command, exit code and the tail of CRIU's log. It decides nothing about
routes, nodes or rollback: that is the controller's state machine.

`CRIU` is `$HPCMIG_CRIU` or `criu` on PATH (a patched 4.1.1 on this platform, see
docs/runtime.md, "CRIU on this platform").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hpcmig import _proc, _procfs
from hpcmig.checkpoint import _action, _sockets, _tree, images, lazy
from hpcmig.checkpoint.base import (
    CheckpointError,
    DumpStats,
    Engine,
    EngineError,
    Refused,
    log_tail,
    register,
)
from hpcmig.errors import CommandError, HpcmigError
from hpcmig.runtime.base import Container, ContainerSpec
from hpcmig.runtime.ns import INIT_MODULE, reap_child, write_spec

DEFAULT_KEY = "extnet"
DUMP_TIMEOUT = 900.0
RESTORE_TIMEOUT = 900.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# what CRIU cannot checkpoint: (path prefix, what it is)
DEVICES = (
    ("/dev/infiniband/", "InfiniBand/RDMA device"),
    ("anon_inode:[infinibandevent]", "InfiniBand/RDMA event channel"),
    ("/dev/nvidia", "NVIDIA GPU device"),
    ("/dev/dri/", "GPU (DRM) device"),
    ("/dev/kfd", "AMD GPU (KFD) device"),
)
_PAGES_WRITTEN = re.compile(r"Memory pages written:\s*(\d+)")
# a container with a mount namespace of its own (LXC's): the node's mounts in it are external
# (bound again from the target node), those the container made (proc, its /dev) are dumped
MOUNT_ARGS = ("--ext-mount-map", "auto", "--enable-external-sharing",
              "--enable-external-masters")


def criu_binary() -> str:
    return os.environ.get("HPCMIG_CRIU", "criu")


def _device(path: str) -> str | None:
    for prefix, what in DEVICES:
        if path.startswith(prefix):
            return what
    return None


def refuse_reasons(init_pid: int, proc: str = "/proc") -> list[str]:
    """What CRIU cannot dump in the container of init_pid: RDMA/GPU device mappings or open
    file descriptors in any of its processes. [] means dumpable as far as we know."""
    pids = _tree.members(init_pid, proc)
    if not pids:
        return [f"the container's init (pid {init_pid}) is not running"]
    reasons: list[str] = []
    for pid in pids:
        found: dict[str, str] = {}
        try:
            with open(f"{proc}/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and _device(parts[5].strip()):
                        found.setdefault(parts[5].strip(), "mapped")
        except OSError:
            continue  # exited meanwhile
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if _device(target) and target not in found:
                found[target] = "open"
        for path, how in sorted(found.items()):
            reasons.append(f"{_device(path)} {path} {how} by pid {pid} "
                           f"({_tree.comm(pid, proc)})")
    return reasons


def _run(what: str, argv: list[str], image_dir: str, log: str, timeout: float,
         env: Mapping[str, str] | None = None) -> str:
    try:
        result = _proc.run(argv, check=False, timeout=timeout, env=env)
    except CommandError:  # timed out: _proc killed the process group
        raise EngineError(what, argv, None, log_tail(os.path.join(image_dir, log)),
                          hint=f"timed out after {timeout:g} s") from None
    if result.returncode != 0:
        tail = log_tail(os.path.join(image_dir, log))
        if result.stderr.strip():
            tail = result.stderr.strip() + "\n" + tail
        raise EngineError(what, argv, result.returncode, tail,
                          hint=f"full log: {os.path.join(image_dir, log)}")
    return result.stdout


def dump(container: Container, image_dir: str, *, leave_stopped: bool = True,
         page_server: tuple[str, int] | None = None, netns_key: str = DEFAULT_KEY,
         timeout: float = DUMP_TIMEOUT, extra: Callable[[str], object] | None = None,
         lazy_address: str | None = None, on_freeze: Sequence[str] | None = None
         ) -> DumpStats:
    """Dump the container into image_dir (made by `images.create`), the netns external.

    leave_stopped: the tree stays stopped after the dump (the migration default), else CRIU
    kills it. page_server=(address, port): pages go to a `criu page-server` there (see
    hpcmig.checkpoint.stream); the rest stays in image_dir. extra(image_dir) runs after CRIU,
    before the manifest: more files of the dump (an image container's writable layer), so
    they are checksummed, sealed, sent and removed with it. lazy_address: post-copy
    (hpcmig.checkpoint.lazy): the private memory stays behind, served from a page server on
    that address of this node; the call returns while it serves (stats.lazy_port).
    on_freeze: a command run as soon as CRIU has frozen the tree, before it dumps anything
    (hpcmig.checkpoint._action; the migration's lock quiets the container there). Writes
    container.json and the manifest, seals the directory for the container's user, returns
    the stats."""
    if lazy_address is not None and (page_server is not None or not leave_stopped):
        raise CheckpointError("a post-copy dump sends its pages to no page server and "
                              "leaves its tree stopped")
    reasons = refuse_reasons(container.init_pid)
    if reasons:
        raise Refused(reasons)
    if not os.path.isdir(image_dir):
        raise CheckpointError(f"image directory {image_dir} does not exist",
                              hint="make it with hpcmig.checkpoint.images.create")
    if any(n.endswith(".img") for n in os.listdir(image_dir)):
        raise CheckpointError(f"{image_dir} already holds a dump", hint="use a fresh directory")
    own = _tree.ns_link(container.init_pid, "mnt")
    mntns = own is not None and own != _tree.ns_link("self", "mnt")
    node_mounts = same_path_mounts(_procfs.mounts(container.init_pid),
                                   _procfs.mounts()) if mntns else {}
    with open(os.path.join(image_dir, images.CONTAINER_FILE), "w", encoding="utf-8") as fh:
        json.dump({"container": container.to_json(), "netns_key": netns_key,
                   "mntns": mntns, "node_mounts": node_mounts}, fh)
    inode = os.stat(container.netns).st_ino
    argv = [criu_binary(), "dump", "-t", str(container.init_pid), "-D", image_dir,
            "-o", "dump.log", "--tcp-established", "--network-lock", "skip",
            "--external", f"net[{inode}]:{netns_key}", "--display-stats"]
    if mntns:
        argv += MOUNT_ARGS
        for key, point in node_mounts.items():
            argv += ["--external", f"mnt[{point}]:{key}"]
    if leave_stopped:
        argv.append("--leave-stopped")
    if page_server is not None:
        argv += ["--page-server", "--address", str(page_server[0]),
                 "--port", str(int(page_server[1]))]
    env = None
    if on_freeze is not None:
        scripts = os.path.dirname(container.spec.state_dir.rstrip("/")) or "/"
        argv += ["--action-script", _action.script(scripts)]
        env = _action.env(on_freeze)
    t0 = time.perf_counter()
    if lazy_address is None:
        out, port = _run("criu dump", argv, image_dir, "dump.log", timeout, env), 0
    else:
        out, port = "", lazy.start_dump(argv, image_dir, lazy_address, env)
    seconds = time.perf_counter() - t0
    if extra is not None:
        extra(image_dir)
    match = _PAGES_WRITTEN.search(out)
    pages = int(match.group(1)) if match else 0
    streamed = pages * PAGE_SIZE if page_server is not None else 0
    meta = {"engine": "criu", "container": container.name, "netns_key": netns_key,
            "pages_written": pages, "page_size": PAGE_SIZE, "streamed_bytes": streamed,
            "leave_stopped": leave_stopped, "lazy": lazy_address is not None}
    digest = images.write_manifest(
        image_dir, streamed=images.STREAM_PATTERNS if page_server else (), meta=meta)
    images.seal(image_dir, container.spec.uid)
    return DumpStats(seconds=seconds, image_bytes=images.tree_bytes(image_dir) + streamed,
                     manifest_sha256=digest, streamed_bytes=streamed,
                     lazy_address=lazy_address, lazy_port=port)


def same_path_mounts(container: list[_procfs.Mount], node: list[_procfs.Mount]
                     ) -> dict[str, str]:
    """{key: mount point} of the container's mounts that are the node's own mount at the same
    point (same filesystem, same root): made external by point, so the target binds its own
    mount there. CRIU's guess (MOUNT_ARGS) would name the source's backing directory instead
    (a bind's root), which is another node's on a testbed. Stacked points are left to the
    guess, and so is /, the restore's --root (pure)."""
    points = Counter(m.point for m in container)
    ours = {(m.point, m.dev, m.root) for m in node if m.fstype != "nsfs"}
    return {f"node{m.id}": m.point for m in container
            if m.point != "/" and points[m.point] == 1 and (m.point, m.dev, m.root) in ours}


def _saved(image_dir: str) -> dict[str, Any]:
    """container.json as written by `dump`."""
    try:
        with open(os.path.join(image_dir, images.CONTAINER_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return data
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{image_dir}: unreadable {images.CONTAINER_FILE}: {exc}") from None


def saved_container(image_dir: str) -> tuple[Container, str]:
    """The Container the dump was taken of, and its netns key (from container.json)."""
    data = _saved(image_dir)
    try:
        return Container.from_json(data["container"]), str(data["netns_key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{image_dir}: unreadable {images.CONTAINER_FILE}: {exc}") from None


def restore(image_dir: str, *, netns_path: str, key: str | None = None,
            timeout: float = RESTORE_TIMEOUT, lazy_from: tuple[str, int] | None = None) -> int:
    """Restore the dump in image_dir into the netns at netns_path (made beforehand, same
    address, still held on this node); return the restored init's pid. The tree runs
    detached (`-d`); the caller's child subreaper (the agent) becomes its parent.
    lazy_from: a post-copy dump's page server (address, port): a lazy-pages daemon fetches
    the memory from it (`lazy.wait_done` says when it has it all)."""
    saved = _saved(image_dir)
    if key is None:
        key = str(saved["netns_key"])
    if not os.path.exists(netns_path):
        raise CheckpointError(f"network namespace {netns_path} does not exist")
    pidfile = os.path.join(image_dir, "restored.pid")
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    criu = criu_binary()
    script = (f"exec 7<{shlex.quote(netns_path)} && exec {shlex.quote(criu)} restore "
              f"-D {shlex.quote(image_dir)} -o restore.log --tcp-established -d "
              f"--pidfile {shlex.quote(pidfile)} --inherit-fd fd[7]:{shlex.quote(key)}")
    if saved.get("mntns"):  # its mounts from this node's, at the same paths (MOUNT_ARGS)
        args = [*MOUNT_ARGS, "--root", "/"]
        for key, point in dict(saved.get("node_mounts") or {}).items():
            args += ["--external", f"mnt[{key}]:{point}"]
        script += " " + " ".join(shlex.quote(a) for a in args)
    if lazy_from is None:
        _run("criu restore", ["sh", "-c", script], image_dir, "restore.log", timeout)
    else:
        lazy.start_daemon(criu, image_dir, lazy_from)
        try:
            lazy.run_restore(["sh", "-c", script + " --lazy-pages"], image_dir, timeout)
        except HpcmigError:
            lazy.stop_daemon(image_dir)
            raise
    try:
        with open(pidfile, encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"criu restore succeeded but left no pid in {pidfile}: {exc}"
                              ) from None


def restore_container(image_dir: str, *, netns_path: str,
                      lazy_from: tuple[str, int] | None = None) -> Container:
    """`restore` plus the runtime's bookkeeping: the container's state directory (spec.json,
    where the restored init logs: the same path as on the source, it is in the init's argv)
    exists on this node first; returns the moved Container."""
    old, key = saved_container(image_dir)
    spec = ContainerSpec.from_json({**old.spec.to_json(), "netns": netns_path})
    spec_path = os.path.join(spec.state_dir, spec.name, "spec.json")
    if not os.path.exists(spec_path):
        write_spec(spec, spec_path)
    pid = restore(image_dir, netns_path=netns_path, key=key, lazy_from=lazy_from)
    return Container(name=old.name, runtime=old.runtime, init_pid=pid, netns=netns_path,
                     address=old.address, exec_port=old.exec_port, log_path=old.log_path,
                     spec=spec)


def resume(init_pid: int, timeout: float = 10.0) -> int:
    """Continue a tree a dump left stopped, exactly where it was (rollback): first take its
    TCP sockets out of the repair mode `--leave-stopped` leaves them in (see _sockets), then
    SIGCONT every process and wait until none is stopped. Returns the sockets repaired."""
    _own_pid_namespace(init_pid)
    repaired = _sockets.repair_off(_tree.members(init_pid))
    deadline = time.monotonic() + timeout
    while True:
        _tree.signal_all(init_pid, signal.SIGCONT)
        stopped = [p for p in _tree.members(init_pid) if _procfs.state(p) in ("T", "t")]
        if not stopped:
            return repaired
        if time.monotonic() > deadline:
            raise CheckpointError(f"processes {stopped} of container {init_pid} stay stopped")
        time.sleep(0.02)


def kill_stopped(init_pid: int, timeout: float = 30.0) -> None:
    """SIGKILL the container's init (the kernel kills its whole PID namespace), wait until
    no process of it is left. Idempotent."""
    if not _tree.live(init_pid):
        reap_child(init_pid)
        return
    _own_pid_namespace(init_pid)
    pids = _tree.members(init_pid)
    os.kill(init_pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_tree.live(p) for p in pids):
        if time.monotonic() > deadline:
            raise CheckpointError(f"container {init_pid}: {pids} survived SIGKILL")
        time.sleep(0.01)
    reap_child(init_pid)


def _own_pid_namespace(init_pid: int) -> None:
    """Refuse to treat a process that shares our PID namespace as a container's init (its
    "members" would be every process of the node)."""
    if _tree.ns_link(init_pid, "pid") == _tree.ns_link("self", "pid"):
        raise CheckpointError(f"pid {init_pid} is not the init of a container "
                              "(it shares this process's PID namespace)")


def kill_in_netns(netns_path: str, what: str, timeout: float = 30.0) -> None:
    """Kill the container copy living in netns_path and wait until none of it is left:
    its init (the whole PID namespace) and any tree without an init (a restore cut short).
    Idempotent."""
    pid = _tree.init_in_netns(netns_path, INIT_MODULE)
    if pid is not None:
        kill_stopped(pid)
    deadline = time.monotonic() + timeout
    while (left := _tree.in_netns(netns_path)) and time.monotonic() < deadline:
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.02)
    if _tree.in_netns(netns_path):
        raise CheckpointError(f"{what} survived SIGKILL")


def busy(image_dir: str) -> list[int]:
    """pids of CRIU processes working on image_dir (a dump, restore or page server)."""
    base = os.path.basename(criu_binary())
    found = []
    for pid in _tree.pids():
        argv = _procfs.argv(pid)
        if argv and os.path.basename(argv[0]) == base and image_dir in argv \
                and _tree.live(pid):
            found.append(pid)
    return found


def check() -> None:
    """Raise MissingDependency/HpcmigError unless `criu check` passes here."""
    try:
        _proc.run([criu_binary(), "check"], timeout=60)
    except CommandError as exc:
        raise HpcmigError(f"criu check fails on this kernel: {exc}",
                          hint="see docs/runtime.md, 'CRIU on this platform'") from None


@register("criu")
class CriuEngine(Engine):
    """Transparent checkpoint of a whole container with CRIU (root)."""

    required_tools = ("criu",)

    def check_available(self) -> None:
        if not os.path.exists(criu_binary()):
            super().check_available()

    def refuse_reasons(self, init_pid: int) -> list[str]:
        return refuse_reasons(init_pid)

    def dump(self, container: Container, image_dir: str, *, leave_stopped: bool = True,
             page_server: tuple[str, int] | None = None, netns_key: str | None = None
             ) -> DumpStats:
        self.check_available()
        return dump(container, image_dir, leave_stopped=leave_stopped,
                    page_server=page_server, netns_key=netns_key or DEFAULT_KEY)

    def restore(self, image_dir: str, *, netns_path: str, key: str | None = None) -> int:
        self.check_available()
        return restore(image_dir, netns_path=netns_path, key=key)

    def resume(self, init_pid: int) -> None:
        resume(init_pid)

    def kill_stopped(self, init_pid: int) -> None:
        kill_stopped(init_pid)
