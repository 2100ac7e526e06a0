"""The health rules: which samples make a node degraded, overloaded or idle. Pure: no I/O.

Design note: LBNL NHC's habits. A `Policy` is the `[health]` table of hpcmig.toml (unknown
keys and wrong types rejected); each rule is a small named function of one node's history
and the policy, answering `Finding`s whose Slurm reason carries the prefix
`hpcmig: <rule>: <detail>`. `NodeHistory` keeps one node's recent samples (bounded by the
largest window) and the counters' baselines; `Health` is the registry of every node's
history that hpcmigd feeds. What to do about a finding (drain, resume, move) is hpcmigd's
(hpcmig.controller.policy); this module never acts, never reads a clock and never imports
anything with effects (`Sample` is only a type here); its one lock makes `Health` safe to feed
from several threads.

Counters (EDAC corrected errors, a NIC's errors and drops) are judged by their rise within a
window. A counter that goes backwards (driver reload, reboot), disappears or cannot be read
starts a new baseline: no rise is computed across it, so a reset never raises an alarm. A
node's first sample only sets the baselines, except for the instantaneous rules
(temperature, disk, check) and uncorrected errors: as in NHC, a nonzero `ue_count` is a fault
at once. Uncorrected errors stay a finding until the counter is reset (a reboot or an EDAC
driver reload): a DIMM that lost data does not get well by waiting.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from hpcmig.errors import UsageError

if TYPE_CHECKING:
    from hpcmig.health.sample import Sample

RULES = ("memory-uncorrected", "memory-errors", "temperature", "disk", "nic", "check")
PREFIX = "hpcmig: "
REASON_MAX = 100  # characters of a Slurm reason
MB = 1024 * 1024
MAX_SAMPLES = 10_000  # per node, whatever the windows and the sampling rate


@dataclass(frozen=True)
class Policy:
    """hpcmig.toml's `[health]` table (docs/health.md has every key)."""

    enabled: bool = True  # rules fire at all
    dry_run: bool = False  # hpcmigd only logs what it would do
    interval: float = 3.0  # seconds between the samples hpcmigd takes
    ce_rise: int = 10  # corrected memory errors rising by this much (0: off) ...
    ce_window: float = 60.0  # ... within this many seconds
    ue_any: bool = True  # any uncorrected memory error
    temperature_max: float = 90.0  # degrees C, any sensor above it (0: off)
    free_min_mb: int = 512  # MiB, any watched path below it (0: off)
    nic_rise: int = 100  # one interface's errors + drops rising by this much (0: off) ...
    nic_window: float = 60.0  # ... within this many seconds
    checks: bool = True  # a failing check script
    resume_after: float = 0.0  # seconds healthy before hpcmigd resumes a node it drained
    balance: bool = False  # move containers off overloaded nodes
    balance_factor: float = 1.5  # overloaded: load above cpus * factor ...
    balance_seconds: float = 30.0  # ... in every sample for this long
    balance_idle: float = 0.5  # a target is idle below cpus * this

    def __post_init__(self) -> None:
        for f in fields(self):  # an int where a float belongs (Policy(interval=2)) is one
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))

    @classmethod
    def from_table(cls, table: Mapping[str, Any], origin: str = "health") -> Policy:
        """The policy of a TOML table; unknown keys, wrong types and bad values raise."""
        defaults = cls()
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise UsageError(f"{origin}: unknown key(s) {', '.join(unknown)}",
                             hint=f"known keys: {', '.join(known)}")
        values: dict[str, Any] = {}
        for key, value in table.items():
            want = type(getattr(defaults, key))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
                name = {bool: "true or false", int: "an integer", float: "a number"}[want]
                raise UsageError(f"{origin}: {key} must be {name}, got {value!r}")
            values[key] = value
        policy = cls(**{**defaults.__dict__, **values})
        policy.validate(origin)
        return policy

    def validate(self, origin: str = "health") -> Policy:
        """Values that make sense, else a UsageError naming the key."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{origin}: {f.name} must be a finite number")
            if not isinstance(value, bool) and value < 0:
                raise UsageError(f"{origin}: {f.name} must not be negative, got {value!r}")
        for key in ("interval", "ce_window", "nic_window", "balance_seconds", "balance_factor"):
            if getattr(self, key) <= 0:
                raise UsageError(f"{origin}: {key} must be greater than 0")
        return self

    def to_table(self, changed_only: bool = True) -> dict[str, Any]:
        """The TOML table for this policy (only the keys that differ from the defaults)."""
        defaults = Policy()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not changed_only or getattr(self, f.name) != getattr(defaults, f.name)}

    @property
    def horizon(self) -> float:
        """Seconds of history the rules look at."""
        return max(self.ce_window, self.nic_window, self.balance_seconds)


@dataclass(frozen=True)
class Finding:
    rule: str  # one of RULES
    detail: str

    def reason(self) -> str:
        """The Slurm reason: one line, at most REASON_MAX characters."""
        text = " ".join(f"{PREFIX}{self.rule}: {self.detail}".split())
        return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


class _Counter:
    """One monotonic counter's points since its baseline, within a window."""

    __slots__ = ("points",)

    def __init__(self) -> None:
        self.points: deque[tuple[float, int]] = deque()

    def add(self, time: float, value: int | None, window: float) -> tuple[int, float]:
        """(rise, over how many seconds) within window, after adding this point; a value
        below the last one, or None, starts a new baseline."""
        pts = self.points
        if value is None:
            pts.clear()
            return 0, 0.0
        if pts and value < pts[-1][1]:
            pts.clear()
        pts.append((time, value))
        horizon = time - window
        while pts[0][0] < horizon:
            pts.popleft()
        first_time, first_value = pts[0]
        return value - first_value, time - first_time


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


