"""Issue 11 on the real testbed for engine=dmtcp (experimental): the MPI launcher runs under
DMTCP (`engine=dmtcp,ckpt=10`), hpcmigd asks for a generation every 10 s and the job's `hpcmig
run` takes it through the job's coordinator; a node dies without warning and the job comes
back by itself from its last generation.

A ring across two containers (4 ranks), MPICH and Open MPI: `testbed fail NODE --crash`
SIGKILLs one of its nodes. With MPICH it is the batch host, where the launcher and the
coordinator run, between two checkpoints. With Open MPI it is the other node, during a
checkpoint: that checkpoint is dropped (it lacks the lost host's processes) and the
launcher, which outlived the node, cleaned up Open MPI's session directory, which the restart
puts back from the generation (hpcmig.checkpoint._session). With no command from anybody
the job is requeued (same id) on the nodes left, restarts from the last complete generation
(`dmtcp_restart` in each new container), prints the exact checksum once, every round's line
once at least, redoes at most one interval of rounds (two when the crash fell in a
checkpoint), and takes new generations after the restart; its DMTCP directory (0700, images
0600) is gone once it ended. Every rank loads hpcmig's DMTCP plugin (native/dmtcp_multihost.c),
without which `hpcmig run` refuses engine=dmtcp.

A 3-container Open MPI job (two `orted` daemons), checkpointed on request and requeued by
the admin, restarts from that generation on all three containers and completes once.

Without `ckpt=`, `hpcmig checkpoint --resume` and a drain of a node of such a job go through
its coordinator as well (never CRIU): the drained job restarts from the drain's generation on
the nodes left.

A checkpoint that never completes (a rank SIGSTOPped: DMTCP waits for it for ever, the job
suspended) has the job's `hpcmig run` ask hpcmigd after the testbed's
dmtcp_checkpoint_timeout (30 s) to restart the job from the generation before; it completes
exactly once.

A restarted rank used to segfault at random (MPICH 4 runs of 7, Open MPI 1 of 4 on a bad day):
DMTCP's program break and ASLR; its restart now runs without randomization (docs/checkpoint.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from hpcmig import _procfs, config
from hpcmig.checkpoint import dmtcp, dmtcp_job
from hpcmig.controller.jobckpt import CHECKPOINT
from hpcmig.controller.journal import Journal
from hpcmig.errors import MissingDependency, SlurmError
from hpcmig.slurm import Slurm
from hpcmig.testbed import cluster
from hpcmig.testbed.plan import DMTCP_CHECKPOINT_TIMEOUT, DMTCP_PREFIX_ENV, Plan
from hpcmig.workloads import batch, ring
from tests.integration import hpcmigd
from tests.integration import rt_support as S
from tests.integration.test_controller import drained, hpcmig
from tests.integration.test_migration import ELEMENTS
from tests.integration.test_node_loss import (  # noqa: F401 - crashed: a fixture
    INTERVAL,
    crashed,
    rounds_done,
    story,
    submit_job,
)
from tests.unit.checkpoint.test_dmtcp_restart import need, need_mpi_under_dmtcp

pytestmark = pytest.mark.integration
ROUNDS, SECONDS = 60, 30.0  # a round every 0.5 s, as in test_node_loss, for half as long


@pytest.fixture
def dmtcp_tools() -> dmtcp.DmtcpTools:
    """DMTCP as the testbed's hpcmig.toml names it ($HPCMIG_DMTCP_PREFIX, else PATH)."""
    need_mpi_under_dmtcp()  # every test here runs MPI under it
    try:
        return dmtcp.find_dmtcp(os.environ.get(DMTCP_PREFIX_ENV, ""))
    except MissingDependency as exc:
        need(f"{exc} (set {DMTCP_PREFIX_ENV} to test a copy that is not on PATH)")
        raise


def steps(directory: Path) -> list[dmtcp.Generation]:
    return [g for s in sorted(directory.glob("step-*")) for g in dmtcp.generations(str(s))]


def ring_script(nodes: int, mpi: str, name: str, ckpt: bool = True) -> str:
    return batch.vcluster_script(
        nodes, [["hpcmig.workloads.ring", "--elements", str(ELEMENTS), "--rounds", str(ROUNDS),
                 "--seconds", str(SECONDS), "--progress"]],
        mpi=mpi, ntasks=nodes * 2,
        options={"engine": "dmtcp", **({"ckpt": str(INTERVAL)} if ckpt else {})},
        job_name=name)


