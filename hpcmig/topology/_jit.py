"""Where numba keeps compiled kernels: set up before numba is imported.

Design note: this module owns one decision, the numba cache directory, so that a second run
pays no JIT time even when the package directory is read-only (a pip install as root, used by
job users). It honours NUMBA_CACHE_DIR when set; otherwise, if the package directory is not
writable, it points numba at ``$XDG_CACHE_HOME/hpcmig/numba`` (default
``~/.cache/hpcmig/numba``), and if that cannot be created either (a service account whose
home is ``/nonexistent``) at a private ``hpcmig-numba-<uid>`` directory in the temporary
directory. numba finding no writable place at all is an error at import ("no locator
available"), so one of them must be chosen. It must not import numba itself before deciding.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcmig" / "numba"


def private_tmp_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"hpcmig-numba-{os.getuid()}"


def usable(path: Path, private: bool = False) -> bool:
    """Can this user write compiled code to `path` (created if missing)?

    `private`: the directory sits in a shared place (/tmp), so it must be a real directory
    of ours that nobody else can write to, never someone else's or a symlink.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except (OSError, RuntimeError):  # RuntimeError: no home directory to expand
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if private and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_dir() -> Path | None:
    """The directory numba should use, or None for numba's default (next to the source)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    here = Path(__file__).resolve().parent
    pycache = here / "__pycache__"
    target = pycache if pycache.exists() else here
    if os.access(target, os.W_OK):
        return None  # numba's default (__pycache__ next to the source) works
    try:
        home = user_cache_dir()
    except RuntimeError:  # no HOME and no passwd entry
        home = None
    if home is not None and usable(home):
        return home
    tmp = private_tmp_dir()
    return tmp if usable(tmp, private=True) else None


def configure_cache() -> None:
    """Choose numba's cache dir; call before the first `import numba` of the process."""
    chosen = cache_dir()
    if chosen is None:
        return
    os.environ["NUMBA_CACHE_DIR"] = str(chosen)
    if "numba" in sys.modules:  # imported by someone else first: make numba re-read it
        from numba.core import config

        config.reload_config()