class NodeHistory:
    """One node's recent samples and counter baselines; the rules run on `observe`."""

    def __init__(self, node: str = "") -> None:
        self.node = node
        self.samples: deque[Sample] = deque()
        self.last_findings: tuple[Finding, ...] = ()
        self.last_finding_time: float | None = None
        self.first_time: float | None = None
        self._ce = _Counter()
        self._nic: dict[str, _Counter] = {}
        self._ue_last: int | None = None  # last readable ue_count
        self._ue_healthy: int = 0  # the ue_count at the current baseline (0 at the start)

    @property
    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def observe(self, sample: Sample, policy: Policy) -> list[Finding]:
        """Record sample and answer the findings on it (none while policy.enabled is off).

        A sample older than the newest one seen is stale (two reporters crossed) and ignored.
        """
        if self.samples and sample.time < self.samples[-1].time:
            return []
        self._keep(sample, policy.horizon)
        findings: list[Finding] = []
        for rule in _RULES:
            findings.extend(rule(self, sample, policy))
        if not policy.enabled:
            findings = []
        self.last_findings = tuple(findings)
        if findings:
            self.last_finding_time = sample.time
        return findings

    def _keep(self, sample: Sample, horizon: float) -> None:
        samples = self.samples
        samples.append(sample)
        if self.first_time is None:
            self.first_time = sample.time
        oldest = sample.time - horizon
        # keep the newest sample at or before the horizon: it anchors the windows
        while len(samples) > 1 and (samples[1].time <= oldest or len(samples) > MAX_SAMPLES):
            samples.popleft()

    def healthy_for(self, now: float) -> float:
        """Seconds since the last finding (since the first sample when there was none)."""
        since = self.last_finding_time if self.last_finding_time is not None \
            else self.first_time
        return 0.0 if since is None else max(0.0, now - since)

    def overloaded(self, policy: Policy, now: float) -> bool:
        """Load above cpus * balance_factor in every sample of the last balance_seconds,
        with at least two samples spanning them (one at or before their start)."""
        start = now - policy.balance_seconds
        factor = policy.balance_factor
        inside = False
        for s in reversed(tuple(self.samples)):  # a snapshot: observe may append meanwhile
            if s.load <= s.cpus * factor:
                return False
            if s.time <= start:
                return inside  # the anchor, overloaded too
            inside = True
        return False  # nothing at or before the start: not long enough

    def idle(self, policy: Policy) -> bool:
        """The last sample's load is below cpus * balance_idle."""
        last = self.last
        return last is not None and last.load < last.cpus * policy.balance_idle


