"""Read what Slurm prints into typed records: JSON or parsable text (`scontrol show node|job
-o`) for versions without JSON.

The JSON shapes differ by Slurm version, and this module is the one place that knows them:
- Slurm 22.05 (data_parser v0.0.38): `sinfo --json` lists every node, `state` a lower-case
  string beside `state_flags`; `squeue --json` lists every job the controller knows;
- Slurm 24.11 (data_parser v0.0.42; the change came in between): `sinfo --json` lists groups
  of nodes (`"sinfo": [...]`, no per-node CPU counts) and `squeue --json` only the jobs its
  default filter keeps (no finished ones), so nodes and jobs come from `scontrol show
  node|job --json` instead: per node / per job as before, every state a list of upper-case
  words (`["IDLE", "DRAIN"]`), some numbers objects (`{"set": .., "infinite": .., "number":
  ..}`).
`json_generation` tells which; both shapes parse to the same records.

Pure functions, unit-tested on outputs recorded from Slurm 22.05 and 24.11 (fixtures/ names the
version). No subprocess here.
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


LEGACY = "legacy"  # Slurm 22.05: sinfo/squeue --json list every node and job
SCONTROL = "scontrol"  # Slurm 24.11: nodes and jobs from `scontrol show node|job --json`


def json_generation(sinfo_json: str) -> str:
    """Which JSON the installed Slurm speaks, from its `sinfo --json`: LEGACY or SCONTROL."""
    data = _load(sinfo_json, "sinfo")
    if "sinfo" in data:  # node groups (24.11)
        return SCONTROL
    if "nodes" in data:
        return LEGACY
    raise SlurmError("unexpected sinfo JSON: neither 'nodes' nor 'sinfo'")


def _number(value: Any, default: int = 0) -> int:
    """A plain number or data_parser's {"set", "infinite", "number"} (24.11)."""
    if isinstance(value, dict):
        return int(value.get("number", default)) if value.get("set", True) else default
    return default if value is None else int(value)


def _states(value: Any) -> list[str]:
    """A state as a list of upper-case words: "mixed" (22.05) or ["MIXED", "DRAIN"] (24.11)."""
    if isinstance(value, list):
        return [str(v).upper() for v in value]
    return [str(value).upper()] if value not in (None, "") else []


def nodes_from_json(text: str) -> list[NodeInfo]:
    """One entry per node: `sinfo --json` (22.05) or `scontrol show node --json` (24.11)."""
    data = _load(text, "node")
    if "sinfo" in data:
        raise SlurmError("this sinfo JSON lists node groups, not nodes (Slurm 24.11): "
                         "read `scontrol show node --json`")
    out: dict[str, NodeInfo] = {}
    for n in data.get("nodes", []):
        # 22.05: state "mixed" + state_flags ["DRAIN"]; 24.11: state ["MIXED", "DRAIN"]
        base, *flags = _states(n.get("state")) or ["UNKNOWN"]
        flags += _states(n.get("state_flags"))
        out[n["name"]] = NodeInfo(
            name=n["name"],
            state=base.lower(),
            flags=frozenset(flags),
            reason=n.get("reason") or "",
            reason_user=n.get("reason_set_by_user") or "",
            cpus=_number(n.get("cpus")),
            alloc_cpus=_number(n.get("alloc_cpus")),
            address=n.get("address") or "",
        )
    return list(out.values())


# Slurm's own order (job_state_string): a job with one of these flags is shown as the flag,
# as `scontrol show job` prints it (JobState=COMPLETING while its epilogs run).
_JOB_FLAGS = ("COMPLETING", "STAGE_OUT", "CONFIGURING", "RESIZING", "REQUEUED", "REQUEUE_FED",
              "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED", "RESV_DEL_HOLD",
              "SIGNALING")


def _job_state(value: Any) -> str:
    """22.05: "COMPLETING"; 24.11: ["COMPLETED", "COMPLETING"] (base state, then flags)."""
    words = _states(value)
    for flag in _JOB_FLAGS:
        if flag in words[1:]:
            return flag
    return words[0] if words else ""


def jobs_from_json(text: str) -> list[JobInfo]:
    """`squeue --json` (22.05) or `scontrol show job --json` (24.11)."""
    data = _load(text, "job")
    jobs = []
    for j in data.get("jobs", []):
        state = _job_state(j.get("job_state"))
        jobs.append(
            JobInfo(
                job_id=_number(j["job_id"]),
                name=j.get("name", ""),
                user=j.get("user_name", ""),
                state=state,
                nodes=tuple(expand(j.get("nodes") or "")),
                restart_count=_number(j.get("restart_cnt")),
                excluded=tuple(expand(j.get("excluded_nodes") or "")),
                batch_host=j.get("batch_host") or "",
                workdir=j.get("current_working_directory") or "",
                stdout=j.get("standard_output") or "",
                reason=_null(j.get("state_reason") or ""),
                comment=j.get("comment") or "",
                uid=_number(j.get("user_id"), -1),
                gid=_number(j.get("group_id"), -1),
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


_INDEXED = re.compile(r"^(\w+)\[\d+\]$")


def config_from_text(text: str) -> dict[str, str]:
    """`scontrol show config`: its `Key = Value` lines (headers and blank lines skipped).

    Slurm 24.11 numbers the keys that may be given several times (`Prolog[0] = ...`,
    `Epilog[0]`); they are read under the plain key, several values joined by commas, as
    22.05 prints its single one.
    """
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        key, value = key.strip(), value.strip()
        if not sep or not key or " " in key:
            continue
        m = _INDEXED.match(key)
        if m:
            key = m.group(1)
            value = f"{config[key]},{value}" if config.get(key) else value
        config[key] = value
    return config


def duration(text: str) -> float | None:
    """Slurm's time format (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds;
    None for UNLIMITED, NOT_SET, INVALID or nothing."""
    value = text.strip()
    if not value or value.upper() in ("UNLIMITED", "NOT_SET", "INVALID", "INFINITE"):
        return None
    days, _, clock = value.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        whole_days = int(days) if days else 0
    except ValueError:
        raise SlurmError(f"cannot read Slurm time {value!r}") from None
    if not 1 <= len(parts) <= 3:
        raise SlurmError(f"cannot read Slurm time {value!r}")
    if days:  # days-hours[:minutes[:seconds]]
        parts = (parts + [0, 0])[:3]
    elif len(parts) == 1:  # minutes
        parts = [0, parts[0], 0]
    elif len(parts) == 2:  # minutes:seconds
        parts = [0, *parts]
    hours, minutes, seconds = parts
    return float(whole_days * 86400 + hours * 3600 + minutes * 60 + seconds)
