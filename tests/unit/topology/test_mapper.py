"""The public mapper, baselines, bounds, controller call, hostfile formats and `hpcmig map`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hpcmig.cli import main
from hpcmig.errors import UsageError
from hpcmig.topology import patterns
from hpcmig.topology.bounds import lower_bound, partner_bound
from hpcmig.topology.comm import rank_graph, write_comm
from hpcmig.topology.generate import dragonfly, fat_tree, torus
from hpcmig.topology.hostfile import rankfile_text, write_mapping
from hpcmig.topology.mapper import map_ranks
from hpcmig.topology.metrics import (
    block_placement,
    cyclic_placement,
    hop_bytes,
    link_loads,
    max_link_load,
)
from hpcmig.topology.model import Topology
from hpcmig.topology.placement import best_target, rank_targets

from . import reference as ref
from .conftest import random_graph

TOPOS = [fat_tree([4, 4, 2]), torus([4, 4, 2]), dragonfly(4, 2, 4)]


@pytest.mark.parametrize("topo", TOPOS, ids=lambda t: t.kind)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_never_worse_than_block_and_capacities_hold(topo: Topology, seed: int) -> None:
    comm = random_graph(topo.n_nodes * 4, 0.08, seed)
    m = map_ranks(comm, topo, 4, seed=seed)
    assert np.all(np.bincount(m.node_of, minlength=topo.n_nodes) <= 4)
    assert m.hop_bytes == pytest.approx(hop_bytes(comm, topo, m.node_of))
    assert m.hop_bytes <= hop_bytes(comm, topo, block_placement(len(m.node_of), topo, 4))
    assert m.block_hop_bytes == pytest.approx(
        hop_bytes(comm, topo, block_placement(len(m.node_of), topo, 4)))


def test_block_is_returned_when_it_cannot_be_beaten() -> None:
    topo = fat_tree([4, 2])
    comm = patterns.stencil((8,), nbytes=10)  # a 1D chain in natural order: block is optimal
    m = map_ranks(comm, topo, 4)
    assert m.hop_bytes == m.block_hop_bytes


def test_permuted_stencil_beats_block_by_far() -> None:
    comm, _ = patterns.permute(patterns.stencil((16, 16)), seed=1)
    topo = fat_tree([4, 4, 4])
    m = map_ranks(comm, topo, 4)
    assert m.hop_bytes < 0.5 * m.block_hop_bytes
    assert m.method == "recursive-bisection"


def test_dense_traffic_is_mapped_as_clusters_and_never_worse_than_block() -> None:
    # pencil FFT on a 32 x 32 grid: 62 partners per rank, so the graph is coarsened once
    comm = patterns.pencil_fft(32, 32)
    topo = fat_tree([4, 4, 4])
    m = map_ranks(comm, topo, 16, seed=1)
    assert np.all(np.bincount(m.node_of, minlength=topo.n_nodes) == 16)
    assert m.hop_bytes == pytest.approx(hop_bytes(comm, topo, m.node_of))
    assert m.hop_bytes <= m.block_hop_bytes
    perm, _ = patterns.permute(comm, seed=2)  # rank order carries no locality any more
    mp = map_ranks(perm, topo, 16, seed=1)
    assert np.all(np.bincount(mp.node_of, minlength=topo.n_nodes) == 16)
    assert mp.hop_bytes < 0.9 * mp.block_hop_bytes


def test_same_seed_same_mapping() -> None:
    comm = patterns.unstructured_mesh(128, seed=3)
    topo = torus([4, 4])
    a = map_ranks(comm, topo, 8, seed=4).node_of
    b = map_ranks(comm, topo, 8, seed=4).node_of
    np.testing.assert_array_equal(a, b)


def test_partial_fill_packs_ranks() -> None:
    comm = patterns.stencil((4, 4))
    topo = fat_tree([4, 4])  # 16 nodes, 64 slots
    m = map_ranks(comm, topo, 4)
    assert len(set(m.node_of.tolist())) == 4  # 16 ranks on 4 full nodes


def test_optimal_on_tiny_instances() -> None:
    topo = fat_tree([2, 2])
    dist = topo.distance_matrix().tolist()
    for seed in range(3):
        comm = random_graph(8, 0.4, seed)
        m = map_ranks(comm, topo, 2, seed=seed)
        best = ref.best_mapping(comm.toarray().tolist(), [2] * 4, dist)
        # hop-bytes of the symmetric `comm` count every pair twice, like the reference
        assert m.hop_bytes <= 1.15 * best


def test_too_few_slots_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="too few slots"):
        map_ranks(patterns.stencil((8, 8)), fat_tree([2, 2]), 4)


def test_cyclic_deals_round_robin() -> None:
    topo = fat_tree([3])
    assert cyclic_placement(7, topo, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_link_loads_on_a_tree() -> None:
    topo = fat_tree([2, 2])  # n0 n1 | n2 n3
    comm = np.zeros((4, 4))
    comm[0, 2] = 10  # crosses both leaf uplinks and both node links
    comm[0, 1] = 1
    loads = link_loads(comm, topo, np.arange(4))
    assert max_link_load(comm, topo, np.arange(4)) == 11  # n0's own link carries both
    assert sorted(loads[loads > 0].tolist()) == [1, 10, 10, 10, 11]


def test_lower_bound_below_optimum() -> None:
    topo = fat_tree([2, 2])
    dist = topo.distance_matrix().tolist()
    for seed in range(3):
        comm = random_graph(8, 0.5, seed)
        bound = lower_bound(comm, topo, 2)
        best = ref.best_mapping(comm.toarray().tolist(), [2] * 4, dist)
        assert 0 < bound.total <= best + 1e-9
        assert [lv.level for lv in bound.levels] == ["node", "level 1"]
    tor = torus([2, 2])
    comm = random_graph(8, 0.5, 7)
    best = ref.best_mapping(comm.toarray().tolist(), [2] * 4, tor.distance_matrix().tolist())
    assert 0 < lower_bound(comm, tor, 2).total <= best + 1e-9


def test_partner_bound_on_all_to_all() -> None:
    comm = patterns.all_to_all(8, nbytes=1)
    # groups of 4: each rank keeps 3 partners, sends to 4 others: 8 * 4 * 2 / 2 crossing
    assert partner_bound(rank_graph(comm), 4) == 32


def test_rank_targets_matches_brute_force() -> None:
    topo = fat_tree([2, 2, 2])
    traffic = random_graph(4, 1.0, 3)
    placement = ["n0", "n2", "n4", "n6"]
    cands = ["n1", "n3", "n5", "n7"]
    ranked = rank_targets(topo, traffic, placement, 0, cands)
    base = hop_bytes(traffic, topo, topo.index(placement))
    for c in ranked:
        moved = topo.index([c.node, *placement[1:]])
        assert c.added_hop_bytes == pytest.approx(hop_bytes(traffic, topo, moved) - base)
    assert [c.added_hop_bytes for c in ranked] == sorted(c.added_hop_bytes for c in ranked)
    assert best_target(topo, traffic, placement, 0, cands) == ranked[0].node
    with pytest.raises(UsageError):
        rank_targets(topo, traffic, placement, 0, ["nope"])


def test_hostfile_and_rankfile(tmp_path: Path) -> None:
    write_mapping(tmp_path / "h", ["a", "a", "b"])
    assert (tmp_path / "h").read_text() == "a\na\nb\n"
    assert rankfile_text(["a", "b", "a"]) == ("rank 0=a slot=0\nrank 1=b slot=0\n"
                                              "rank 2=a slot=1\n")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["map", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_hostfile_and_reports(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    comm, _ = patterns.permute(patterns.stencil((8, 8)), seed=2)
    write_comm(tmp_path / "c.h5", comm)
    conf = tmp_path / "topology.conf"
    conf.write_text("SwitchName=s0 Nodes=c[01-08]\nSwitchName=s1 Nodes=c[09-16]\n"
                    "SwitchName=top Switches=s[0-1]\n")
    code, out, err = _run(capsys, "--topology", str(conf), "--comm", str(tmp_path / "c.h5"),
                          "--ranks-per-node", "4", "-o", str(tmp_path / "hosts"),
                          "--plot", str(tmp_path / "p.png"))
    assert code == 0, err
    lines = (tmp_path / "hosts").read_text().splitlines()
    assert len(lines) == 64 and all(h.startswith("c") for h in lines)
    assert max(lines.count(h) for h in set(lines)) == 4
    assert "block" in out
    assert re.search(r"^lower bound \S+ +\(mapping/bound = \d+\.\d+\) in \d+\.\d+ s$", out, re.M)
    assert (tmp_path / "p.png").stat().st_size > 0
    code, out, err = _run(capsys, "--topology", "fattree:4,4", "--comm", str(tmp_path / "c.h5"),
                          "--ranks-per-node", "8", "--nodes", "n[00-07]", "--format",
                          "rankfile", "-o", str(tmp_path / "rf"), "--no-bound")
    assert code == 0, err
    assert (tmp_path / "rf").read_text().startswith("rank 0=n0")
    assert "lower bound" not in out


@pytest.mark.parametrize(("extra", "message"), [
    (["--ranks-per-node", "1"], "too few slots"),
    (["--ranks-per-node", "4", "--nodes", "n[00-03],zz"], "not in the topology"),
])
def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                    message: str) -> None:
    write_comm(tmp_path / "c.h5", patterns.stencil((8, 8)))
    code, _, err = _run(capsys, "--topology", "fattree:4,4", "--comm", str(tmp_path / "c.h5"),
                        "-o", str(tmp_path / "h"), *extra)
    assert code == 2
    assert err.startswith("hpcmig: error: ") and message in err and err.count("\n") == 1


def test_cli_rejects_non_square_and_bad_conf(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("comm", data=np.ones((3, 4)))
    code, _, err = _run(capsys, "--topology", "torus:2x2", "--comm", str(tmp_path / "bad.h5"),
                        "--ranks-per-node", "1", "-o", str(tmp_path / "h"))
    assert code == 2 and "square" in err
    (tmp_path / "t.conf").write_text("SwitchName=s0 Nodes=a[1-2] Speed=9\n")
    write_comm(tmp_path / "c.h5", patterns.stencil((2,)))
    code, _, err = _run(capsys, "--topology", str(tmp_path / "t.conf"), "--comm",
                        str(tmp_path / "c.h5"), "--ranks-per-node", "1", "-o",
                        str(tmp_path / "h"))
    assert code == 2 and "unknown key" in err and "t.conf:1" in err
