"""Write a mapping as a Slurm arbitrary-distribution hostfile or an Open MPI rankfile.

Design note: this module owns the two text formats and nothing else (no mapping, no Slurm
calls). Slurm: one node name per line, line i = node of rank i; use it with
``SLURM_HOSTFILE=FILE srun --distribution=arbitrary -n N ...``. Open MPI: ``rank i=HOST
slot=S`` lines, S counting the ranks already placed on HOST (``mpirun --rankfile FILE``).
Files are written atomically (temp file + rename) so a reader never sees half a mapping.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

FORMATS = ("hostfile", "rankfile")


def hostfile_text(hosts: Sequence[str]) -> str:
    return "".join(f"{h}\n" for h in hosts)


def rankfile_text(hosts: Sequence[str]) -> str:
    used: dict[str, int] = {}
    lines = []
    for rank, host in enumerate(hosts):
        slot = used.get(host, 0)
        used[host] = slot + 1
        lines.append(f"rank {rank}={host} slot={slot}\n")
    return "".join(lines)


def write_mapping(path: str | Path, hosts: Sequence[str], fmt: str = "hostfile") -> None:
    """Write `hosts` (node of each rank) to `path` in `fmt` ("hostfile" or "rankfile")."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    text = hostfile_text(hosts) if fmt == "hostfile" else rankfile_text(hosts)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or Path("."), prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
