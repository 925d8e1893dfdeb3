"""Keeps the broker's dynamic-security clients in step with the enrolled devices.

Every device holding a valid certificate must be a dynsec client with the
``edgefleet-device`` role, which refuses ``$share/...`` subscriptions (see
``broker_auth``). Enrolment registers the device before its certificate is
returned; this leader job registers them all again whenever the controller's
broker connection is new (the broker may have restarted with its dynsec state
reset) and every ``FULL_SYNC_S`` otherwise, so a device enrolled while the
broker was away is covered too. Registering is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session

from controller.identity.enrolment import enrolled_devices

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 5.0  # seconds between looks at the broker connection (cheap)
FULL_SYNC_S = 300.0  # seconds between full re-registrations on an unchanged connection


class DeviceSync:
    """``fn(ctx)`` for ``Leader.add_job``; ``connects()`` counts the controller's broker connections (0: none)."""

    def __init__(
        self,
        engine: Engine,
        register: Callable[[list[str]], bool],
        connects: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine, self._register, self._connects, self._clock = engine, register, connects, clock
        self._synced: tuple[int, float] | None = None  # (connection, when) of the last full registration

    def __call__(self, ctx: object) -> None:
        conn, now = self._connects(), self._clock()
        if conn == 0 or (self._synced is not None and self._synced[0] == conn and now - self._synced[1] < FULL_SYNC_S):
            return
        with Session(self._engine) as session:
            devices = enrolled_devices(session)
        if devices and not self._register(devices):
            log.warning("could not register %d devices with the broker's dynamic security; retrying", len(devices))
            return
        self._synced = (conn, now)
