"""Read what Slurm prints into typed records: JSON (`sinfo/squeue --json`) or parsable text
(`scontrol show node|job -o`) for versions without JSON.

Pure functions, unit-tested on outputs recorded from Slurm 22.05. No subprocess here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hpcmig.errors import SlurmError
from hpcmig.hostlist import expand

HPCMIG_PREFIX = "hpcmig:"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str  # base state, lower case: idle, mixed, allocated, down, ...
    flags: frozenset[str] = frozenset()  # upper case: DRAIN, NOT_RESPONDING, ...
    reason: str = ""
    reason_user: str = ""
    cpus: int = 0
    alloc_cpus: int = 0
    address: str = ""
    jobs: tuple[int, ...] = ()

    @property
    def drained(self) -> bool:
        """DRAIN set: draining (jobs still running) or drained (empty)."""
        return "DRAIN" in self.flags

    @property
    def reason_is_ours(self) -> bool:
        return self.reason.startswith(HPCMIG_PREFIX)

    @property
    def display_state(self) -> str:
        if self.drained:
            return "drained" if self.state == "idle" else "draining"
        return self.state


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    name: str
    user: str
    state: str  # upper case: RUNNING, PENDING, ...
    nodes: tuple[str, ...] = ()
    restart_count: int = 0
    excluded: tuple[str, ...] = ()
    batch_host: str = ""
    workdir: str = ""
    stdout: str = ""
    reason: str = ""
    comment: str = ""
    uid: int = -1
    gid: int = -1


def _load(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SlurmError(f"cannot read {what} JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SlurmError(f"unexpected {what} JSON: not an object")
    errors = data.get("errors") or []
    if errors:
        raise SlurmError(f"{what} reported errors: {errors}")
    return data


def nodes_from_json(text: str) -> list[NodeInfo]:
    """`sinfo --json` (one entry per node)."""
    data = _load(text, "sinfo")
    out: dict[str, NodeInfo] = {}
    for n in data.get("nodes", []):
        state = str(n.get("state", "unknown")).lower()
        out[n["name"]] = NodeInfo(
            name=n["name"],
            state=state,
            flags=frozenset(str(f).upper() for f in n.get("state_flags", [])),
            reason=n.get("reason") or "",
            reason_user=n.get("reason_set_by_user") or "",
            cpus=int(n.get("cpus", 0)),
            alloc_cpus=int(n.get("alloc_cpus", 0)),
            address=n.get("address") or "",
        )
    return list(out.values())


def jobs_from_json(text: str) -> list[JobInfo]:
    """`squeue --json`."""
    data = _load(text, "squeue")
    jobs = []
    for j in data.get("jobs", []):
        jobs.append(
            JobInfo(
                job_id=int(j["job_id"]),
                name=j.get("name", ""),
                user=j.get("user_name", ""),
                state=str(j.get("job_state", "")).upper(),
                nodes=tuple(expand(j.get("nodes") or "")),
                restart_count=int(j.get("restart_cnt", 0)),
                excluded=tuple(expand(j.get("excluded_nodes") or "")),
                batch_host=j.get("batch_host") or "",
                workdir=j.get("current_working_directory") or "",
                stdout=j.get("standard_output") or "",
                reason=_null(j.get("state_reason") or ""),
                comment=j.get("comment") or "",
                uid=int(j.get("user_id", -1)),
                gid=int(j.get("group_id", -1)),
            )
        )
    return jobs


# -- parsable text (`scontrol show ... -o`) --------------------------------------------------
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def keyvalues(line: str) -> dict[str, str]:
    """`A=1 B=two words C=3` -> {'A': '1', 'B': 'two words', 'C': '3'}.

    Values may hold spaces (Reason=...); a value ends where the next ` Key=` starts.
    """
    matches = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def _null(value: str) -> str:
    return "" if value in ("(null)", "None", "N/A") else value


_REASON_SUFFIX = re.compile(r"^(.*?)\s*\[([^@\]]+)@[^\]]*\]$")


def nodes_from_text(text: str) -> list[NodeInfo]:
    """`scontrol show node -o`: State=IDLE+DRAIN, Reason=text [user@time]."""
    nodes = []
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        kv = keyvalues(line)
        base, *flags = kv.get("State", "UNKNOWN").split("+")
        reason, user = _null(kv.get("Reason", "")), ""
        m = _REASON_SUFFIX.match(reason)
        if m:
            reason, user = m.group(1), m.group(2)
        nodes.append(
            NodeInfo(
                name=kv["NodeName"],
                state=base.rstrip("*").lower(),
                flags=frozenset(f.upper() for f in flags),
                reason=reason,
                reason_user=user,
                cpus=int(kv.get("CPUTot", "0") or 0),
                alloc_cpus=int(kv.get("CPUAlloc", "0") or 0),
                address=_null(kv.get("NodeAddr", "")),
            )
        )
    return nodes


def _id_of(value: str) -> int:
    """`hpcuser(1001)` -> 1001 (-1 when Slurm printed none)."""
    _, _, rest = value.partition("(")
    try:
        return int(rest.rstrip(")"))
    except ValueError:
        return -1


def jobs_from_text(text: str) -> list[JobInfo]:
    """`scontrol show job -o`."""
    jobs = []
    for line in text.splitlines():
        if not line.startswith("JobId="):
            continue
        kv = keyvalues(line)
        user = kv.get("UserId", "").split("(", 1)[0]
        jobs.append(
            JobInfo(
                job_id=int(kv["JobId"]),
                name=kv.get("JobName", ""),
                user=user,
                state=kv.get("JobState", "").upper(),
                nodes=tuple(expand(_null(kv.get("NodeList", "")))),
                restart_count=int(kv.get("Restarts", "0") or 0),
                excluded=tuple(expand(_null(kv.get("ExcNodeList", "")))),
                batch_host=_null(kv.get("BatchHost", "")),
                workdir=_null(kv.get("WorkDir", "")),
                stdout=_null(kv.get("StdOut", "")),
                reason=_null(kv.get("Reason", "")),
                comment=_null(kv.get("Comment", "")),
                uid=_id_of(kv.get("UserId", "")),
                gid=_id_of(kv.get("GroupId", "")),
            )
        )
    return jobs


def with_jobs(nodes: list[NodeInfo], jobs: list[JobInfo]) -> list[NodeInfo]:
    """Attach the ids of running jobs to the nodes they run on."""
    on: dict[str, list[int]] = {}
    for job in jobs:
        if job.state in ("RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING"):
            for name in job.nodes:
                on.setdefault(name, []).append(job.job_id)
    return [
        NodeInfo(**{**n.__dict__, "jobs": tuple(sorted(on.get(n.name, [])))}) for n in nodes
    ]


def config_from_text(text: str) -> dict[str, str]:
    """`scontrol show config`: its `Key = Value` lines (headers and blank lines skipped)."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config
