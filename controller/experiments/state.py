"""The experiment lifecycle. Everything that changes an experiment's state lives here (pure).

As in ``agent/ota/state.py``: no I/O; :func:`transition` takes the current state
and one event and returns the next state, or raises :class:`IllegalTransition`
naming both and changing nothing. The engine persists the new state with the
audit record of the event in one transaction.

::

    RUNNING ─Pause─▶ PAUSED ─Resume─▶ RUNNING
       │ Decide (ship / stop_harm)
       ▼
    DECIDED ─Promote─▶ COMPLETED        (the arm decided on becomes production)
    RUNNING, PAUSED, DECIDED ─Stop─▶ STOPPED   (an operator ends it; optionally promoting an arm)

COMPLETED and STOPPED are final. ``keep_running`` and ``blocked`` looks are
not events: they change nothing but the latest evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class State(str, Enum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    DECIDED = "DECIDED"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"


ACTIVE = frozenset({State.RUNNING, State.PAUSED, State.DECIDED})
FINAL = frozenset({State.COMPLETED, State.STOPPED})


class IllegalTransition(Exception):
    """An event arrived in a state that does not accept it."""


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Decide:
    decision: str  # ship | stop_harm
    arm: str


@dataclass(frozen=True)
class Promote:
    arm: str


@dataclass(frozen=True)
class Stop:
    reason: str


Event = Pause | Resume | Decide | Promote | Stop

_TABLE: dict[tuple[State, type], State] = {
    (State.RUNNING, Pause): State.PAUSED,
    (State.PAUSED, Resume): State.RUNNING,
    (State.RUNNING, Decide): State.DECIDED,
    (State.DECIDED, Promote): State.COMPLETED,
    (State.RUNNING, Stop): State.STOPPED,
    (State.PAUSED, Stop): State.STOPPED,
    (State.DECIDED, Stop): State.STOPPED,
}


def transition(state: State, event: Event) -> State:
    nxt = _TABLE.get((state, type(event)))
    if nxt is None:
        raise IllegalTransition(f"{type(event).__name__} is not allowed in state {state.value}")
    return nxt


def accepts(state: State, event_type: type) -> bool:
    return (state, event_type) in _TABLE
