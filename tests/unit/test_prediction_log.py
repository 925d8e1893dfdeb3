"""The agent's on-disk prediction context for late labels: bounded, newest kept, survives a reopen."""

from __future__ import annotations

import pytest

from agent.telemetry.predlog import Prediction, PredictionLog

pytestmark = pytest.mark.unit


def test_keeps_the_newest_rows_and_survives_a_restart(tmp_path):
    log = PredictionLog(tmp_path / "p.db", max_rows=50)
    for batch in range(4):
        log.add_many([Prediction(f"id-{batch}-{i}", "production", "digits", 3, 100.0 * batch, i % 10) for i in range(20)])
    assert log.count() == 50
    assert log.get("id-0-0") is None  # the oldest went first
    assert log.get("id-3-19") == Prediction("id-3-19", "production", "digits", 3, 300.0, 9)
    log.close()
    again = PredictionLog(tmp_path / "p.db", max_rows=50)
    assert again.get("id-2-5") is not None and again.get("nope") is None
    again.close()
