"""TelemetryIngest's runtime settings: GC thresholds raised while running and restored after."""

from __future__ import annotations

import gc

import pytest
from sqlalchemy import create_engine

from controller.core.metrics import Metrics
from controller.telemetry.batch import TelemetryIngest
from controller.telemetry.gc_tuning import GC_THRESHOLDS

pytestmark = [pytest.mark.unit]


def test_gc_thresholds_raised_while_any_ingester_runs_and_restored_after_the_last(tmp_path):
    before = gc.get_threshold()
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    a, b = TelemetryIngest(engine, Metrics()), TelemetryIngest(engine, Metrics())
    try:
        a.start()
        assert gc.get_threshold() == tuple(max(x, y) for x, y in zip(GC_THRESHOLDS, before, strict=True))
        b.start()
        a.stop()
        assert gc.get_threshold()[0] >= GC_THRESHOLDS[0], "b still runs"
        b.stop()
        assert gc.get_threshold() == before
        b.stop()  # stopping twice changes nothing
        assert gc.get_threshold() == before
    finally:
        a.stop()
        b.stop()
        gc.set_threshold(*before)
        engine.dispose()
