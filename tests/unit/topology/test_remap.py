"""Planning a remap: moves to free nodes that cut hop-bytes, in an order that can run, and
the payback rule."""

from __future__ import annotations

import numpy as np
import pytest

from hpcmig.errors import UsageError
from hpcmig.topology import remap
from hpcmig.topology.model import from_tree
from hpcmig.topology.slurmconf import parse_topology_conf

TWO_LEAVES = parse_topology_conf("SwitchName=la Nodes=a[1-3]\nSwitchName=lb Nodes=b[1-3]\n"
                                 "SwitchName=top Switches=la,lb\n")
GiB = float(1 << 30)


def pair(n: int, heavy: list[tuple[int, int]]) -> np.ndarray:
    c = np.zeros((n, n))
    for a, b in heavy:
        c[a, b] = c[b, a] = GiB
    return c


def test_a_heavy_pair_across_leaves_comes_together() -> None:
    p = remap.plan(TWO_LEAVES, pair(2, [(0, 1)]), ["a1", "b1"], ["a2"], window=10,
                   remaining=3600, pause=1.0, link_bytes_per_second=1e9)
    assert [(m.container, m.source, m.target) for m in p.moves] == [(1, "b1", "a2")]
    assert p.hop_bytes_before == 2 * GiB * TWO_LEAVES.distance(0, 3)
    assert p.hop_bytes_after == 2 * GiB * TWO_LEAVES.distance(0, 1)
    assert p.pays and p.saving_seconds > 2 * p.cost_seconds == 2.0
    assert "1 move(s) cut hop-bytes by 50%" in p.describe()


def test_moves_chain_through_nodes_that_earlier_moves_emptied() -> None:
    # 0-2 and 1-3 talk; 0,1 on leaf a, 2,3 on leaf b would be ideal; one free node on b
    p = remap.plan(TWO_LEAVES, pair(4, [(0, 2), (1, 3)]), ["a1", "b1", "b2", "a2"], ["b3"],
                   window=10, remaining=3600, pause=1.0, link_bytes_per_second=1e9)
    free = {"b3"}
    spot = {0: "a1", 1: "b1", 2: "b2", 3: "a2"}
    for m in p.moves:  # every target is free when its move runs
        assert m.target in free and spot[m.container] == m.source
        free.discard(m.target)
        free.add(m.source)
        spot[m.container] = m.target
    leaf = {c: n[0] for c, n in spot.items()}
    assert leaf[0] == leaf[2] and leaf[1] == leaf[3]
    assert p.hop_bytes_after == 4 * GiB * 2.0 < p.hop_bytes_before


def test_one_switch_or_no_traffic_means_nothing_to_do() -> None:
    flat = from_tree("flat", ["n1", "n2", "n3"], [[0]] * 3, [2.0, 2.0])
    p = remap.plan(flat, pair(2, [(0, 1)]), ["n1", "n2"], ["n3"], window=10,
                   remaining=3600, pause=1.0, link_bytes_per_second=1e9)
    assert p.moves == [] and not p.pays and p.describe().startswith("nothing to gain")
    quiet = remap.plan(TWO_LEAVES, np.zeros((2, 2)), ["a1", "b1"], ["a2"], window=10,
                       remaining=3600, pause=1.0, link_bytes_per_second=1e9)
    assert quiet.moves == []


def test_a_short_remaining_time_does_not_pay_for_the_pause() -> None:
    p = remap.plan(TWO_LEAVES, pair(2, [(0, 1)]), ["a1", "b1"], ["a2"], window=10,
                   remaining=1.0, pause=5.0, link_bytes_per_second=1e9)
    assert len(p.moves) == 1 and not p.pays and "does not pay" in p.describe()
    assert remap.plan(TWO_LEAVES, pair(2, [(0, 1)]), ["a1", "b1"], ["a2"], window=10,
                      remaining=3600, pause=1.0, link_bytes_per_second=1e9,
                      max_moves=0).moves == []


def test_bad_plans_are_refused() -> None:
    with pytest.raises(UsageError, match="2 x 2"):
        remap.plan(TWO_LEAVES, np.zeros((3, 3)), ["a1", "b1"], [], window=1, remaining=1,
                   pause=1, link_bytes_per_second=1)
    with pytest.raises(UsageError, match="distinct"):
        remap.plan(TWO_LEAVES, np.zeros((2, 2)), ["a1", "a1"], [], window=1, remaining=1,
                   pause=1, link_bytes_per_second=1)
    with pytest.raises(UsageError, match="free nodes must be empty"):
        remap.plan(TWO_LEAVES, np.zeros((2, 2)), ["a1", "b1"], ["b1"], window=1,
                   remaining=1, pause=1, link_bytes_per_second=1)
    with pytest.raises(UsageError, match="window"):
        remap.plan(TWO_LEAVES, np.zeros((2, 2)), ["a1", "b1"], [], window=0, remaining=1,
                   pause=1, link_bytes_per_second=1)
