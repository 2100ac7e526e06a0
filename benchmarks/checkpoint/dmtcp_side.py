"""The DMTCP side of the checkpoint benchmark: the same C ring under dmtcp_launch on this host.

Design note: hpcmig's DMTCP driver (hpcmig.checkpoint.dmtcp: a coordinator per job, the
launcher wrapped in dmtcp_launch, generations published atomically) runs the same MPICH ring
with the same arguments and rank count as the CRIU side, but on the host over loopback, not in
containers across testbed nodes (written before `hpcmig run` launched under DMTCP). Kinds:
- `plain`: mpiexec alone, with the MPI settings DMTCP needs (the baseline of this side);
- `launched`: under dmtcp_launch, no checkpoint (what DMTCP's interposition costs);
- `periodic`: under dmtcp_launch, a checkpoint every INTERVAL s while it runs;
- `restart`: a checkpoint, the job SIGKILLed, dmtcp_restart on a new coordinator: seconds
  until every process runs again; the restarted job must finish with the exact checksum.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.checkpoint.criu_side import RANKS, ring_seconds
from hpcmig.checkpoint import dmtcp
from hpcmig.mpi import flavour
from tests.unit.checkpoint.test_dmtcp_restart import PROCESSES, Procs

PEERS = PROCESSES["mpich"] - 2 + RANKS  # mpiexec, the hydra proxy and the ranks


class DmtcpSide:
    def __init__(self, tools: dmtcp.DmtcpTools, work: Path, binary: str, ring_args: list[str],
                 elements: int, rounds: int) -> None:
        self.tools, self.work = tools, work
        self.cmd = [flavour("mpich").mpiexec, "-n", str(RANKS), binary, *ring_args]
        # the settings DMTCP needs (UCX over TCP, ...) in every kind, so `plain` differs
        # from `launched` by DMTCP alone
        self.env = {**os.environ, **flavour("mpich").environment("lo"), **dmtcp.MPI_ENV["mpich"]}
        self.elements, self.rounds = elements, rounds

    def _dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _seconds(self, log: Path) -> float:
        return ring_seconds(log.read_text(), self.elements, self.rounds)

    def plain(self, i: int) -> dict[str, Any]:
        log = self._dir(f"plain-{i}") / "job.log"
        procs = Procs()
        try:
            procs.wait(procs.spawn(self.cmd, self.env, log), 900)
        finally:
            procs.close()
        return {"kind": "plain", "seconds": self._seconds(log)}

    def _launch(self, procs: Procs, where: Path) -> tuple[dmtcp.Coordinator, int, Path]:
        coord = procs.coordinator(self.tools, where / "ckpt")
        argv, env = dmtcp.launch_argv(coord, self.cmd, self.env, "mpich")
        log = where / "job.log"
        sid = procs.spawn(argv, env, log)
        dmtcp.wait_running(coord, PEERS, timeout=60)
        return coord, sid, log

    def launched(self, i: int) -> dict[str, Any]:
        procs = Procs()
        try:
            _, sid, log = self._launch(procs, self._dir(f"launched-{i}"))
            procs.wait(sid, 900)
        finally:
            procs.close()
        return {"kind": "launched", "seconds": self._seconds(log)}

    def periodic(self, i: int, interval: int) -> dict[str, Any]:
        procs = Procs()
        gens: list[dmtcp.Generation] = []
        try:
            coord, sid, log = self._launch(procs, self._dir(f"periodic-{i}"))
            done = threading.Event()

            def clock() -> None:
                while not done.wait(interval):
                    try:
                        gens.append(dmtcp.checkpoint(coord, timeout=120))
                    except dmtcp.CheckpointError:
                        return  # the job ended in the middle: that one does not count

            thread = threading.Thread(target=clock)
            thread.start()
            procs.wait(sid, 900)
            done.set()
            thread.join(150)
        finally:
            procs.close()
        return {"kind": "periodic", "interval": interval, "seconds": self._seconds(log),
                "checkpoints": len(gens), "checkpoint_seconds": [g.seconds for g in gens],
                "image_bytes": gens[-1].image_bytes if gens else 0}

    def restart(self, i: int) -> dict[str, Any]:
        where = self._dir(f"restart-{i}")
        procs = Procs()
        try:
            coord, sid, log = self._launch(procs, where)
            time.sleep(3)
            gen = dmtcp.checkpoint(coord, timeout=120)
            procs.kill(sid)
            coord.stop()
            again = procs.coordinator(self.tools, where / "ckpt")
            rlog = where / "restart.log"
            t0 = time.monotonic()
            rsid = procs.spawn(dmtcp.restart_argv(self.tools, str(where / "ckpt"), again),
                               os.environ, rlog)
            dmtcp.wait_running(again, len(gen.images), timeout=120)
            restart = time.monotonic() - t0
            procs.wait(rsid, 900)
        finally:
            procs.close()
        self._seconds(rlog)  # exact checksum, once
        return {"kind": "restart", "checkpoint": gen.seconds, "image_bytes": gen.image_bytes,
                "restore": restart}
