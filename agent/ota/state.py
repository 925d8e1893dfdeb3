"""The agent's OTA state machine. Everything that changes OTA state lives here.

Rules (as in h11's ``_state.py``): this module does no I/O. ``transition``
takes the current :class:`OtaRecord` and one event and returns the next record,
or raises :class:`IllegalTransition` naming event and state and changing
nothing. The updater persists every record it gets back (atomically) before
acting on it, so after a crash the agent resumes from the last persisted state;
``RESUME`` says what a restart does in each state.

::

    IDLE ─Assign─▶ DOWNLOADING ─Downloaded─▶ VERIFYING ─Verified─▶ STAGED ─Activate─▶ ACTIVATING
                        │                        │                    │                  │Activated
                        └──────Fail─────▶ IDLE ◀─┴─────Fail───────────┘                  ▼
      COMMITTED ◀─HealthPassed─ HEALTH_CHECK ◀────────────────────────────────────────────┘
                                     │Fail (also Fail in ACTIVATING)
                                     ▼
                               ROLLING_BACK ─RolledBack─▶ ROLLED_BACK

IDLE, COMMITTED and ROLLED_BACK are at rest and accept a new ``Assign``.
A ``Fail`` before activation is a rejection: nothing was touched, the record
goes back to IDLE with the reason. A ``Fail`` after activation started means
roll back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any


class State(str, Enum):
    IDLE = "IDLE"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    STAGED = "STAGED"
    ACTIVATING = "ACTIVATING"
    HEALTH_CHECK = "HEALTH_CHECK"
    COMMITTED = "COMMITTED"
    ROLLING_BACK = "ROLLING_BACK"
    ROLLED_BACK = "ROLLED_BACK"


AT_REST = frozenset({State.IDLE, State.COMMITTED, State.ROLLED_BACK})


class IllegalTransition(Exception):
    """An event arrived in a state that does not accept it."""


@dataclass(frozen=True)
class Target:
    """The bundle an update installs (as the director assigned it)."""

    model: str
    version: int
    sha256: str
    length: int  # bytes
    url: str


# --- events (frozen dataclasses) --------------------------------------------


@dataclass(frozen=True)
class Assign:
    role: str
    target: Target
    previous_sha256: str | None  # what the role ran when the update started


@dataclass(frozen=True)
class Downloaded:
    pass


@dataclass(frozen=True)
class Verified:
    pass


@dataclass(frozen=True)
class Activate:
    pass


@dataclass(frozen=True)
class Activated:
    pass


@dataclass(frozen=True)
class HealthPassed:
    pass


@dataclass(frozen=True)
class Fail:
    reason: str


@dataclass(frozen=True)
class RolledBack:
    pass


@dataclass(frozen=True)
class Restarted:
    """The agent started again with this record persisted (crash or reboot), or carries on as if it had:
    a record it could not write leaves only the persisted one true (``cause`` says which)."""

    cause: str = "agent restarted"


Event = Assign | Downloaded | Verified | Activate | Activated | HealthPassed | Fail | RolledBack | Restarted

# --- the table ---------------------------------------------------------------

S = State
TRANSITIONS: dict[State, dict[type, State]] = {
    S.IDLE: {Assign: S.DOWNLOADING},
    S.DOWNLOADING: {Downloaded: S.VERIFYING, Fail: S.IDLE},
    S.VERIFYING: {Verified: S.STAGED, Fail: S.IDLE},
    S.STAGED: {Activate: S.ACTIVATING, Fail: S.IDLE},
    S.ACTIVATING: {Activated: S.HEALTH_CHECK, Fail: S.ROLLING_BACK},
    S.HEALTH_CHECK: {HealthPassed: S.COMMITTED, Fail: S.ROLLING_BACK},
    S.COMMITTED: {Assign: S.DOWNLOADING},
    S.ROLLING_BACK: {RolledBack: S.ROLLED_BACK},
    S.ROLLED_BACK: {Assign: S.DOWNLOADING},
}

# What a restart does in each state. Download, verification and staging are
# idempotent and resume; once activation began the agent cannot know whether
# the candidate was healthy, so it rolls back (DESIGN: "a state it cannot
# resume from safely means roll back").
RESUME: dict[State, State] = {
    S.IDLE: S.IDLE,
    S.DOWNLOADING: S.DOWNLOADING,
    S.VERIFYING: S.VERIFYING,
    S.STAGED: S.STAGED,
    S.ACTIVATING: S.ROLLING_BACK,
    S.HEALTH_CHECK: S.ROLLING_BACK,
    S.COMMITTED: S.COMMITTED,
    S.ROLLING_BACK: S.ROLLING_BACK,
    S.ROLLED_BACK: S.ROLLED_BACK,
}
RESTART_REASON = "{cause} during {state}; the candidate was never confirmed healthy"


@dataclass(frozen=True)
class OtaRecord:
    """The whole persisted OTA state of the agent."""

    state: State = State.IDLE
    role: str | None = None
    target: Target | None = None
    previous_sha256: str | None = None
    reason: str = ""  # why the last update failed or rolled back
    history: tuple[str, ...] = field(default_factory=tuple)  # states visited by the current update

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["history"] = list(self.history)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> OtaRecord:
        """Parse a persisted record; raise ValueError naming what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"OTA record: expected an object, got {type(d).__name__}")
        try:
            state = State(d.get("state", "IDLE"))
        except ValueError:
            raise ValueError(f"OTA record: unknown state {d.get('state')!r}") from None
        t = d.get("target")
        try:
            target = None if t is None else Target(**t)
        except TypeError as exc:
            raise ValueError(f"OTA record: malformed target: {exc}") from None
        if state not in AT_REST and (target is None or not d.get("role")):
            raise ValueError(f"OTA record: state {state.value} needs a role and a target")
        return cls(
            state=state,
            role=d.get("role"),
            target=target,
            previous_sha256=d.get("previous_sha256"),
            reason=str(d.get("reason", "")),
            history=tuple(d.get("history", ())),
        )


def transition(rec: OtaRecord, event: Event) -> OtaRecord:
    """Return the record after ``event``; raise IllegalTransition and change nothing otherwise."""
    if isinstance(event, Restarted):
        new_state = RESUME[rec.state]
        reason = RESTART_REASON.format(cause=event.cause, state=rec.state.value) if new_state is not rec.state else rec.reason
        return replace(rec, state=new_state, reason=reason, history=(*rec.history, new_state.value))
    allowed = TRANSITIONS[rec.state]
    new_state_or_none = allowed.get(type(event))
    if new_state_or_none is None:
        names = ", ".join(sorted(e.__name__ for e in allowed)) or "nothing"
        raise IllegalTransition(f"event {type(event).__name__} is not allowed in state {rec.state.value} (allowed: {names})")
    new_state = new_state_or_none
    if isinstance(event, Assign):
        return OtaRecord(
            state=new_state,
            role=event.role,
            target=event.target,
            previous_sha256=event.previous_sha256,
            history=(new_state.value,),
        )
    reason = event.reason if isinstance(event, Fail) else rec.reason
    return replace(rec, state=new_state, reason=reason, history=(*rec.history, new_state.value))
