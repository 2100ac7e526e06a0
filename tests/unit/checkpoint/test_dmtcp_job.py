"""engine=dmtcp's job side without DMTCP: the restart script's hosts, the container of a host
name, each container's dmtcp_restart command and its output, the newest generation of a job
directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hpcmig.checkpoint import dmtcp, dmtcp_job
from hpcmig.checkpoint.base import CheckpointError

SCRIPT = """#!/bin/bash
# Number of hosts in the computation = 2
# Number of processes in the computation = 3
worker_ckpts='
 :: hpcmig-7-0-0 :bg: /j/step-0/current/ckpt_mpiexec_a.dmtcp /j/step-0/current/ckpt_ssh_b.dmtcp
 :: hpcmig-7-0-1 :bg: /j/step-0/current/ckpt_proxy_c.dmtcp
'
"""


def generation(step: Path, number: int, created: float, hosts: dict[str, list[str]]) -> None:
    gen = step / f"gen-{number}"
    gen.mkdir(parents=True)
    (gen / dmtcp.RESTART_SCRIPT).write_text(SCRIPT)
    names = [n for images in hosts.values() for n in images]
    for name in names:
        (gen / name).write_bytes(b"x" * 4)
    (gen / dmtcp.MANIFEST).write_text(json.dumps(
        {"number": number, "images": {n: 4 for n in names}, "hosts": hosts,
         "image_bytes": 12, "seconds": 1.0, "created": created}))


def test_the_restart_script_names_each_hosts_images() -> None:
    assert dmtcp.parse_worker_hosts(SCRIPT) == {
        "hpcmig-7-0-0": ["ckpt_mpiexec_a.dmtcp", "ckpt_ssh_b.dmtcp"],
        "hpcmig-7-0-1": ["ckpt_proxy_c.dmtcp"]}
    assert dmtcp.parse_worker_hosts("# Number of hosts in the computation = 1\n") == {}


def test_a_host_name_is_a_container_index() -> None:
    assert dmtcp_job.container_index("hpcmig-7-0-12") == 12
    assert dmtcp_job.container_index("hpcmig-7-3-1.cluster") == 1
    with pytest.raises(CheckpointError):
        dmtcp_job.container_index("node1")


def test_each_container_restarts_its_own_images(tmp_path: Path) -> None:
    step = tmp_path / "step-0"
    hosts = dmtcp.parse_worker_hosts(SCRIPT)
    generation(step, 1, 100.0, hosts)
    tools = dmtcp.DmtcpTools("/d/launch", "/d/command", "/d/restart", "/d/coordinator")
    coord = dmtcp.Coordinator(tools, str(step), "10.252.0.1", 7779, 1, 1)
    gen, plan = dmtcp_job.restart_plan(tools, str(step), coord, root=0)
    assert gen.number == 1
    assert sorted(plan) == [0, 1]
    assert plan[1][2] == "/d/restart" and "--join-coordinator" in plan[1]
    assert [Path(p).name for p in plan[0] if p.endswith(".dmtcp")] == hosts["hpcmig-7-0-0"]
    assert [Path(p).name for p in plan[1] if p.endswith(".dmtcp")] == hosts["hpcmig-7-0-1"]
    assert (step / dmtcp.CURRENT).resolve() == (step / "gen-1").resolve()


def test_the_newest_generation_of_any_step(tmp_path: Path) -> None:
    assert dmtcp_job.newest(str(tmp_path / "none")) is None
    hosts = {"hpcmig-7-0-0": ["ckpt_a.dmtcp"]}
    generation(tmp_path / "step-0", 4, 100.0, hosts)
    generation(tmp_path / "step-1", 1, 200.0, hosts)
    newest = dmtcp_job.newest(str(tmp_path))
    assert newest is not None and (newest.number, newest.created) == (1, 200.0)
    assert newest.hosts == {"hpcmig-7-0-0": (str(tmp_path / "step-1" / "gen-1" / "ckpt_a.dmtcp"),)}


def test_links_and_fifos_in_a_users_directory_are_not_followed(tmp_path: Path) -> None:
    """hpcmigd reads the job's directory as root: a planted link or FIFO counts for nothing
    (and never blocks the reader)."""
    hosts = {"hpcmig-7-0-0": ["ckpt_a.dmtcp"]}
    generation(tmp_path / "elsewhere", 9, 900.0, hosts)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "step-0").symlink_to(tmp_path / "elsewhere")
    step = tmp_path / "job" / "step-1"
    generation(step, 2, 100.0, hosts)
    (step / "gen-3").mkdir()
    os.mkfifo(step / "gen-3" / dmtcp.MANIFEST)
    (step / "gen-4").symlink_to(tmp_path / "elsewhere" / "gen-9")
    newest = dmtcp_job.newest(str(tmp_path / "job"))
    assert newest is not None and newest.number == 2


def test_a_restart_writes_through_a_pipe_and_keeps_its_exit_code(tmp_path: Path) -> None:
    """Restored processes get a pipe, not the job's output file (DMTCP reopens a file at a
    stale offset and overwrote the job's output); what they write still reaches the file."""
    out = tmp_path / "job.out"
    out.write_text("before\n")
    with open(out, "a", encoding="utf-8") as fh:
        done = subprocess.run([*dmtcp_job.THROUGH_PIPE, "sh", "-c",
                               'readlink /proc/self/fd/2; echo restored >&2; exit 7'],
                              stdout=fh, stderr=fh, timeout=30)
    assert done.returncode == 7
    lines = out.read_text().splitlines()
    assert lines[0] == "before" and lines[1].startswith("pipe:") and lines[2] == "restored"
