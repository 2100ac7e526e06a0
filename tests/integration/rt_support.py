"""Throwaway nodes, users and a private munged for the runtime/network integration tests.

Two "nodes" are network namespaces `hpcmig-rt-n1`/`-n2` joined by a veth pair
(10.253.0.1/24 <-> 10.253.0.2/24, no route out). Everything made here is named `hpcmig-rt*`
and removed by the context managers, even when a test fails; `sweep()` removes leftovers of a
crashed earlier run first.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from hpcmig import _proc

NODES = {"hpcmig-rt-n1": "10.253.0.1", "hpcmig-rt-n2": "10.253.0.2"}
LINKS = ("hpcmig-rtv1", "hpcmig-rtv2")
USERS = ("hpcmigrt-a", "hpcmigrt-b")
TOOLS = ("ip", "nsenter", "nft", "munged", "setpriv", "useradd", "userdel", "ping", "timeout")
VENV_BIN = os.path.dirname(sys.executable)


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, setuid)"
    gone = [t for t in TOOLS if shutil.which(t) is None]
    if gone:
        return f"missing programs: {', '.join(gone)}"
    return None


def sh(*argv: str, check: bool = True, timeout: float = 30.0,
       input: str | None = None) -> _proc.Result:
    return _proc.run(list(argv), check=check, timeout=timeout, input=input)


def in_ns(netns: str, *argv: str, check: bool = True, timeout: float = 30.0,
          input: str | None = None) -> _proc.Result:
    return sh("nsenter", f"--net=/run/netns/{netns}", *argv, check=check, timeout=timeout,
              input=input)


def netns_list() -> list[str]:
    out = sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep() -> None:
    """Remove leftovers of an earlier crashed run: netns, links, users."""
    for ns in netns_list():
        if ns.startswith(("hpcmig-rt", "hpcmig-10.252.", "hpcmig-rtc")):
            sh("ip", "netns", "del", ns, check=False)
    for link in LINKS:
        sh("ip", "link", "del", link, check=False)
    for user in USERS:
        sh("userdel", user, check=False)


@contextlib.contextmanager
def nodes() -> Iterator[dict[str, str]]:
    sweep()
    try:
        for ns in NODES:
            sh("ip", "netns", "add", ns)
        n1, n2 = NODES
        sh("ip", "link", "add", LINKS[0], "netns", n1, "type", "veth", "peer", "name", LINKS[1],
           "netns", n2)
        for ns, link in zip(NODES, LINKS, strict=True):
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "link", "set", link, "name", "eth0")
            in_ns(ns, "ip", "addr", "add", f"{NODES[ns]}/24", "dev", "eth0")
            in_ns(ns, "ip", "link", "set", "eth0", "up")
        yield dict(NODES)
    finally:
        for ns in NODES:
            sh("ip", "netns", "del", ns, check=False)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@contextlib.contextmanager
def users() -> Iterator[list[User]]:
    made: list[str] = []
    try:
        for name in USERS:
            sh("userdel", name, check=False)
            sh("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/bin/sh",
               "--home-dir", "/nonexistent", name)
            made.append(name)
        yield [User(n, pwd.getpwnam(n).pw_uid, pwd.getpwnam(n).pw_gid) for n in made]
    finally:
        for name in made:
            sh("userdel", name, check=False)


@contextlib.contextmanager
def munged() -> Iterator[str]:
    """A private munged (own key); yields its socket path; killed by pid afterwards."""
    top = tempfile.mkdtemp(prefix="hpcmig-rt-munge.")
    key_dir, run_dir = os.path.join(top, "key"), os.path.join(top, "run")
    os.chmod(top, 0o755)
    os.mkdir(key_dir, 0o700)
    os.mkdir(run_dir, 0o755)
    key = os.path.join(key_dir, "munge.key")
    with open(key, "wb") as fh:
        fh.write(os.urandom(1024))
    os.chmod(key, 0o400)
    for path in (key_dir, key, run_dir):
        shutil.chown(path, "munge", "munge")
    sock = os.path.join(run_dir, "munge.socket")
    pid = _proc.spawn(
        ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged", "-F",
         f"--socket={sock}", f"--key-file={key}", f"--pid-file={run_dir}/munged.pid",
         f"--log-file={run_dir}/munged.log", f"--seed-file={run_dir}/munged.seed"],
        log_path=os.path.join(top, "munged.out"),
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.exists(sock):
            raise RuntimeError(f"private munged did not start: see {top}/munged.out")
        yield sock
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        shutil.rmtree(top, ignore_errors=True)


def rsh(netns: str, *args: str, as_user: User | None = None, munge_socket: str,
        check: bool = False, timeout: float = 30.0, input: str | None = None,
        env_extra: dict[str, str] | None = None) -> _proc.Result:
    """Run hpcmig-rsh from a node's network namespace (as root, or as `as_user`)."""
    prefix = ["nsenter", f"--net=/run/netns/{netns}"]
    if as_user is not None:
        prefix += ["setpriv", f"--reuid={as_user.uid}", f"--regid={as_user.gid}",
                   "--clear-groups"]
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
           "HPCMIG_MUNGE_SOCKET": munge_socket, **(env_extra or {})}
    return _proc.run([*prefix, sys.executable, "-m", "hpcmig.runtime.rsh", *args],
                     check=check, timeout=timeout, input=input, env=env)


def mpich_env(tools: str | None = None) -> str:
    """`K=V ...` of what `hpcmig run` gives MPICH ranks (hpcmig.mpi: UCX over eth0, the
    libmpi shim, the UCX finalize preload); `tools`: where an image container sees the
    preload's copy (hpcmig.runtime.image.TOOLS)."""
    from hpcmig.mpi import flavour

    env = flavour("mpich").environment("eth0")
    if tools is not None:
        env["LD_PRELOAD"] = f"{tools}/lib/{os.path.basename(env['LD_PRELOAD'])}"
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))


