"""What one rank saves, and how it sits in a generation's HDF5 file.

Design note: pure conversion between a rank's `save(step, **data)` keywords and the file; no
MPI, no decisions (hpcmig.ckpt.checkpointer moves the data between ranks, hpcmig.ckpt.store
names and commits the file). h5py is imported by the caller and handed in as open objects.

File layout: root attributes `hpcmig_ckpt_format`, `generation`, `step`, `ranks`, `created`
(shared by all ranks); group `/rank<r>` per rank, holding each numpy array as a dataset
`/rank<r>/<name>` (contiguous, uncompressed; a dtype HDF5 has no type for, such as unicode or
datetime64, is stored as an HDF5 opaque type and read back as the same numpy dtype) and each
scalar as an attribute of the group, with its Python kind in `_hpcmig_kinds` (JSON) so an
int comes back an int, a str a str, a numpy scalar the same numpy type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from hpcmig.ckpt.store import CheckpointError

FORMAT = 1
KINDS_ATTR = "_hpcmig_kinds"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_INT64 = (-(2**63), 2**63 - 1)

Scalars = dict[str, tuple[str, Any]]  # name -> (kind, value as stored)


def group_name(rank: int) -> str:
    return f"rank{rank}"


def _scalar(name: str, value: Any) -> tuple[str, Any]:
    if isinstance(value, str):  # np.str_ too; HDF5 strings cannot hold NUL: keep the bytes
        text = str(value)
        return "str", (np.frombuffer(text.encode(), np.uint8) if "\x00" in text else text)
    if isinstance(value, bytes):  # np.bytes_ too
        return "bytes", np.frombuffer(bytes(value), np.uint8)
    if isinstance(value, bool):
        return "bool", np.bool_(value)
    if isinstance(value, np.bool_ | np.number):
        return "numpy", value
    if isinstance(value, int):
        return "int", (np.int64(value) if _INT64[0] <= value <= _INT64[1] else str(value))
    if isinstance(value, float):
        return "float", np.float64(value)
    if isinstance(value, complex):
        return "complex", np.complex128(value)
    raise CheckpointError(
        f"cannot checkpoint {name!r}: {type(value).__name__} is neither a numpy array nor a "
        "scalar (int, float, complex, bool, str, bytes, numpy number)",
        hint="convert it with numpy.asarray() or save its fields separately")


def split(data: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], Scalars]:
    """A rank's keywords as contiguous arrays and encoded scalars; refuses what cannot be
    stored faithfully, naming it."""
    arrays: dict[str, np.ndarray] = {}
    scalars: Scalars = {}
    for name, value in data.items():
        if not _NAME_RE.match(name) or name.startswith("_hpcmig"):
            raise CheckpointError(f"invalid checkpoint name {name!r}",
                                  hint="use a Python identifier not starting with _hpcmig")
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise CheckpointError(f"cannot checkpoint {name!r}: dtype {value.dtype} holds "
                                      "Python objects", hint="use a numeric, bytes or str dtype")
            arrays[name] = np.ascontiguousarray(value).reshape(value.shape)  # keeps 0-d
        else:
            scalars[name] = _scalar(name, value)
    return arrays, scalars


def decode(scalars: Scalars) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, v) in scalars.items():
        if kind == "str":
            out[name] = v.tobytes().decode() if isinstance(v, np.ndarray) else str(v)
        elif kind == "bytes":
            out[name] = np.asarray(v, np.uint8).tobytes()
        elif kind == "bool":
            out[name] = bool(v)
        elif kind == "int":
            out[name] = int(v)
        elif kind == "float":
            out[name] = float(v)
        elif kind == "complex":
            out[name] = complex(v)
        else:
            out[name] = v
    return out


def write_header(h5: Any, generation: int, step: int, ranks: int, created: float) -> None:
    h5.attrs.update({"hpcmig_ckpt_format": FORMAT, "generation": generation, "step": step,
                     "ranks": ranks, "created": created})


def write_group(h5: Any, rank: int, arrays: Mapping[str, np.ndarray], scalars: Scalars) -> None:
    import h5py

    group = h5.create_group(group_name(rank))
    for name, arr in arrays.items():
        try:
            group.create_dataset(name, data=arr)
        except TypeError:  # no HDF5 type for this dtype: keep the bytes and the numpy dtype
            if name in group:
                del group[name]
            group.create_dataset(name, data=arr.astype(h5py.opaque_dtype(arr.dtype)))
    for name, (_kind, value) in scalars.items():
        group.attrs[name] = value
    group.attrs[KINDS_ATTR] = json.dumps({n: k for n, (k, _v) in scalars.items()})


def check_header(h5: Any, generation: int, ranks: int) -> None:
    attrs = h5.attrs
    got = (attrs.get("hpcmig_ckpt_format"), attrs.get("generation"), attrs.get("ranks"))
    if got != (FORMAT, generation, ranks):
        raise CheckpointError(f"{h5.filename}: header {got} does not match the index "
                              f"(format {FORMAT}, generation {generation}, {ranks} ranks)")


def read_group(h5: Any, rank: int) -> tuple[dict[str, np.ndarray], Scalars]:
    try:
        group = h5[group_name(rank)]
    except KeyError:
        raise CheckpointError(f"{h5.filename} has no data for rank {rank}") from None
    arrays = {name: np.asarray(ds[...]) for name, ds in group.items()}
    kinds: dict[str, str] = json.loads(group.attrs.get(KINDS_ATTR, "{}"))
    scalars = {name: (kind, group.attrs[name]) for name, kind in kinds.items()}
    return arrays, scalars
