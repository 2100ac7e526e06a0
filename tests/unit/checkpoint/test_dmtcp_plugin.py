"""hpcmig's DMTCP plugin (native/dmtcp_multihost.c) without DMTCP: its C check against a
stand-in for DMTCP, and the only symbols it exports (the ones it interposes). On the testbed,
tests/integration/test_dmtcp_job.py checks that every rank of a DMTCP job across two
containers loads it, and that the job restarts and checkpoints again after a node crash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[3] / "native"
KVDB_SET = ("_ZN5dmtcp4kvdb3setERKNSt7__cxx1112basic_stringIcSt11char_traitsIcENS_"
            "10DmtcpAllocIcEEEES9_S9_PS7_")

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("cc", "make", "nm")), reason="needs cc, make and nm")


def test_the_plugins_five_fixes_against_a_stand_in_for_dmtcp(
        tmp_path: Path) -> None:
    done = subprocess.run(["make", "-s", "-C", str(NATIVE), f"BUILD={tmp_path}", "check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    nm = subprocess.run(["nm", "-D", "--defined-only", str(tmp_path / "libhpcmig-dmtcp.so")],
                        capture_output=True, text=True, check=True).stdout
    assert {line.split()[-1] for line in nm.splitlines() if line.strip()} == \
        {"dmtcp_local_barrier", KVDB_SET, "fork", "dup2", "execvp", "dmtcp_initialize_plugin",
         "exit"}
