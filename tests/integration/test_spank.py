"""Issue 12 acceptance on the real testbed: `--hpcmig=...` (the SPANK plugin) opts a job in.

The testbed's slurm.conf loads hpcmig_spank.so (PlugStackConfig= with the admin snippet).
`sbatch --hpcmig=spares=1 job.sh`, whose script has no `--comment`, runs the ring in hpcmig's
containers with a spare node exactly like `--comment=hpcmig:spares=1`: the options reached
the prolog through the job control environment (SPANK_HPCMIG), and the epilog, which finds
the job the same way, leaves nothing behind. A bad key or value is refused by sbatch itself,
before the job exists, with one `hpcmig:` line. sbatch, salloc and srun list the option.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import batch
from tests.integration import hpcmigd
from tests.integration.hpcmigd import host_of
from tests.integration.test_controller import assert_empty
from tests.integration.test_migration import ELEMENTS, finish, wait_for_ranks
from tests.integration.test_vcluster import slurm_wait_idle

pytestmark = pytest.mark.integration

ROUNDS = 200
KNOWN = "(known: spares, image, runtime, mpi, engine, ckpt)"


def script_without_comment(name: str, extra: str = "") -> str:
    """The 4-rank ring over 3 nodes of test_migration, its `--comment=hpcmig` line removed."""
    script = batch.vcluster_script(
        3, [["hpcmig.workloads.ring", "--rounds", str(ROUNDS), "--seconds", "8",
             "--memory-mb", "16", "--elements", str(ELEMENTS)]],
        mpi="mpich", ntasks=4, job_name=name)
    lines = script.splitlines()
    kept = [line for line in lines if not line.startswith("#SBATCH --comment=")]
    assert len(kept) == len(lines) - 1, script
    if extra:
        kept.insert(1, extra)
    return "\n".join(kept) + "\n"


def sbatch(plan: Plan, job_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", plan.user, "--", "sbatch", "--parsable", *args],
                          cwd=job_dir, capture_output=True, text=True, timeout=60)


def test_sbatch_hpcmig_runs_the_job_in_containers_with_a_spare(
        testbed: Plan, slurm: Slurm, job_dir: Path) -> None:
    path = job_dir / "spank-ring.sh"
    path.write_text(script_without_comment("spank-ring"))
    out = job_dir / "spank-ring.out"
    job_id = slurm.submit(["--hpcmig=spares=1", f"--output={out}", str(path)],
                          user=testbed.user, cwd=str(job_dir))
    slurm.wait(job_id, timeout=60, states={"RUNNING"})
    wait_for_ranks(testbed, job_id)
    assert "hpcmig" not in slurm.job(job_id).comment  # the plugin, not the comment, opted in
    [job] = [j for j in hpcmigd.status()["jobs"] if j["job_id"] == str(job_id)]
    assert job["spares"] == ["node3"], job
    assert host_of(job_id, 0) == "node1" and host_of(job_id, 1) == "node2"
    finish(slurm, job_id, out, rounds=ROUNDS)  # exact checksum
    slurm_wait_idle(slurm, testbed)
    for node in testbed.nodes:  # the epilog found the job through SPANK_HPCMIG too
        assert_empty(testbed, node.name, job_id)


@pytest.mark.parametrize(
    ("where", "option", "message"),
    [
        ("command line", "--hpcmig=bogus=1", f"hpcmig: unknown option key 'bogus' {KNOWN}"),
        ("#SBATCH", "--hpcmig=spares=1,runtime=docker",
         "hpcmig: runtime must be ns or lxc, not 'docker'"),
    ],
)
def test_a_bad_option_is_refused_at_submission_with_one_line(
        testbed: Plan, slurm: Slurm, job_dir: Path, where: str, option: str,
        message: str) -> None:
    name = "spank-bad-" + where.replace(" ", "-").strip("#")
    path = job_dir / f"{name}.sh"
    if where == "#SBATCH":
        path.write_text(script_without_comment(name, extra=f"#SBATCH {option}"))
        done = sbatch(testbed, job_dir, str(path))
    else:
        path.write_text(script_without_comment(name))
        done = sbatch(testbed, job_dir, option, str(path))
    assert done.returncode != 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""  # no job id: no job
    ours = [line for line in done.stderr.splitlines() if "hpcmig:" in line]
    assert len(ours) == 1 and ours[0].endswith(message), done.stderr
    queued = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert queued.strip() == ""


@pytest.mark.parametrize("command", ["srun", "sbatch", "salloc"])
def test_help_lists_the_option(testbed: Plan, command: str) -> None:
    done = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "--hpcmig=[key=value,...]" in done.stdout, done.stdout
