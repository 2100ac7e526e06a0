"""hpcmigd's traffic matrix: live counts of every node of the job plus the counts nodes saved
when the job left them, by container; a silent node is named. The agent's saved counts add
up across departures and are root-private."""

from __future__ import annotations

import json
import stat
from ipaddress import IPv4Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpcmig.agent import traffic as agent_traffic
from hpcmig.cli.traffic import heaviest
from hpcmig.controller import traffic
from hpcmig.errors import HpcmigError, UsageError
from hpcmig.network import traffic as counts
from hpcmig.slurm.parse import JobInfo
from hpcmig.vcluster import plan

A = [f"10.252.0.{i}" for i in (1, 2, 3)]


def vcluster() -> Any:
    return plan(job_id="7", restart=0, user="u", uid=1000, gid=1000,
                nodes=["n1", "n2", "n3"], node_addrs={"n1": "10.1.0.1", "n2": "10.1.0.2",
                                                      "n3": "10.1.0.3"},
                block=IPv4Network("10.252.0.0/26"))


class Agent:
    def __init__(self, answer: dict[tuple[str, str], tuple[int, int]] | None) -> None:
        self.answer = answer

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert op == "job.traffic" and args["job_id"] == "7"
        if self.answer is None:
            raise HpcmigError("n3: connection refused")
        return {"node": "?", "counts": counts.to_json(self.answer)}


def service(tmp_path: Path, live: dict[str, Any]) -> Any:
    vc = vcluster()
    assert [m.address for m in vc.members] == A
    job = JobInfo(job_id=7, name="j", user="u", state="RUNNING", nodes=("n1", "n2", "n3"))
    return SimpleNamespace(cfg=SimpleNamespace(state_dir=str(tmp_path)),
                           job=lambda _j: job, vcluster=lambda _j, _job=None: vc,
                           agent=lambda node: Agent(live[node]))


def test_live_and_saved_counts_add_up_by_container(tmp_path: Path) -> None:
    svc = service(tmp_path, {"n1": {(A[0], A[1]): (1000, 2)},
                             "n2": {(A[1], A[2]): (500, 1), (A[1], A[0]): (40, 1),
                                    ("10.252.0.9", A[0]): (7, 1)},  # not a container of 7
                             "n3": None})
    saved = agent_traffic.saved_dir(str(tmp_path), "7")
    saved.mkdir(parents=True)
    (saved / "n9.json").write_text(json.dumps(
        {"node": "n9", "counts": counts.to_json({(A[0], A[1]): (24, 1)})}))
    got = traffic.measure(svc, "7")
    assert got["bytes"] == [[0, 1024, 0], [40, 0, 500], [0, 0, 0]]
    assert got["packets"] == [[0, 3, 0], [1, 0, 1], [0, 0, 0]]
    assert list(got["missing"]) == ["n3"] and "refused" in got["missing"]["n3"]
    assert [(c["index"], c["node"]) for c in got["containers"]] == [(0, "n1"), (1, "n2"),
                                                                     (2, "n3")]
    rows = heaviest(got, 2)
    assert [(r["from"], r["to"], r["bytes"]) for r in rows] == [(0, 1, 1024), (1, 2, 500)]
    assert abs(rows[0]["share"] - 1024 / 1564) < 1e-9
    traffic.sweep(str(tmp_path), ["7"])
    assert not saved.exists()


class Net:
    def __init__(self) -> None:
        self.live = {(A[0], A[1]): (100, 1), (A[1], A[0]): (10, 1)}
        self.forgotten: list[tuple[str, str]] = []

    def traffic(self, block: IPv4Network) -> dict[tuple[str, str], tuple[int, int]]:
        return dict(self.live)

    def forget_traffic(self, pairs: list[tuple[str, str]]) -> None:
        self.forgotten += pairs


