"""What the checkpoint tests save: several dtypes and shapes per rank, and scalars (no MPI)."""

from __future__ import annotations

from typing import Any

import numpy as np


def data(r: int, step: int) -> dict[str, Any]:
    """What rank r saves at `step`: several dtypes and shapes, differing per rank, and scalars."""
    n = 1000 + 17 * r
    rec = np.zeros(3, dtype=[("id", "<i4"), ("x", "<f8"), ("tag", "S4")])
    rec["id"], rec["x"], rec["tag"] = [r, step, 7], [0.5, r, step], [b"a", b"bb", b"ccc"]
    return {
        "f64": np.linspace(0.0, 1.0, n) * step + r,
        "i32": np.arange(n, dtype=np.int32) * (r + 1) - step,
        "u8_2d": ((np.arange(6 * (r + 2)) + step) % 256).astype(np.uint8).reshape(6, r + 2),
        "c128": np.arange(4) * (1 + 1j) * step,
        "f32_big_endian": np.arange(5, dtype=">f4") + r,
        "f16": np.arange(3, dtype=np.float16) / (r + 1),
        "flags": np.arange(7) % (r + 2) == 0,
        "words": np.array([f"rank{r}", "chaleur é", ""]),
        "when": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]") + step,
        "rec": rec,
        "empty": np.zeros((0, 3)),
        "zero_d": np.array(step * 1.5),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4) * r),
        "count": step * 10 + r,
        "t": step * 0.1,
        "label": f"rank-{r}",
        "nul_text": "a\x00b",
        "blob": bytes([r, 0, step % 256]),
        "no_bytes": b"",
        "done": r % 2 == 0,
        "f32": np.float32(step / 3),
        "huge": 2**70 + r,
        "z": complex(r, step),
    }


def same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for k, w in want.items():
        g = got[k]
        assert type(g) is type(w), (k, type(g), type(w))
        if isinstance(w, np.ndarray):
            assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape)
            assert np.array_equal(g, w), k
        else:
            assert g == w, (k, g, w)
