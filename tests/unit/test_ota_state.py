"""The OTA state machine, driven with no I/O; the whole record is checked after each step."""

import pytest

from agent.ota.state import (
    AT_REST,
    RESUME,
    TRANSITIONS,
    Activate,
    Activated,
    Assign,
    Downloaded,
    Fail,
    HealthPassed,
    IllegalTransition,
    OtaRecord,
    Restarted,
    RolledBack,
    State,
    Target,
    Verified,
    transition,
)

pytestmark = pytest.mark.unit
T = Target(model="digits", version=2, sha256="ab" * 32, length=100, url="http://x/b")


def run(*events, rec=None):
    rec = rec or OtaRecord()
    for e in events:
        rec = transition(rec, e)
    return rec


def test_happy_path_visits_every_state_in_order():
    rec = run(Assign("production", T, "cd" * 32), Downloaded(), Verified(), Activate(), Activated(), HealthPassed())
    assert rec == OtaRecord(
        state=State.COMMITTED,
        role="production",
        target=T,
        previous_sha256="cd" * 32,
        reason="",
        history=("DOWNLOADING", "VERIFYING", "STAGED", "ACTIVATING", "HEALTH_CHECK", "COMMITTED"),
    )


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_failure_before_activation_is_a_rejection_back_to_idle(steps):
    before = [Downloaded(), Verified()][:steps]
    rec = run(Assign("production", T, None), *before, Fail("bad signature"))
    assert rec.state is State.IDLE and rec.reason == "bad signature" and rec.target == T


@pytest.mark.parametrize("activated", [False, True])
def test_failure_after_activation_rolls_back(activated):
    evs = [Assign("production", T, "cd" * 32), Downloaded(), Verified(), Activate()] + ([Activated()] if activated else [])
    rec = run(*evs, Fail("golden vector 0 differs"))
    assert rec.state is State.ROLLING_BACK and rec.reason == "golden vector 0 differs"
    rec = transition(rec, RolledBack())
    assert rec.state is State.ROLLED_BACK and rec.reason == "golden vector 0 differs"
    assert transition(rec, Assign("production", T, "cd" * 32)).state is State.DOWNLOADING


def test_illegal_event_names_event_and_state_and_changes_nothing():
    rec = run(Assign("production", T, None))
    with pytest.raises(IllegalTransition, match="event HealthPassed is not allowed in state DOWNLOADING"):
        transition(rec, HealthPassed())
    assert rec.state is State.DOWNLOADING
    with pytest.raises(IllegalTransition, match="state COMMITTED"):
        transition(OtaRecord(state=State.COMMITTED, role="production", target=T), RolledBack())


def test_a_new_assignment_is_refused_mid_update():
    for state in set(State) - AT_REST:
        with pytest.raises(IllegalTransition):
            transition(OtaRecord(state=state, role="production", target=T), Assign("production", T, None))


@pytest.mark.parametrize("state", list(State))
def test_restart_resumes_or_rolls_back(state):
    rec = OtaRecord(state=state, role="production", target=T, previous_sha256="cd" * 32)
    after = transition(rec, Restarted())
    assert after.state is RESUME[state]
    if state in (State.ACTIVATING, State.HEALTH_CHECK):
        assert after.state is State.ROLLING_BACK and f"restarted during {state.value}" in after.reason
    else:
        assert after.state is state


def test_every_state_has_a_row_and_a_resume_rule():
    assert set(TRANSITIONS) == set(State) == set(RESUME)


@pytest.mark.parametrize("state", list(State))
def test_record_round_trips_through_json(state):
    rec = OtaRecord(state=state, role="production", target=T, previous_sha256=None, reason="x", history=("DOWNLOADING",))
    assert OtaRecord.from_dict(rec.to_dict()) == rec


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "expected an object"),
        ({"state": "EXPLODED"}, "unknown state"),
        ({"state": "STAGED"}, "needs a role and a target"),
        ({"state": "STAGED", "role": "production", "target": {"model": "x"}}, "malformed target"),
    ],
)
def test_corrupt_records_are_refused_with_a_reason(data, match):
    with pytest.raises(ValueError, match=match):
        OtaRecord.from_dict(data)
