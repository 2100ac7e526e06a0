"""The kernels once more as plain Python (NUMBA_DISABLE_JIT=1), in a subprocess.

Compiled and interpreted kernels must agree: the kernel-vs-reference tests pass under both,
and the whole mapper gives the same mapping for the same seed under both (the random
generator is integer Park-Miller, identical in numba and Python).
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
from hpcmig.topology.patterns import permute, stencil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1",
                                reason="already running without JIT")

_MAP_SCRIPT = """
import json, sys
from hpcmig.topology.generate import fat_tree, torus
from hpcmig.topology.mapper import map_ranks
from hpcmig.topology.patterns import permute, stencil
comm, _ = permute(stencil((8, 8)), seed=3)
out = {}
for name, topo in (("fattree", fat_tree([4, 2, 2])), ("torus", torus([4, 4]))):
    out[name] = map_ranks(comm, topo, 4, seed=5).node_of.tolist()
print(json.dumps(out))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_kernel_tests_pass_without_jit() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(HERE / "test_kernels.py")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_mapper_does_not_depend_on_the_number_of_threads() -> None:
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _MAP_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one_thread = json.loads(proc.stdout)
    comm, _ = permute(stencil((8, 8)), seed=3)
    assert map_ranks(comm, fat_tree([4, 2, 2]), 4, seed=5).node_of.tolist() == \
        one_thread["fattree"]
    assert map_ranks(comm, torus([4, 4]), 4, seed=5).node_of.tolist() == one_thread["torus"]


def test_mapper_gives_the_same_mapping_with_and_without_jit() -> None:
    proc = subprocess.run([sys.executable, "-c", _MAP_SCRIPT], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    interpreted = json.loads(proc.stdout)
    comm, _ = permute(stencil((8, 8)), seed=3)
    assert map_ranks(comm, fat_tree([4, 2, 2]), 4, seed=5).node_of.tolist() == \
        interpreted["fattree"]
    assert map_ranks(comm, torus([4, 4]), 4, seed=5).node_of.tolist() == interpreted["torus"]
