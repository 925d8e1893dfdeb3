"""Keeping the MQTT receive loop alive and its health visible.

paho runs every callback on its one network thread; an exception that leaves a
callback ends that thread, and with it all ingestion. ``CallbackGuard`` wraps
each callback: it catches everything, counts it per callback, logs it at most
once per interval per callback (with how many were suppressed) and returns.
``LoopWatch`` says whether the receive loop is running, dead (its thread ended)
or stalled (one callback has been running longer than ``stall_s``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., None])


class LoopState(str, Enum):
    NOT_STARTED = "not_started"
    RUNNING = "running"
    STALLED = "stalled"
    DEAD = "dead"


class RateLimitedLog:
    """At most one record per ``key`` every ``interval_s``; the next one says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log unless ``key`` logged within the interval; return whether it logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += f" ({suppressed} more like this suppressed)"
        self._log.log(level, msg, *args, exc_info=exc_info)
        return True


@dataclass
class _Busy:
    name: str
    since: float


class CallbackGuard:
    """Wraps paho callbacks so nothing escapes them, and tracks whether one is stuck."""

    def __init__(
        self,
        on_error: Callable[[str], None] | None = None,
        logger: RateLimitedLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.errors: dict[str, int] = {}
        self._on_error = on_error
        self._log = logger or RateLimitedLog(log)
        self._clock = clock
        self._busy: _Busy | None = None

    def wrap(self, name: str, fn: F) -> F:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> None:
            self._busy = _Busy(name, self._clock())
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # the receive loop must survive any input
                self.errors[name] = self.errors.get(name, 0) + 1
                self._log(
                    name, logging.ERROR, "MQTT %s callback failed: %s: %.200s", name, type(exc).__name__, exc, exc_info=True
                )
                if self._on_error is not None:
                    try:
                        self._on_error(name)
                    except Exception:
                        log.exception("error counter failed")
            finally:
                self._busy = None

        return guarded  # type: ignore[return-value]

    def busy_for(self) -> tuple[str, float] | None:
        """The callback running now and for how long (seconds), or None."""
        busy = self._busy
        return None if busy is None else (busy.name, self._clock() - busy.since)


class LoopWatch:
    """The receive loop's state from its thread and the guard's busy callback."""

    def __init__(
        self,
        guard: CallbackGuard,
        started: Callable[[], bool],
        thread: Callable[[], threading.Thread | None],
        stall_s: float = 60.0,
    ) -> None:
        self._guard = guard
        self._started = started
        self._thread = thread
        self.stall_s = stall_s

    def state(self) -> LoopState:
        if not self._started():
            return LoopState.NOT_STARTED
        t = self._thread()
        if t is None or not t.is_alive():
            return LoopState.DEAD
        busy = self._guard.busy_for()
        if busy is not None and busy[1] > self.stall_s:
            return LoopState.STALLED
        return LoopState.RUNNING
