"""Which training rows a retrained bundle's drift reference is built from (``run.reference_rows``, ADR 0079)."""

from __future__ import annotations

import numpy as np

from controller.pipeline import policy
from controller.pipeline.policy import DriftWindow, PolicyConfig, Signals
from controller.pipeline.run import REFERENCE_MIN_ROWS, RunSpec, reference_rows

T = 1_000_000.0


def test_the_reference_comes_from_the_rows_captured_in_the_recent_period() -> None:
    ts = np.array([T - 30, T - 20, T - 10, T, T + 5, T + 10, T + 20])
    r = reference_rows(ts, T, 3)
    assert r.source == "recent"
    assert r.positions.tolist() == [3, 4, 5, 6]  # a row captured exactly at the start is recent
    assert (r.since, r.until) == (T, T + 20)
    assert r.reason == f"4 of 7 training rows, captured since {T:.0f}"
    lin = r.lineage(RunSpec("m", 2, 1, 10, recent_s=30.0, reference_min_rows=3))
    assert lin == {
        "source": "recent",
        "cohort": None,
        "rows": 4,
        "since": T,
        "until": T + 20,
        "recent_s": 30.0,
        "drift_since": None,
        "min_rows": 3,
        "reason": r.reason,
    }


def test_too_few_recent_rows_fall_back_to_all_rows_with_the_reason() -> None:
    ts = np.array([T - 30, T - 20, T - 10, T + 5, T + 10])
    r = reference_rows(ts, T, 3)
    assert (r.source, r.cohort) == ("all", None)
    assert r.positions.tolist() == [0, 1, 2, 3, 4]
    assert (r.since, r.until) == (T - 30, T + 10)
    assert r.reason == f"only 2 training rows captured since {T:.0f} (at least 3 needed): all 5 training rows"


def test_a_cohort_run_takes_the_recent_rows_of_its_cohort_only() -> None:
    ts = np.array([T - 10, T + 1, T + 2, T + 3, T + 4, T + 5])
    members = np.array([True, True, False, True, False, True])
    r = reference_rows(ts, T, 3, cohort="aged", members=members)
    assert (r.source, r.cohort) == ("recent", "aged")
    assert r.positions.tolist() == [1, 3, 5]
    assert r.reason == f"3 of 6 training rows, captured since {T:.0f} in cohort aged"


def test_a_cohort_with_too_few_recent_rows_falls_back_to_all_rows_not_to_other_cohorts() -> None:
    ts = np.array([T - 10, T + 1, T + 2, T + 3, T + 4])
    members = np.array([True, True, False, False, False])
    r = reference_rows(ts, T, 2, cohort="aged", members=members)
    assert (r.source, r.cohort) == ("all", None)
    assert r.positions.tolist() == [0, 1, 2, 3, 4]
    assert "only 1 training rows captured" in r.reason and "in cohort aged" in r.reason


def test_a_drift_triggered_run_leaves_out_the_recent_rows_from_before_the_drift() -> None:
    """The recent period may start before the drift (a day's fleet set, a drift found in three hours): its rows
    from before the drift would make the new model's reference flag the drifted inputs again."""
    ts = np.array([T + 1, T + 2, T + 3, T + 50, T + 60, T + 70, T + 80])  # unordered capture is fine too
    r = reference_rows(ts, T, 3, drift_since=T + 50)
    assert r.source == "recent" and r.positions.tolist() == [3, 4, 5, 6]
    assert r.reason == f"4 of 7 training rows, captured since {T:.0f}, since the drift at {T + 50:.0f}"
    assert reference_rows(ts, T + 60, 2, drift_since=T + 50).positions.tolist() == [4, 5, 6]  # recent_s still bounds


def test_too_few_rows_since_the_drift_are_topped_up_with_the_newest_recent_rows() -> None:
    ts = np.array([T - 5, T + 1, T + 4, T + 2, T + 3, T + 50, T + 60])
    r = reference_rows(ts, T, 4, drift_since=T + 50)
    assert r.source == "newest"
    assert r.positions.tolist() == [2, 4, 5, 6]  # T+4, T+3, then the two since the drift
    assert (r.since, r.until) == (T + 3, T + 60)
    assert r.reason == f"the newest 4 of 7 training rows captured since {T:.0f}: only 2 since the drift at {T + 50:.0f}"


def test_no_rows_at_all_give_an_empty_choice_without_a_time_range() -> None:
    r = reference_rows(np.array([]), T, 1)
    assert r.source == "all" and len(r.positions) == 0 and r.since is None and r.until is None


def test_the_drift_was_under_way_from_the_end_of_the_first_drifted_window_of_the_decision() -> None:
    cfg = PolicyConfig(drift_windows=3)
    windows = [DriftWindow(T + k * 600, 4, 4) for k in range(4)]
    d = policy.decide(Signals("m", "aged", T + 2400, drift=windows), cfg)
    assert d.trigger == "drift"
    assert policy.drift_since(d, 600.0) == T + 1200  # the first of the last three windows began at T + 600
    manual = policy.decide(Signals("m", "aged", T + 2400, drift=windows, manual="new lens"), cfg)
    assert manual.trigger == "manual" and policy.drift_since(manual, 600.0) == T + 1200  # drift fired too
    calm = [DriftWindow(T + k * 600, 4, 0) for k in range(4)]
    assert policy.drift_since(policy.decide(Signals("m", "aged", T + 2400, drift=calm, manual="x"), cfg), 600.0) is None


def test_the_choice_travels_with_the_run_spec() -> None:
    assert RunSpec("m", 2, 1, 10).reference_min_rows == REFERENCE_MIN_ROWS
    spec = RunSpec("m", 2, 1, 10, reference_min_rows=50, drift_since=T)
    back = RunSpec.from_dict(spec.to_dict())
    assert (back.reference_min_rows, back.drift_since) == (50, T)
    old = {k: v for k, v in spec.to_dict().items() if k not in ("reference_min_rows", "drift_since")}  # a run folder from before
    assert (RunSpec.from_dict(old).reference_min_rows, RunSpec.from_dict(old).drift_since) == (REFERENCE_MIN_ROWS, None)
