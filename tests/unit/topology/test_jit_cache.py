"""Where compiled kernels go: next to the source, the user's cache, or a private temp dir.

A user whose home cannot be written (`nobody`, home /nonexistent) must still get a cache:
numba refuses to import `cache=True` kernels when it finds no writable place.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcmig.topology import _jit

PACKAGE = Path(_jit.__file__).resolve().parent


@pytest.fixture
def read_only_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The package directory not writable (as after a root install), temp dir in tmp_path."""
    real = os.access
    blocked = {PACKAGE, PACKAGE / "__pycache__"}
    monkeypatch.setattr(_jit.os, "access",
                        lambda p, mode: False if Path(p) in blocked else real(p, mode))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(_jit.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def test_numba_cache_dir_set_by_the_user_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere")
    assert _jit.cache_dir() is None


def test_read_only_package_uses_the_user_cache(read_only_package: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_package / "xdg"))
    chosen = _jit.cache_dir()
    assert chosen == read_only_package / "xdg" / "hpcmig" / "numba"
    assert chosen.is_dir()


def test_no_writable_home_uses_a_private_temp_dir(read_only_package: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (read_only_package / "file").write_text("")  # a home that cannot hold directories
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_package / "file"))
    chosen = _jit.cache_dir()
    assert chosen == read_only_package / "tmp" / f"hpcmig-numba-{os.getuid()}"
    assert chosen.is_dir() and chosen.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("planted", ["shared", "symlink"])
def test_someone_elses_temp_dir_is_never_used(read_only_package: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              planted: str) -> None:
    (read_only_package / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_package / "file"))
    path = read_only_package / "tmp" / f"hpcmig-numba-{os.getuid()}"
    if planted == "shared":
        path.mkdir()
        path.chmod(0o777)
    else:
        (read_only_package / "elsewhere").mkdir()
        path.symlink_to(read_only_package / "elsewhere")
    assert _jit.cache_dir() is None

