"""Which devices publish each telemetry window as it closes (ADR 0076).

Agents batch their windows by default (ten a message). A running rollout or
experiment reads its devices' windows every analysis interval, so it asks them
for fresh telemetry through their signed desired state: it adds its name
(``shared.cadence.rollout_holder``, ``experiment_holder``) to
``Device.sampling["telemetry_fresh"]`` of every device it reads, and removes it
when it no longer needs them. A device whose list changed gets a new signed
desired state (its assignments unchanged: nothing to download); the caller
commits, then publishes the envelopes.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlmodel import Session

from controller.core.config import Settings
from controller.core.tables import Device
from controller.fleet.assignments import Envelope, resign_as_is
from controller.fleet.director import Director
from shared.cadence import with_holder, without_holder


def mark(devices: Iterable[Device], holder: str, wanted: bool = True) -> list[Device]:
    """Add (or remove) ``holder`` in the devices' sampling settings, signing nothing; the devices that changed."""
    changed = []
    for d in devices:
        new = with_holder(d.sampling or {}, holder) if wanted else without_holder(d.sampling or {}, holder)
        if new is not None:
            d.sampling = new
            changed.append(d)
    return changed


def sync(
    session: Session,
    holder: str,
    wanted: Iterable[str],
    devices: Iterable[Device],
    *,
    director: Director,
    settings: Settings,
) -> list[tuple[str, Envelope]]:
    """Make ``holder`` ask exactly the devices ``wanted`` (ids) among ``devices`` for fresh telemetry.

    ``devices`` must include every device that may hold it now (e.g. all devices, or the
    experiment's). Those that changed are re-signed, except devices the controller never sent
    a desired state: a first one would stop the models they were provisioned with, so the
    setting waits in ``Device.sampling`` for their first assignment."""
    want = set(wanted)
    pool = list(devices)
    changed = mark([d for d in pool if d.id in want], holder) + mark([d for d in pool if d.id not in want], holder, False)
    for d in changed:
        session.add(d)
    return [resign_as_is(session, d, director, settings) for d in sorted(changed, key=lambda d: d.id) if d.desired_counter]
