"""Parsers against output recorded from real Slurm daemons on the testbed (fixtures/, the
version in each name: 22.05.8 on Debian 12, 24.11.5 on Debian 13, 26.05.5 on Debian unstable;
record_fixtures.sh made the 24.11 and 26.05 ones). The JSON hpcmig reads differs by version
(parse.py); the text does not."""

from pathlib import Path

import pytest

from hpcmig.errors import SlurmError
from hpcmig.slurm import parse

FIX = Path(__file__).parent / "fixtures"
# every Slurm version recorded (record_fixtures.sh names the files `<what>_<version>.<ext>`)
VERSIONS = sorted(p.stem.split("_")[-1] for p in FIX.glob("scontrol_show_node_[0-9]*.txt"))
# the JSON generation each speaks, known from the recording (not from parse.py)
GENERATION = {"22.05": parse.LEGACY}  # later versions: scontrol show node|job --json

# what the adapter reads as JSON in each generation (adapter.Slurm._json_argv)
JSON = {
    parse.LEGACY: {"nodes": "sinfo", "jobs": "squeue"},
    parse.SCONTROL: {"nodes": "scontrol_show_node", "jobs": "scontrol_show_job"},
}


def generation(version: str) -> str:
    return GENERATION.get(version, parse.SCONTROL)


def read(name: str) -> str:
    return (FIX / name).read_text()


def json_nodes(version: str, suffix: str = "") -> list[parse.NodeInfo]:
    what = JSON[generation(version)]["nodes"]
    return parse.nodes_from_json(read(f"{what}{suffix}_{version}.json"))


def json_jobs(version: str, suffix: str = "") -> list[parse.JobInfo]:
    what = JSON[generation(version)]["jobs"]
    return parse.jobs_from_json(read(f"{what}{suffix}_{version}.json"))


def by_name(jobs: list[parse.JobInfo]) -> dict[str, parse.JobInfo]:
    return {j.name: j for j in jobs}


@pytest.mark.parametrize("version", VERSIONS)
def test_sinfo_json_tells_the_generation(version: str) -> None:
    assert parse.json_generation(read(f"sinfo_{version}.json")) == generation(version)


def test_versions_recorded() -> None:
    assert {"22.05", "24.11"} <= set(VERSIONS)


@pytest.mark.parametrize("version", [v for v in VERSIONS if generation(v) == parse.SCONTROL])
def test_sinfo_json_of_node_groups_is_not_taken_for_nodes(version: str) -> None:
    with pytest.raises(SlurmError, match="scontrol show node --json"):
        parse.nodes_from_json(read(f"sinfo_{version}.json"))


@pytest.mark.parametrize("version", VERSIONS)
def test_nodes_json_and_text_agree(version: str) -> None:
    from_json = {n.name: n for n in json_nodes(version)}
    text = read(f"scontrol_show_node_{version}.txt")
    from_text = {n.name: n for n in parse.nodes_from_text(text)}
    assert set(from_json) == set(from_text) == {"node1", "node2", "node3"}
    for name in from_json:
        a, b = from_json[name], from_text[name]
        assert (a.state, a.flags, a.reason, a.reason_user, a.cpus, a.alloc_cpus, a.address) == (
            b.state, b.flags, b.reason, b.reason_user, b.cpus, b.alloc_cpus, b.address
        )
    assert from_json["node1"].state == "mixed" and from_json["node1"].address == "10.251.0.1"


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("version", VERSIONS)
def test_foreign_drain_reason_is_read_with_its_author(version: str, fmt: str) -> None:
    nodes = (json_nodes(version) if fmt == "json"
             else parse.nodes_from_text(read(f"scontrol_show_node_{version}.txt")))
    node3 = {n.name: n for n in nodes}["node3"]
    assert node3.drained and node3.state == "idle" and node3.display_state == "drained"
    assert node3.flags == {"DRAIN"} and node3.cpus == 4
    assert node3.reason == "bad dimm (admin)" and node3.reason_user == "root"
    assert not node3.reason_is_ours


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("version", VERSIONS)
def test_draining_node_with_a_job(version: str, fmt: str) -> None:
    if fmt == "json":
        nodes = json_nodes(version, "_draining")
    else:
        nodes = parse.nodes_from_text(read(f"scontrol_show_node_draining_{version}.txt"))
    node1 = {n.name: n for n in nodes}["node1"]
    assert node1.drained and node1.display_state == "draining"
    assert node1.reason == "hpcmig: evacuating" and node1.reason_is_ours
    assert node1.alloc_cpus == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_jobs_json_and_text_agree(version: str) -> None:
    from_json = {j.job_id: j for j in json_jobs(version)}
    text = read(f"scontrol_show_job_{version}.txt")
    from_text = {j.job_id: j for j in parse.jobs_from_text(text)}
    assert set(from_json) == set(from_text)
    running = by_name(list(from_json.values()))["ringjob"]
    assert running.state == "RUNNING" and running.user == "hpcuser"
    assert running.nodes == ("node1", "node2") and running.excluded == ("node3",)
    assert running.batch_host == "node1" and running.uid > 0
    assert running.workdir == "/run/hpcmig-testbed/home/hpcuser"
    for jid, job in from_json.items():
        other = from_text[jid]
        assert (job.user, job.state, job.nodes, job.restart_count, job.excluded, job.uid,
                job.gid, job.batch_host, job.workdir) == (
            other.user, other.state, other.nodes, other.restart_count, other.excluded,
            other.uid, other.gid, other.batch_host, other.workdir
        )
    waiting = by_name(list(from_json.values()))["waiting"]
    assert waiting.state == "PENDING" and waiting.nodes == () and waiting.reason
    # a finished job is still listed (Slurm.wait sees it end)
    assert by_name(list(from_json.values()))["hostname"].state == "COMPLETED"


