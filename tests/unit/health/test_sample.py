"""Sampling a node from fixture /proc and /sys trees (and, for the mntns load, this machine)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig import _procfs
from hpcmig.errors import UsageError
from hpcmig.health.sample import CheckResult, Roots, Sample, take
from tests.unit.health.fake import Tree, healthy


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "node")


def test_every_source_read_from_the_fixture_tree(tree: Tree, tmp_path: Path) -> None:
    tree.meminfo(total_kb=16_000_000, available_kb=9_000_000, swap_total_kb=4000,
                 swap_free_kb=1000)
    tree.cpuinfo(6)
    tree.loadavg(3.25)
    tree.hwmon(0, "coretemp", {1: (67000, "Package id 0"), 2: (61500, None)})
    tree.hwmon(1, None, {1: (40000, None)})
    tree.thermal(0, "acpitz", 27800)
    tree.edac(0, ce=3, ue=0)
    tree.edac(1, ce=4, ue=1)
    tree.nic("lo", rx_errors=99)
    tree.nic("eth0", rx_errors=1, tx_errors=2, rx_dropped=3, tx_dropped=4, rx_bytes=1 << 40)
    tree.nic("ib0", rx_dropped=5)
    s = take("node7", roots=tree.roots, paths=[str(tmp_path)], now=1234.5)
    assert (s.node, s.time, s.cpus, s.load) == ("node7", 1234.5, 6, 3.25)
    assert (s.mem_total, s.mem_available, s.swap_used) == (16_000_000 * 1024,
                                                           9_000_000 * 1024, 3000 * 1024)
    assert s.temperatures == {"Package id 0": 67.0, "coretemp/temp2": 61.5,
                              "hwmon1/temp1": 40.0, "acpitz": 27.8}
    assert (s.edac_ce, s.edac_ue) == (7, 1)
    assert s.nic == {"eth0": 10, "ib0": 5}
    st = os.statvfs(tmp_path)
    assert s.free_total == {str(tmp_path): st.f_blocks * st.f_frsize}
    assert 0 < s.free[str(tmp_path)] <= s.free_total[str(tmp_path)]
    assert s.checks == () and s.errors == ()


def test_missing_sources_are_absent_not_errors(tree: Tree) -> None:
    s = take("n", roots=tree.roots, now=1.0)
    assert (s.mem_total, s.mem_available, s.swap_used, s.load) == (0, 0, 0, 0.0)
    assert s.cpus == (os.cpu_count() or 1)
    assert (s.edac_ce, s.edac_ue) == (None, None)  # no EDAC on this node
    assert s.temperatures == {} and s.nic == {} and s.free == {}
    assert s.errors == ()


def test_unreadable_sources_are_listed_one_line_each(tree: Tree, tmp_path: Path) -> None:
    (tree.proc / "meminfo").mkdir()  # exists, cannot be read as a file (root reads any mode)
    tree.write(tree.proc / "loadavg", "garbage")
    tree.hwmon(0, "coretemp", {1: (50000, "Core 0")})
    (tree.sys / "class/hwmon/hwmon0/temp2_input").mkdir()
    tree.edac(0, ce=1, ue=0)
    tree.edac(1, ce="n/a", ue=0)
    tree.nic("eth0", rx_errors=1)
    tree.nic("eth1", rx_errors=1)
    tree.write(tree.sys / "class/net/eth1/statistics/tx_dropped", "x")
    s = take("n", roots=tree.roots, paths=[str(tmp_path / "gone")], now=1.0)
    assert s.edac_ce is None and s.edac_ue == 0  # a partial sum would look like a reset
    assert s.temperatures == {"Core 0": 50.0}
    assert s.nic == {"eth0": 1}
    assert s.free == {}
    assert [e.split(":")[0] for e in s.errors] == ["meminfo", "load", "free", "edac",
                                                   "temperature", "nic"]
    assert all("\n" not in e for e in s.errors)
    assert f"free: {tmp_path / 'gone'}: No such file or directory" in s.errors
    assert any("temp2_input: Is a directory" in e for e in s.errors)


def test_duplicate_sensor_labels_stay_apart(tree: Tree) -> None:
    tree.hwmon(0, "nvme", {1: (40000, "Composite")})
    tree.hwmon(1, "nvme", {1: (45000, "Composite")})
    tree.thermal(0, "x86_pkg_temp", 55000)
    tree.thermal(1, "x86_pkg_temp", 56000)
    s = take("n", roots=tree.roots, now=1.0)
    assert s.temperatures == {"Composite": 40.0, "hwmon1/Composite": 45.0,
                              "x86_pkg_temp": 55.0, "thermal_zone1/x86_pkg_temp": 56.0}


def test_load_from_a_fixture_mount_namespace(tree: Tree, tmp_path: Path) -> None:
    ours = tree.write(tmp_path / "mnt-ns-of-node", "")
    other = tree.write(tmp_path / "mnt-ns-of-another-node", "")
    tree.loadavg(42.0)  # the machine's: says nothing about one node
    tree.process(100, "R", ours)
    tree.process(101, "R", ours, comm="a) b (R")  # parsed after the last ')'
    tree.process(102, "S", ours)
    tree.process(103, "R", other)
    tree.process(os.getpid(), "R", ours)  # the sampler itself does not count
    (tree.proc / "self").mkdir()
    s = take("n", roots=tree.roots, load_source="mntns", mntns_inode=ours.stat().st_ino,
             now=1.0)
    assert s.load == 2.0 and s.errors == ()
    s = take("n", roots=tree.roots, load_source="mntns", mntns_inode=other.stat().st_ino,
             now=1.0)
    assert s.load == 1.0


@pytest.fixture
def busy() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        _wait_state(child.pid, "R")
        yield child.pid
    finally:
        child.kill()
        child.wait()


def test_load_from_this_machines_mount_namespace(busy: int) -> None:
    """A busy-looping child in our mount namespace is on the run queue; a namespace nobody
    is in has an empty one."""
    ours = os.stat("/proc/self/ns/mnt").st_ino
    os.kill(busy, 0)
    assert take("n", load_source="mntns", now=1.0).load >= 1.0  # default: our own namespace
    assert take("n", load_source="mntns", mntns_inode=ours, now=1.0).load >= 1.0
    nobody = os.stat(__file__).st_ino
    assert take("n", load_source="mntns", mntns_inode=nobody, now=1.0).load == 0.0


def _wait_state(pid: int, want: str) -> None:
    deadline = time.monotonic() + 10
    while _procfs.state(pid) != want:
        assert time.monotonic() < deadline, f"{pid} never reached state {want}"
        time.sleep(0.01)


def test_the_run_queue_of_a_namespace_of_its_own() -> None:
    """A busy process alone in a new mount namespace: exactly 1 while it runs, 0 stopped."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run([unshare, "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")
    child = subprocess.Popen([unshare, "--mount", sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while _procfs.argv(child.pid)[:1] != [sys.executable]:  # unshare not exec'd yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _wait_state(child.pid, "R")
        inode = os.stat(f"/proc/{child.pid}/ns/mnt").st_ino
        assert inode != os.stat("/proc/self/ns/mnt").st_ino
        assert take("n", load_source="mntns", mntns_inode=inode, now=1.0).load == 1.0
        os.kill(child.pid, signal.SIGSTOP)
        _wait_state(child.pid, "T")
        assert take("n", load_source="mntns", mntns_inode=inode, now=1.0).load == 0.0
    finally:
        child.kill()
        child.wait()


def test_bad_load_source_is_a_usage_error(tree: Tree) -> None:
    with pytest.raises(UsageError, match="loadavg, mntns"):
        take("n", roots=tree.roots, load_source="psi")


def test_check_scripts_are_part_of_the_sample(tree: Tree, tmp_path: Path) -> None:
    checks = tmp_path / "checks.d"
    checks.mkdir()
    script = checks / "20-fail"
    script.write_text("#!/bin/sh\necho 'gpfs: not mounted'\nexit 1\n")
    script.chmod(0o755)
    s = take("n", roots=tree.roots, check_dir=str(checks), now=1.0)
    assert s.checks == (CheckResult("20-fail", False, "gpfs: not mounted"),)


def test_json_round_trip() -> None:
    s = healthy(edac_ce=None, edac_ue=None, errors=("edac: x: y",),
                checks=(CheckResult("a", True, ""), CheckResult("b", False, "bad")))
    import json

    wire = json.loads(json.dumps(s.to_json()))
    assert Sample.from_json(wire) == s
    assert Sample.from_json(healthy().to_json()) == healthy()


@pytest.mark.parametrize("change, match", [
    ({"cpus": "4"}, "cpus must be an integer"),
    ({"edac_ce": 1.5}, "edac_ce must be an integer"),
    ({"temperatures": {"x": "hot"}}, "temperatures must be an object"),
    ({"checks": [{"name": "a", "ok": 1, "reason": ""}]}, "checks\\[\\]ok must be true"),
    ({"time": True}, "time must be a number"),
])
def test_a_malformed_sample_is_one_clear_error(change: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        Sample.from_json({**healthy().to_json(), **change})
    data = healthy().to_json()
    del data["nic"]
    with pytest.raises(UsageError, match="nic missing"):
        Sample.from_json(data)


def test_roots_default_to_the_real_ones() -> None:
    assert Roots() == Roots("/proc", "/sys")
