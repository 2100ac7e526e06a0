"""A failing Slurm says which: not configured, not reachable, or refused, and what to check.

Fake `sinfo`/`scontrol`/`squeue`/`sbatch` scripts on PATH (submitit's habit) print what Slurm
22.05 prints in each case and exit 1; the adapter must raise the matching SlurmError, one
line, and that line must reach the `hpcmig` user unchanged through hpcmigd's RPC answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcmig.errors import (
    HpcmigError,
    MissingDependency,
    SlurmError,
    SlurmNotConfigured,
    SlurmRefused,
    SlurmUnreachable,
)
from hpcmig.slurm import Slurm, diagnose, parse

FIX = Path(__file__).parent / "fixtures"

CONFIGLESS_FAILED = """\
{cmd}: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host
{cmd}: error: fetch_config: DNS SRV lookup failed
{cmd}: error: _establish_config_source: failed to fetch config
{cmd}: fatal: Could not establish a configuration source
"""
NO_CONTROLLER = {
    "sinfo": "slurm_load_partitions: Unable to contact slurm controller (connect failure)",
    "squeue": "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
    "scontrol": "slurm_load_node error: Unable to contact slurm controller (connect failure)",
}
MUNGE_DOWN = """\
{cmd}: error: If munged is up, restart with --num-threads=10
{cmd}: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2": No such file \
or directory
{cmd}: error: slurm_send_node_msg: auth_g_create: REQUEST_NODE_INFO has authentication error
slurm_load_node error: Protocol authentication error
"""


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def failing(bin_dir: Path, name: str, stderr: str, code: int = 1) -> None:
    text = stderr.format(cmd=name).rstrip("\n").replace("'", "'\\''")
    fake(bin_dir, name, f"printf '%s\\n' '{text}' >&2\nexit {code}")


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only the fakes: a Slurm command not faked is not installed."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def one_line(exc: HpcmigError) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_not_configured(bin_dir: Path) -> None:
    for cmd in ("sinfo", "scontrol", "squeue"):
        failing(bin_dir, cmd, CONFIGLESS_FAILED)
    with pytest.raises(SlurmNotConfigured) as err:
        Slurm().nodes()
    text = one_line(err.value)
    assert text.startswith("Slurm is not configured on this machine: `")
    assert "fatal: Could not establish a configuration source" in text
    assert "SLURM_CONF" in text and "hpcmig testbed up" in text
    assert err.value.exit_code == 3


def test_a_missing_slurm_conf_is_not_configured_even_when_slurm_keeps_retrying(
        bin_dir: Path) -> None:
    """With SLURM_CONF naming no file Slurm retries for 60 s; our timeout ends it first."""
    line = ("{cmd}: error: s_p_parse_file: cannot stat file /etc/slurm/slurm.conf: No such "
            "file or directory, retrying in 1sec up to 60sec")
    for cmd in ("sinfo", "scontrol"):
        fake(bin_dir, cmd, f"echo '{line.format(cmd=cmd)}' >&2\nexec /bin/sleep 30")
    with pytest.raises(SlurmNotConfigured, match="cannot stat file /etc/slurm/slurm.conf"):
        Slurm(timeout=1).nodes()


def test_controller_not_reachable(bin_dir: Path) -> None:
    for cmd, message in NO_CONTROLLER.items():
        failing(bin_dir, cmd, message)
    with pytest.raises(SlurmUnreachable) as err:
        Slurm().nodes()
    text = one_line(err.value)
    assert text.startswith("cannot reach the Slurm controller: `")
    assert "Unable to contact slurm controller (connect failure)" in text
    assert "slurmctld" in text and "scontrol ping" in text


@pytest.mark.parametrize("message", [
    "slurm_load_jobs error: Socket timed out on send/recv operation",
    "slurm_load_jobs error: Zero Bytes were transmitted or received",
    "squeue: error: Connection refused",
])
def test_other_words_for_unreachable(bin_dir: Path, message: str) -> None:
    failing(bin_dir, "squeue", message)
    with pytest.raises(SlurmUnreachable, match="scontrol ping"):
        Slurm(use_json=True).jobs()


def test_no_answer_at_all_is_unreachable(bin_dir: Path) -> None:
    fake(bin_dir, "scontrol", "exec /bin/sleep 30")
    with pytest.raises(SlurmUnreachable, match="got no answer within 1 s"):
        Slurm(use_json=False, timeout=1).jobs()


@pytest.mark.parametrize(("message", "hint"), [
    ("slurm_update error: Access/permission denied", "root or a Slurm administrator"),
    ("slurm_update error: Invalid user id", "root or a Slurm administrator"),
    ("slurm_update error: Invalid node name specified", "sinfo -N"),
    ("slurm_update error: Invalid node state specified", None),
    ("slurm_update error: Requested operation not supported on this system", None),
])
def test_refused_node_update(bin_dir: Path, message: str, hint: str | None) -> None:
    failing(bin_dir, "scontrol", message)
    with pytest.raises(SlurmRefused) as err:
        Slurm()._run(["scontrol", "update", "NodeName=node1", "State=RESUME"])
    text = one_line(err.value)
    assert text.startswith(f"Slurm refused `scontrol update NodeName=node1 State=RESUME`: "
                           f"{message}")
    if hint:
        assert hint in text


def test_refused_job_operations(bin_dir: Path) -> None:
    failing(bin_dir, "scontrol", "scontrol: error: Invalid job id specified")
    with pytest.raises(SlurmRefused, match="Invalid job id specified.*check the job id"):
        Slurm().requeue(99, hold=True)
    failing(bin_dir, "scontrol", "scontrol: error: Job is no longer pending execution")
    with pytest.raises(SlurmRefused, match="Job is no longer pending execution"):
        Slurm().set_excluded(12, ["node2"])
    failing(bin_dir, "sbatch", "sbatch: error: Batch job submission failed: Invalid account "
                               "or account/partition combination specified")
    with pytest.raises(SlurmRefused, match="Batch job submission failed: Invalid account"):
        Slurm().submit(["job.sh"])


def test_munge_down_is_an_authentication_refusal(bin_dir: Path) -> None:
    failing(bin_dir, "sinfo", MUNGE_DOWN)
    with pytest.raises(SlurmRefused) as err:
        Slurm(use_json=True).nodes()
    text = one_line(err.value)
    assert "did not accept the credentials of `sinfo --json`" in text
    assert "munged" in text and "munge -n | unmunge" in text


def test_unknown_words_stay_a_plain_slurm_error_with_them(bin_dir: Path) -> None:
    failing(bin_dir, "scancel", "scancel: error: something new in Slurm 42", code=2)
    with pytest.raises(SlurmError) as err:
        Slurm().cancel(5)
    assert type(err.value) is SlurmError
    assert one_line(err.value) == ("command failed with exit code 2: scancel 5: "
                                   "scancel: error: something new in Slurm 42")


def test_sinfo_without_json_falls_back_to_scontrol(bin_dir: Path) -> None:
    failing(bin_dir, "sinfo", "sinfo: unrecognized option '--json'")
    fake(bin_dir, "scontrol", f'case "$2" in '
                              f'node) exec /bin/cat {FIX}/scontrol_show_node_22.05.txt;; '
                              f'*) exec /bin/cat {FIX}/scontrol_show_job_22.05.txt;; esac')
    slurm = Slurm()
    assert [n.name for n in slurm.nodes()] == ["node1", "node2", "node3"]
    assert slurm.uses_json is False


@pytest.mark.parametrize("version", ["22.05", "24.11", "26.05"])
def test_json_commands_follow_the_slurm_version(bin_dir: Path, version: str) -> None:
    """22.05: sinfo/squeue --json; 24.11 (node groups in sinfo): scontrol show node|job --json.
    Only the commands of that version are faked: calling another one fails the test."""
    fake(bin_dir, "sinfo", f"exec /bin/cat {FIX}/sinfo_{version}.json")
    if version == "22.05":
        fake(bin_dir, "squeue", f"exec /bin/cat {FIX}/squeue_{version}.json")
    else:
        fake(bin_dir, "scontrol", f'[ "$3" = --json ] || exit 9\n'
                                  f'exec /bin/cat {FIX}/scontrol_show_$2_{version}.json')
    slurm = Slurm()
    nodes = {n.name: n for n in slurm.nodes()}
    assert slurm.uses_json is True
    ring = {j.name: j for j in slurm.jobs()}["ringjob"]
    assert nodes["node1"].jobs == nodes["node2"].jobs == (ring.job_id,)
    assert nodes["node3"].reason == "bad dimm (admin)" and nodes["node3"].drained
    assert slurm.job(ring.job_id).nodes == ("node1", "node2")


def test_unreachable_is_not_taken_for_no_json(bin_dir: Path) -> None:
    """An unreachable controller is no answer about --json: it is asked again later."""
    failing(bin_dir, "sinfo", NO_CONTROLLER["sinfo"])
    slurm = Slurm()
    with pytest.raises(SlurmUnreachable):
        slurm.nodes()
    assert slurm._json is None


@pytest.mark.parametrize("cmd", ["sinfo", "scontrol", "sbatch"])
def test_slurm_not_installed_says_what_to_install(bin_dir: Path, cmd: str) -> None:
    with pytest.raises(MissingDependency) as err:
        Slurm(use_json=False)._run([cmd, "--version"])
    text = one_line(err.value)
    assert f"`{cmd}` command is not installed" in text and "slurm-client" in text
    assert err.value.exit_code == 3


def test_a_missing_helper_that_is_not_slurm_keeps_its_message(bin_dir: Path) -> None:
    with pytest.raises(MissingDependency, match="'runuser' is not installed") as err:
        Slurm()._run(["runuser", "-u", "x", "--", "sbatch"])
    assert err.value.hint is None


def test_drain_without_slurm_config_is_one_line_through_hpcmigd(
        bin_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`hpcmig drain node1` where Slurm is not configured (the user's report, issue 12): the
    error hpcmigd meets travels back as its class and one line, with what to do."""
    from typing import Any

    from hpcmig.agent.rpc import raise_remote
    from hpcmig.agent.server import error_answer
    from hpcmig.cli import main
    from hpcmig.controller.client import ControllerClient

    for cmd in ("sinfo", "scontrol"):
        failing(bin_dir, cmd, CONFIGLESS_FAILED)

    def daemon(self: ControllerClient, op: str, timeout: float | None = None,
               **args: Any) -> Any:
        try:
            return Slurm().node(args["node"])  # what Service.drain asks Slurm first
        except HpcmigError as exc:
            raise_remote(error_answer(exc), f"hpcmigd ({op})")

    monkeypatch.setattr(ControllerClient, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(ControllerClient, "call", daemon)
    assert main(["drain", "node1"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("hpcmig: error: hpcmigd (drain): Slurm is not configured on this "
                             "machine: `")
    assert "Could not establish a configuration source" in err[0]
    assert err[0].endswith("(install the cluster's slurm.conf as /etc/slurm/slurm.conf or set "
                           "SLURM_CONF to it; on one machine `hpcmig testbed up` makes one)")


# -- what in slurm.conf works against hpcmig (hpcmigd logs it at start) ----------------------

@pytest.mark.parametrize("version, release", [("22.05", "22.05.8"), ("24.11", "24.11.5"),
                                              ("26.05", "26.05.5")])
def test_the_testbed_configuration_reads_and_draws_no_warning(version: str, release: str) -> None:
    config = parse.config_from_text((FIX / f"scontrol_show_config_{version}.txt").read_text())
    assert config["SLURM_VERSION"] == release
    assert config["PrologFlags"] == "Alloc"
    assert config["Prolog"].endswith("/hpcmig-prolog")  # 24.11: `Prolog[0] = ...`
    assert config["Epilog"].endswith("/hpcmig-epilog")
    assert "Configuration" not in config  # the header line is not a setting
    assert diagnose.config_warnings(config) == []


def test_contain_is_warned_about_with_the_version_and_the_remedy() -> None:
    config = parse.config_from_text((FIX / "scontrol_show_config_22.05.txt").read_text())
    (warning,) = diagnose.config_warnings({**config, "PrologFlags": "Alloc,Contain"})
    assert "Contain (Slurm 22.05.8)" in warning
    assert "Kill task failed" in warning and "PrologFlags=Alloc" in warning


@pytest.mark.parametrize("change", [{"Prolog": "(null)"}, {"PrologFlags": "(null)"}])
def test_a_missing_prolog_or_alloc_flag_is_warned_about(change: dict[str, str]) -> None:
    config = parse.config_from_text((FIX / "scontrol_show_config_22.05.txt").read_text())
    (warning,) = diagnose.config_warnings({**config, **change})
    assert "hpcmig-prolog" in warning and "PrologFlags=Alloc" in warning


# -- release: Slurm's requeue delay taken back ------------------------------------------------

@pytest.mark.parametrize(("update_error", "released"), [
    ("", True),
    ("slurm_update error: Job is no longer pending execution", True),  # released before
    ("slurm_update error: Access/permission denied", False),
])
def test_release_sets_the_start_time_to_now_first(bin_dir: Path, update_error: str,
                                                  released: bool) -> None:
    calls = bin_dir / "calls"
    fake(bin_dir, "scontrol", f'echo "$*" >> {calls}\n'
         f'if [ "$1" = update ] && [ -n "{update_error}" ]; then\n'
         f'  echo "{update_error}" >&2; exit 1\nfi')
    if released:
        Slurm().release(42)
    else:
        with pytest.raises(SlurmRefused):
            Slurm().release(42)
    want = ["update JobId=42 StartTime=now"] + (["release 42"] if released else [])
    assert calls.read_text().splitlines() == want
