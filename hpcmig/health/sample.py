"""One health sample of one node: what the rules judge, as it crosses RPC.

Design note: this module owns the `Sample` record (with its JSON form: the agent answers it to
hpcmigd, `hpcmig-healthcheck` reports it) and `take`, which assembles one from the node's
sources (hpcmig.health.probes: /proc and /sys under `Roots`), the free space of the watched
paths and the site's check scripts (hpcmig.health.checks). What could not be read is listed
in `errors`, one line each; what does not exist is absent (no EDAC: `edac_ce` is None). It
does not judge a sample (hpcmig.health.rules does) and does not send it anywhere.

Load: `load_source="loadavg"` is the first field of <proc>/loadavg. On the testbed every node
is a set of namespaces of one machine sharing /proc, so that number is the machine's; there
`load_source="mntns"` counts the processes in state R whose mount namespace is the node's
(`mntns_inode`, default: the sampler's own), since a node's containers share its mount
namespace. The sampling process itself is not counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcmig.errors import UsageError
from hpcmig.health import probes
from hpcmig.health.checks import CheckResult, run_checks
from hpcmig.health.probes import Roots

__all__ = ["LOAD_SOURCES", "CheckResult", "Roots", "Sample", "take"]

LOAD_SOURCES = ("loadavg", "mntns")


@dataclass(frozen=True)
class Sample:
    node: str
    time: float  # seconds since the epoch, when it was taken
    cpus: int
    load: float  # run-queue measure: loadavg's first field, or processes in R (mntns)
    mem_total: int  # bytes
    mem_available: int
    swap_used: int
    temperatures: dict[str, float]  # sensor label -> degrees C
    free: dict[str, int]  # watched path -> bytes free (for unprivileged users)
    free_total: dict[str, int]  # watched path -> bytes in its file system
    edac_ce: int | None  # corrected memory errors, all controllers; None: no EDAC
    edac_ue: int | None  # uncorrected
    nic: dict[str, int]  # interface -> rx/tx errors + drops
    checks: tuple[CheckResult, ...]
    errors: tuple[str, ...]  # sources that exist but could not be read, one line each

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node, "time": self.time, "cpus": self.cpus, "load": self.load,
            "mem_total": self.mem_total, "mem_available": self.mem_available,
            "swap_used": self.swap_used, "temperatures": dict(self.temperatures),
            "free": dict(self.free), "free_total": dict(self.free_total),
            "edac_ce": self.edac_ce, "edac_ue": self.edac_ue, "nic": dict(self.nic),
            "checks": [{"name": c.name, "ok": c.ok, "reason": c.reason} for c in self.checks],
            "errors": list(self.errors),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sample:
        """The sample a peer sent; anything malformed is a UsageError naming the field."""
        if not isinstance(data, Mapping):
            raise UsageError("health sample: not a JSON object")
        get = _Fields(data)
        checks = []
        for item in get.array("checks"):
            if not isinstance(item, Mapping):
                raise UsageError("health sample: checks must hold objects")
            one = _Fields(item, "checks[]")
            checks.append(CheckResult(one.text("name"), one.flag("ok"), one.text("reason")))
        errors = get.array("errors")
        if not all(isinstance(e, str) for e in errors):
            raise UsageError("health sample: errors must be strings")
        return cls(
            node=get.text("node"), time=get.number("time"), cpus=get.integer("cpus"),
            load=get.number("load"), mem_total=get.integer("mem_total"),
            mem_available=get.integer("mem_available"), swap_used=get.integer("swap_used"),
            temperatures={k: float(v) for k, v in get.table("temperatures", float).items()},
            free={k: int(v) for k, v in get.table("free", int).items()},
            free_total={k: int(v) for k, v in get.table("free_total", int).items()},
            edac_ce=get.optional_int("edac_ce"), edac_ue=get.optional_int("edac_ue"),
            nic={k: int(v) for k, v in get.table("nic", int).items()},
            checks=tuple(checks), errors=tuple(errors),
        )


class _Fields:
    """Typed access to one JSON object; errors name the field."""

    def __init__(self, data: Mapping[str, Any], where: str = "") -> None:
        self.data = data
        self.where = where

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise UsageError(f"health sample: {self.where}{key} missing")
        return self.data[key]

    def _bad(self, key: str, want: str) -> UsageError:
        return UsageError(f"health sample: {self.where}{key} must be {want}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def integer(self, key: str) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "an integer")
        return value

    def optional_int(self, key: str) -> int | None:
        return None if self._get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        value = self._get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._bad(key, "a number")
        return float(value)

    def array(self, key: str) -> list[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return value

    def table(self, key: str, kind: type) -> dict[str, Any]:
        value = self._get(key)
        numbers = (int, float) if kind is float else (int,)
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, numbers) and not isinstance(v, bool)
                for k, v in value.items()):
            raise self._bad(key, f"an object of {kind.__name__}s")
        return dict(value)


def take(
    node: str,
    *,
    roots: Roots = Roots(),  # noqa: B008  (frozen: one shared default is fine)
    paths: Sequence[str] = (),
    check_dir: str | None = None,
    load_source: str = "loadavg",
    mntns_inode: int | None = None,
    check_timeout: float = 10.0,
    now: float | None = None,
) -> Sample:
    """Sample node's health now. Only a bad argument raises; unreadable sources are listed
    in `errors`."""
    if load_source not in LOAD_SOURCES:
        raise UsageError(f"health: load source must be one of {', '.join(LOAD_SOURCES)}, "
                         f"got {load_source!r}")
    r = probes.Reader()
    when = time.time() if now is None else now
    mem_total, mem_available, swap_used = probes.meminfo(r, roots)
    if load_source == "loadavg":
        load = probes.loadavg(r, roots)
    else:
        inode = mntns_inode if mntns_inode is not None else probes.mntns_inode(r, roots)
        load = 0.0 if inode is None else float(
            probes.runnable_in(r, roots, inode, skip=(os.getpid(),)))
    free, free_total = probes.free_space(r, paths)
    edac_ce, edac_ue = probes.edac(r, roots)
    return Sample(
        node=node, time=when, cpus=probes.cpus(r, roots), load=load, mem_total=mem_total,
        mem_available=mem_available, swap_used=swap_used,
        temperatures=probes.temperatures(r, roots), free=free, free_total=free_total,
        edac_ce=edac_ce, edac_ue=edac_ue, nic=probes.nic(r, roots),
        checks=run_checks(check_dir, check_timeout), errors=tuple(r.errors),
    )
