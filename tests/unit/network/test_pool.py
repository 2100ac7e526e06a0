"""Address pool: block choice, container addresses, persistence and concurrent reservation."""

from __future__ import annotations

import multiprocessing
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hpcmig.errors import HpcmigError, UsageError
from hpcmig.network.pool import (
    AddressPool,
    PoolExhausted,
    container_address,
    container_index,
    parse_pool,
    pick_block,
)


def test_pick_block_skips_taken_and_overlapping_blocks() -> None:
    pool = IPv4Network("10.252.0.0/24")
    assert pick_block(pool, 26, []) == IPv4Network("10.252.0.0/26")
    taken = [IPv4Network("10.252.0.0/26"), IPv4Network("10.252.0.64/27")]
    assert pick_block(pool, 26, taken) == IPv4Network("10.252.0.128/26")
    with pytest.raises(PoolExhausted):
        pick_block(pool, 25, [IPv4Network("10.252.0.0/25"), IPv4Network("10.252.0.128/26")])


def test_container_addresses_are_block_plus_index_plus_one() -> None:
    block = IPv4Network("10.252.1.0/26")
    assert container_address(block, 0) == IPv4Address("10.252.1.1")
    assert container_address(block, 61) == IPv4Address("10.252.1.62")
    assert container_index(block, "10.252.1.5") == 4
    with pytest.raises(UsageError):
        container_address(block, 62)  # would be the broadcast address
    with pytest.raises(UsageError):
        container_address(block, -1)


def test_bad_pool_configuration_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_pool("10.252.0.1/16", 26)  # host bits set
    with pytest.raises(UsageError):
        parse_pool("10.252.0.0/16", 8)


def test_reservation_is_stable_persisted_and_released(tmp_path: Path) -> None:
    state = str(tmp_path / "pool.json")
    pool = AddressPool(state, "10.252.0.0/16", 26)
    a = pool.reserve(101)
    b = pool.reserve("102")
    assert a != b and not a.overlaps(b)
    # another process (new instance) sees the same reservations: requeue keeps the block
    again = AddressPool(state, "10.252.0.0/16", 26)
    assert again.reserve("101") == a
    assert again.lookup(102) == b
    assert again.job_of("10.252.0.70") == "102"
    assert again.release(101) == a
    assert again.lookup(101) is None
    assert pool.reserve(103) == a  # freed block is reused
    assert pool.release(999) is None


def test_corrupt_state_is_reported_not_overwritten(tmp_path: Path) -> None:
    state = tmp_path / "pool.json"
    state.write_text("{not json")
    with pytest.raises(HpcmigError, match="cannot read address pool state"):
        AddressPool(str(state)).reserve(1)
    assert state.read_text() == "{not json"


def _reserve_many(state: str, worker: int, out: multiprocessing.Queue) -> None:
    pool = AddressPool(state, "10.252.0.0/20", 26)
    out.put([(f"{worker}-{i}", str(pool.reserve(f"{worker}-{i}"))) for i in range(6)])


def test_concurrent_reservations_never_share_a_block(tmp_path: Path) -> None:
    state = str(tmp_path / "pool.json")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_reserve_many, args=(state, w, out)) for w in range(6)]
    for p in procs:
        p.start()
    results = [pair for _ in procs for pair in out.get(timeout=30)]
    for p in procs:
        p.join(30)
    blocks = [b for _, b in results]
    assert len(results) == 36 and len(set(blocks)) == 36
    assert AddressPool(state, "10.252.0.0/20", 26).blocks() == {
        j: IPv4Network(b) for j, b in results
    }
