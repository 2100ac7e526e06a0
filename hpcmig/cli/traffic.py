"""`hpcmig traffic JOBID`: who talks to whom in a running job, as hpcmig measured it.

Design note: a thin client of hpcmigd's `traffic` operation (hpcmig.controller.traffic). It
prints the heaviest container pairs (rich table), and on request writes the container-pair
matrix as the mapper reads it (HDF5 `/comm`, entry (i, j) = bytes container i sent to
container j: hpcmig.topology.comm) and draws it as a heat map (matplotlib, Agg).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hpcmig import _cmdline
from hpcmig.cli import _client


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "traffic", help="bytes each container of a job sent to each other one",
        description="Print the heaviest container pairs of a running job's measured traffic "
                    "(counted on the virtual network; traffic inside one container, through "
                    "shared memory, is not seen).")
    p.add_argument("job_id", metavar="JOBID", type=_cmdline.job_id)
    p.add_argument("-o", "--output", metavar="FILE.h5",
                   help="write the container-pair matrix (HDF5 /comm, as `hpcmig map` reads)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the matrix as a heat map")
    p.add_argument("--top", type=_cmdline.count(1), default=10, metavar="N",
                   help="pairs to list (10)")
    p.add_argument("--json", action="store_true", help="print hpcmigd's answer as JSON")
    p.set_defaults(func=run)


def heaviest(answer: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """The `top` pairs with the most bytes, heaviest first (ties: by container index)."""
    cons = answer["containers"]
    total = sum(sum(row) for row in answer["bytes"]) or 1
    pairs = [(b, i, j) for i, row in enumerate(answer["bytes"]) for j, b in enumerate(row)
             if b > 0 and i != j]
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"from": cons[i]["index"], "to": cons[j]["index"],
             "from_node": cons[i]["node"], "to_node": cons[j]["node"], "bytes": b,
             "packets": answer["packets"][i][j], "share": b / total}
            for b, i, j in pairs[:max(0, top)]]


def plot(path: str, answer: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mat = np.asarray(answer["bytes"], dtype=float)
    labels = [f"{c['index']}\n{c['node']}" for c in answer["containers"]]
    fig, ax = plt.subplots(figsize=(2 + 0.6 * len(labels), 1.5 + 0.6 * len(labels)))
    img = ax.imshow(mat / 2**20, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("to container (node)")
    ax.set_ylabel("from container (node)")
    ax.set_title(f"job {answer['job_id']}: MiB sent")
    fig.colorbar(img, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_comm(path: str, answer: dict[str, Any]) -> None:
    from hpcmig.topology.comm import write_comm

    write_comm(path, answer["bytes"])


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hpcmig.errors import UsageError

    answer = _client.ask("traffic", f"asking hpcmigd for job {args.job_id}'s traffic",
                         timeout=120, job_id=str(args.job_id))
    for path, write in ((args.output, _write_comm), (args.plot, plot)):
        if path:
            try:
                write(path, answer)
            except OSError as exc:
                raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        table = Table(title=f"job {answer['job_id']}: heaviest container pairs",
                      title_justify="left")
        for col in ("from", "to", "bytes", "packets", "share"):
            table.add_column(col, justify="left" if col in ("from", "to") else "right")
        for row in heaviest(answer, args.top):
            table.add_row(f"{row['from']} ({row['from_node']})", f"{row['to']} ({row['to_node']})",
                          f"{row['bytes']:,}", f"{row['packets']:,}", f"{row['share']:.1%}")
        Console().print(table)
    for node, why in sorted(answer["missing"].items()):
        print(f"hpcmig traffic: {node} did not answer, its counts are missing: {why}",
              file=sys.stderr)
    return 1 if answer["missing"] else 0
