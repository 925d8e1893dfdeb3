"""The leader's re-registration of enrolled devices with the broker's dynamic security (pure scheduling
over a real SQLite database; the broker side is tested in tests/integration/test_broker_security.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlmodel import Session

from controller.core.db import init_db, make_engine
from controller.core.tables import DeviceCertificate
from controller.identity.broker_devices import FULL_SYNC_S, DeviceSync

pytestmark = pytest.mark.unit
NOW = dt.datetime.now(dt.timezone.utc)


def cert(serial: str, device: str, *, revoked: bool = False, days: float = 30) -> DeviceCertificate:
    return DeviceCertificate(
        serial=serial,
        device_id=device,
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=days),
        revoked_at=NOW if revoked else None,
        pem="-",
    )


def test_enrolled_devices_are_registered_on_each_new_connection_and_every_few_minutes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    init_db(engine)
    with Session(engine) as s:
        s.add_all([cert("01", "dev-a"), cert("02", "dev-b", revoked=True), cert("03", "dev-c", days=-1), cert("04", "dev-d")])
        s.commit()
    calls: list[list[str]] = []
    state = {"connects": 0, "t": 1000.0, "ok": True}

    def register(devices: list[str]) -> bool:
        calls.append(devices)
        return bool(state["ok"])

    sync = DeviceSync(engine, register, lambda: int(state["connects"]), clock=lambda: float(state["t"]))
    sync(None)
    assert calls == [], "not connected: nothing to tell the broker"
    state["connects"] = 1
    sync(None)
    assert calls == [["dev-a", "dev-d"]], "revoked and expired certificates are left out"
    state["t"] += 10
    sync(None)
    assert len(calls) == 1, "same connection, recently registered"
    state["connects"] = 2  # reconnected: the broker may have restarted with a fresh dynsec state
    sync(None)
    assert len(calls) == 2
    state["t"] += FULL_SYNC_S
    state["ok"] = False
    sync(None)
    sync(None)
    assert len(calls) == 4, "a failed registration is tried again at the next look"
    engine.dispose()
