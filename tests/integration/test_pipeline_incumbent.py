"""The pipeline's incumbent is the version the cohort runs now, not the one with the most windows over the day."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from controller.core.tables import Cohort, Device, ModelVersion, TelemetryAggregate
from controller.pipeline import signals

pytestmark = [pytest.mark.integration]
NOW = 1_790_000_000
DAY = 86400


def _version(v: int) -> ModelVersion:
    return ModelVersion(name="digits", version=v, runtime="onnx", sha256=f"{v:064x}", length=1, manifest={"version": v},
                        approved_by="ann")  # fmt: skip


def _windows(v: int, start: int, windows: int, cohort: str = "*") -> TelemetryAggregate:
    return TelemetryAggregate(model="digits", version=v, role="production", cohort=cohort, window_start=start, window_s=60,
                              shard="s", windows=windows)  # fmt: skip


def test_the_incumbent_is_what_the_cohort_runs_in_the_policys_windows_then_over_the_day(engine: Engine) -> None:
    with Session(engine) as s:
        s.add_all([_version(1), _version(3), _version(4)])
        s.add(_windows(1, NOW - DAY + 60, 900))  # v1 ran most of the day
        s.add(_windows(3, NOW - 1200, 40))  # the rollout of v3 finished 20 minutes ago
        s.add(_windows(3, NOW - 300, 8))
        s.add(_windows(1, NOW - 900, 2, cohort="north"))  # another cohort's windows do not count for the fleet
        s.commit()
        by_day = signals.incumbent(s, "digits", "*", NOW - DAY)
        now = signals.incumbent(s, "digits", "*", NOW - DAY, recent=NOW - 600)
        quiet = signals.incumbent(s, "digits", "*", NOW - DAY, recent=NOW + 60)  # no windows yet in the period
        north = signals.incumbent(s, "digits", "north", NOW - DAY, recent=NOW - 600)
    assert by_day is not None and by_day.version == 1
    assert now is not None and now.version == 3
    assert quiet is not None and quiet.version == 1  # nothing in the period: the day decides
    assert north is not None and north.version == 1


def test_what_the_devices_report_running_outranks_windows_still_on_their_way(engine: Engine) -> None:
    """Agents batch windows (ADR 0076): minutes after a rollout completes, the controller may hold no window of the
    new version yet, but every device's status already says what it runs."""
    with Session(engine) as s:
        s.add_all([_version(1), _version(3)])
        s.add(_windows(1, NOW - DAY + 60, 900))
        s.add(_windows(1, NOW - 120, 8))  # the last windows that arrived are still v1's
        running = {"production": {"model": "digits", "version": 3, "sha256": "3" * 64, "since": NOW - 60}}
        other = {"production": {"model": "other", "version": 9, "sha256": "9" * 64, "since": NOW - 60}}
        s.add_all([Device(id=f"d{i}", region="north" if i < 2 else "south", actual=running) for i in range(5)])
        s.add(Device(id="d5", region="north", actual={"production": {**running["production"], "version": 1}}))
        s.add(Device(id="d6", region="north", actual=other))
        s.add(Cohort(name="north", filter={"region": ["north"]}))
        s.add(Cohort(name="empty", filter={"region": ["nowhere"]}))
        s.add(_windows(1, NOW - 300, 4, cohort="empty"))
        s.commit()
        fleet = signals.incumbent(s, "digits", "*", NOW - DAY, recent=NOW - 600)
        north = signals.incumbent(s, "digits", "north", NOW - DAY, recent=NOW - 600)
        empty = signals.incumbent(s, "digits", "empty", NOW - DAY, recent=NOW - 600)
    assert fleet is not None and fleet.version == 3
    assert north is not None and north.version == 3  # two on v3, one on v1, one on another model
    assert empty is not None and empty.version == 1  # no device reports: the windows decide, as before
