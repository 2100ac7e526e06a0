"""The [health] table: defaults, types, values, unknown keys."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from hpcmig.errors import UsageError
from hpcmig.health.rules import Policy


def test_defaults() -> None:
    p = Policy()
    assert (p.enabled, p.dry_run, p.interval, p.ce_rise, p.ce_window, p.ue_any) == (
        True, False, 3.0, 10, 60.0, True)
    assert (p.temperature_max, p.free_min_mb, p.nic_rise, p.nic_window, p.checks) == (
        90.0, 512, 100, 60.0, True)
    assert (p.resume_after, p.balance, p.balance_factor, p.balance_seconds,
            p.balance_idle) == (0.0, False, 1.5, 30.0, 0.5)
    assert Policy.from_table({}) == p
    assert p.horizon == 60.0


def test_a_table_sets_its_keys_and_ints_are_fine_for_floats() -> None:
    table = tomllib.loads("dry_run = true\ninterval = 2\nce_rise = 5\nce_window = 10\n"
                          "temperature_max = 85.5\nbalance = true\nresume_after = 300\n")
    p = Policy.from_table(table)
    assert p == Policy(dry_run=True, interval=2.0, ce_rise=5, ce_window=10.0,
                       temperature_max=85.5, balance=True, resume_after=300.0)
    assert isinstance(p.interval, float) and isinstance(Policy(interval=2).interval, float)
    assert p.to_table() == {"dry_run": True, "interval": 2.0, "ce_rise": 5, "ce_window": 10.0,
                            "temperature_max": 85.5, "resume_after": 300.0, "balance": True}
    assert Policy.from_table(p.to_table(changed_only=False)) == p
    assert Policy().to_table() == {}


def test_an_unknown_key_names_itself_and_the_known_keys() -> None:
    with pytest.raises(UsageError) as err:
        Policy.from_table({"ce_rise": 3, "ce_windw": 5}, origin="hpcmig.toml: [health]")
    text = str(err.value)
    assert text.startswith("hpcmig.toml: [health]: unknown key(s) ce_windw (known keys: "
                           "enabled, dry_run, interval, ce_rise, ce_window, ")
    assert "\n" not in text and "balance_idle" in text


@pytest.mark.parametrize("key, value, match", [
    ("enabled", 1, "enabled must be true or false, got 1"),
    ("ue_any", "yes", "ue_any must be true or false"),
    ("ce_rise", 1.5, "ce_rise must be an integer, got 1.5"),
    ("ce_rise", True, "ce_rise must be an integer, got True"),
    ("interval", "3s", "interval must be a number, got '3s'"),
    ("balance_factor", False, "balance_factor must be a number"),
    ("free_min_mb", -1, "free_min_mb must not be negative"),
    ("interval", 0, "interval must be greater than 0"),
    ("ce_window", 0.0, "ce_window must be greater than 0"),
    ("temperature_max", float("nan"), "temperature_max must be a finite number"),
    ("resume_after", float("inf"), "resume_after must be a finite number"),
])
def test_wrong_types_and_values_are_one_line_errors(key: str, value: Any, match: str) -> None:
    with pytest.raises(UsageError, match=f"^health: {match}") as err:
        Policy.from_table({key: value})
    assert "\n" not in str(err.value)
