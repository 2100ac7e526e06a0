"""The DMTCP job driver without DMTCP: finding the tools, command lines, status and restart
script parsing, and generations (published atomically, two kept, a crash mid-checkpoint
leaves the previous one) against a fake dmtcp_command. Real DMTCP: test_dmtcp_restart.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig import _proc, config
from hpcmig.checkpoint import CheckpointError, _session, dmtcp, get_engine
from hpcmig.errors import MissingDependency, UsageError

SCRIPT = """#!/bin/bash
# Number of hosts in the computation = 1
# Number of processes in the computation = 3

given_ckpt_files=" /ck/current/ckpt_orterun_98ff-40000-855f06409b9.dmtcp \
/ck/current/ckpt_ring.openmpi_98ff-42000-8566efd9c52.dmtcp \
/ck/current/ckpt_ring.openmpi_98ff-41000-856330d5e64.dmtcp"

ckpt_files=""
if [ ! -z "$DMTCP_RESTART_DIR" ]; then
  for tmp in $given_ckpt_files; do
"""

# A dmtcp_command: --status answers from $FAKE_PEERS (or the file $FAKE_PEERS_FILE);
# --bcheckpoint writes two images and a restart script into $FAKE_CKPTDIR, naming the hosts
# of $FAKE_HOSTS (FAKE_MODE=crash: half an image, then the coordinator $FAKE_COORD_PID dies;
# FAKE_MODE=hang: half an image, nothing more).
FAKE_COMMAND = r"""#!/bin/sh
for a in "$@"; do last="$a"; done
case "$last" in
--status) p="${FAKE_PEERS:-2}"; [ -n "$FAKE_PEERS_FILE" ] && p=$(cat "$FAKE_PEERS_FILE")
  printf 'Status...\n  NUM_PEERS=%s\n  RUNNING=yes\n' "$p";;
--bcheckpoint)
  d="$FAKE_CKPTDIR"
  head -c 1000 /dev/zero > "$d/ckpt_a_1.dmtcp.temp"
  case "$FAKE_MODE" in
  crash) kill -9 "$FAKE_COORD_PID"; exit 0;;
  hang) exit 0;;
  esac
  mv "$d/ckpt_a_1.dmtcp.temp" "$d/ckpt_a_1.dmtcp"
  head -c 2000 /dev/zero > "$d/ckpt_b_2.dmtcp"
  mkdir "$d/ckpt_a_1_files"; echo x > "$d/ckpt_a_1_files/fd-info.txt"
  s="$d/dmtcp_restart_script_c.sh"
  echo '# Number of processes in the computation = 2' > "$s"
  echo "given_ckpt_files=\" $d/ckpt_a_1.dmtcp $d/ckpt_b_2.dmtcp\"" >> "$s"
  if [ -n "$FAKE_HOSTS" ]; then  # image a on the first host, b on the second (if any)
    set -- $FAKE_HOSTS; printf "worker_ckpts='\n :: %s :bg: $d/ckpt_a_1.dmtcp\n" "$1" >> "$s"
    [ -n "$2" ] && printf " :: %s :bg: $d/ckpt_b_2.dmtcp\n" "$2" >> "$s"; echo "'" >> "$s"
  fi
  ln -s dmtcp_restart_script_c.sh "$d/dmtcp_restart_script.sh";;
