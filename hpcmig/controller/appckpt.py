"""Checkpoints a job takes of itself (engine=app, engine=dmtcp) as hpcmigd drives them: where
they are, asking for a generation, the newest one, removing them when the job ended.

Design note: the program checkpoints itself with hpcmig.ckpt (HDF5 generations, an index
replaced atomically) into a directory of the job's user; its `hpcmig run` registers that
directory (`register`), and hpcmigd records it in `<state_dir>/app-ckpt/<job>.json` (root's,
0600; outside the checkpoint tree, which the epilog removes). Root reads the program's index
only after checking that the path is a real directory (not a link) owned by the job's user,
and every write there (a checkpoint request, the removal once the job ended) runs as that
user (setpriv), so a link planted in the directory cannot turn a write of root's elsewhere.
Periodic (hpcmig.controller.periodic) asks at the job's interval and counts the program's
generations for a restart: a restarted job runs its batch script again, and the program
loads its newest generation by itself (`Checkpointer.restarted()`).

engine=dmtcp the same way: its `hpcmig run` registers the job's DMTCP directory
(hpcmig.checkpoint.dmtcp_job: one checkpoint directory per step), takes a generation when
the `request` file appears there, and restarts the step from its last one after a requeue.
`take` asks and waits for the generation: `hpcmig checkpoint` and a drain of an engine=dmtcp
job checkpoint it this way (through its coordinator, never CRIU; controller/wholejob.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hpcmig import _proc
from hpcmig.checkpoint import dmtcp_job
from hpcmig.checkpoint.record import write_private_json
from hpcmig.ckpt import store
from hpcmig.errors import CommandError, HpcmigError, UsageError

SUBDIR = "app-ckpt"


ENGINES = ("app", "dmtcp")
# how long `take` waits for the asked-for generation by default (for DMTCP, wholejob waits
# dmtcp_checkpoint_timeout + 60 s: the job's `hpcmig run` gives a checkpoint that long)
TAKE_TIMEOUT = 660.0


@dataclass(frozen=True)
class AppDir:
    directory: str
    uid: int
    gid: int
    engine: str = "app"


@dataclass(frozen=True)
class Newest:
    generation: int
    time: float  # when it was complete (unix time)


def _path(state_dir: str, job_id: str) -> Path:
    return Path(state_dir, SUBDIR, f"{int(job_id)}.json")


def register(state_dir: str, job_id: str, app: AppDir) -> AppDir:
    if not os.path.isabs(app.directory) or "\0" in app.directory:
        raise UsageError(f"application checkpoint directory {app.directory!r} is not an "
                         "absolute path")
    if app.engine not in ENGINES:
        raise UsageError(f"checkpoint engine {app.engine!r} does not checkpoint itself; "
                         f"one of {', '.join(ENGINES)}")
    write_private_json(_path(state_dir, job_id), asdict(app))
    return app


def load(state_dir: str, job_id: str) -> AppDir | None:
    try:
        return AppDir(**json.loads(_path(state_dir, job_id).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def registered(state_dir: str) -> list[str]:
    """Job ids with a registered directory."""
    try:
        return sorted(p.stem for p in Path(state_dir, SUBDIR).glob("*.json"))
    except OSError:
        return []


def checked(app: AppDir) -> str | None:
    """The directory, if it is a real directory of the job's user (else None)."""
    try:
        st = os.lstat(app.directory)
    except OSError:
        return None
    return app.directory if stat.S_ISDIR(st.st_mode) and st.st_uid == app.uid else None


def newest(app: AppDir) -> Newest | None:
    """The job's newest complete generation."""
    path = checked(app)
    if path is None:
        return None
    if app.engine == "dmtcp":
        gen = dmtcp_job.newest(path)
        return Newest(gen.number, gen.created) if gen else None
    with contextlib.suppress(FileNotFoundError):  # root reads it: a FIFO there would block
        if not stat.S_ISREG(os.lstat(os.path.join(path, store.INDEX)).st_mode):
            return None
    found = store.latest(path)
    return Newest(found.generation, found.time) if found else None


def _as_user(app: AppDir, argv: list[str]) -> None:
    _proc.run(["setpriv", f"--reuid={app.uid}", f"--regid={app.gid}", "--clear-groups",
               *argv], timeout=120)


def request(app: AppDir) -> bool:
    """Ask the job for a generation (the program saves at its next `maybe_save`; a DMTCP
    job's `hpcmig run` checkpoints it); False when its directory is not there (yet)."""
    if checked(app) is None:
        return False
    if app.engine == "dmtcp":
        _as_user(app, ["touch", os.path.join(app.directory, dmtcp_job.REQUEST)])
        return True
    _as_user(app, [sys.executable, "-c", "import sys; from hpcmig.ckpt import store; "
                   "store.request(sys.argv[1])", app.directory])
    return True


def take(app: AppDir, running: Callable[[], str | None], timeout: float = TAKE_TIMEOUT,
         poll: float = 0.5) -> Newest:
    """Ask the job for a generation and wait until one newer than its newest is complete.
    `running()` says why to stop waiting (the job no longer runs), else None."""
    before = newest(app)
    if not request(app):
        raise HpcmigError(f"job checkpoint directory {app.directory} is missing or is not "
                          "the job user's own directory",
                          hint="the job's `hpcmig run` creates and registers it")
    deadline = time.monotonic() + timeout
    while True:
        gen = newest(app)
        if gen is not None and (before is None or gen.time > before.time):
            return gen
        gone = running()
        if gone is None and time.monotonic() < deadline:
            time.sleep(poll)
            continue
        with contextlib.suppress(CommandError):  # not left to trigger one later
            _as_user(app, ["rm", "-f", "--", os.path.join(app.directory, _request_name(app))])
        raise HpcmigError(f"no new {app.engine} checkpoint generation in {app.directory}: "
                          + (gone or f"none complete {timeout:g} s after asking"),
                          hint="a job takes it only while one of its `hpcmig run` steps runs; "
                               "see the job's output")


def _request_name(app: AppDir) -> str:
    return dmtcp_job.REQUEST if app.engine == "dmtcp" else store.REQUEST


def remove(state_dir: str, job_id: str) -> bool:
    """The ended job's checkpoint directory (removed as its user; only one hpcmig.ckpt made)
    and its record. True if a directory was removed."""
    app = load(state_dir, job_id)
    done = False
    mark = dmtcp_job.MARK if app is not None and app.engine == "dmtcp" else store.INDEX
    if app is not None and checked(app) and os.path.exists(os.path.join(app.directory, mark)):
        with contextlib.suppress(CommandError):
            _as_user(app, ["rm", "-rf", "--one-file-system", "--", app.directory])
            done = True
    _path(state_dir, job_id).unlink(missing_ok=True)
    return done
