"""topology.conf parsing, generators, the TOPO spec, distances and node subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcmig.errors import UsageError
from hpcmig.topology.generate import dragonfly, fat_tree, load_topology, torus
from hpcmig.topology.slurmconf import parse_topology_conf, read_topology_conf

TREE = """\
# two leaf switches under one spine
SwitchName=s0 Nodes=tux[0-3]
SwitchName=s1 Nodes=tux[4-7] LinkSpeed=100
SwitchName=spine Switches=s[0-1]
"""


def test_tree_conf_distances_count_links() -> None:
    topo = parse_topology_conf(TREE)
    assert topo.names == tuple(f"tux{i}" for i in range(8))
    i = {n: k for k, n in enumerate(topo.names)}
    assert topo.distance(i["tux0"], i["tux0"]) == 0
    assert topo.distance(i["tux0"], i["tux3"]) == 2
    assert topo.distance(i["tux0"], i["tux5"]) == 4
    # subtrees are contiguous in the split order, the top split separates the two switches
    first = [topo.names[k] for k in topo.order[:4]]
    assert sorted(first) == [f"tux{k}" for k in range(4)]
    assert topo.split_key[3] == topo.split_key.max()


def test_uneven_depths_and_several_roots() -> None:
    text = ("SwitchName=a Nodes=n1\nSwitchName=b Nodes=n2\nSwitchName=c Switches=b Nodes=n3\n")
    topo = parse_topology_conf(text)
    i = {n: k for k, n in enumerate(topo.names)}
    assert topo.distance(i["n2"], i["n3"]) == 3  # n2-b-c-n3
    assert topo.distance(i["n1"], i["n3"]) == 4  # via the virtual root: n1-a-root-c-n3
    assert topo.distance(i["n1"], i["n2"]) == 5


def test_block_conf() -> None:
    topo = parse_topology_conf("BlockName=b1 Nodes=n[1-2]\nBlockName=b2 Nodes=n[3-4]\n"
                               "BlockSizes=2,4\n")
    assert topo.distance(0, 1) == 2 and topo.distance(0, 2) == 4


@pytest.mark.parametrize(("text", "message"), [
    ("SwitchName=s0 Nodes=a[1-2] Bogus=1\n", "unknown key"),
    ("SwitchName=s0 Switches=s9\n", "unknown switch s9"),
    ("SwitchName=s0 Nodes=a1\nSwitchName=s1 Nodes=a1\n", "under two switches"),
    ("SwitchName=s0 Nodes=a1\nSwitchName=s0 Nodes=a2\n", "defined twice"),
    ("SwitchName=s0 Switches=s1\nSwitchName=s1 Switches=s0\n", "cycle"),
    ("SwitchName=s0 Nodes=a[3-1]\n", "bad range"),
    ("SwitchName=s0 Nodes\n", "expected KEY=VALUE"),
    ("# nothing\n", "no SwitchName"),
    ("Nodes=a1\n", "must start with"),
])
def test_malformed_conf_gives_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_topology_conf(text, "topology.conf")
    assert str(info.value).startswith("topology.conf")
    assert "\n" not in str(info.value)


def test_read_topology_conf_file(tmp_path: Path) -> None:
    p = tmp_path / "topology.conf"
    p.write_text(TREE)
    assert read_topology_conf(p).n_nodes == 8
    assert load_topology(str(p)).n_nodes == 8


def test_fat_tree_levels() -> None:
    topo = fat_tree([4, 3, 2])
    assert topo.n_nodes == 24
    d = topo.distance_matrix()
    assert d[0, 3] == 2 and d[0, 4] == 4 and d[0, 12] == 6
    assert sorted(np.unique(d).tolist()) == [0, 2, 4, 6]


def test_torus_wraps_around() -> None:
    topo = torus([4, 5])
    a = 0  # (0, 0)
    assert topo.distance(a, int(np.ravel_multi_index((3, 0), (4, 5)))) == 1
    assert topo.distance(a, int(np.ravel_multi_index((2, 3), (4, 5)))) == 2 + 2
    # recursive coordinate bisection: the first half of the order is one half of the torus
    half = topo.coords[topo.order[:10]]
    assert len(np.unique(half[:, 0])) == 2


def test_dragonfly_distances() -> None:
    topo = dragonfly(3, 2, 2)
    assert topo.distance(0, 1) == 2  # same router
    assert topo.distance(0, 2) == 3  # same group
    assert topo.distance(0, 4) == 5  # other group


@pytest.mark.parametrize("spec", ["fattree:", "torus:4x", "torus:2x2x2x2", "dragonfly:2,2",
                                  "mesh:4x4", "fattree:0,2", "nonexistent/topology.conf"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(UsageError):
        load_topology(spec)


def test_spec_prefix_names_nodes() -> None:
    topo = load_topology("torus:2x2:nid")
    assert topo.names == ("nid0", "nid1", "nid2", "nid3")


def test_subset_keeps_order_and_distances() -> None:
    full = fat_tree([2, 2, 2])
    names = ["n7", "n0", "n1", "n4"]
    sub = full.subset(names)
    assert sub.names == tuple(names)
    idx = full.index(names)
    np.testing.assert_array_equal(sub.distance_matrix(), full.distance_matrix(idx))
    with pytest.raises(UsageError, match="not in the topology"):
        full.subset(["n0", "x9"])
    with pytest.raises(UsageError, match="twice"):
        full.subset(["n0", "n0"])