esac
"""


def fake_tools(root: Path) -> dmtcp.DmtcpTools:
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name in dmtcp.TOOLS.values():
        path = bin_dir / name
        path.write_text(FAKE_COMMAND if name == "dmtcp_command" else "#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return dmtcp.find_dmtcp(str(root))


@pytest.fixture
def coordinator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dmtcp.Coordinator]:
    """A coordinator record over the fake tools; its 'process' is a sleep we started."""
    tools = fake_tools(tmp_path / "dmtcp")
    ckpt = tmp_path / "job"
    dmtcp._prepare(str(ckpt))
    pid = _proc.spawn(["sleep", "60"], log_path=str(tmp_path / "sleep.log"))
    started = dmtcp._start_ticks(pid)
    assert started is not None
    coord = dmtcp.Coordinator(tools, str(ckpt), "127.0.0.1", 7779, pid, started)
    monkeypatch.setenv("FAKE_CKPTDIR", coord.current)
    monkeypatch.setenv("FAKE_COORD_PID", str(pid))
    yield coord
    if coord.alive():
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def test_find_dmtcp_at_a_prefix_or_on_path(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    tools = fake_tools(tmp_path / "d")
    assert tools.launch == str(tmp_path / "d" / "bin" / "dmtcp_launch")
    monkeypatch.setenv("PATH", str(tmp_path / "d" / "bin"))
    assert dmtcp.find_dmtcp() == tools
    (tmp_path / "d" / "bin" / "dmtcp_restart").unlink()
    for prefix in ("", str(tmp_path / "d"), str(tmp_path / "nowhere")):
        with pytest.raises(MissingDependency) as info:
            dmtcp.find_dmtcp(prefix)
        assert str(info.value) == ("DMTCP not found on PATH or at dmtcp_prefix; install it "
                                   "from your site or Spack (spack install dmtcp)")


def test_config_dmtcp_prefix() -> None:
    assert config.Config().dmtcp_prefix == ""
    assert config.parse('dmtcp_prefix = "/opt/dmtcp"').dmtcp_prefix == "/opt/dmtcp"
    with pytest.raises(UsageError, match="dmtcp_prefix"):
        config.parse('dmtcp_prefix = "opt/dmtcp"')
    cfg = config.Config(dmtcp_prefix="/opt/dmtcp")
    assert config.parse(config.render(cfg)) == cfg


def test_engine_registers_and_refuses_containers_with_what_to_do() -> None:
    engine = get_engine("dmtcp")
    assert engine.name == "dmtcp"
    for call in (lambda: engine.refuse_reasons(1), lambda: engine.resume(1),
                 lambda: engine.kill_stopped(1),
                 lambda: engine.restore("/x", netns_path="/proc/1/ns/net")):
        with pytest.raises(UsageError, match="whole jobs launched under it") as info:
            call()
        assert "criu" in str(info.value)


def test_status_and_restart_script_parsing() -> None:
    status = dmtcp.parse_status("Coordinator:\n  Host: 127.0.0.1\nStatus...\n  NUM_PEERS=4\n"
                                "  RUNNING=no\n  CKPT_INTERVAL=0\n")
    assert status == dmtcp.Status(peers=4, running=False)
    with pytest.raises(CheckpointError, match="unexpected"):
        dmtcp.parse_status("Coordinator not found. Please check port and host.")
    names, count = dmtcp.parse_restart_script(SCRIPT)
    assert count == 3
    assert names == ["ckpt_orterun_98ff-40000-855f06409b9.dmtcp",
                     "ckpt_ring.openmpi_98ff-42000-8566efd9c52.dmtcp",
                     "ckpt_ring.openmpi_98ff-41000-856330d5e64.dmtcp"]
    multi = "worker_ckpts='\n :: node1 :bg: /ck/current/ckpt_a_1.dmtcp\n :: node2 :bg: " \
            "/ck/current/ckpt_b_2.dmtcp\n'\n"
    assert dmtcp.parse_restart_script(multi) == (["ckpt_a_1.dmtcp", "ckpt_b_2.dmtcp"], None)


def test_launch_argv_wraps_the_launcher_and_sets_what_each_mpi_needs(
        coordinator: dmtcp.Coordinator) -> None:
    env = {"PATH": "/usr/bin", "UCX_TLS": "all"}
    argv, out = dmtcp.launch_argv(coordinator, ["mpiexec.mpich", "-n", "2", "./ring"], env,
                                  "mpich")
    assert argv == [coordinator.tools.launch,
                    "--join-coordinator", "--coord-host",
                    "127.0.0.1", "--coord-port", "7779", "--ckptdir", coordinator.current,
                    "--tmpdir", os.path.join(coordinator.ckpt_dir, "tmp"), "--no-gzip",
                    "--quiet", "mpiexec.mpich", "-n", "2", "./ring"]
    assert out == {"PATH": "/usr/bin", "UCX_TLS": "tcp,self", "UCX_MEM_MMAP_HOOK_MODE": "none",
                   "HWLOC_COMPONENTS": "-linuxio"}
    assert env == {"PATH": "/usr/bin", "UCX_TLS": "all"}  # the caller's copy is untouched
    argv, out = dmtcp.launch_argv(coordinator, ["mpiexec.openmpi", "./ring"], {}, "openmpi",
                                  gzip=True)
    assert "--gzip" in argv
    assert out["OMPI_MCA_pml"] == "ob1" and out["OMPI_MCA_btl"] == "self,tcp"
    assert out["OMPI_MCA_orte_tmpdir_base"] == os.path.join(coordinator.ckpt_dir, "session")
    # the orteds stay under DMTCP's ssh pair (no --daemonize), and a job on more hosts than
    # Open MPI starts daemons at once is not refused for it
    assert out["OMPI_MCA_orte_leave_session_attached"] == "1"
    assert "OMPI_MCA_plm_rsh_num_concurrent" not in out
    out = dmtcp.launch_argv(coordinator, ["mpiexec.openmpi", "./ring"], {}, "openmpi",
                            hosts=dmtcp.OMPI_CONCURRENT + 1)[1]
    assert out["OMPI_MCA_plm_rsh_num_concurrent"] == str(dmtcp.OMPI_CONCURRENT + 1)
    assert dmtcp.launch_argv(coordinator, ["./serial"], {"A": "1"})[1] == {"A": "1"}
    with pytest.raises(UsageError, match="unknown MPI"):
        dmtcp.launch_argv(coordinator, ["x"], {}, "mvapich")
    with pytest.raises(UsageError):
        dmtcp.launch_argv(coordinator, [], {})


def test_coordinator_record_round_trips_through_json(coordinator: dmtcp.Coordinator) -> None:
    again = dmtcp.Coordinator.from_json(json.loads(json.dumps(coordinator.to_json())))
    assert again == coordinator and again.alive()
    coordinator.stop()
    assert not coordinator.alive() and not again.alive()
    coordinator.stop()  # nothing to do


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_checkpoints_are_published_as_generations_and_two_are_kept(
        coordinator: dmtcp.Coordinator) -> None:
    ckpt = coordinator.ckpt_dir
    gens = [dmtcp.checkpoint(coordinator, timeout=10) for _ in range(3)]
    assert [g.number for g in gens] == [1, 2, 3]
    assert [g.number for g in dmtcp.generations(ckpt)] == [2, 3]
    assert not os.path.exists(os.path.join(ckpt, "gen-1"))
    last = gens[-1]
    assert os.readlink(os.path.join(ckpt, "current")) == "gen-3"
    assert [os.path.basename(p) for p in last.images] == ["ckpt_a_1.dmtcp", "ckpt_b_2.dmtcp"]
    assert last.image_bytes == 3000 + 2 + sum(os.path.getsize(os.path.join(last.path, n))
                                              for n in ("dmtcp_restart_script_c.sh",
                                                        _session.ARCHIVE))
    assert mode(ckpt) == 0o700 and mode(last.path) == 0o700
    assert all(mode(p) == 0o600 for p in last.images)
    assert mode(os.path.join(last.path, "ckpt_a_1_files")) == 0o700
    assert mode(os.path.join(last.path, "GENERATION.json")) == 0o600
    assert dmtcp.last_generation(ckpt) == dmtcp.generations(ckpt)[-1]
    assert dmtcp.generations(ckpt)[-1].seconds == last.seconds

    restart = dmtcp.Coordinator(coordinator.tools, ckpt, "10.0.0.1", 4000, 1, 1)
    argv = dmtcp.restart_argv(coordinator.tools, ckpt, restart)
    assert argv == [*dmtcp.NO_RANDOMIZE, coordinator.tools.restart, "--join-coordinator",
                    "--coord-host",
                    "10.0.0.1", "--coord-port", "4000", "--ckptdir",
                    os.path.join(ckpt, "current"), "--tmpdir", os.path.join(ckpt, "tmp"),
                    "--quiet", *last.images]
    other = dmtcp.Coordinator(coordinator.tools, "/elsewhere", "h", 1, 1, 1)
    with pytest.raises(UsageError, match="serves"):
        dmtcp.restart_argv(coordinator.tools, ckpt, other)


def test_a_restart_puts_the_session_directory_back_as_it_was_at_its_generation(
        coordinator: dmtcp.Coordinator) -> None:
    """A launcher that outlived a lost node removed its job's files from Open MPI's session
    directory; the restarted one needs them (hpcmig.checkpoint._session)."""
    ckpt = coordinator.ckpt_dir
    session = Path(ckpt, dmtcp.SESSION)
    job = session / "ompi.hpcmig-1-0-1.1001" / "pid.40000" / "1"
    job.mkdir(parents=True)
    (job / "vader_segment.hpcmig-1-0-1.0").write_bytes(b"shm" * 100)
    dmtcp.checkpoint(coordinator, timeout=10)
    shutil.rmtree(session / "ompi.hpcmig-1-0-1.1001")  # the launcher's clean-up
    (session / "after").write_text("written after the generation")
    restart = dmtcp.Coordinator(coordinator.tools, ckpt, "10.0.0.1", 4000, 1, 1)
    dmtcp.restart_argv(coordinator.tools, ckpt, restart)
    assert (job / "vader_segment.hpcmig-1-0-1.0").read_bytes() == b"shm" * 100
    assert not (session / "after").exists()
    assert mode(str(session)) == 0o700


def test_a_crash_during_a_checkpoint_leaves_the_previous_generation(
        coordinator: dmtcp.Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = coordinator.ckpt_dir
    first = dmtcp.checkpoint(coordinator, timeout=10)
    monkeypatch.setenv("FAKE_MODE", "crash")  # the coordinator dies with an image half done
    with pytest.raises(CheckpointError, match="coordinator exited during the checkpoint"):
        dmtcp.checkpoint(coordinator, timeout=10)
    assert os.path.isdir(os.path.join(ckpt, "gen-2.tmp"))
    assert dmtcp.generations(ckpt) == [first]
    restart = dmtcp.Coordinator(coordinator.tools, ckpt, "127.0.0.1", 4000, 1, 1)
    assert dmtcp.restart_argv(coordinator.tools, ckpt, restart)[-1:] == [first.images[-1]]
    assert os.readlink(os.path.join(ckpt, "current")) == "gen-1"


def test_a_checkpoint_without_every_host_of_the_job_is_dropped(
        coordinator: dmtcp.Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in a 3-container Open MPI job: a node crashed, the job's launcher had not yet
    ended it, and the next checkpoint held the 6 processes of the 2 containers left; the job
    restarted from it and waited for the lost processes until it failed."""
    ckpt = coordinator.ckpt_dir
    monkeypatch.setenv("FAKE_HOSTS", "hpcmig-7-0-0 hpcmig-7-0-1")
    first = dmtcp.checkpoint(coordinator, timeout=10, hosts=2)
    assert sorted(first.hosts) == ["hpcmig-7-0-0", "hpcmig-7-0-1"]
    monkeypatch.setenv("FAKE_HOSTS", "hpcmig-7-0-0")  # container 1's processes are gone
    with pytest.raises(CheckpointError, match="1 of the job's 2 hosts"):
        dmtcp.checkpoint(coordinator, timeout=10, hosts=2)
    assert dmtcp.generations(ckpt) == [first]
    assert not os.path.exists(os.path.join(ckpt, "gen-2.tmp"))  # its images dropped
    monkeypatch.setenv("FAKE_HOSTS", "")  # one host: the script names none
    with pytest.raises(CheckpointError, match="1 of the job's 2 hosts"):
        dmtcp.checkpoint(coordinator, timeout=10, hosts=2)
    assert dmtcp.checkpoint(coordinator, timeout=10, hosts=1).number == 2


