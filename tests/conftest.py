"""Test tiers: `integration` tests need root and the real testbed, and run after unit tests;
`lifecycle` tests (which take the testbed down and up) run last."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("lifecycle"):
            return 2
        if item.get_closest_marker("integration"):
            return 1
        return 0

    items.sort(key=rank)  # stable: file order is kept inside each tier