def dmtcp_story(directory: Path) -> str:
    """The coordinators' logs (their last lines) and where each process under DMTCP waits."""
    logs = [f"--- {p}\n" + p.read_text(errors="replace").replace("dmtcp> ", "")[-3000:]
            for p in sorted(directory.glob("step-*/coordinator.log"))]
    waits = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            name = (proc / "comm").read_text().strip()
            if name.startswith(("DMTCP:", "dmtcp_", "python3", "hydra", "mpiexec", "orted")):
                tasks = [f"{(t / 'comm').read_text().strip()}:{(t / 'wchan').read_text()}"
                         for t in (proc / "task").iterdir()]
                waits.append(f"{proc.name} {name} {' '.join(tasks)}")
        except OSError:  # ended meanwhile
            continue
    return "\n".join(logs + ["--- processes (pid comm thread:wchan...)"] + waits)


def wait_generations(testbed: Plan, slurm: Slurm, job_id: int, out: Path, directory: Path,
                     count: int) -> list[dmtcp.Generation]:
    deadline = time.monotonic() + (count + 2) * INTERVAL
    while max((g.number for g in steps(directory)), default=0) < count:
        assert time.monotonic() < deadline, f"fewer than {count} DMTCP generations\n" \
            f"{out.read_text()}\n{story(testbed, job_id)}\n{dmtcp_story(directory)}"
        assert slurm.job(job_id).state == "RUNNING", out.read_text()
        time.sleep(0.3)
    return steps(directory)


def ring_ranks(job_dir: Path) -> list[int]:
    """The job's ranks: the ring's processes working in `job_dir`."""
    ranks = [int(p.name) for p in Path("/proc").glob("[0-9]*")
             if _procfs.argv(int(p.name))[1:3] == ["-m", "hpcmig.workloads.ring"]
             and _cwd(int(p.name)) == str(job_dir)]
    assert ranks, "no rank of the job is running"
    return sorted(ranks)


def loaded_plugin(job_dir: Path) -> list[int]:
    """The job's ranks that have hpcmig's DMTCP plugin mapped."""
    return [pid for pid in ring_ranks(job_dir) if dmtcp.PLUGIN in _maps(pid)]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # the rank ended meanwhile
        return ""


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:  # the rank ended meanwhile
        return ""


def ended_and_removed(testbed: Plan, slurm: Slurm, job_id: int, out: Path,
                      directory: Path) -> str:
    """The job completed with the exact checksum once; its DMTCP directory is gone."""
    try:
        job = slurm.wait(job_id, timeout=240, states={"COMPLETED", "FAILED", "CANCELLED"})
    except SlurmError as exc:
        raise AssertionError(f"{exc}\n{out.read_text()}\n{story(testbed, job_id)}\n"
                             f"{dmtcp_story(directory)}") from None
    text = out.read_text()
    assert job.state == "COMPLETED", f"{job}\n{text}"
    ranks = 2 * len(job.nodes)
    want = f"ring: PASS checksum={ring.expected(ranks, ELEMENTS, ROUNDS)} "
    assert text.count(want) == 1, text
    deadline = time.monotonic() + 60
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not directory.exists(), "the job ended: its DMTCP images must be removed"
    return text


@pytest.mark.parametrize(("mpi", "lost", "when"), [("mpich", "batch", "between"),
                                                   ("openmpi", "other", "during")])
