"""Reading one node's health sources from /proc and /sys, under configurable roots.

Design note: psutil's habits. Every source is read under a `Roots` (`/proc` and `/sys` by
default), so unit tests read small fixture trees and the testbed points a node's agent at its
own fixture `/sys`. OS errors are translated at one boundary, `Reader`: a source that does not
exist is simply absent (a node without EDAC, hwmon or thermal zones), one that exists but
cannot be read or parsed becomes one line in `Reader.errors` and is left out of the sample,
never guessed. A counter total of several files (EDAC memory controllers, one interface's
statistics) is all or nothing: a partial sum would look like a reset, then like a rise. This
module reads; it never judges (hpcmig.health.rules does) and never runs anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

NIC_COUNTERS = ("rx_errors", "tx_errors", "rx_dropped", "tx_dropped")


@dataclass(frozen=True)
class Roots:
    """Where /proc and /sys are (psutil's habit: tests and the testbed move them)."""

    proc: str = "/proc"
    sys: str = "/sys"


def _natural(name: str) -> tuple[object, ...]:
    """Sort key: hwmon2 before hwmon10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


class Reader:
    """The one place OS errors become data: missing -> None, unreadable -> an error line."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, what: str, path: str, why: str) -> None:
        self.errors.append(f"{what}: {path}: {why}")

    def text(self, what: str, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self.fail(what, path, exc.strerror or type(exc).__name__)
            return None

    def integer(self, what: str, path: str) -> int | None:
        text = self.text(what, path)
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            self.fail(what, path, f"not a number: {text.strip()[:40]!r}")
            return None

    def listdir(self, what: str, path: str, prefix: str = "") -> list[str]:
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            self.fail(what, path, exc.strerror or type(exc).__name__)
            return []
        return sorted((n for n in names if n.startswith(prefix)), key=_natural)


# -- /proc ----------------------------------------------------------------------------------


def meminfo(r: Reader, roots: Roots) -> tuple[int, int, int]:
    """(MemTotal, MemAvailable, SwapTotal - SwapFree) in bytes; zeros when absent."""
    path = f"{roots.proc}/meminfo"
    text = r.text("meminfo", path)
    if text is None:
        return 0, 0, 0
    kb: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kb[key.strip()] = int(fields[0])
    if "MemTotal" not in kb:
        r.fail("meminfo", path, "no MemTotal line")
    total = kb.get("MemTotal", 0) * 1024
    available = kb.get("MemAvailable", kb.get("MemFree", 0)) * 1024
    swap = max(0, kb.get("SwapTotal", 0) - kb.get("SwapFree", 0)) * 1024
    return total, available, swap


def cpus(r: Reader, roots: Roots) -> int:
    """`processor` lines of <proc>/cpuinfo; os.cpu_count() when there are none."""
    text = r.text("cpuinfo", f"{roots.proc}/cpuinfo") or ""
    count = sum(1 for line in text.splitlines() if line.split(":")[0].strip() == "processor")
    return count or os.cpu_count() or 1


def loadavg(r: Reader, roots: Roots) -> float:
    path = f"{roots.proc}/loadavg"
    text = r.text("load", path)
    if text is None:
        return 0.0
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        r.fail("load", path, f"cannot parse {text.strip()[:40]!r}")
        return 0.0


def mntns_inode(r: Reader, roots: Roots) -> int | None:
    """The mount namespace of this process, as <proc>/self/ns/mnt sees it."""
    path = f"{roots.proc}/self/ns/mnt"
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        r.fail("load", path, exc.strerror or type(exc).__name__)
        return None


def runnable_in(r: Reader, roots: Roots, inode: int, skip: Iterable[int] = ()) -> int:
    """Processes in state R whose mount namespace is `inode` (the sampler itself excluded).

    A process that exits during the scan is not counted; one whose namespace or stat cannot
    be read (another user's, without privileges) is counted in one summary error line.
    """
    skipped = {str(pid) for pid in skip}
    running = unreadable = 0
    for name in r.listdir("load", roots.proc):
        if not name.isdigit() or name in skipped:
            continue
        base = f"{roots.proc}/{name}"
        try:
            if os.stat(f"{base}/ns/mnt").st_ino != inode:
                continue
            with open(f"{base}/stat", encoding="ascii", errors="replace") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        except OSError:
            unreadable += 1
            continue
        running += state == "R"
    if unreadable:
        r.errors.append(f"load: {unreadable} process(es) under {roots.proc} unreadable")
    return running


# -- /sys -----------------------------------------------------------------------------------


def _label(labels: dict[str, float], label: str, where: str) -> str:
    return label if label not in labels else f"{where}/{label}"


def temperatures(r: Reader, roots: Roots) -> dict[str, float]:
    """Sensor label -> degrees C: hwmon temp*_input, then thermal zones."""
    found: dict[str, float] = {}
    hwmon = f"{roots.sys}/class/hwmon"
    for dev in r.listdir("temperature", hwmon, "hwmon"):
        base = f"{hwmon}/{dev}"
        name = (r.text("temperature", f"{base}/name") or dev).strip() or dev
        for entry in r.listdir("temperature", base, "temp"):
            match = re.fullmatch(r"temp(\d+)_input", entry)
            if not match:
                continue
            milli = r.integer("temperature", f"{base}/{entry}")
            if milli is None:
                continue
            label = (r.text("temperature", f"{base}/temp{match[1]}_label") or "").strip()
            label = label or f"{name}/temp{match[1]}"
            found[_label(found, label, dev)] = milli / 1000.0
    thermal = f"{roots.sys}/class/thermal"
    for zone in r.listdir("temperature", thermal, "thermal_zone"):
        base = f"{thermal}/{zone}"
        milli = r.integer("temperature", f"{base}/temp")
        if milli is None:
            continue
        kind = (r.text("temperature", f"{base}/type") or "").strip() or zone
        found[_label(found, kind, zone)] = milli / 1000.0
    return found


def edac(r: Reader, roots: Roots) -> tuple[int | None, int | None]:
    """(corrected, uncorrected) summed over every memory controller; None without EDAC, or
    when one controller's count could not be read."""
    base = f"{roots.sys}/devices/system/edac/mc"
    controllers = [c for c in r.listdir("edac", base, "mc") if c[2:].isdigit()]
    if not controllers:
        return None, None
    totals: list[int | None] = []
    for name in ("ce_count", "ue_count"):
        values = [r.integer("edac", f"{base}/{mc}/{name}") for mc in controllers]
        totals.append(None if any(v is None for v in values)
                      else sum(v for v in values if v is not None))
    return totals[0], totals[1]


def nic(r: Reader, roots: Roots) -> dict[str, int]:
    """Interface -> rx_errors + tx_errors + rx_dropped + tx_dropped (lo skipped; an interface
    with a counter missing or unreadable is left out)."""
    base = f"{roots.sys}/class/net"
    found: dict[str, int] = {}
    for iface in r.listdir("nic", base):
        if iface == "lo":
            continue
        stats = f"{base}/{iface}/statistics"
        if not os.path.isdir(stats):
            continue
        values = [r.integer("nic", f"{stats}/{name}") for name in NIC_COUNTERS]
        if all(v is not None for v in values):
            found[iface] = sum(v for v in values if v is not None)
    return found


def free_space(r: Reader, paths: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(path -> free bytes for unprivileged users, path -> total bytes); a path that does not
    exist is an error: it was asked for."""
    free: dict[str, int] = {}
    total: dict[str, int] = {}
    for path in dict.fromkeys(paths):
        try:
            st = os.statvfs(path)
        except OSError as exc:
            r.fail("free", path, exc.strerror or type(exc).__name__)
            continue
        free[path] = st.f_bavail * st.f_frsize
        total[path] = st.f_blocks * st.f_frsize
    return free, total
