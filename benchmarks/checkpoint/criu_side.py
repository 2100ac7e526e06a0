"""The CRIU side of the checkpoint benchmark: the C ring in hpcmig containers on the testbed.

Design note: every job is the same 2-node, 4-rank MPICH job running jobs/bin/ring.mpich under
`hpcmig run` (no pacing: it computes and exchanges as fast as it can, and prints its own
`seconds=`). Three kinds of job, the caller alternates them:
- `plain`: no checkpoint (the baseline);
- `periodic`: `ckpt=INTERVAL`: hpcmigd checkpoints the running job whole every INTERVAL s;
  the generations are read while the job runs (their count, the seconds each took as hpcmigd
  measured them, the bytes of the newest one's images);
- `restart`: `hpcmig checkpoint` (freeze, dump, requeue held), then `hpcmig restore`: the
  checkpoint command's time, the restore as hpcmigd timed it (its decision "restored ... in
  X s"), and the seconds from the release until the job runs again restored.
Each job must print the exact checksum once. Needs root and an up testbed (the caller's).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hpcmig.checkpoint import images
from hpcmig.slurm import Slurm
from hpcmig.testbed.plan import Plan
from hpcmig.workloads import ring
from tests.integration import hpcmigd
from tests.integration.test_migration import wait_for_ranks

HPCMIG = os.path.join(os.path.dirname(sys.executable), "hpcmig")
RANKS = 4


def script(name: str, ring_args: list[str], binary: str, ckpt: str | None) -> str:
    comment = "hpcmig:mpi=mpich" + (f",ckpt={ckpt}" if ckpt else "")
    return "\n".join([
        "#!/bin/bash", f"#SBATCH --job-name={name}", "#SBATCH --nodes=2",
        f"#SBATCH --ntasks={RANKS}", f"#SBATCH --comment={comment}", "#SBATCH --open-mode=append",
        f"{HPCMIG} run -n {RANKS} {binary} {' '.join(ring_args)}", ""])


def ring_seconds(text: str, elements: int, rounds: int) -> float:
    """The ring's own `seconds=` of its PASS line (exactly one, with the exact checksum)."""
    want = f"ring: PASS checksum={ring.expected(RANKS, elements, rounds)} "
    lines = [line for line in text.splitlines() if line.startswith(want)]
    if len(lines) != 1:
        raise AssertionError(f"want one exact PASS line, got:\n{text[-3000:]}")
    return float(re.search(r" seconds=([0-9.]+)", lines[0]).group(1))  # type: ignore[union-attr]


class CriuSide:
    def __init__(self, plan: Plan, slurm: Slurm, home: Path, binary: str,
                 ring_args: list[str], elements: int, rounds: int) -> None:
        self.plan, self.slurm, self.home = plan, slurm, home
        self.binary, self.ring_args = binary, ring_args
        self.elements, self.rounds = elements, rounds

    def _submit(self, name: str, ckpt: str | None) -> tuple[int, Path]:
        path = self.home / f"{name}.sh"
        path.write_text(script(name, self.ring_args, self.binary, ckpt))
        out = self.home / f"{name}.out"
        out.unlink(missing_ok=True)
        job_id = self.slurm.submit([f"--output={out}", str(path)], user=self.plan.user,
                                   cwd=str(self.home))
        self.slurm.wait(job_id, timeout=120, states={"RUNNING"})
        wait_for_ranks(self.plan, job_id)
        return job_id, out

    def _finish(self, job_id: int, out: Path) -> float:
        job = self.slurm.wait(job_id, timeout=900)
        text = out.read_text()
        if job.state != "COMPLETED":
            raise AssertionError(f"job {job_id} {job.state}:\n{text[-3000:]}")
        return ring_seconds(text, self.elements, self.rounds)

    def plain(self, i: int) -> dict[str, Any]:
        job_id, out = self._submit(f"ckpt-bench-plain-{i}", None)
        return {"kind": "plain", "seconds": self._finish(job_id, out)}

    def periodic(self, i: int, interval: int) -> dict[str, Any]:
        job_id, out = self._submit(f"ckpt-bench-periodic-{i}", str(interval))
        gens: dict[int, dict[str, Any]] = {}
        image_bytes = 0
        path = Path(images.job_dir(str(self.plan.base / "ckpt"), job_id)) / "generations.json"
        while self.slurm.job(job_id).state == "RUNNING":
            try:
                newest = json.loads(path.read_text())["generations"]
            except (FileNotFoundError, json.JSONDecodeError):
                newest = []
            for g in newest:
                if g["n"] not in gens:
                    gens[g["n"]] = g
                    image_bytes = sum(images.tree_bytes(c["image_dir"])
                                      for c in g["containers"].values())
            time.sleep(0.2)
        seconds = self._finish(job_id, out)
        took = [g["seconds"] for g in gens.values()]
        return {"kind": "periodic", "interval": interval, "seconds": seconds,
                "checkpoints": len(gens), "checkpoint_seconds": took,
                "image_bytes": image_bytes}

    def restart(self, i: int) -> dict[str, Any]:
        job_id, out = self._submit(f"ckpt-bench-restart-{i}", None)
        time.sleep(3)
        t0 = time.monotonic()
        done = subprocess.run([HPCMIG, "checkpoint", str(job_id)], capture_output=True,
                              text=True, timeout=600)
        checkpoint = time.monotonic() - t0
        if done.returncode != 0:
            raise AssertionError(done.stderr)
        ckpt = Path(images.job_dir(str(self.plan.base / "ckpt"), job_id))
        image_bytes = sum(images.tree_bytes(str(d)) for d in ckpt.glob("r0/c*/job"))
        self.slurm.wait(job_id, timeout=60, states={"PENDING"})
        released = time.time()
        done = subprocess.run([HPCMIG, "restore", str(job_id)], capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise AssertionError(done.stderr)
        restored = None
        while restored is None and time.time() - released < 300:
            for d in hpcmigd.status()["decisions"]:
                m = re.search(rf"^job {job_id}: restored from .* in ([0-9.]+) s$", d["what"])
                if m and d["time"] >= released:
                    restored = (float(m.group(1)), d["time"] - released)
            time.sleep(0.2)
        if restored is None:
            raise AssertionError(f"job {job_id} was not restored within 300 s")
        self._finish(job_id, out)
        return {"kind": "restart", "checkpoint_command": checkpoint, "image_bytes": image_bytes,
                "restore": restored[0], "release_to_restored": restored[1]}
