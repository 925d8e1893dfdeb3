"""The rollout stage machine, driven with no database: the whole record after each step."""

from __future__ import annotations

import pytest

from controller.rollouts.plan import DEFAULT_STAGES, PlanError, approval_from, stages_from_list
from controller.rollouts.state import (
    Abort,
    BaselineRevoked,
    DeadlinePassed,
    Failed,
    IllegalTransition,
    NeedsApproval,
    Passed,
    Pause,
    Promote,
    Rebase,
    Resume,
    Revoked,
    RolloutRecord,
    State,
    Waiting,
    transition,
)

pytestmark = pytest.mark.unit

PLAN = RolloutRecord(n_stages=len(DEFAULT_STAGES), approval_from=approval_from(DEFAULT_STAGES))


def test_passing_every_stage_walks_to_completed_with_approval() -> None:
    rec = PLAN
    for i in range(len(DEFAULT_STAGES) - 1):
        rec = transition(rec, Passed(approved=True))
        assert (rec.state, rec.stage, rec.waiting) == (State.RUNNING, i + 1, Waiting.NONE)
    rec = transition(rec, Passed(approved=True))
    assert rec.state is State.COMPLETED
    with pytest.raises(IllegalTransition, match="Passed is not allowed in state COMPLETED"):
        transition(rec, Passed(approved=True))


def test_shadow_and_first_canary_need_no_approval_then_it_pauses_and_says_why() -> None:
    rec = transition(PLAN, Passed(approved=False))  # shadow -> canary 1%
    assert (rec.state, rec.stage) == (State.RUNNING, 1)
    rec = transition(rec, Passed(approved=False))  # canary 1% -> 5% needs approval
    assert (rec.state, rec.stage, rec.waiting, rec.stage_passed) == (State.PAUSED, 1, Waiting.APPROVAL, True)
    assert "approved" in rec.reason
    with pytest.raises(NeedsApproval):
        transition(rec, Resume("op", approved=False))
    with pytest.raises(NeedsApproval):
        transition(rec, Promote("op", approved=False))
    after = transition(rec, Resume("op", approved=True))
    assert (after.state, after.stage, after.waiting, after.stage_passed) == (State.RUNNING, 2, Waiting.NONE, False)


def test_check_gate_pauses_after_a_pass_and_resume_advances() -> None:
    rec = RolloutRecord(n_stages=3, approval_from=1, gates=frozenset({0}))
    rec = transition(rec, Passed(approved=True))
    assert (rec.state, rec.stage, rec.waiting) == (State.PAUSED, 0, Waiting.CHECK)
    rec = transition(rec, Resume("op", approved=True))
    assert (rec.state, rec.stage) == (State.RUNNING, 1)


def test_failure_abort_and_revocation_roll_back_from_running_and_paused() -> None:
    for event in (Failed("error rate"), Abort("op", "bad"), Revoked("revoked")):
        assert transition(PLAN, event).state is State.ROLLED_BACK
        paused = transition(PLAN, Pause("op"))
        done = transition(paused, event)
        assert done.state is State.ROLLED_BACK and done.reason
    rb = transition(PLAN, Failed("x"))
    for event in (Resume("op", True), Promote("op", True), Pause("op"), Abort("op")):
        with pytest.raises(IllegalTransition, match="ROLLED_BACK"):
            transition(rb, event)


def test_without_an_installable_baseline_every_rollback_halts_and_asks_for_a_baseline() -> None:
    bad = RolloutRecord(n_stages=3, approval_from=1, id=7, baseline_problem="baseline digits v1 is revoked")
    for event in (Failed("error rate"), Abort("op", "bad"), Revoked("digits v2 was revoked")):
        for rec in (bad, transition(bad, Pause("op"))):
            halted = transition(rec, event)
            assert (halted.state, halted.waiting, halted.stage) == (State.HALTED, Waiting.BASELINE, 0)
            assert "baseline digits v1 is revoked" in halted.reason and "POST /v1/rollouts/7/baseline" in halted.reason
    halted = transition(bad, Failed("error rate"))
    for event in (Resume("op", True), Promote("op", True), Pause("op"), Abort("op"), Passed(True), Failed("again")):
        with pytest.raises(IllegalTransition, match="not allowed in state HALTED"):
            transition(halted, event)  # a failed stage never goes on, and there is nothing to abort to
    still = transition(halted, Revoked("digits v2 was revoked"))  # the candidate revoked too: still nothing to go to
    assert still.state is State.HALTED and "digits v2 was revoked" in still.reason
    done = transition(halted, Rebase("olivia", 3))
    assert (done.state, done.waiting) == (State.ROLLED_BACK, Waiting.NONE) and "v3" in done.reason


