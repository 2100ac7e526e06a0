"""Which stray processes `testbed down` may end: the ones naming the testbed's tree that see
our root, never a process of another root filesystem (a Debian 13 run in a chroot) whose
command line names the same path of its own tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig.testbed import daemons

MARK = f"/run/hpcmig-testbed-unit-marker-{os.getpid()}"


def _start(argv: list[str], executable: str | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, executable=executable)
    for _ in range(200):  # until it has exec'd sleep: argv[0] is the marker's (`chroot
        # /x MARK/sleep` names it before it has changed its root: too early to look)
        if (daemons.cmdline(proc.pid) or "").startswith(f"{MARK}/sleep"):
            return proc
        subprocess.run(["sleep", "0.01"], check=True)
    proc.kill()
    raise AssertionError(f"{argv} did not start")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _chroot_with_sleep(root: Path, sleep: str) -> None:
    """A root filesystem holding only `sleep` (at MARK/sleep) and the libraries it loads."""
    out = subprocess.run(["ldd", sleep], capture_output=True, text=True, check=True).stdout
    libs = [w for w in out.split() if w.startswith("/")]
    for path in [sleep, *libs]:
        dest = root / (path if path != sleep else f"{MARK}/sleep").lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), dest)


def test_a_process_naming_the_tree_is_found_unless_it_lives_in_another_root(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    sleep = shutil.which("sleep")
    assert sleep
    ours = _start([f"{MARK}/sleep", "60"], executable=sleep)
    procs.append(ours)
    _chroot_with_sleep(tmp_path, sleep)
    theirs = _start(["chroot", str(tmp_path), f"{MARK}/sleep", "60"])
    procs.append(theirs)

    found = daemons.pids_matching(MARK)
    assert ours.pid in found
    assert theirs.pid not in found
