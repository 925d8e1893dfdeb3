"""The rollout stage machine. Everything that changes a rollout's state lives here.

Rules (as in ``agent/ota/state.py``): this module does no I/O. ``transition``
takes the current :class:`RolloutRecord` and one event and returns the next
record, or raises :class:`IllegalTransition` (or :class:`NeedsApproval`) naming
event and state and changing nothing. The engine persists the record it gets
back and then acts on the difference (devices assigned, rolled back).

::

    RUNNING(stage i) ─Passed─▶ RUNNING(stage i+1) ... ─Passed on the last stage─▶ COMPLETED
       │  │ Passed on a stage with a check gate, or the next stage needs an approval the version lacks
       │  └──────────────▶ PAUSED(stage i, stage_passed) ─Resume─▶ RUNNING(stage i+1)
       │ Pause / DeadlinePassed (inconclusive too long) ──▶ PAUSED(stage i) ─Resume─▶ RUNNING(stage i)
       │ BaselineRevoked ──────────────────────────────────▶ PAUSED(stage i, waiting="baseline")
       └ Failed / Abort / Revoked (also from PAUSED) ─────▶ ROLLED_BACK
                            │ ... with no installable baseline
                            └──────────────────────────────▶ HALTED ─Rebase(installable version)─▶ ROLLED_BACK

- An inconclusive analysis is no event: the stage holds. Only ``Passed`` and an
  operator's ``Promote`` advance; nothing else ever promotes.
- ``Promote`` advances now, skipping the analysis and a check gate, but never an
  approval: a stage at or beyond ``approval_from`` needs an approved version.
- An automatic ``Passed`` into such a stage without approval pauses and says so
  (``waiting="approval"``); ``Resume`` after the approval advances.
- A paused rollout is still analysed for failure: ``Failed`` rolls back from PAUSED too.
- Rolling back needs a baseline the devices may install (``baseline_problem`` empty: not
  revoked, not below the floor, approved; the engine asks the registry). Without one, a
  rollback (``Failed``, ``Abort``, ``Revoked``) **halts** instead: nothing is assigned, the
  devices stay where they are, and a human names a baseline (``Rebase``), which then
  completes the rollback. ``BaselineRevoked`` (the baseline lost while the rollout runs)
  pauses it; ``Resume`` goes on knowingly (a later failure halts), ``Rebase`` names another.
- COMPLETED and ROLLED_BACK accept nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class State(str, Enum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    ROLLED_BACK = "ROLLED_BACK"
    HALTED = "HALTED"  # must roll back, has no installable baseline: devices stay put until a human names one


TERMINAL = frozenset({State.COMPLETED, State.ROLLED_BACK})


class Waiting(str, Enum):
    """Why a rollout is paused ("" while running)."""

    NONE = ""
    OPERATOR = "operator"  # an operator paused it
    CHECK = "check"  # the stage passed and has a "pause for check" gate
    APPROVAL = "approval"  # the next stage needs an approved version
    HUMAN = "human"  # inconclusive past the stage's deadline
    BASELINE = "baseline"  # the baseline cannot be installed (revoked): a human resumes or names another (Rebase)


class IllegalTransition(Exception):
    """An event arrived in a state that does not accept it."""


class NeedsApproval(IllegalTransition):
    """Promotion into a stage that needs an approved version, which the candidate is not."""


# --- events (frozen dataclasses) ---------------------------------------------


@dataclass(frozen=True)
class Passed:
    """The analysis passed the current stage."""

    approved: bool  # the candidate version is approved (registry)


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class DeadlinePassed:
    reason: str  # what kept the stage inconclusive


@dataclass(frozen=True)
class Pause:
    by: str
    reason: str = ""


@dataclass(frozen=True)
class Resume:
    by: str
    approved: bool


@dataclass(frozen=True)
class Promote:
    by: str
    approved: bool


@dataclass(frozen=True)
class Abort:
    by: str
    reason: str = ""


@dataclass(frozen=True)
class Revoked:
    """The candidate was revoked."""

    reason: str


@dataclass(frozen=True)
class BaselineRevoked:
    """The baseline can no longer be installed (revoked while the rollout runs)."""

    reason: str


@dataclass(frozen=True)
class Rebase:
    """An operator names another baseline (the engine checked that devices may install it)."""

    by: str
    version: int
    reason: str = ""


Event = Passed | Failed | DeadlinePassed | Pause | Resume | Promote | Abort | Revoked | BaselineRevoked | Rebase

# --- the table -----------------------------------------------------------------

S = State
TRANSITIONS: dict[State, frozenset[type]] = {
    S.RUNNING: frozenset({Passed, Failed, DeadlinePassed, Pause, Promote, Abort, Revoked, BaselineRevoked, Rebase}),
    S.PAUSED: frozenset({Resume, Failed, Promote, Abort, Revoked, BaselineRevoked, Rebase}),
    S.HALTED: frozenset({Rebase, Revoked, BaselineRevoked}),
    S.COMPLETED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}


@dataclass(frozen=True)
class RolloutRecord:
    """The persisted state of a rollout (columns of the ``rollout`` row)."""

    state: State = State.RUNNING
    stage: int = 0
    n_stages: int = 1
    approval_from: int = 1  # first stage index that needs an approved version
    gates: frozenset[int] = frozenset()  # stages with a "pause for check" gate
    waiting: Waiting = Waiting.NONE
    stage_passed: bool = False
    reason: str = ""
    baseline_problem: str = ""  # why the devices may not install the baseline ("": they may)
    id: int = 0  # the rollout's id, for the way out a reason names

    @property
    def last_stage(self) -> bool:
        return self.stage >= self.n_stages - 1


def _advance(rec: RolloutRecord, approved: bool, reason: str) -> RolloutRecord:
    """Move to the next stage, complete after the last, or wait for the approval it needs."""
    if rec.last_stage:
        return replace(rec, state=S.COMPLETED, waiting=Waiting.NONE, stage_passed=True, reason=reason)
    nxt = rec.stage + 1
    if nxt >= rec.approval_from and not approved:
        why = f"stage {nxt + 1} needs an approved version; approve it (POST /v1/approvals), then resume"
        return replace(rec, state=S.PAUSED, waiting=Waiting.APPROVAL, stage_passed=True, reason=why)
    return replace(rec, state=S.RUNNING, stage=nxt, waiting=Waiting.NONE, stage_passed=False, reason=reason)


def transition(rec: RolloutRecord, event: Event) -> RolloutRecord:
    """Return the record after ``event``; raise IllegalTransition and change nothing otherwise."""
    allowed = TRANSITIONS[rec.state]
    if type(event) not in allowed:
        names = ", ".join(sorted(e.__name__ for e in allowed)) or "nothing (the rollout is over)"
        raise IllegalTransition(f"event {type(event).__name__} is not allowed in state {rec.state.value} (allowed: {names})")
    rebase = f"POST /v1/rollouts/{rec.id}/baseline"
    if isinstance(event, (Failed, Revoked, Abort)):
        why = (event.reason or f"aborted by {event.by}") if isinstance(event, Abort) else event.reason
        if rec.state is S.HALTED or rec.baseline_problem:
            why = (
                f"{why}; halted without rolling back: {rec.baseline_problem or 'no installable baseline'}. The devices "
                f"stay where they are; name an installable baseline ({rebase}), which completes the rollback"
            )
            return replace(rec, state=S.HALTED, waiting=Waiting.BASELINE, reason=why)
        return replace(rec, state=S.ROLLED_BACK, waiting=Waiting.NONE, reason=why)
    if isinstance(event, BaselineRevoked):
        if rec.state is S.HALTED:
            return replace(rec, reason=f"{event.reason}; {rec.reason}")
        why = (
            f"{event.reason}: a failure could not roll back. Resume to go on anyway (a failure then halts), "
            f"or name another baseline ({rebase})"
        )
        return replace(rec, state=S.PAUSED, waiting=Waiting.BASELINE, reason=why)
    if isinstance(event, Rebase):
        why = event.reason or f"baseline now v{event.version} (named by {event.by})"
        if rec.state is S.HALTED:
            return replace(rec, state=S.ROLLED_BACK, waiting=Waiting.NONE, reason=f"rolled back to v{event.version}: {why}")
        if rec.waiting is Waiting.BASELINE:
            return replace(rec, waiting=Waiting.OPERATOR, reason=f"{why}; resume to go on")
        return replace(rec, reason=why)
    if isinstance(event, Pause):
        return replace(rec, state=S.PAUSED, waiting=Waiting.OPERATOR, reason=event.reason or f"paused by {event.by}")
    if isinstance(event, DeadlinePassed):
        return replace(rec, state=S.PAUSED, waiting=Waiting.HUMAN, reason=event.reason)
    if isinstance(event, Passed):
        if rec.stage in rec.gates:
            why = f"stage {rec.stage + 1} passed; paused for a check before the next stage (resume to go on)"
            return replace(rec, state=S.PAUSED, waiting=Waiting.CHECK, stage_passed=True, reason=why)
        return _advance(rec, event.approved, f"stage {rec.stage + 1} passed")
    if isinstance(event, Promote):
        if not rec.last_stage and rec.stage + 1 >= rec.approval_from and not event.approved:
            raise NeedsApproval(
                f"cannot promote to stage {rec.stage + 2}: it needs an approved version (POST /v1/approvals first)"
            )
        return _advance(rec, event.approved, f"promoted by {event.by}")
    # Resume
    assert isinstance(event, Resume)
    if rec.stage_passed:
        nxt = _advance(rec, event.approved, f"resumed by {event.by}")
        if nxt.waiting is Waiting.APPROVAL and rec.waiting is Waiting.APPROVAL:
            raise NeedsApproval(f"cannot resume: {nxt.reason}")
        return nxt
    return replace(rec, state=S.RUNNING, waiting=Waiting.NONE, reason=f"resumed by {event.by}")