def test_a_checkpoint_that_never_completes_times_out(coordinator: dmtcp.Coordinator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    with pytest.raises(CheckpointError, match="not complete after 0.5s"):
        dmtcp.checkpoint(coordinator, timeout=0.5)
    assert dmtcp.generations(coordinator.ckpt_dir) == []
    monkeypatch.setenv("FAKE_MODE", "")
    assert dmtcp.checkpoint(coordinator, timeout=10).number == 1  # gen-1.tmp cleared first
    assert sorted(os.listdir(coordinator.ckpt_dir)) == [".lock", "current", "gen-1", "session",
                                                      "tmp"]


def test_nothing_connected_is_refused(coordinator: dmtcp.Coordinator,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PEERS", "0")
    with pytest.raises(CheckpointError, match="no process is connected"):
        dmtcp.checkpoint(coordinator)


def test_only_complete_generations_count(tmp_path: Path) -> None:
    def gen(name: str, images: dict[str, int], script: bool = True,
            sizes: dict[str, int] | None = None) -> None:
        d = tmp_path / name
        d.mkdir()
        for image, size in (sizes or images).items():
            (d / image).write_bytes(b"x" * size)
        if script:
            (d / "dmtcp_restart_script.sh").write_text("#!/bin/sh\n")
        (d / "GENERATION.json").write_text(json.dumps(
            {"number": int(name.split("-")[1].split(".")[0]), "images": images,
             "image_bytes": sum(images.values()), "seconds": 1.0, "created": 0.0}))

    with pytest.raises(CheckpointError, match="no complete DMTCP checkpoint"):
        dmtcp.last_generation(str(tmp_path))
    gen("gen-1", {"ckpt_a.dmtcp": 5})
    gen("gen-2", {"ckpt_a.dmtcp": 5, "ckpt_b.dmtcp": 5}, sizes={"ckpt_a.dmtcp": 5})  # lost one
    gen("gen-3", {"ckpt_a.dmtcp": 5}, sizes={"ckpt_a.dmtcp": 0})  # an empty image
    gen("gen-4", {"ckpt_a.dmtcp": 5}, script=False)
    gen("gen-5", {"ckpt_a.dmtcp": 5}, sizes={"ckpt_a.dmtcp": 4})  # truncated
    gen("gen-6.tmp", {"ckpt_a.dmtcp": 5})  # never published
    (tmp_path / "gen-7").mkdir()  # no manifest
    assert [g.number for g in dmtcp.generations(str(tmp_path))] == [1]
    assert dmtcp.last_generation(str(tmp_path)).images == (
        str(tmp_path / "gen-1" / "ckpt_a.dmtcp"),)


def test_a_checkpoint_waits_until_the_jobs_processes_run_and_settle(
        coordinator: dmtcp.Coordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DMTCP 4.2.0 never completes a checkpoint that began while a process forked: none is
    asked for before the job's processes are all there and their number stopped changing."""
    import threading
    import time

    peers = tmp_path / "peers"
    peers.write_text("7")
    monkeypatch.setenv("FAKE_PEERS_FILE", str(peers))
    monkeypatch.setattr(dmtcp, "SETTLE_TIMEOUT", 1.5)
    before = sorted(os.listdir(coordinator.ckpt_dir))
    with pytest.raises(CheckpointError, match=r"\(7 do, at least 9 expected"):
        dmtcp.checkpoint(coordinator, 10, peers=9)
    assert sorted(os.listdir(coordinator.ckpt_dir)) == before, "nothing was begun"
    assert os.listdir(coordinator.current) == [], "nothing was asked of DMTCP"
    monkeypatch.setattr(dmtcp, "SETTLE_TIMEOUT", 10.0)
    threading.Timer(0.3, lambda: peers.write_text("9")).start()
    t0 = time.monotonic()
    gen = dmtcp.checkpoint(coordinator, 10, peers=9)
    assert gen.number == 1
    assert time.monotonic() - t0 >= 0.3 + dmtcp.SETTLE