# -- the rules: (history, sample, policy) -> findings, most severe first ---------------------


def memory_uncorrected(h: NodeHistory, s: Sample, p: Policy) -> list[Finding]:
    ue = s.edac_ue
    if ue is None:
        return []
    if h._ue_last is not None and ue < h._ue_last:
        h._ue_healthy = ue  # reset: a new baseline, never an alarm
    h._ue_last = ue
    if not p.ue_any or ue <= h._ue_healthy:
        return []
    return [Finding("memory-uncorrected",
                    f"{ue - h._ue_healthy} uncorrected memory error(s) (EDAC ue_count {ue})")]


def memory_errors(h: NodeHistory, s: Sample, p: Policy) -> list[Finding]:
    rise, span = h._ce.add(s.time, s.edac_ce, p.ce_window)
    if p.ce_rise <= 0 or rise < p.ce_rise:
        return []
    return [Finding("memory-errors", f"+{rise} corrected memory errors in {span:.0f} s "
                                     f"(EDAC ce_count {s.edac_ce})")]


def temperature(h: NodeHistory, s: Sample, p: Policy) -> list[Finding]:
    if p.temperature_max <= 0 or not s.temperatures:
        return []
    label, hottest = max(s.temperatures.items(), key=lambda kv: kv[1])
    if hottest <= p.temperature_max:
        return []
    return [Finding("temperature", f"{_short(label)} {hottest:.0f} C > {p.temperature_max:g} C")]


def disk(h: NodeHistory, s: Sample, p: Policy) -> list[Finding]:
    if p.free_min_mb <= 0 or not s.free:
        return []
    path, free = min(s.free.items(), key=lambda kv: kv[1])
    if free >= p.free_min_mb * MB:
        return []
    return [Finding("disk", f"{_short(path)} {free // MB} MB free < {p.free_min_mb} MB")]


def nic(h: NodeHistory, s: Sample, p: Policy) -> list[Finding]:
    counters = h._nic
    for gone in [iface for iface in counters if iface not in s.nic]:
        del counters[gone]  # back later: a new baseline
    worst: tuple[int, float, str] | None = None
    for iface, value in s.nic.items():
        counter = counters.get(iface)
        if counter is None:
            counter = counters[iface] = _Counter()
        rise, span = counter.add(s.time, value, p.nic_window)
        if worst is None or rise > worst[0]:
            worst = (rise, span, iface)
    if p.nic_rise <= 0 or worst is None or worst[0] < p.nic_rise:
        return []
    rise, span, iface = worst
    return [Finding("nic", f"{_short(iface, 20)} +{rise} errors/drops in {span:.0f} s")]


def check(h: NodeHistory, s: Sample, p: Policy) -> list[Finding]:
    if not p.checks:
        return []
    return [Finding("check", f"{c.name}: {c.reason}") for c in s.checks if not c.ok]


_RULES: tuple[Callable[[NodeHistory, Sample, Policy], list[Finding]], ...] = (
    memory_uncorrected, memory_errors, temperature, disk, nic, check)


class Health:
    """Every node's history: what hpcmigd feeds each sample to.

    Safe to call from several threads (hpcmigd's poller and its RPC handlers): observe and
    forget hold one lock; `overloaded` reads a snapshot of the samples.
    """

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy if policy is not None else Policy()
        self.nodes: dict[str, NodeHistory] = {}
        self._lock = threading.Lock()

    def history(self, node: str) -> NodeHistory:
        with self._lock:
            return self._history(node)

    def _history(self, node: str) -> NodeHistory:
        hist = self.nodes.get(node)
        if hist is None:
            hist = self.nodes[node] = NodeHistory(node)
        return hist

    def observe(self, sample: Sample, policy: Policy | None = None) -> list[Finding]:
        """Findings on sample under policy (default: this registry's)."""
        with self._lock:
            return self._history(sample.node).observe(
                sample, self.policy if policy is None else policy)

    def forget(self, node: str) -> None:
        with self._lock:
            self.nodes.pop(node, None)
