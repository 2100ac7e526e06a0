import pytest

from hpcmig import hooks
from hpcmig.slurm.parse import JobInfo


@pytest.mark.parametrize(
    ("comment", "opts"),
    [
        ("hpcmig", {}),
        ("hpcmig:image=app.sif,spares=1", {"image": "app.sif", "spares": "1"}),
        ("", None),
        ("hpcmigrate", None),
        ("my own comment", None),
    ],
)
def test_opt_in_comes_only_from_an_hpcmig_comment(comment: str, opts: object) -> None:
    assert hooks.parse_opt_in(comment) == opts


def test_hooks_leave_jobs_that_did_not_ask_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURMD_NODENAME", "node1")
    read: list[str] = []
    monkeypatch.setattr(hooks, "read_job", lambda job_id: read.append(job_id) or JobInfo(
        int(job_id), "j", "u", "RUNNING", comment="just a comment"))

    def no_agent(*args: object, **kw: object) -> None:
        raise AssertionError("a job that did not opt in reached the agent")

    monkeypatch.setattr(hooks.AgentClient, "call", no_agent)
    assert hooks.prolog_main() == 0 and hooks.epilog_main() == 0
    assert read == ["42", "42"]  # both hooks looked at the job, then left it alone