def processes_in_pidns(inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == inode:
                    pids.append(int(entry))
    return pids


def wait_for(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.05)
    return bool(callable(cond) and cond())


def links_in(netns: str) -> str:
    return in_ns(netns, "ip", "-br", "link").stdout




# -- per-node mount namespaces (image containers: their mounts must stay on their node) ----

@contextlib.contextmanager
def node_mounts(state_dir: str) -> Iterator[dict[str, int]]:
    """A mount namespace per node, each held by a `sleep` (slave propagation: netns files
    made later still show up; nothing mounted inside leaks out), with a private tmpfs on
    `state_dir`, so the same state path holds different containers on each node, as on two
    machines. Yields {node: holder pid}; enter with `in_node`."""
    os.makedirs(state_dir, exist_ok=True)
    holders: dict[str, int] = {}
    log = os.path.join(tempfile.gettempdir(), "hpcmig-rt-holders.log")
    try:
        for node in NODES:
            pid = _proc.spawn(["unshare", "--mount", "--propagation", "slave", "sleep", "1d"],
                              log_path=log)
            holders[node] = pid
            if not wait_for(lambda p=pid: os.readlink(f"/proc/{p}/ns/mnt")  # type: ignore
                            != os.readlink("/proc/self/ns/mnt"), 5):
                raise RuntimeError("mount namespace holder did not start")
            in_node(pid, "mount", "-t", "tmpfs", "-o", "mode=0755", "hpcmig-rt-state",
                    state_dir)
        yield holders
    finally:
        for pid in holders.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            os.rmdir(state_dir)


def in_node(holder: int, *argv: str, netns: str | None = None, check: bool = True,
            timeout: float = 60.0, input: str | None = None,
            env: dict[str, str] | None = None) -> _proc.Result:
    """Run argv in a node's mount namespace (and network namespace `netns`, a name)."""
    prefix = ["nsenter", "-t", str(holder), "-m"]
    if netns:
        prefix.append(f"--net=/run/netns/{netns}")
    return _proc.run([*prefix, "--", *argv], check=check, timeout=timeout, input=input,
                     env=env)


def node_mountpoints(holder: int, under: str) -> list[str]:
    with open(f"/proc/{holder}/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == under or p.startswith(under.rstrip("/") + "/")]


# -- three nodes on a bridge (checkpoint/migration tests: source, target and a peer) -------
BRIDGED = {"hpcmig-rt-b1": "10.253.1.1", "hpcmig-rt-b2": "10.253.1.2",
           "hpcmig-rt-b3": "10.253.1.3"}
BRIDGE = "hpcmig-rtbr0"


def _sweep_bridged() -> None:
    for i, ns in enumerate(BRIDGED, start=1):
        sh("ip", "netns", "del", ns, check=False)
        # the host end goes with the netns, but not at once (netns cleanup is deferred)
        sh("ip", "link", "del", f"hpcmig-rtb{i}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


@contextlib.contextmanager
def bridged_nodes() -> Iterator[dict[str, str]]:
    """Three node namespaces (10.253.1.1-3/24) on a bridge in the root namespace that has no
    address (nothing is routed out). Removed afterwards, leftovers of a crashed run first."""
    _sweep_bridged()
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "link", "set", BRIDGE, "up")
        for i, (ns, addr) in enumerate(BRIDGED.items(), start=1):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"hpcmig-rtb{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            sh("ip", "link", "set", f"hpcmig-rtb{i}", "master", BRIDGE, "up")
            in_ns(ns, "ip", "link", "set", "lo", "up")
            in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            in_ns(ns, "ip", "link", "set", "eth0", "up")
        yield dict(BRIDGED)
    finally:
        _sweep_bridged()


def criu_problem(criu: str = "criu") -> str | None:
    """Why CRIU cannot checkpoint job containers here (None: it can): `criu check`, then a
    dump of a non-root process holding a TCP socket (the two breaks docs/runtime.md
    describes: CRIU < 4.2 on Linux >= 6.16, and root without CAP_SYS_RESOURCE)."""
    if shutil.which(criu) is None and not os.path.exists(criu):
        return f"{criu} is not installed"
    if sh(criu, "check", check=False, timeout=60).returncode != 0:
        return f"{criu} check fails on this kernel"
    work = tempfile.mkdtemp(prefix="hpcmig-rt-criuprobe-")
    pid = _proc.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       sys.executable, "-c", "import socket,time\n"
                       "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
                       "time.sleep(60)"], log_path=os.path.join(work, "out"))
    try:
        time.sleep(0.3)
        r = sh(criu, "dump", "-t", str(pid), "-D", work, "-o", "probe.log", "--leave-running",
               "--shell-job", check=False, timeout=60)
        if r.returncode == 0:
            return None
        with open(os.path.join(work, "probe.log")) as fh:
            log = fh.read()
        if "Can't get 1:16 opt" in log:
            return f"{criu} cannot dump INET sockets on this kernel (needs CRIU >= 4.2)"
        if "Can't get rlimit" in log:
            return f"{criu} cannot read rlimits of non-root tasks (root lacks CAP_SYS_RESOURCE)"
        return None
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(work, ignore_errors=True)


def holder_processes(marker: str = "hpcmig.workloads.holder serve") -> list[int]:
    """Live `holder serve` processes anywhere on this machine (exactly-once checks)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state not in ("Z", "X"):
            found.append(int(entry))
    return found
