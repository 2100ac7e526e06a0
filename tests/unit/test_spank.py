"""The SPANK opt-in (`--hpcmig=...`) without Slurm: the C option parser's own tests, the
plugin's exports, the hooks reading SPANK_HPCMIG, and the testbed loading the admin snippet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcmig import hooks, vcluster
from hpcmig.errors import UsageError
from hpcmig.slurm.parse import JobInfo
from hpcmig.testbed.plan import MARKER, Plan

ROOT = Path(__file__).resolve().parents[2]
SPANK = ROOT / "slurm-plugins" / "spank"
SPANK_H = Path("/usr/include/slurm/spank.h")
EXPORTS = {"slurm_spank_init", "slurm_spank_init_post_opt", "plugin_name", "plugin_type",
           "plugin_version", "spank_plugin_version"}

needs_cc = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                              reason="needs a C compiler and make")


@needs_cc
def test_the_c_option_parser_passes_its_cases(tmp_path: Path) -> None:
    done = subprocess.run(["make", "-s", "-C", str(SPANK), f"BUILD={tmp_path}", "check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 failed" in done.stdout


@needs_cc
@pytest.mark.skipif(not SPANK_H.exists() or shutil.which("nm") is None,
                    reason="needs Slurm's spank.h (Debian: libslurm-dev) and nm")
def test_the_plugin_builds_strict_and_exports_only_spank_symbols(tmp_path: Path) -> None:
    done = subprocess.run(["make", "-s", "-C", str(SPANK), f"BUILD={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr  # -Wall -Wextra -Werror
    nm = subprocess.run(["nm", "-D", "--defined-only", str(tmp_path / "hpcmig_spank.so")],
                        capture_output=True, text=True, check=True).stdout
    assert {line.split()[-1] for line in nm.splitlines() if line.strip()} == EXPORTS


def test_the_plugin_knows_every_key_the_prolog_does() -> None:
    """The C plugin refuses unknown keys at submission; it must not refuse one the prolog
    takes. Its two extra keys (engine, ckpt) are for the checkpoint issues to come."""
    header = (SPANK / "options.h").read_text()
    known = re.search(r'#define HPCMIG_KNOWN_KEYS "([^"]*)"', header)
    assert known is not None
    keys = set(known.group(1).split(", "))
    assert keys >= vcluster.OPTION_KEYS
    assert keys - vcluster.OPTION_KEYS <= {"engine", "ckpt"}


@pytest.mark.parametrize(
    ("env", "comment", "opts"),
    [
        ({"SPANK_HPCMIG": "spares=1,mpi=openmpi"}, "", {"spares": "1", "mpi": "openmpi"}),
        ({"SPANK_HPCMIG": ""}, "my own comment", {}),  # a bare --hpcmig
        ({"SPANK_HPCMIG": "spares=1"}, "hpcmig:image=a.sif,spares=2", {"spares": "1"}),
        ({}, "hpcmig:image=a.sif", {"image": "a.sif"}),  # the comment still works
        ({}, "my own comment", None),
        ({"SPANK_OTHER": "spares=1"}, "", None),
    ],
)
def test_the_plugin_option_wins_over_the_comment(env: dict[str, str], comment: str,
                                                 opts: dict[str, str] | None) -> None:
    assert hooks.job_options(comment, env) == opts


def test_the_prolog_plans_a_job_that_opted_in_with_the_plugin(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "hpcmig.toml"
    conf.write_text(f'state_dir = "{tmp_path}/s"\nrun_dir = "{tmp_path}/r"\n'
                    f'checkpoint_dir = "{tmp_path}/c"\n')
    monkeypatch.setenv("HPCMIG_CONFIG", str(conf))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURMD_NODENAME", "node1")
    monkeypatch.setenv("SPANK_HPCMIG", "spares=1")
    monkeypatch.setattr(hooks, "read_job", lambda job_id: JobInfo(
        int(job_id), "j", "u", "RUNNING", comment=""))
    planned: list[dict[str, str]] = []

    def plan_job(job: JobInfo, opts: dict[str, str], cfg: object) -> None:
        planned.append(opts)
        raise UsageError("stop here")  # a job error: logged, the node stays up

    monkeypatch.setattr(hooks, "plan_job", plan_job)
    assert hooks.prolog_main() == 0
    assert planned == [{"spares": "1"}]


def test_the_testbed_loads_the_snippet_admins_install() -> None:
    plan = Plan(nodes_count=3, controller_host="ctl")
    lines = dict(line.split("=", 1) for line in plan.slurm_conf().splitlines() if "=" in line)
    assert lines["PlugStackConfig"] == str(plan.plugstack_path)
    assert plan.plugstack_path.name != "plugstack.conf"  # Debian ships that one
    text = plan.plugstack_conf()
    assert text.startswith(MARKER + "\n")  # the testbed owns (and removes) its copy
    admin_copy = ROOT / "slurm-plugins" / "plugstack.conf"
    assert admin_copy.is_symlink()  # to the package data, so pip installs carry it
    snippet = admin_copy.read_text()
    assert text == f"{MARKER}\n{snippet}"  # one source: slurm-plugins/ links hpcmig/data/
    directives = [line.split() for line in snippet.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    assert directives == [["required", "/opt/hpcmig/lib/hpcmig_spank.so"]]
