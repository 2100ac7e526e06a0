"""`Checkpointer`: collective save and load of every rank's arrays and scalars.

Design note: this module owns the MPI protocol; hpcmig.ckpt.store owns the directory and the
commit, hpcmig.ckpt._h5 the file's layout. mpi4py and h5py are imported only when a
Checkpointer is made or used, never when the module is imported (hpcmigd imports hpcmig.ckpt).

Why one file written by rank 0: h5py here (Debian's and PyPI's builds) has no parallel HDF5,
and one file per generation makes publishing it one rename: there is no set of per-rank files
whose completeness has to be agreed on. Ranks send their data to rank 0 one after another over
a duplicate of the job's communicator (so checkpoint messages never meet the application's);
rank 0 writes each rank's group as it arrives, so it holds its own data plus one other rank's,
never the whole job's. Loading runs the same way backwards. Only rank 0 touches the
directory, which must be reachable wherever rank 0 runs after a requeue (shared storage).
The cost is that a checkpoint goes through one node's link and disk: fine for the sizes this
is meant for (MB to a few GB per job); for more, per-rank files are the next step.

Every collective ends in a broadcast of rank 0's outcome, so all ranks return the same value
or raise the same CheckpointError: an error on one rank never leaves the others waiting.
"""

from __future__ import annotations

import contextlib
import operator
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from hpcmig.ckpt import _h5, store
from hpcmig.ckpt.store import CheckpointError, Generation, NoCheckpoint
from hpcmig.errors import HpcmigError

DIR_ENV = "HPCMIG_APP_CKPT_DIR"
INTERVAL_ENV = "HPCMIG_APP_CKPT_INTERVAL"
_HEADER, _DATA = 1, 2  # message tags on the duplicate communicator
_CHUNK = 256 << 20  # bytes per MPI message: well below the 2**31 element limit
T = TypeVar("T")
_ERRORS: dict[str, type[CheckpointError]] = {"NoCheckpoint": NoCheckpoint}


def default_directory(environ: dict[str, str] | None = None) -> str:
    """`$HPCMIG_APP_CKPT_DIR`, else ./hpcmig-ckpt-<job id> (`local` outside a job)."""
    env = os.environ if environ is None else environ
    if env.get(DIR_ENV):
        return env[DIR_ENV]
    # `hpcmig run` does not pass SLURM_* into the containers; their init sets HPCMIG_JOB_ID
    job = env.get("SLURM_JOB_ID") or env.get("HPCMIG_JOB_ID") or "local"
    return os.path.join(os.getcwd(), f"hpcmig-ckpt-{job}")


