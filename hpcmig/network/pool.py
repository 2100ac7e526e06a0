"""Virtual address blocks for jobs: one block per job, container i at block + i + 1.

Design note: this module owns which job holds which block of the virtual address pool.
`pick_block` and `container_address` are pure; `AddressPool` keeps the reservations in a small
JSON state file under an exclusive flock, keyed by job id, so a job keeps its block (and each
container its address) across migration and requeue until someone releases it at job end.
The file must be the cluster's single source of truth: the controller's state directory, or
a directory shared by all nodes (the testbed). It must not touch routes or namespaces.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hpcmig.errors import HpcmigError, UsageError

DEFAULT_POOL = "10.252.0.0/16"
DEFAULT_PREFIX = 26  # 62 usable addresses: container 0..61
STATE_VERSION = 1


class PoolExhausted(HpcmigError):
    """No free block is left in the virtual address pool."""


def parse_pool(pool: str, prefix: int) -> IPv4Network:
    try:
        net = IPv4Network(pool, strict=True)
    except ValueError as exc:
        raise UsageError(f"bad virtual address pool {pool!r}: {exc}") from None
    if not net.prefixlen <= prefix <= 30:
        raise UsageError(
            f"block prefix /{prefix} does not fit pool {net} (need /{net.prefixlen}../30)"
        )
    return net


def pick_block(pool: IPv4Network, prefix: int, taken: Iterable[IPv4Network]) -> IPv4Network:
    """The first /prefix block of pool that overlaps no taken block."""
    taken = list(taken)
    for block in pool.subnets(new_prefix=prefix):
        if not any(block.overlaps(t) for t in taken):
            return block
    raise PoolExhausted(
        f"no free /{prefix} block left in {pool} ({len(taken)} jobs hold blocks)",
        hint="release the blocks of finished jobs, or configure a larger pool",
    )


def container_address(block: IPv4Network, index: int) -> IPv4Address:
    """Address of container `index` (0-based) of the job holding `block`."""
    capacity = block.num_addresses - 2
    if not 0 <= index < capacity:
        raise UsageError(f"container index {index} does not fit block {block} "
                         f"(0..{capacity - 1})", hint="configure a shorter block prefix")
    return block.network_address + index + 1


def container_index(block: IPv4Network, address: IPv4Address | str) -> int:
    addr = IPv4Address(str(address))
    if addr not in block:
        raise UsageError(f"{addr} is not in block {block}")
    return int(addr) - int(block.network_address) - 1


class AddressPool:
    """Reservations of job blocks, persisted in `state_path` (JSON, flock-protected)."""

    def __init__(self, state_path: str, pool: str = DEFAULT_POOL,
                 prefix: int = DEFAULT_PREFIX) -> None:
        self.state_path = state_path
        self.pool = parse_pool(pool, prefix)
        self.prefix = prefix

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the lock, yield the state; it is written back if the block exits cleanly."""
        directory = os.path.dirname(os.path.abspath(self.state_path))
        os.makedirs(directory, exist_ok=True)
        with open(self.state_path + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                tmp = f"{self.state_path}.tmp.{os.getpid()}"
                with open(tmp, "w", encoding="utf-8") as fh:
                    json.dump(state, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.state_path)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.state_path, encoding="utf-8") as fh:
                state = json.load(fh)
        except FileNotFoundError:
            return {"version": STATE_VERSION, "jobs": {}}
        except (OSError, json.JSONDecodeError) as exc:
            raise HpcmigError(f"cannot read address pool state {self.state_path}: {exc}",
                              hint="restore it from the controller journal or remove it "
                                   "when no hpcmig job runs") from None
        if state.get("version") != STATE_VERSION or not isinstance(state.get("jobs"), dict):
            raise HpcmigError(f"address pool state {self.state_path} has an unknown format")
        return state

    def reserve(self, job_id: str | int) -> IPv4Network:
        """The job's block, reserving a free one on first call (idempotent)."""
        key = str(job_id)
        with self._locked() as state:
            jobs: dict[str, str] = state["jobs"]
            if key in jobs:
                return IPv4Network(jobs[key])
            block = pick_block(self.pool, self.prefix, (IPv4Network(b) for b in jobs.values()))
            jobs[key] = str(block)
            return block

    def release(self, job_id: str | int) -> IPv4Network | None:
        """Forget the job's block (at job end, not at requeue); returns it if it had one."""
        with self._locked() as state:
            block = state["jobs"].pop(str(job_id), None)
            return IPv4Network(block) if block else None

    def lookup(self, job_id: str | int) -> IPv4Network | None:
        with self._locked() as state:
            block = state["jobs"].get(str(job_id))
            return IPv4Network(block) if block else None

    def blocks(self) -> dict[str, IPv4Network]:
        with self._locked() as state:
            return {job: IPv4Network(b) for job, b in state["jobs"].items()}

    def job_of(self, address: IPv4Address | str) -> str | None:
        """Which job's block holds `address` (None: no job)."""
        addr = ipaddress.IPv4Address(str(address))
        for job, block in self.blocks().items():
            if addr in block:
                return job
        return None
