"""Draw a traffic matrix and a mapping (`hpcmig map --plot out.png`).

Design note: this module owns the picture only; it imports matplotlib lazily with the Agg
backend (no display needed) and never changes a mapping. Large matrices are summed into at
most `MAX_CELLS` x `MAX_CELLS` blocks so the image stays readable and cheap.
Left: bytes between ranks in rank order. Middle: the same matrix with ranks grouped by the
node they were mapped to (traffic inside a node lies in the diagonal blocks). Right: node of
each rank, for the mapping and for block placement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hpcmig.topology.model import IntArray

MAX_CELLS = 512


def _binned(mat: sp.csr_array, order: IntArray) -> np.ndarray:
    n = mat.shape[0]
    cells = min(n, MAX_CELLS)
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    coo = mat.tocoo()
    r = where[coo.row] * cells // n
    c = where[coo.col] * cells // n
    img = np.zeros((cells, cells))
    np.add.at(img, (r, c), coo.data)
    return img


def plot_mapping(path: str | Path, comm: sp.csr_array, node_of: IntArray, block: IntArray,
                 title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n = comm.shape[0]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    grouped = np.argsort(node_of, kind="stable")
    for ax, order, label in ((axes[0], np.arange(n), "traffic, rank order"),
                             (axes[1], grouped, "traffic, ranks grouped by node")):
        img = _binned(comm, order)
        positive = img[img > 0]
        norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
        im = ax.imshow(np.where(img > 0, img, np.nan), norm=norm, cmap="viridis",
                       interpolation="nearest", extent=(0, n, n, 0))
        ax.set_title(label)
        ax.set_xlabel("receiver rank")
        ax.set_ylabel("sender rank")
        fig.colorbar(im, ax=ax, label="bytes", shrink=0.8)
    axes[2].plot(np.arange(n), block, ",", color="0.6", label="block placement")
    axes[2].plot(np.arange(n), node_of, ".", markersize=1.5, label="mapping")
    axes[2].set_xlabel("rank")
    axes[2].set_ylabel("node index")
    axes[2].set_title("node of each rank")
    axes[2].legend(loc="upper left", markerscale=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=110)
    plt.close(fig)