def test_a_crashed_node_restarts_a_dmtcp_job_from_its_last_generation(
        testbed: Plan, slurm: Slurm, job_dir: Path, crashed: list[str],  # noqa: F811
        dmtcp_tools: dmtcp.DmtcpTools, mpi: str, lost: str, when: str) -> None:
    job_id, out, job = submit_job(testbed, slurm, job_dir,
                                  ring_script(2, mpi, f"dmtcp-crash-{mpi}"))
    victim = job.batch_host if lost == "batch" else \
        next(n for n in job.nodes if n != job.batch_host)
    directory = Path(dmtcp_job.job_dir(str(job_dir), str(job_id)))
    taken = wait_generations(testbed, slurm, job_id, out, directory, 1)[-1]
    assert len(loaded_plugin(job_dir)) == 4, \
        f"all 4 ranks load {dmtcp.PLUGIN} (bootstrap installs it)"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert taken.images and all(os.stat(p).st_mode & 0o777 == 0o600 for p in taken.images)
    if when == "between":
        time.sleep(max(0.0, taken.created + INTERVAL / 2 - time.time()))
    else:  # into the next checkpoint (about 4 s): its directory is there, not yet published
        following = f"step-*/gen-{taken.number + 1}.tmp"
        assert S.wait_for(lambda: any(directory.glob(following)), INTERVAL + 10), \
            f"no checkpoint {taken.number + 1} began"
        time.sleep(1.0)
        assert any(directory.glob(following)), f"checkpoint {taken.number + 1} took < 1 s"
    crashed.append(victim)
    crash_at = time.time()
    print("\n" + cluster.fail(victim, "crash"))

    text = ended_and_removed(testbed, slurm, job_id, out, directory)
    job = slurm.job(job_id)
    assert job.restart_count == 1 and victim not in job.nodes, job
    assert text.count("restarted from DMTCP checkpoint generation") == 1, text
    assert f"restarted from DMTCP checkpoint generation {taken.number} (" in text, text
    before, _, after = text.partition("restarted from DMTCP checkpoint generation")
    assert f"DMTCP checkpoint generation {taken.number + 1} (" not in before, \
        f"the checkpoint the crash fell in was not published\n{text}"
    assert re.search(r"DMTCP checkpoint generation (\d+) \(", after), \
        f"hpcmigd asks every {INTERVAL} s: a generation is published after the restart\n{text}"
    done = rounds_done(text)
    assert sorted(done) == list(range(1, ROUNDS + 1)), f"every round ran\n{text}"
    redone = [n for n, c in done.items() if c > 1]
    lost = len(redone) * SECONDS / ROUNDS
    print(f"dmtcp {mpi}: node {victim} crashed {crash_at - taken.created:.1f} s after "
          f"generation {taken.number} ({taken.seconds:.2f} s, {taken.image_bytes / 2**20:.0f} "
          f"MiB); {len(redone)} rounds done again = {lost:.1f} s of work lost")
    assert lost <= INTERVAL * (1 if when == "between" else 2) + 2, redone
    assert slurm.node(victim).reason.startswith("hpcmig: node lost"), slurm.node(victim)
    decided = [d["what"] for d in hpcmigd.status()["decisions"]]
    assert any(f"job {job_id}: {victim} lost" in d for d in decided), decided


def test_a_dmtcp_job_checkpoints_on_request_and_leaves_a_drained_node_through_dmtcp(
        testbed: Plan, slurm: Slurm, job_dir: Path, dmtcp_tools: dmtcp.DmtcpTools) -> None:
    """Deliverable 3's other two ways in: `hpcmig checkpoint --resume` and a drain of a node
    of an engine=dmtcp job (no ckpt=: no periodic generation) go through the job's
    coordinator, never CRIU; the drained job restarts from the drain's generation elsewhere."""
    job_id, out, job = submit_job(testbed, slurm, job_dir,
                                  ring_script(2, "mpich", "dmtcp-drain", ckpt=False))
    victim = next(n for n in job.nodes if n != job.batch_host)
    directory = Path(dmtcp_job.job_dir(str(job_dir), str(job_id)))
    try:
        asked = hpcmig("checkpoint", str(job_id), "--resume", "--json")
        assert asked.returncode == 0, asked.stdout + asked.stderr + dmtcp_story(directory)
        data = json.loads(asked.stdout)["data"]
        assert (data["engine"], data["generation"], data["stopped"]) == ("dmtcp", 1, False)
        assert slurm.job(job_id).state == "RUNNING"
        assert [g.number for g in steps(directory)] == [1]
        t0 = time.monotonic()
        done = hpcmig("drain", victim, "--reason", "test", "--json")
        assert done.returncode == 0, done.stdout + done.stderr + dmtcp_story(directory)
        rows = json.loads(done.stdout)["rows"]
        assert {r["result"] for r in rows} == {"requeued"}, rows
        assert all("engine=dmtcp" in r["detail"] and "DMTCP checkpoint generation 2"
                   in r["detail"] for r in rows), rows
        assert drained(slurm, victim)
        t_drain = time.monotonic() - t0
        text = ended_and_removed(testbed, slurm, job_id, out, directory)
        job = slurm.job(job_id)
        assert job.restart_count == 1 and victim not in job.nodes, job
        assert text.count("restarted from DMTCP checkpoint generation 2 ") == 1, text
        done_rounds = rounds_done(text)
        assert sorted(done_rounds) == list(range(1, ROUNDS + 1)), f"every round ran\n{text}"
        state = config.load().state_dir
        with Journal(os.path.join(state, "controller.db")) as journal:
            assert journal.operations(kind=CHECKPOINT, job_id=str(job_id)) == [], \
                "CRIU checkpointed an engine=dmtcp job"
        decided = [d["what"] for d in hpcmigd.status()["decisions"]]
        assert f"job {job_id}: DMTCP checkpoint generation 2; requeued held" in decided
        print(f"\ndmtcp drain of {victim}: drain done in {t_drain:.0f} s; job back on "
              f"{','.join(job.nodes)}, done {time.monotonic() - t0:.0f} s after the drain "
              "began")
    finally:
        slurm.resume(victim)


