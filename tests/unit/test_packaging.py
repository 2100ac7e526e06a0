"""What an admin or a user installs: the CLI's read-only verbs need no root, and the Spack
recipe asks for what pyproject.toml does (Spack itself is not available to run here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HPCMIG = Path(sys.executable).with_name("hpcmig")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can write (pytest's tmp_path is root's 0700 tree)."""
    d = Path(tempfile.mkdtemp(prefix="hpcmig-nonroot-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def unprivileged(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """argv as user nobody when we are root (as ourselves otherwise), HOME=home."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "NUMBA_DISABLE_JIT": "1",
           "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                           *argv], capture_output=True, text=True, timeout=300, cwd=home)


def test_read_only_verbs_run_without_root(shared_dir: Path) -> None:
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot drop to an unprivileged user")
    if not HPCMIG.exists():
        pytest.skip(f"no hpcmig entry point next to {sys.executable}")
    probe = unprivileged([sys.executable, "-c", "import hpcmig.cli"], shared_dir)
    if "Permission denied" in probe.stderr:
        pytest.skip(f"user nobody cannot read this Python environment: {probe.stderr[-200:]}")
    assert probe.returncode == 0, probe.stderr
    import h5py

    rng = np.random.default_rng(0)
    traffic = rng.random((8, 8))
    traffic += traffic.T
    np.fill_diagonal(traffic, 0.0)
    with h5py.File(shared_dir / "comm.h5", "w") as fh:
        fh["comm"] = traffic
    (shared_dir / "comm.h5").chmod(0o644)

    version = unprivileged([str(HPCMIG), "--version"], shared_dir)
    assert version.returncode == 0 and version.stdout.startswith("hpcmig "), version
    helped = unprivileged([str(HPCMIG), "map", "--help"], shared_dir)
    assert helped.returncode == 0 and "--topology" in helped.stdout, helped
    mapped = unprivileged([str(HPCMIG), "map", "--topology", "fattree:4,2", "--comm",
                           str(shared_dir / "comm.h5"), "--ranks-per-node", "1", "--no-bound",
                           "-o", str(shared_dir / "hosts")], shared_dir)
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    hosts = (shared_dir / "hosts").read_text().split()
    assert sorted(hosts) == [f"n{i}" for i in range(8)]  # one rank on every node


def _recipe_dependencies() -> dict[str, str]:
    """{spack name: version constraint} of the recipe's depends_on lines without `when=`."""
    text = (ROOT / "spack" / "packages" / "py-hpcmig" / "package.py").read_text()
    deps: dict[str, str] = {}
    line = re.compile(r'^\s*depends_on\("([^"]+)"(?:, type=(?:"\w+"|\([^)]*\)))?\)$', re.M)
    for spec in line.findall(text):
        name, _, version = spec.partition("@")
        deps[name] = version
    return deps


def test_the_spack_recipe_asks_for_what_pyproject_does() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    recipe = _recipe_dependencies()
    for requirement in project["dependencies"]:
        name, _, bound = re.match(r"([A-Za-z0-9_.-]+)(>=)?(.*)", requirement).groups()  # type: ignore[union-attr]
        spack_name = "py-" + name.lower().replace("_", "-").replace(".", "-")
        assert spack_name in recipe, f"{requirement} is not in the Spack recipe"
        assert recipe[spack_name] == (f"{bound}:" if bound else ""), (requirement, recipe)
    assert recipe["python"] == project["requires-python"].removeprefix(">=") + ":"
    assert {"criu", "slurm"} <= set(recipe)
    text = (ROOT / "spack" / "packages" / "py-hpcmig" / "package.py").read_text()
    assert 'depends_on("dmtcp", type="run", when="+dmtcp")' in text