def test_leaving_a_node_saves_its_counts_and_clears_them_twice_over(tmp_path: Path) -> None:
    net = Net()
    agent = SimpleNamespace(net=net, node="n1", config=SimpleNamespace(state_dir=str(tmp_path)))
    vc = vcluster()
    agent_traffic.save_and_forget(agent, vc)  # type: ignore[arg-type]
    agent_traffic.save_and_forget(agent, vc)  # the job came back and left again
    path = agent_traffic.saved_dir(str(tmp_path), "7") / "n1.json"
    assert agent_traffic.read_saved(path) == {(A[0], A[1]): (200, 2), (A[1], A[0]): (20, 2)}
    assert sorted(net.forgotten) == sorted([*net.live, *net.live])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert list(path.parent.glob("*.tmp")) == []


def test_a_container_that_leaves_saves_only_what_it_sent(tmp_path: Path) -> None:
    """A migration source: the moved container's pairs are saved and deleted here (they would
    otherwise count packets forwarded to this node's containers once it runs elsewhere);
    the others stay live. Its network made on a node counts it towards the whole job."""
    net = Net()
    added: list[tuple[str, list[str]]] = []
    net.count_from = lambda source, peers: added.append((source, peers))  # type: ignore
    agent = SimpleNamespace(net=net, node="n1", config=SimpleNamespace(state_dir=str(tmp_path)))
    vc = vcluster()
    agent_traffic.save_and_forget(agent, vc, source=A[1])  # type: ignore[arg-type]
    path = agent_traffic.saved_dir(str(tmp_path), "7") / "n1.json"
    assert agent_traffic.read_saved(path) == {(A[1], A[0]): (10, 1)}
    assert net.forgotten == [(A[1], A[0])]
    agent_traffic.count(agent, vc, A[2])  # type: ignore[arg-type]
    assert added == [(A[2], [m.address for m in vc.members])]


def test_an_ended_job_leaves_its_matrix_as_the_last_run_of_its_name(tmp_path: Path) -> None:
    state = str(tmp_path)
    vc = vcluster()
    job = JobInfo(job_id=7, name="lulesh/big", user="u", state="RUNNING")
    traffic.remember(state, job, vc)
    traffic.remember(state, job, vc)  # once is enough; the second call changes nothing
    saved = agent_traffic.saved_dir(state, "7")
    (saved / "n1.json").write_text(json.dumps(
        {"node": "n1", "counts": counts.to_json({(A[0], A[2]): (900, 3),
                                                 ("10.252.0.9", A[0]): (5, 1)})}))
    with pytest.raises(UsageError, match="no earlier run of job 'lulesh/big'"):
        traffic.last_run(state, 1000, "lulesh/big")
    traffic.sweep(state, ["7"])
    assert not saved.exists()
    last = traffic.last_run(state, 1000, "lulesh/big")
    assert last["job_id"] == "7" and last["bytes"] == [[0, 0, 900], [0, 0, 0], [0, 0, 0]]
    path = traffic.history_path(state, 1000, "lulesh/big")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(UsageError):  # another user's runs are not this user's history
        traffic.last_run(state, 1001, "lulesh/big")
    # a job that sent nothing, or whose note is missing, leaves no history
    traffic.remember(state, JobInfo(job_id=8, name="quiet", user="u", state="RUNNING"),
                     plan(job_id="8", restart=0, user="u", uid=1000, gid=1000, nodes=["n1"],
                          node_addrs={"n1": "10.1.0.1"}, block=IPv4Network("10.252.0.64/26")))
    assert traffic.archive(state, "8") is None and traffic.archive(state, "9") is None


def test_a_job_that_ended_before_hpcmigd_noted_it_is_named_by_slurm(tmp_path: Path) -> None:
    """No note (the job was over before hpcmigd's first look): Slurm's record names it and
    the addresses give the containers."""
    state = str(tmp_path)
    saved = agent_traffic.saved_dir(state, "9")
    saved.mkdir(parents=True)
    (saved / "n1.json").write_text(json.dumps({"node": "n1", "counts": counts.to_json(
        {(A[0], A[2]): (700, 2), (A[2], A[0]): (10, 1)})}))
    job = JobInfo(job_id=9, name="quick", user="u", state="COMPLETED", uid=1000)
    traffic.sweep(state, ["9"], {"9": job}, block_prefix=26)
    assert traffic.last_run(state, 1000, "quick")["bytes"] == [[0, 0, 700], [0, 0, 0],
                                                               [10, 0, 0]]
    assert not saved.exists()
