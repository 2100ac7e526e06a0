"""The rules on sample sequences: each fires on its input and stays quiet otherwise; counters'
resets, windows and first samples; load balancing's overloaded and idle."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import pytest

from hpcmig.health.rules import MB, RULES, Finding, Health, NodeHistory, Policy
from hpcmig.health.sample import CheckResult, Sample
from tests.unit.health.fake import healthy

POLICY = Policy()


def feed(samples: Iterable[Sample], policy: Policy = POLICY,
         hist: NodeHistory | None = None) -> list[list[Finding]]:
    hist = hist if hist is not None else NodeHistory("n1")
    return [hist.observe(s, policy) for s in samples]


def series(field: str, values: Iterable[Any], step: float = 3.0, t0: float = 1000.0
           ) -> list[Sample]:
    return [healthy(t0 + i * step, **{field: v}) for i, v in enumerate(values)]


def rules(findings: list[Finding]) -> list[str]:
    return [f.rule for f in findings]


def test_a_healthy_node_has_no_findings() -> None:
    hist = NodeHistory("n1")
    out = feed((healthy(1000.0 + 3 * i, edac_ce=5, edac_ue=0, nic={"eth0": 7, "ib0": 0})
                for i in range(100)), hist=hist)
    assert out == [[]] * 100
    assert hist.last_findings == () and hist.last_finding_time is None


# -- corrected memory errors ---------------------------------------------------------------

def test_corrected_errors_rising_within_the_window_fire() -> None:
    out = feed(series("edac_ce", [1000, 1000, 1005, 1010]))
    assert out[:3] == [[], [], []]  # the first sample is only the baseline
    assert out[3] == [Finding("memory-errors",
                              "+10 corrected memory errors in 9 s (EDAC ce_count 1010)")]


def test_corrected_errors_below_ce_rise_stay_quiet() -> None:
    assert feed(series("edac_ce", [0, 3, 6, 9])) == [[], [], [], []]
    assert feed(series("edac_ce", [0, 20]), Policy(ce_rise=21)) == [[], []]
    assert feed(series("edac_ce", [0, 10_000]), Policy(ce_rise=0)) == [[], []]  # off


def test_a_rise_spread_over_more_than_the_window_does_not_fire() -> None:
    # +1 every 7 s: 10 errors take 70 s, the window is 60 s (at most +8 inside it)
    out = feed(series("edac_ce", range(40), step=7.0))
    assert all(f == [] for f in out)
    # the same rise inside a longer window fires
    out = feed(series("edac_ce", range(40), step=7.0), Policy(ce_window=70.0))
    assert out.index([Finding("memory-errors",
                              "+10 corrected memory errors in 70 s (EDAC ce_count 10)")]) == 10


def test_a_finding_lasts_while_the_rise_is_inside_the_window() -> None:
    out = feed(series("edac_ce", [0, 50] + [50] * 30, step=5.0))
    fired = [i for i, f in enumerate(out) if f]
    assert fired == list(range(1, 13))  # t=5 .. t=60: the point at t=0 is still in the window


def test_a_counter_that_resets_starts_a_new_baseline() -> None:
    # driver reload: 5000 -> 0, then a slow climb from the new baseline
    out = feed(series("edac_ce", [5000, 5000, 0, 4, 9, 9]))
    assert out == [[]] * 6
    out = feed(series("edac_ce", [5000, 0, 10]))
    assert out[2] == [Finding("memory-errors",
                              "+10 corrected memory errors in 3 s (EDAC ce_count 10)")]
    # backwards by a little, then up again: the rise counts from the lower value only
    out = feed(series("edac_ce", [100, 95, 104, 105]))
    assert out == [[], [], [], [Finding(
        "memory-errors", "+10 corrected memory errors in 6 s (EDAC ce_count 105)")]]


def test_edac_that_disappears_restarts_the_baseline() -> None:
    out = feed(series("edac_ce", [0, None, 50, 59, 60]))
    assert rules(out[4]) == ["memory-errors"] and out[:4] == [[]] * 4
    assert "+10 corrected" in out[4][0].detail


def test_no_edac_at_all_is_quiet() -> None:
    assert feed(healthy(1000.0 + i, edac_ce=None, edac_ue=None) for i in range(5)) == [[]] * 5


# -- uncorrected memory errors -------------------------------------------------------------

def test_uncorrected_errors_on_the_first_sample_fire_at_once() -> None:
    (out,) = feed([healthy(edac_ue=2)])
    assert out == [Finding("memory-uncorrected",
                           "2 uncorrected memory error(s) (EDAC ue_count 2)")]


def test_any_rise_of_uncorrected_errors_fires_and_stays_until_a_reset() -> None:
    out = feed(series("edac_ue", [0, 0, 1, 1, 1, 0, 0, 5, 3, 3, 4]))
    assert [bool(f) for f in out] == [False, False, True, True, True,  # sticky
                                      False, False,  # reset (reboot): healthy again
                                      True,  # a new error
                                      False, False,  # backwards to 3: a new baseline, quiet
                                      True]  # and any rise above it
    assert out[-1][0].detail == "1 uncorrected memory error(s) (EDAC ue_count 4)"


def test_ue_any_off_ignores_uncorrected_errors() -> None:
    assert feed(series("edac_ue", [3, 4]), Policy(ue_any=False)) == [[], []]


# -- instantaneous rules -------------------------------------------------------------------

def test_temperature_above_the_maximum_fires_on_the_first_sample() -> None:
    temps = {"Package id 0": 91.5, "Core 1": 80.0, "acpitz": 95.0}
    (out,) = feed([healthy(temperatures=temps)])
    assert out == [Finding("temperature", "acpitz 95 C > 90 C")]
    assert feed([healthy(temperatures={"Package id 0": 90.0})]) == [[]]  # at the max: fine
    assert feed([healthy(temperatures={})]) == [[]]
    assert feed([healthy(temperatures={"x": 200.0})], Policy(temperature_max=0)) == [[]]


def test_free_space_below_the_minimum_fires() -> None:
    free = {"/var/lib/hpcmig": 10_000 * MB, "/scratch": 511 * MB, "/run/hpcmig": 100 * MB}
    (out,) = feed([healthy(free=free)])
    assert out == [Finding("disk", "/run/hpcmig 100 MB free < 512 MB")]
    assert feed([healthy(free={"/scratch": 512 * MB})]) == [[]]
    assert feed([healthy(free={"/scratch": 0})], Policy(free_min_mb=0)) == [[]]


def test_a_failing_check_script_fires_with_its_reason() -> None:
    checks = (CheckResult("10-ok", True, ""), CheckResult("20-gpfs", False, "not mounted"),
              CheckResult("30-ib", False, "exit 1"))
    (out,) = feed([healthy(checks=checks)])
    assert out == [Finding("check", "20-gpfs: not mounted"), Finding("check", "30-ib: exit 1")]
    assert feed([healthy(checks=checks)], Policy(checks=False)) == [[]]


# -- NIC errors and drops ------------------------------------------------------------------

def nics(values: Iterable[dict[str, int]], step: float = 3.0) -> list[Sample]:
    return series("nic", values, step=step)


def test_nic_errors_rising_within_the_window_fire() -> None:
    out = feed(nics([{"eth0": 5, "ib0": 0}, {"eth0": 5, "ib0": 60}, {"eth0": 65, "ib0": 105}]))
    assert out == [[], [], [Finding("nic", "ib0 +105 errors/drops in 6 s")]]


def test_nic_quiet_below_the_rise_or_spread_over_more_than_the_window() -> None:
    assert feed(nics([{"eth0": 0}, {"eth0": 99}])) == [[], []]
    slow = [{"eth0": 10 * i} for i in range(40)]  # +10 per 7 s: at most +80 in 60 s
    assert all(f == [] for f in feed(nics(slow, step=7.0)))
    assert feed(nics([{"eth0": 0}, {"eth0": 10_000}]), Policy(nic_rise=0)) == [[], []]


def test_nic_counters_that_reset_or_vanish_start_new_baselines() -> None:
    out = feed(nics([{"eth0": 9000}, {"eth0": 0}, {"eth0": 50},  # reset (ifdown/up)
                     {}, {"eth0": 5000},  # vanished, back higher: new baseline
                     {"eth0": 5099}, {"eth0": 5100}]))
    assert [rules(f) for f in out] == [[], [], [], [], [], [], ["nic"]]


# -- order, reasons, switches --------------------------------------------------------------

def test_findings_come_most_severe_first_with_short_slurm_reasons() -> None:
    hist = NodeHistory("n1")
    hist.observe(healthy(1000.0, edac_ce=0), POLICY)
    out = hist.observe(healthy(
        1003.0, edac_ce=100, edac_ue=1, temperatures={"cpu": 99.0}, free={"/x": 0},
        checks=(CheckResult("c" * 70, False, "why " * 40),)), POLICY)
    assert rules(out) == ["memory-uncorrected", "memory-errors", "temperature", "disk",
                          "check"]
    assert list(RULES[:4]) == rules(out)[:4]
    for f in out:
        reason = f.reason()
        assert reason.startswith(f"hpcmig: {f.rule}: ") and len(reason) <= 100, reason
        assert "\n" not in reason
    assert out[-1].reason().endswith("...")
    assert Finding("disk", "multi\nline").reason() == "hpcmig: disk: multi line"


def test_disabled_policy_finds_nothing_but_keeps_baselines() -> None:
    hist = NodeHistory("n1")
    off = Policy(enabled=False)
    assert feed(series("edac_ce", [0, 100]), off, hist) == [[], []]
    assert hist.last_finding_time is None
    # on again: the rise seen while off is still inside the window
    assert rules(hist.observe(healthy(1006.0, edac_ce=100), POLICY)) == ["memory-errors"]
    assert hist.observe(healthy(1070.0, edac_ce=100), POLICY) == []  # the window passed


def test_a_stale_sample_is_ignored() -> None:
    hist = NodeHistory("n1")
    hist.observe(healthy(1000.0), POLICY)
    assert hist.observe(healthy(999.0, temperatures={"cpu": 120.0}), POLICY) == []
    assert hist.last is not None and hist.last.time == 1000.0


def test_history_stays_bounded_by_the_largest_window() -> None:
    hist = NodeHistory("n1")
    feed((healthy(1000.0 + 3 * i) for i in range(1000)), hist=hist)
    assert len(hist.samples) == 21  # 60 s of samples every 3 s, and the one anchoring it
    assert hist.samples[0].time == hist.samples[-1].time - 60


# -- healthy_for, overloaded, idle -----------------------------------------------------------

def test_healthy_for_counts_from_the_last_finding() -> None:
    hist = NodeHistory("n1")
    assert hist.healthy_for(5000.0) == 0.0
    hist.observe(healthy(1000.0), POLICY)
    assert hist.healthy_for(1030.0) == 30.0
    hist.observe(healthy(1100.0, temperatures={"cpu": 99.0}), POLICY)
    hist.observe(healthy(1103.0), POLICY)
    assert hist.healthy_for(1160.0) == 60.0
    assert hist.healthy_for(1000.0) == 0.0  # never negative


def loads(values: Iterable[float], step: float = 3.0, t0: float = 1000.0) -> NodeHistory:
    hist = NodeHistory("n1")
    feed(series("load", values, step=step, t0=t0), hist=hist)
    return hist


def test_overloaded_needs_every_sample_of_balance_seconds_above_the_factor() -> None:
    p = Policy(balance_seconds=30.0)  # 4 cpus * 1.5: load above 6
    hist = loads([6.5] * 11)  # t = 1000 .. 1030
    assert hist.overloaded(p, now=1030.0)
    assert not hist.overloaded(p, now=1029.0)  # not yet 30 s of samples
    assert not hist.overloaded(p, now=1100.0)  # nothing recent
    assert not loads([6.5] * 5 + [6.0] + [6.5] * 5).overloaded(p, now=1030.0)  # one dip
    assert not loads([6.5]).overloaded(p, now=1030.0)  # one sample spans nothing
    assert loads([1.0] * 3 + [6.5] * 11).overloaded(p, now=1039.0)
    assert not loads([1.0] * 3 + [6.5] * 11).overloaded(p, now=1038.0)


def test_idle_is_the_last_load_below_cpus_times_balance_idle() -> None:
    p = Policy()  # 4 cpus * 0.5
    assert loads([9.0, 1.5]).idle(p)
    assert not loads([0.0, 2.0]).idle(p)
    assert not NodeHistory("n1").idle(p)


# -- the registry ----------------------------------------------------------------------------

def test_health_keeps_one_history_per_node_and_forgets() -> None:
    health = Health(Policy(ce_rise=5))
    assert health.observe(healthy(1000.0, node="a", edac_ce=0)) == []
    assert health.observe(healthy(1000.0, node="b", edac_ce=100)) == []
    assert rules(health.observe(healthy(1003.0, node="a", edac_ce=5))) == ["memory-errors"]
    assert health.observe(healthy(1003.0, node="b", edac_ce=104)) == []
    assert health.observe(healthy(1006.0, node="b", edac_ce=109), POLICY) == []  # ce_rise 10
    assert sorted(health.nodes) == ["a", "b"]
    health.forget("a")
    health.forget("nobody")
    assert sorted(health.nodes) == ["b"]
    assert health.observe(healthy(1009.0, node="a", edac_ce=500)) == []  # a new baseline
    assert Health().policy == Policy()


@pytest.mark.parametrize("rule", ["temperature", "disk", "check", "memory-uncorrected"])
def test_instantaneous_rules_fire_on_the_first_sample(rule: str) -> None:
    bad: dict[str, dict[str, Any]] = {
        "temperature": {"temperatures": {"cpu": 100.0}},
        "disk": {"free": {"/": 0}},
        "check": {"checks": (CheckResult("x", False, "bad"),)},
        "memory-uncorrected": {"edac_ue": 1},
    }
    (out,) = feed([healthy(**bad[rule])])
    assert rules(out) == [rule]


@pytest.mark.parametrize("field, value", [("edac_ce", 10**6), ("nic", {"eth0": 10**6})])
def test_counters_never_fire_on_the_first_sample(field: str, value: Any) -> None:
    assert feed([healthy(**{field: value})]) == [[]]


def test_health_is_fed_from_several_threads_while_balancing_reads() -> None:
    import threading

    health = Health(Policy(balance_seconds=6.0))
    errors: list[BaseException] = []

    def feeder(k: int) -> None:
        try:
            for i in range(3000):
                health.observe(healthy(1000.0 + i + k / 10, node=f"n{i % 3}", load=9.0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(3000):
                for hist in list(health.nodes.values()):
                    hist.overloaded(health.policy, 1000.0 + i)
                    hist.idle(health.policy)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=feeder, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=reader))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert sorted(health.nodes) == ["n0", "n1", "n2"]
    assert all(h.overloaded(health.policy, 3999.0) for h in health.nodes.values())