def test_a_revoked_baseline_pauses_a_running_rollout_until_a_human_resumes_or_names_another() -> None:
    rec = RolloutRecord(n_stages=3, approval_from=1, id=7)
    paused = transition(rec, BaselineRevoked("the baseline digits v1 was revoked"))
    assert (paused.state, paused.waiting) == (State.PAUSED, Waiting.BASELINE)
    assert "POST /v1/rollouts/7/baseline" in paused.reason
    assert transition(paused, Resume("op", True)).state is State.RUNNING  # knowingly: a failure then halts
    rebased = transition(paused, Rebase("op", 3))
    assert (rebased.state, rebased.waiting) == (State.PAUSED, Waiting.OPERATOR) and "resume" in rebased.reason
    gate = transition(RolloutRecord(n_stages=3, approval_from=1, gates=frozenset({0})), Passed(True))
    assert transition(gate, BaselineRevoked("gone")).stage_passed  # a passed stage stays passed
    assert transition(rec, Rebase("op", 3)).state is State.RUNNING  # a running rollout just keeps the new baseline
    for over in (transition(rec, Failed("x")), transition(RolloutRecord(n_stages=1), Passed(True))):
        with pytest.raises(IllegalTransition):
            transition(over, Rebase("op", 3))


def test_inconclusive_past_deadline_pauses_for_a_human_and_never_promotes() -> None:
    rec = transition(PLAN, DeadlinePassed("low traffic"))
    assert (rec.state, rec.stage, rec.waiting, rec.reason) == (State.PAUSED, 0, Waiting.HUMAN, "low traffic")
    with pytest.raises(IllegalTransition):
        transition(rec, Passed(approved=True))  # a paused rollout is not advanced by analysis
    rec = transition(rec, Resume("op", approved=True))
    assert (rec.state, rec.stage) == (State.RUNNING, 0)  # resumed on the same stage


def test_pause_twice_is_illegal_and_changes_nothing() -> None:
    paused = transition(PLAN, Pause("op", "look"))
    with pytest.raises(IllegalTransition, match="Pause is not allowed in state PAUSED"):
        transition(paused, Pause("op"))
    assert paused.waiting is Waiting.OPERATOR and paused.reason == "look"


def test_promote_skips_the_analysis_and_completes_on_the_last_stage() -> None:
    rec = RolloutRecord(n_stages=2, approval_from=1)
    rec = transition(rec, Promote("op", approved=True))
    assert (rec.state, rec.stage) == (State.RUNNING, 1)
    assert transition(rec, Promote("op", approved=True)).state is State.COMPLETED


def test_plans_are_validated_with_clear_messages() -> None:
    with pytest.raises(PlanError, match="last stage must be a canary stage"):
        stages_from_list([{"share": 0.5}])
    with pytest.raises(PlanError, match="shadow stage must come before"):
        stages_from_list([{"share": 0.1}, {"kind": "shadow", "share": 0.1}, {"share": 1.0}])
    with pytest.raises(PlanError, match=r"stages\[0\].share"):
        stages_from_list([{"share": 0}, {"share": 1.0}])
    with pytest.raises(PlanError, match="unknown field"):
        stages_from_list([{"share": 1.0, "colour": "red"}])
    with pytest.raises(PlanError, match=r"stages\[0\].sample_rate: only a shadow stage samples"):
        stages_from_list([{"share": 0.1, "sample_rate": 0.5}, {"share": 1.0}])
    with pytest.raises(PlanError, match=r"stages\[0\].sample_rate: expected a fraction"):
        stages_from_list([{"kind": "shadow", "share": 0.1, "sample_rate": 0}, {"share": 1.0}])
    assert approval_from(stages_from_list([{"share": 0.1}, {"share": 1.0}])) == 1
