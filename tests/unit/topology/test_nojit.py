"""The kernels once more as plain Python (NUMBA_DISABLE_JIT=1), in a subprocess.

Compiled and interpreted kernels must agree: the kernel-vs-reference tests pass under both,
and the whole mapper gives the same mapping for the same seed under both (the random
generator is integer Park-Miller, identical in numba and Python) and on one thread, for
sparse, dense (coarsened once) and rank-ordered (coarsened in rank order) traffic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcmig.topology.generate import fat_tree, torus
from hpcmig.topology.mapper import map_ranks
from hpcmig.topology.patterns import all_to_all, permute, stencil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1",
                                reason="already running without JIT")

_MAP_SCRIPT = """
import json
from tests.unit.topology.test_nojit import _mappings
print(json.dumps(_mappings()))
"""


def _mappings() -> dict[str, list[int]]:
    """Mappings of sparse, dense (the coarsened path) and rank-ordered traffic."""
    out = {}
    dense = all_to_all(64, nbytes=1.0) + stencil((8, 8))
    for kind, comm in (("sparse", permute(stencil((8, 8)), seed=3)[0]),
                       ("dense", permute(dense, seed=3)[0]),
                       ("local", stencil((8, 8)))):
        for name, topo in (("fattree", fat_tree([4, 2, 2])), ("torus", torus([4, 4]))):
            out[kind + name] = map_ranks(comm, topo, 4, seed=5).node_of.tolist()
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_kernel_tests_pass_without_jit() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "test_kernels.py"), str(HERE / "test_kernels_metrics.py"),
         str(HERE / "test_kernels_task.py")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_mapper_does_not_depend_on_the_number_of_threads() -> None:
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _MAP_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == _mappings()


def test_mapper_gives_the_same_mapping_with_and_without_jit() -> None:
    proc = subprocess.run([sys.executable, "-c", _MAP_SCRIPT], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == _mappings()
