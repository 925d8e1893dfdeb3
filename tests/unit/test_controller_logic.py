"""Pure controller logic: fast merge equals the reference merge, dedupe window, cohort rules, roles."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.roles import Role
from controller.fleet.cohorts import CohortSnapshot, cohorts_of, is_member, member_ids, parse_version_spec
from controller.release.registry import beyond_canary
from controller.telemetry.aggregate import SummaryError, check_summary, merge_many, window_start
from controller.telemetry.cursors import DEDUPE_WINDOW, dedupe, gaps_left
from shared.telemetry import MergeError, merge

pytestmark = [pytest.mark.unit]

counts = st.integers(min_value=0, max_value=10**6)
leaf = st.one_of(counts, st.lists(counts, min_size=0, max_size=4))
summaries = st.dictionaries(st.sampled_from(["count", "errors", "latency_ms", "predictions"]), leaf, max_size=4).map(
    lambda d: {"model": "m", "version": 1, **d}
)
anything = st.recursive(
    st.one_of(counts, st.booleans(), st.floats(allow_nan=False), st.text(max_size=2)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "model"]), inner, max_size=3)
    ),
    max_leaves=8,
)


def reference(items):
    return functools.reduce(merge, items)


@given(st.lists(summaries, min_size=1, max_size=6))
def test_merge_many_equals_reduce_merge_on_summaries(items):
    try:
        expected = reference(items)
    except MergeError:
        with pytest.raises(MergeError):
            merge_many(items)
        return
    assert merge_many(items) == expected


@given(st.lists(anything, min_size=1, max_size=4))
def test_merge_many_equals_reduce_merge_on_anything(items):
    try:
        expected = reference(items)
    except MergeError:
        with pytest.raises(MergeError):
            merge_many(items)
        return
    assert merge_many(items) == expected


def test_check_summary_refuses_what_cannot_be_summed():
    assert check_summary({"model": "m", "version": 2, "count": 1, "h": [1, 2], "f": {"a": [0]}}) == ("m", 2)
    for bad in (
        {"version": 1},
        {"model": "m", "version": True},
        {"model": "m", "version": 1, "x": 1.5},
        {"model": "m", "version": 1, "x": "s"},
        [],
    ):
        with pytest.raises(SummaryError):
            check_summary(bad)
    with pytest.raises(SummaryError, match="more than"):
        check_summary({"model": "m", "version": 1, "x": [0] * 30_000})


def test_window_start_aligns_to_the_grid():
    assert window_start(1_800_000_059.9, 60) == 1_800_000_000
    assert window_start(1_800_000_060, 60) == 1_800_000_060


def test_dedupe_accepts_each_seq_once_in_any_order_within_the_window():
    high, bits = None, 0
    seen = []
    for seq in (10, 12, 11, 12, 10, 40, 11, 39, 40):
        verdict, high, bits = dedupe(high, bits, seq)
        seen.append(verdict)
    assert seen == ["new", "new", "new", "duplicate", "duplicate", "new", "duplicate", "new", "duplicate"]
    verdict, high, bits = dedupe(high, bits, 40 - DEDUPE_WINDOW)
    assert verdict == "stale" and high == 40
    verdict, high, bits = dedupe(high, bits, 10_000)  # a jump beyond the window resets the bitmap
    assert (verdict, high, bits) == ("new", 10_000, 1)
    assert bits < 2**63


def test_seqs_that_leave_the_bitmap_unseen_become_gaps():
    assert gaps_left(None, 0, 10) == []
    assert gaps_left(None, 0, 100) == [(0, 100 - DEDUPE_WINDOW)]
    # seqs 100 and 98 seen (bits 0 and 2); 99 and 101..161 never arrive; 200 arrives
    _, high, bits = dedupe(None, 0, 98)
    _, high, bits = dedupe(high, bits, 100)
    assert gaps_left(high, bits, 100) == [] and gaps_left(high, bits, 101) == [(39, 39)]
    gaps = gaps_left(high, bits, 200)
    assert gaps == [(39, 97), (99, 99), (101, 200 - DEDUPE_WINDOW)]
    # every seq from 38 to 200 is exactly one of: seen, in a gap, or still in the new bitmap
    _, high2, _bits2 = dedupe(high, bits, 200)
    covered = [x for lo, hi in gaps for x in range(lo, hi + 1)] + [98, 100]
    covered += [high2 - i for i in range(DEDUPE_WINDOW) if high2 - i not in (98, 100)]
    assert sorted(covered) == list(range(39, 201))


@dataclass
class Dev:
    id: str
    hardware_class: str = ""
    region: str = ""
    tags: list[str] = field(default_factory=list)
    agent_version: str = ""


def test_cohort_membership_static_or_every_filter_criterion():
    devs = [
        Dev("a", "rpi4", "eu", ["door"], "0.1.0"),
        Dev("b", "rpi4", "us", ["door", "lab"], "0.3.0"),
        Dev("c", "jetson", "eu", [], "garbage"),
    ]
    c = CohortSnapshot("x", ["c"], {"hardware_class": ["rpi4"], "tags": ["door"], "agent_version": ">=0.2"})
    assert member_ids(c, devs) == ["b", "c"]
    assert member_ids(CohortSnapshot("static", ["a"], {}), devs) == ["a"]
    assert member_ids(CohortSnapshot("all", [], {"hardware_class": [], "region": [], "tags": [], "agent_version": ""}), devs) == [
        "a",
        "b",
        "c",
    ]
    assert not is_member(CohortSnapshot("v", [], {"agent_version": "<1"}), devs[2])  # unparseable version never matches
    assert cohorts_of(devs[0], [c, CohortSnapshot("eu", [], {"region": ["eu"]})]) == ["eu"]
    with pytest.raises(ValueError, match="expected an operator"):
        parse_version_spec("0.2")


def test_roles_are_ordered_and_only_serving_roles_need_approval():
    assert Role.ADMIN.allows(Role.APPROVER) and Role.APPROVER.allows(Role.OPERATOR) and not Role.VIEWER.allows(Role.OPERATOR)
    assert [beyond_canary(r) for r in ("production", "arm-b", "canary", "shadow")] == [True, True, False, False]


shaped = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "version": st.just(2),
        "count": counts,
        "latency_ms": st.lists(counts, min_size=3, max_size=3),
        "features": st.fixed_dictionaries(
            {"a": st.lists(counts, min_size=2, max_size=2), "b": st.fixed_dictionaries({"x": counts})}
        ),
    }
)


@given(st.lists(shaped, min_size=4, max_size=40), st.sampled_from([None, 1.5, True, [1, 2], "s", 2**70]))
def test_merge_many_fast_path_for_one_shape_equals_reduce_merge(items, odd):
    if odd is not None:
        items = [*items[:-1], {**items[-1], "count": odd}]
    try:
        expected = reference(items)
    except MergeError:
        with pytest.raises(MergeError):
            merge_many(items)
        return
    assert merge_many(items) == expected


@given(st.lists(shaped, min_size=4, max_size=40), st.sampled_from([None, 1.5, 2**70]))
def test_merge_many_with_counts_checked_equals_reduce_merge(items, odd):
    """The trusted fast path (numbers known to be ints) sums exactly like the reference; a float
    that slips in anyway is still caught, and wrong shapes still fall back to the checked path."""
    if odd is not None:
        items = [*items[:-1], {**items[-1], "count": odd}]
    try:
        expected = reference(items)
    except MergeError:
        with pytest.raises(MergeError):
            merge_many(items, counts_checked=True)
        return
    assert merge_many(items, counts_checked=True) == expected
