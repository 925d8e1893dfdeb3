"""Data-capture budgets and the telemetry/capture config tables."""

from __future__ import annotations

import random

import pytest

from agent.config import CaptureConfig, ConfigError, parse_config
from agent.telemetry.capture import CaptureSpool

pytestmark = pytest.mark.unit
DAY = 1_790_000_000.0


def base(**extra):
    return {"device_id": "d1", "data_dir": "/tmp/x", "director_public_keys": ["0" * 64], **extra}


def sample(n: int = 100) -> dict:
    return {"inputs": [0.5] * n}


def test_capture_is_off_by_default_and_takes_nothing(tmp_path):
    cfg = parse_config(base())
    assert cfg.capture.enabled is False and cfg.telemetry.window_s == 60.0
    spool = CaptureSpool(tmp_path / "c.db", cfg.capture)
    assert spool.offer(sample(), labelled=True) == 0 and not spool.sampled()


def test_config_errors_name_the_key_and_what_was_expected():
    with pytest.raises(ConfigError, match=r"\[telemetry\]: 'window_s' must be a number > 0"):
        parse_config(base(telemetry={"window_s": 0}))
    with pytest.raises(ConfigError, match="expected the controller's http"):
        parse_config(base(capture={"enabled": True}))
    with pytest.raises(ConfigError, match=r"\[capture\]: 'rate' must be a number <= 1"):
        parse_config(base(capture={"rate": 2}))
    with pytest.raises(ConfigError, match=r"\[broker\]: 'reconnect_jitter' must be bool"):
        parse_config(base(broker={"reconnect_jitter": "yes"}))


def test_daily_budget_reserves_room_for_labelled_samples(tmp_path):
    cfg = CaptureConfig(enabled=True, url="http://c", max_bytes_per_day=10_000, unlabelled_share=0.5)
    spool = CaptureSpool(tmp_path / "c.db", cfg)
    size = spool.offer(sample(), labelled=False, at=DAY)
    assert size > 0
    unlabelled = 1 + sum(1 for _ in range(100) if spool.offer(sample(), labelled=False, at=DAY))
    assert unlabelled * size <= 5_000 < (unlabelled + 1) * size
    labelled = sum(1 for _ in range(100) if spool.offer(sample(), labelled=True, at=DAY))
    assert labelled >= unlabelled  # the other half of the budget went to labelled samples
    assert (unlabelled + labelled) * size <= 10_000
    assert spool.offer(sample(), labelled=True, at=DAY) == 0  # the day is spent
    assert spool.offer(sample(), labelled=True, at=DAY + 86_400) > 0  # a new UTC day


def test_a_full_spool_evicts_unlabelled_first_and_uploads_labelled_first(tmp_path):
    probe = CaptureSpool(tmp_path / "p.db", CaptureConfig(enabled=True, url="http://c"))
    size = probe.offer(sample(), labelled=False)
    cfg = CaptureConfig(enabled=True, url="http://c", max_bytes_per_day=10**9, spool_max_bytes=3 * size, unlabelled_share=1.0)
    spool = CaptureSpool(tmp_path / "c.db", cfg)
    for _ in range(3):
        assert spool.offer(sample(), labelled=False)
    assert spool.offer(sample(), labelled=True)  # evicts the oldest unlabelled
    assert spool.offer(sample(), labelled=True)
    assert spool.offer(sample(), labelled=True)
    assert spool.offer(sample(), labelled=False) == 0  # never evicts a labelled sample for an unlabelled one
    rows = spool.batch(10**6)
    assert len(rows) == 3 and spool.pending() == 3
    spool.delete([sid for sid, _ in rows[:2]])
    assert spool.pending() == 1
    ids = [sid for sid, _ in rows]
    assert ids == sorted(ids) and ids[0] > 3  # never-reused ids: the evicted ones are gone for good


def test_sampling_follows_the_rate(tmp_path):
    spool = CaptureSpool(tmp_path / "c.db", CaptureConfig(enabled=True, url="http://c", rate=0.1))
    rng = random.Random(3)
    hits = sum(spool.sampled(rng) for _ in range(10_000))
    assert 850 < hits < 1150
