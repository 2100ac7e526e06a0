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