def test_a_requeued_three_container_open_mpi_job_restarts_with_both_its_daemons(
        testbed: Plan, slurm: Slurm, job_dir: Path, dmtcp_tools: dmtcp.DmtcpTools) -> None:
    """A 3-container Open MPI job (the launcher and two `orted` daemons) under DMTCP, requeued
    by the admin (`scontrol requeue`) after `hpcmig checkpoint` took a generation late in the
    run: it restarts from that generation on all three containers and completes exactly once.
    Daemonized orteds (Open MPI's default with no tree spawn) left 5 s into every restart of
    such a job; hpcmig keeps them attached to DMTCP's ssh pair (dmtcp.MPI_ENV)."""
    job_id, out, job = submit_job(testbed, slurm, job_dir,
                                  ring_script(3, "openmpi", "dmtcp-requeue", ckpt=False))
    assert len(job.nodes) == 3, job
    directory = Path(dmtcp_job.job_dir(str(job_dir), str(job_id)))
    late = ROUNDS * 2 // 3  # less left to run after the restart
    assert S.wait_for(lambda: late in rounds_done(out.read_text()), SECONDS + 30), \
        out.read_text()
    asked = hpcmig("checkpoint", str(job_id), "--resume", "--json")
    assert asked.returncode == 0, asked.stdout + asked.stderr + dmtcp_story(directory)
    gen = steps(directory)[-1]
    assert gen.number == 1 and len(gen.hosts) == 3, gen.hosts
    slurm.requeue(job_id)
    t0 = time.monotonic()
    text = ended_and_removed(testbed, slurm, job_id, out, directory)
    assert slurm.job(job_id).restart_count == 1
    assert re.search(r"restarted from DMTCP checkpoint generation 1 \(\d+ processes in 3 "
                     r"container\(s\)", text), text
    assert text.count("restarted from DMTCP checkpoint generation") == 1, text
    done = rounds_done(text)
    assert sorted(done) == list(range(1, ROUNDS + 1)), f"every round ran\n{text}"
    print(f"\ndmtcp openmpi, 3 containers: generation 1 ({gen.seconds:.1f} s, "
          f"{gen.image_bytes / 2**20:.0f} MiB), requeued; completed {time.monotonic() - t0:.0f} "
          f"s later, {sum(1 for c in done.values() if c > 1)} rounds done again")


def test_a_dmtcp_checkpoint_that_never_completes_restarts_the_job_from_the_one_before(
        testbed: Plan, slurm: Slurm, job_dir: Path, dmtcp_tools: dmtcp.DmtcpTools) -> None:
    """A rank SIGSTOPped after a generation: DMTCP's next checkpoint waits for it for ever and
    keeps the whole job suspended (it cannot call a checkpoint off). After
    dmtcp_checkpoint_timeout the job's `hpcmig run` asks hpcmigd (restart_stuck), which
    requeues the job: it restarts from the newest complete generation, completes exactly
    once, and its DMTCP directory is removed."""
    job_id, out, _ = submit_job(testbed, slurm, job_dir, ring_script(2, "mpich", "dmtcp-hung"))
    directory = Path(dmtcp_job.job_dir(str(job_dir), str(job_id)))
    wait_generations(testbed, slurm, job_id, out, directory, 1)
    victim = ring_ranks(job_dir)[0]
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    newest = steps(directory)[-1]  # (just published: the next is asked an interval later)

    text = ended_and_removed(testbed, slurm, job_id, out, directory)
    assert slurm.job(job_id).restart_count == 1
    assert (f"dmtcp checkpoint not complete after {DMTCP_CHECKPOINT_TIMEOUT:g}s" in text
            and "asking hpcmigd to restart the job from its generation before" in text), text
    assert text.count("restarted from DMTCP checkpoint generation") == 1, text
    assert f"restarted from DMTCP checkpoint generation {newest.number} (" in text, text
    done = rounds_done(text)
    assert sorted(done) == list(range(1, ROUNDS + 1)), f"every round ran\n{text}"
    decided = [d["what"] for d in hpcmigd.status()["decisions"]]
    assert any(f"job {job_id}: its DMTCP checkpoint did not complete in "
               f"{DMTCP_CHECKPOINT_TIMEOUT:g} s; requeued to restart from checkpoint "
               f"generation {newest.number}" in d for d in decided), decided
    print(f"\ndmtcp hung checkpoint: rank {victim} stopped after generation {newest.number}; "
          f"the job completed {time.monotonic() - stopped_at:.0f} s later, "
          f"{sum(1 for c in done.values() if c > 1)} rounds done again")
