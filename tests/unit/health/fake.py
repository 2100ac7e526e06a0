"""Fixture /proc and /sys trees (psutil's habit: the sampler reads under configurable roots),
and healthy samples to vary in rule tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hpcmig.health.sample import CheckResult, Roots, Sample

GIB = 1024**3


class Tree:
    """A fake node: write only the sources a test needs; every other one is absent."""

    def __init__(self, base: Path) -> None:
        self.proc = base / "proc"
        self.sys = base / "sys"
        self.proc.mkdir(parents=True)
        self.sys.mkdir(parents=True)

    @property
    def roots(self) -> Roots:
        return Roots(str(self.proc), str(self.sys))

    @staticmethod
    def write(path: Path, text: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{text}\n")
        return path

    def meminfo(self, total_kb: int, available_kb: int, swap_total_kb: int = 0,
                swap_free_kb: int = 0) -> None:
        self.write(self.proc / "meminfo",
                   f"MemTotal:       {total_kb} kB\nMemFree:          1000 kB\n"
                   f"MemAvailable:   {available_kb} kB\nBuffers:            10 kB\n"
                   f"SwapTotal:      {swap_total_kb} kB\nSwapFree:       {swap_free_kb} kB\n"
                   "HugePages_Total:       0")

    def cpuinfo(self, cpus: int) -> None:
        self.write(self.proc / "cpuinfo", "\n".join(
            f"processor\t: {i}\nmodel name\t: Fake CPU\n" for i in range(cpus)))

    def loadavg(self, first: float) -> None:
        self.write(self.proc / "loadavg", f"{first:.2f} 0.50 0.25 2/345 6789")

    def process(self, pid: int, state: str, ns: Path, comm: str = "app") -> None:
        """A process whose ns/mnt is `ns` (a hard link: same inode, same namespace)."""
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "ns" / "mnt").hardlink_to(ns)
        self.write(d / "stat", f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0")

    def hwmon(self, index: int, name: str | None, temps: dict[int, tuple[int, str | None]]
              ) -> None:
        """temps: N -> (millidegrees, label or None)."""
        d = self.sys / "class" / "hwmon" / f"hwmon{index}"
        d.mkdir(parents=True)
        if name is not None:
            self.write(d / "name", name)
        for n, (milli, label) in temps.items():
            self.write(d / f"temp{n}_input", milli)
            self.write(d / f"temp{n}_crit", 100000)
            if label is not None:
                self.write(d / f"temp{n}_label", label)

    def thermal(self, index: int, kind: str, milli: int) -> None:
        d = self.sys / "class" / "thermal" / f"thermal_zone{index}"
        self.write(d / "type", kind)
        self.write(d / "temp", milli)
        self.write(self.sys / "class" / "thermal" / f"cooling_device{index}" / "type", "Fan")

    def edac(self, mc: int, ce: int | str, ue: int | str) -> None:
        d = self.sys / "devices" / "system" / "edac" / "mc" / f"mc{mc}"
        self.write(d / "ce_count", ce)
        self.write(d / "ue_count", ue)
        self.write(d / "mc_name", "Fake ECC")

    def nic(self, iface: str, **counters: int) -> None:
        d = self.sys / "class" / "net" / iface / "statistics"
        for name in ("rx_errors", "tx_errors", "rx_dropped", "tx_dropped", "rx_bytes"):
            self.write(d / name, counters.get(name, 0))


def healthy(time: float = 1000.0, node: str = "n1", **changes: Any) -> Sample:
    """A healthy 4-CPU node's sample; changes replace fields."""
    base = Sample(
        node=node, time=time, cpus=4, load=1.0, mem_total=16 * GIB,
        mem_available=12 * GIB, swap_used=0, temperatures={"Package id 0": 50.0},
        free={"/var/lib/hpcmig": 100 * GIB}, free_total={"/var/lib/hpcmig": 200 * GIB},
        edac_ce=0, edac_ue=0, nic={"eth0": 0},
        checks=(CheckResult("10-ok", True, ""),), errors=())
    return replace(base, **changes)