def test_squeue_json_of_24_11_parses_but_leaves_finished_jobs_out() -> None:
    """Why the adapter reads `scontrol show job --json` on 24.11: squeue's default filter."""
    jobs = by_name(parse.jobs_from_json(read("squeue_24.11.json")))
    assert set(jobs) == {"ringjob", "waiting"}
    assert jobs["ringjob"].state == "RUNNING" and jobs["ringjob"].nodes == ("node1", "node2")


@pytest.mark.parametrize("version", VERSIONS)
def test_requeued_job_counts_restarts(version: str) -> None:
    job = by_name(json_jobs(version, "_requeued"))["ringjob"]
    assert job.restart_count == 1 and job.state == "PENDING" and job.nodes == ()


@pytest.mark.parametrize("version", VERSIONS)
def test_jobs_attach_to_nodes(version: str) -> None:
    jobs = json_jobs(version)
    ring = by_name(jobs)["ringjob"].job_id
    nodes = parse.with_jobs(json_nodes(version), jobs)
    assert {n.name: n.jobs for n in nodes} == {"node1": (ring,), "node2": (ring,), "node3": ()}


@pytest.mark.parametrize("value, expected", [
    (3, 3), (None, 0), ({"set": True, "infinite": False, "number": 7}, 7),
    ({"set": False, "infinite": True, "number": 0}, 0),
])
def test_numbers_plain_or_data_parser_objects(value: object, expected: int) -> None:
    assert parse._number(value) == expected


def test_keyvalues_keeps_spaces_in_values() -> None:
    kv = parse.keyvalues("NodeName=n1 State=IDLE Reason=two words here [root@2026] Extra=1")
    assert kv["Reason"] == "two words here [root@2026]" and kv["Extra"] == "1"


def test_bad_json_is_a_slurm_error() -> None:
    with pytest.raises(SlurmError):
        parse.nodes_from_json("not json")
    with pytest.raises(SlurmError):
        parse.jobs_from_json('{"errors": [{"error": "boom"}], "jobs": []}')
    with pytest.raises(SlurmError, match="neither"):
        parse.json_generation('{"errors": []}')


def test_config_keys_numbered_by_24_11_read_under_the_plain_key() -> None:
    config = parse.config_from_text("Prolog[0]               = /a/p1\n"
                                    "Prolog[1]               = /b/p2\nPrologFlags = Alloc\n")
    assert config["Prolog"] == "/a/p1,/b/p2" and config["PrologFlags"] == "Alloc"


@pytest.mark.parametrize("value, expected", [
    ("COMPLETING", "COMPLETING"), (["RUNNING"], "RUNNING"),
    (["COMPLETED", "COMPLETING"], "COMPLETING"),  # epilogs still running: not ended yet
    (["PENDING", "REQUEUED"], "REQUEUED"), (["FAILED"], "FAILED"), ([], ""),
])
def test_job_state_is_what_scontrol_prints(value: object, expected: str) -> None:
    """24.11's list of base state and flags reads as 22.05's (and the text's) one word."""
    assert parse._job_state(value) == expected


@pytest.mark.parametrize("text,seconds", [
    ("5", 300.0), ("03:04", 184.0), ("02:03:04", 7384.0), ("1-02", 93600.0),
    ("1-02:03", 93780.0), ("1-02:03:04", 93784.0), ("UNLIMITED", None), ("NOT_SET", None),
    ("", None), ("  10:00\n", 600.0)])
def test_slurm_durations(text: str, seconds: float | None) -> None:
    assert parse.duration(text) == seconds


@pytest.mark.parametrize("text", ["1:2:3:4", "a-01:00", "ten"])
def test_bad_slurm_durations_are_errors(text: str) -> None:
    with pytest.raises(SlurmError, match="cannot read Slurm time"):
        parse.duration(text)
