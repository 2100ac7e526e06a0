"""`hpcmig run --map`: ranks that talk most share a container, then a leaf switch; bad
matrices and layouts are refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcmig import rankmap
from hpcmig.errors import UsageError
from hpcmig.topology.comm import write_comm


def pairs_matrix(n: int, pairs: list[tuple[int, int]], heavy: float = 1e9) -> np.ndarray:
    comm = np.zeros((n, n))
    for a, b in pairs:
        comm[a, b] = comm[b, a] = heavy
    for r in range(n - 1):
        comm[r, r + 1] += 1.0
    return comm


def test_heavy_pairs_share_a_container(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    write_comm(path, pairs_matrix(6, [(0, 3), (1, 4), (2, 5)]))
    found = rankmap.place(str(path), 6, ["n1", "n2", "n3"], [2, 2, 2], None)
    c = found.container_of
    assert c[0] == c[3] and c[1] == c[4] and c[2] == c[5] and len(set(c)) == 3
    assert found.hop_bytes < found.block_hop_bytes and found.topology == "one switch"


def test_a_tree_keeps_heavy_containers_under_one_leaf(tmp_path: Path) -> None:
    conf = tmp_path / "topology.conf"
    conf.write_text("SwitchName=l1 Nodes=a[1-2]\nSwitchName=l2 Nodes=b[1-2]\n"
                    "SwitchName=top Switches=l[1-2]\n")
    path = tmp_path / "m.h5"
    # 4 ranks, one per container: heavy 0-2 and 1-3; containers on a1, b1, a2, b2
    write_comm(path, pairs_matrix(4, [(0, 2), (1, 3)]))
    found = rankmap.place(str(path), 4, ["a1", "b1", "a2", "b2"], [1, 1, 1, 1], conf)
    leaf = ["a", "b", "a", "b"]  # the leaf of each container
    c = found.container_of
    assert leaf[c[0]] == leaf[c[2]] and leaf[c[1]] == leaf[c[3]], c
    assert found.topology == str(conf)


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    write_comm(path, pairs_matrix(4, [(0, 1)]))
    with pytest.raises(UsageError, match="4 x 4 traffic matrix, but 6 ranks"):
        rankmap.place(str(path), 6, ["n1", "n2", "n3"], [2, 2, 2], None)
    with pytest.raises(UsageError, match="do not fit"):
        rankmap.place(str(path), 4, ["n1"], [2], None)
    with pytest.raises(UsageError, match="one container per node"):
        rankmap.place(str(path), 4, ["n1", "n1"], [2, 2], None)
    with pytest.raises(UsageError, match="does not exist"):
        rankmap.place(str(tmp_path / "none.h5"), 4, ["n1", "n2"], [2, 2], None)


def test_topology_conf_sits_beside_slurm_conf() -> None:
    assert rankmap.topology_conf({"SLURM_CONF": "/x/slurm.conf"}) == Path("/x/topology.conf")
    assert rankmap.topology_conf({}) == Path("/etc/slurm/topology.conf")