def interval_from_env(environ: dict[str, str] | None = None) -> float | None:
    text = (os.environ if environ is None else environ).get(INTERVAL_ENV, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise CheckpointError(f"${INTERVAL_ENV}={text!r} is not a number of seconds") from None
    return seconds if seconds > 0 else None


class Checkpointer:
    """Application-level checkpoints of an mpi4py program; every method is collective."""

    def __init__(self, comm: Any = None, directory: str | os.PathLike[str] | None = None,
                 keep: int = 2, interval: float | None = None) -> None:
        """`interval`: seconds between periodic saves in maybe_save (default
        `$HPCMIG_APP_CKPT_INTERVAL`; unset: only when hpcmigd asks). `keep`: how many
        complete generations to keep (at least 1; 2 lets load fall back past a corrupt one)."""
        if int(keep) < 1:
            raise CheckpointError(f"keep must be at least 1, not {keep}")
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.comm = comm.Dup()
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.keep = int(keep)
        self._newest, self._newest_time = 0, 0.0
        self._last_save = time.monotonic()

        def setup() -> tuple[str, float | None]:
            path = store.ensure_private(os.fspath(directory or default_directory()))
            gens = store.read_index(path)
            if gens:
                self._newest, self._newest_time = gens[-1].generation, gens[-1].time
            return path, interval if interval is not None else interval_from_env()

        self.directory, self.interval = self._agree(setup)

    # -- collective decisions taken by rank 0 ---------------------------------------------

    def _agree(self, decide: Callable[[], T]) -> T:
        """Run `decide` on rank 0 and give every rank its result, or raise its error."""
        outcome: Any = None
        if self.rank == 0:
            try:
                outcome = ("ok", decide())
            except Exception as exc:  # any failure must reach every rank
                outcome = _failure(exc)
        outcome = self.comm.bcast(outcome, root=0)
        return _result(outcome)

    def restarted(self) -> bool:
        """True when a complete generation exists to resume from."""
        return self._agree(lambda: store.latest(self.directory) is not None)

    def requested(self) -> bool:
        """Whether hpcmigd has asked for a checkpoint newer than the last save (cheap)."""
        return self._agree(self._requested)

    def _requested(self) -> bool:
        return store.requested(self.directory, self._newest, self._newest_time)

    def maybe_save(self, step: int, **data: Any) -> int | None:
        """save() when hpcmigd asked or the interval has passed; the generation, else None."""
        def due() -> bool:
            elapsed = time.monotonic() - self._last_save
            return self._requested() or (self.interval is not None and elapsed >= self.interval)

        return self.save(step, **data) if self._agree(due) else None

    # -- save -------------------------------------------------------------------------------

    def save(self, step: int, **data: Any) -> int:
        """Checkpoint this rank's `data` (numpy arrays and scalars) at `step`; every rank
        passes the same step. Returns the generation number once it is committed."""
        problem: str | None = None
        arrays: dict[str, np.ndarray] = {}
        scalars: _h5.Scalars = {}
        try:
            step = operator.index(step)
            if step < 0:
                raise CheckpointError(f"step must be >= 0, not {step}")
            arrays, scalars = _h5.split(data)
        except (TypeError, CheckpointError) as exc:
            problem = str(exc)
        reports = self.comm.gather((problem, step), root=0)

        def begin() -> int:
            assert reports is not None
            bad = [f"rank {r}: {p}" for r, (p, _s) in enumerate(reports) if p]
            steps = sorted({s for p, s in reports if not p})
            if len(steps) > 1:
                bad.append(f"ranks disagree on the step ({', '.join(map(str, steps))})")
            if bad:
                raise CheckpointError("cannot save: " + "; ".join(bad))
            store.sweep(self.directory)
            gens = store.read_index(self.directory)
            generation = (gens[-1].generation if gens else 0) + 1
            fd = os.open(store.temp_path(self.directory, generation),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            return generation

        generation = self._agree(begin)
        if self.rank != 0:
            self._send(0, arrays, scalars)
            outcome = self.comm.bcast(None, root=0)
        else:
            outcome = self._write(generation, step, arrays, scalars)
            outcome = self.comm.bcast(outcome, root=0)
        gen: Generation = _result(outcome)
        if self.rank == 0:
            self._newest, self._newest_time = gen.generation, gen.time
            self._last_save = time.monotonic()
        return gen.generation

    def _write(self, generation: int, step: int, arrays: dict[str, np.ndarray],
               scalars: _h5.Scalars) -> tuple[Any, ...]:
        """Rank 0: receive every rank's data into the temporary file, then commit it."""
        import h5py

        tmp = store.temp_path(self.directory, generation)
        error: Exception | None = None
        h5: Any = None
        try:
            h5 = h5py.File(tmp, "w", locking=False)
            _h5.write_header(h5, generation, step, self.size, time.time())
            _h5.write_group(h5, 0, arrays, scalars)
        except Exception as exc:  # keep receiving: no rank is left blocked
            error = exc
        for r in range(1, self.size):
            their_arrays, their_scalars = self._recv(r)  # always: the sender waits for it
            if error is None:
                try:
                    _h5.write_group(h5, r, their_arrays, their_scalars)
                except Exception as exc:
                    error = exc
        try:
            if h5 is not None:
                h5.close()
            if error is not None:
                raise error
            return ("ok", store.commit(self.directory, generation, step, self.size, self.keep))
        except Exception as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return _failure(exc)

    # -- load -------------------------------------------------------------------------------

    def load(self) -> tuple[int, dict[str, Any]]:
        """The newest complete generation's step and this rank's arrays and scalars.

        Raises NoCheckpoint when there is none. A generation whose checksum does not match
        is taken out of the index (and reported on stderr) and the one before is used."""
        h5: Any = None

        def open_newest() -> int:
            nonlocal h5
            import h5py

            gen = self._newest_valid()
            h5 = h5py.File(gen.path, "r", locking=False)
            _h5.check_header(h5, gen.generation, self.size)
            return gen.step

        try:
            step = self._agree(open_newest)
        except CheckpointError:
            if h5 is not None:
                h5.close()
            raise
        if self.rank != 0:
            header = self.comm.recv(source=0, tag=_HEADER)
            arrays, scalars = ({}, {}) if "error" in header else self._recv_arrays(0, header)
            outcome = self.comm.bcast(None, root=0)
        else:
            error: Exception | None = None
            arrays, scalars = {}, {}
            try:
                arrays, scalars = _h5.read_group(h5, 0)
            except Exception as exc:
                error = exc
            for r in range(1, self.size):
                if error is None:
                    try:
                        self._send(r, *_h5.read_group(h5, r))
                        continue
                    except Exception as exc:
                        error = exc
                self.comm.send({"error": str(error)}, dest=r, tag=_HEADER)
            h5.close()
            outcome = self.comm.bcast(_failure(error) if error else ("ok", None), root=0)
        _result(outcome)
        return step, {**arrays, **_h5.decode(scalars)}

    def _newest_valid(self) -> Generation:
        for gen in reversed(store.read_index(self.directory)):
            if gen.ranks != self.size:
                raise CheckpointError(f"generation {gen.generation} in {self.directory} was "
                                      f"saved by {gen.ranks} ranks; this job has {self.size}",
                                      hint="restart with the same number of ranks")
            if store.is_complete(gen, verify=True):
                return gen
            print(f"hpcmig.ckpt: generation {gen.generation} ({gen.path}) is incomplete or "
                  "corrupt; using the one before", file=sys.stderr, flush=True)
            store.drop(self.directory, gen.generation)
        raise NoCheckpoint(f"no complete checkpoint in {self.directory}",
                           hint="call load() only when restarted() is True")

    # -- moving one rank's data -------------------------------------------------------------

    def _send(self, dest: int, arrays: dict[str, np.ndarray], scalars: _h5.Scalars) -> None:
        meta = [(name, a.dtype, a.shape) for name, a in arrays.items()]
        self.comm.send({"arrays": meta, "scalars": scalars}, dest=dest, tag=_HEADER)
        for a in arrays.values():
            flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
            for i in range(0, flat.size, _CHUNK):
                self.comm.Send(flat[i:i + _CHUNK], dest=dest, tag=_DATA)

    def _recv(self, source: int) -> tuple[dict[str, np.ndarray], _h5.Scalars]:
        return self._recv_arrays(source, self.comm.recv(source=source, tag=_HEADER))

    def _recv_arrays(self, source: int, header: dict[str, Any]
                     ) -> tuple[dict[str, np.ndarray], _h5.Scalars]:
        arrays: dict[str, np.ndarray] = {}
        for name, dtype, shape in header["arrays"]:
            count = int(np.prod(shape, dtype=np.int64))
            buf = np.empty(count * dtype.itemsize, np.uint8)
            for i in range(0, buf.size, _CHUNK):
                self.comm.Recv(buf[i:i + _CHUNK], source=source, tag=_DATA)
            arrays[name] = (buf.view(dtype) if buf.size else np.empty(count, dtype)
                            ).reshape(shape)
        return arrays, header["scalars"]


def _failure(exc: BaseException | None) -> tuple[str, str, str]:
    if isinstance(exc, CheckpointError):
        return ("error", type(exc).__name__, str(exc))
    if isinstance(exc, HpcmigError | OSError):
        return ("error", "CheckpointError", str(exc))
    return ("error", "CheckpointError", f"{type(exc).__name__}: {exc}")


def _result(outcome: tuple[Any, ...]) -> Any:
    if outcome[0] == "ok":
        return outcome[1]
    raise _ERRORS.get(outcome[1], CheckpointError)(outcome[2])
