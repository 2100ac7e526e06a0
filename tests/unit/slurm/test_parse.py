"""Parsers against output recorded from Slurm 22.05.8 on the testbed (fixtures/)."""

from pathlib import Path

import pytest

from hpcmig.errors import SlurmError
from hpcmig.slurm import parse

FIX = Path(__file__).parent / "fixtures"


def read(name: str) -> str:
    return (FIX / name).read_text()


def test_nodes_json_and_text_agree() -> None:
    from_json = {n.name: n for n in parse.nodes_from_json(read("sinfo.json"))}
    from_text = {n.name: n for n in parse.nodes_from_text(read("scontrol_show_node.txt"))}
    assert set(from_json) == set(from_text) == {"node1", "node2", "node3"}
    for name in from_json:
        a, b = from_json[name], from_text[name]
        assert (a.state, a.flags, a.reason, a.reason_user, a.cpus, a.address) == (
            b.state, b.flags, b.reason, b.reason_user, b.cpus, b.address
        )


def test_foreign_drain_reason_is_read_with_its_author() -> None:
    node3 = {n.name: n for n in parse.nodes_from_text(read("scontrol_show_node.txt"))}["node3"]
    assert node3.drained and node3.state == "idle" and node3.display_state == "drained"
    assert node3.reason == "bad dimm (admin)" and node3.reason_user == "root"
    assert not node3.reason_is_ours


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_draining_node_with_a_job(fmt: str) -> None:
    if fmt == "json":
        nodes = parse.nodes_from_json(read("sinfo_draining.json"))
    else:
        nodes = parse.nodes_from_text(read("scontrol_show_node_draining.txt"))
    node1 = {n.name: n for n in nodes}["node1"]
    assert node1.drained and node1.display_state == "draining"
    assert node1.reason == "hpcmig: evacuating" and node1.reason_is_ours
    assert node1.alloc_cpus == 1


def test_jobs_json_and_text_agree() -> None:
    from_json = {j.job_id: j for j in parse.jobs_from_json(read("squeue.json"))}
    from_text = {j.job_id: j for j in parse.jobs_from_text(read("scontrol_show_job.txt"))}
    assert set(from_json) == set(from_text)
    running = from_json[5]
    assert running.state == "RUNNING" and running.user == "hpcuser"
    assert running.nodes == ("node1", "node2") and running.excluded == ("node3",)
    assert running.name == "ringjob" and running.batch_host == "node1"
    for jid, job in from_json.items():
        other = from_text[jid]
        assert (job.user, job.state, job.nodes, job.restart_count, job.excluded) == (
            other.user, other.state, other.nodes, other.restart_count, other.excluded
        )
    assert from_json[6].state == "PENDING" and from_json[6].nodes == ()


def test_requeued_job_counts_restarts() -> None:
    job = {j.job_id: j for j in parse.jobs_from_json(read("squeue_requeued.json"))}[5]
    assert job.restart_count == 1 and job.state == "PENDING"


def test_jobs_attach_to_nodes() -> None:
    nodes = parse.with_jobs(
        parse.nodes_from_json(read("sinfo.json")), parse.jobs_from_json(read("squeue.json"))
    )
    assert {n.name: n.jobs for n in nodes} == {"node1": (5,), "node2": (5,), "node3": ()}


def test_keyvalues_keeps_spaces_in_values() -> None:
    kv = parse.keyvalues("NodeName=n1 State=IDLE Reason=two words here [root@2026] Extra=1")
    assert kv["Reason"] == "two words here [root@2026]" and kv["Extra"] == "1"


def test_bad_json_is_a_slurm_error() -> None:
    with pytest.raises(SlurmError):
        parse.nodes_from_json("not json")
    with pytest.raises(SlurmError):
        parse.jobs_from_json('{"errors": [{"error": "boom"}], "jobs": []}')
