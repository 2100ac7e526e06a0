"""Where numba keeps compiled kernels: set up before numba is imported.

Design note: this module owns one decision, the numba cache directory, so that a second run
pays no JIT time even when the package directory is read-only (a pip install as root, used by
job users). It honours NUMBA_CACHE_DIR when set; otherwise, if the package directory is not
writable, it points numba at ``$XDG_CACHE_HOME/hpcmig/numba`` (default
``~/.cache/hpcmig/numba``). It must not import numba itself before deciding.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcmig" / "numba"


def configure_cache() -> None:
    """Choose numba's cache dir; call before the first `import numba` of the process."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = Path(__file__).resolve().parent
    pycache = here / "__pycache__"
    target = pycache if pycache.exists() else here
    if os.access(target, os.W_OK):
        return  # numba's default (__pycache__ next to the source) works
    os.environ["NUMBA_CACHE_DIR"] = str(user_cache_dir())
    if "numba" in sys.modules:  # imported by someone else first: make numba re-read it
        from numba.core import config

        config.reload_config()
