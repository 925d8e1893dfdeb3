"""Decisions, arm assignment, Thompson weights and the lifecycle machine (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from controller.experiments import state as st
from controller.experiments.assign import assign_arm
from controller.experiments.bandit import choose, thompson_weights
from controller.experiments.decide import BLOCKED, KEEP_RUNNING, SHIP, STOP_HARM, Arm, DeviceSums, evaluate
from controller.experiments.srm import srm_check

pytestmark = pytest.mark.unit


def _arm(name: str, acc: float, devices: int, seed: int, share: float = 0.5, err: float = 0.01, labels: int = 200) -> Arm:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(devices):
        p = float(np.clip(acc + rng.normal(0, 0.03), 0, 1))
        out.append(
            DeviceSums(
                f"{name}-{i}",
                count=1000,
                errors=int(rng.binomial(1000, err)),
                labels=labels,
                correct=int(rng.binomial(labels, p)),
                latency_ms_sum=1000 * 2.0,
            )
        )
    return Arm(name, share, tuple(out))


def test_a_clear_win_ships_the_treatment_with_its_interval() -> None:
    ev = evaluate([_arm("a", 0.80, 60, 1), _arm("b", 0.90, 60, 2)], control="a", primary="accuracy")
    assert ev.decision == SHIP and ev.arm == "b"
    c = ev.comparisons[0]
    assert c.difference is not None and 0 < c.difference.low < 0.1 < c.difference.high + 0.05
    ev_json = ev.evidence()
    assert ev_json["decision"] == "ship" and ev_json["srm"]["mismatch"] is False


def test_a_clear_loss_stops_for_harm_and_a_guardrail_loss_too() -> None:
    ev = evaluate([_arm("a", 0.90, 60, 1), _arm("b", 0.80, 60, 2)], control="a", primary="accuracy")
    assert (ev.decision, ev.arm) == (STOP_HARM, "b")
    ev = evaluate(
        [_arm("a", 0.85, 60, 1), _arm("b", 0.85, 60, 2, err=0.05)],
        control="a",
        primary="accuracy",
        guardrails=["error_rate"],
    )
    assert (ev.decision, ev.arm) == (STOP_HARM, "b") and "error_rate" in ev.reasons[0]


def test_no_difference_keeps_running_and_too_few_devices_keep_running() -> None:
    ev = evaluate([_arm("a", 0.85, 60, 1), _arm("b", 0.85, 60, 2)], control="a", primary="accuracy")
    assert ev.decision == KEEP_RUNNING
    ev = evaluate([_arm("a", 0.50, 3, 1), _arm("b", 0.99, 3, 2)], control="a", primary="accuracy", min_devices=5)
    assert ev.decision == KEEP_RUNNING and "fewer than 5" in ev.reasons[0]


def test_a_sample_ratio_mismatch_blocks_even_an_obvious_win() -> None:
    ev = evaluate([_arm("a", 0.80, 400, 1), _arm("b", 0.95, 300, 2)], control="a", primary="accuracy")
    assert ev.decision == BLOCKED and ev.srm.mismatch and "sample ratio mismatch" in ev.reasons[0]


def test_srm_check_validates_its_input() -> None:
    assert not srm_check([0, 0], [0.5, 0.5]).mismatch
    with pytest.raises(ValueError, match="one count per arm"):
        srm_check([1], [1.0])
    with pytest.raises(ValueError, match="positive"):
        srm_check([1, 2], [1.0, 0.0])
    assert srm_check([700, 300], [0.7, 0.3]).p_value == pytest.approx(1.0)


def test_evaluate_refuses_unknown_metric_or_control() -> None:
    arms = [_arm("a", 0.8, 5, 1), _arm("b", 0.8, 5, 2)]
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(arms, control="a", primary="joy")
    with pytest.raises(ValueError, match="control arm"):
        evaluate(arms, control="z", primary="accuracy")


def test_assign_arm_is_stable_and_follows_the_shares() -> None:
    shares = [0.2, 0.3, 0.5]
    arms = [assign_arm(7, f"dev-{i}", shares) for i in range(20_000)]
    assert arms == [assign_arm(7, f"dev-{i}", shares) for i in range(20_000)]
    counts = np.bincount(arms, minlength=3)
    assert not srm_check(list(counts), shares).mismatch
    assert assign_arm(8, "dev-1", shares) in (0, 1, 2)
    with pytest.raises(ValueError):
        assign_arm(1, "d", [1.0, 0.0])


def test_thompson_weights_are_reproducible_floored_and_favour_the_better_arm() -> None:
    w = thompson_weights([80, 90], [100, 100], floor=0.1, seed=3)
    assert w == thompson_weights([80, 90], [100, 100], floor=0.1, seed=3)
    assert sum(w) == pytest.approx(1.0) and min(w) >= 0.1 - 1e-12 and w[1] > w[0]
    assert thompson_weights([0, 0], [0, 0], 0.05, 1) == pytest.approx([0.5, 0.5], abs=0.02)
    with pytest.raises(ValueError, match="floor"):
        thompson_weights([1, 1], [2, 2], floor=0.6, seed=1)
    with pytest.raises(ValueError, match="within"):
        thompson_weights([3, 1], [2, 2], floor=0.1, seed=1)
    assert [choose([0.25, 0.75], u) for u in (0.0, 0.24, 0.25, 0.99)] == [0, 0, 1, 1]


def test_lifecycle_transitions_and_illegal_events() -> None:
    s = st.transition(st.State.RUNNING, st.Pause())
    assert s is st.State.PAUSED
    assert st.transition(s, st.Resume()) is st.State.RUNNING
    d = st.transition(st.State.RUNNING, st.Decide("ship", "b"))
    assert st.transition(d, st.Promote("b")) is st.State.COMPLETED
    assert st.transition(d, st.Stop("enough")) is st.State.STOPPED
    with pytest.raises(st.IllegalTransition, match="Decide is not allowed in state PAUSED"):
        st.transition(st.State.PAUSED, st.Decide("ship", "b"))
    for final in st.FINAL:
        for ev in (st.Pause(), st.Resume(), st.Stop("x"), st.Promote("a")):
            with pytest.raises(st.IllegalTransition):
                st.transition(final, ev)
