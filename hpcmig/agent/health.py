"""The agent's health sampler: one sample of this node every `[health] interval` seconds.

Design note: a thread of the agent takes samples (hpcmig.health.sample.take, reading /proc
and /sys under the agent's `Roots`, the configured watched paths and check scripts) and keeps
the latest; hpcmigd fetches it with the `health.sample` operation (agent/ops.py) and judges it.
Sampling in the background keeps a slow site check script from holding up an RPC, and a
sample that could not be taken is logged and retried, never fatal: the agent's other duties
go on. It never judges a sample and never talks to Slurm.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from hpcmig.errors import HpcmigError
from hpcmig.health.sample import Roots, Sample, take

log = logging.getLogger("hpcmig.agent")


@dataclass
class Sampler:
    node: str
    interval: float
    roots: Roots = Roots()  # noqa: RUF009  (frozen)
    paths: tuple[str, ...] = ()
    check_dir: str | None = None
    load_source: str = "loadavg"
    latest: Sample | None = None
    _said: str = field(default="", repr=False)

    def take(self) -> Sample | None:
        try:
            sample = take(self.node, roots=self.roots, paths=self.paths,
                          check_dir=self.check_dir, load_source=self.load_source)
        except (HpcmigError, OSError) as exc:
            if str(exc) != self._said:
                self._said = str(exc)
                log.warning("cannot take a health sample: %s", exc)
            return None
        for line in sample.errors:
            if line != self._said:
                self._said = line
                log.warning("health: %s", line)
        self.latest = sample
        return sample

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            self.take()
            stopping.wait(self.interval)

    def start(self, stopping: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stopping,), name="health",
                                  daemon=True)
        thread.start()
        return thread
