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


def cfg_on(**kw) -> CaptureConfig:
    return CaptureConfig(enabled=True, url="http://c", max_bytes_per_day=10**9, unlabelled_share=1.0, **kw)


def test_a_spool_has_its_own_random_id_kept_across_restarts_and_new_after_a_wipe(tmp_path):
    first = CaptureSpool(tmp_path / "c.db", cfg_on())
    sid = first.spool_id
    first.close()
    again = CaptureSpool(tmp_path / "c.db", cfg_on())
    assert again.spool_id == sid  # a restart keeps the spool and its id
    again.close()
    (tmp_path / "c.db").unlink()
    wiped = CaptureSpool(tmp_path / "c.db", cfg_on())  # the data directory was wiped: ids start at 1 again ...
    assert wiped.spool_id != sid and len(wiped.spool_id) == 16  # ... under another spool id
    before = wiped.spool_id
    renewed = wiped.renew_id()  # after a 409: the uploads from now on go under a fresh id, kept
    assert renewed not in (sid, before) and wiped.spool_id == renewed
    wiped.close()
    assert CaptureSpool(tmp_path / "c.db", cfg_on()).spool_id == renewed


def test_a_label_for_a_spooled_prediction_updates_it_in_place_and_one_already_sent_is_a_tombstone(tmp_path):
    import json

    spool = CaptureSpool(tmp_path / "c.db", cfg_on())
    assert spool.offer({"inputs": [0.5], "label": None, "prediction_id": "p1"}, labelled=False)
    assert spool.offer({"inputs": [0.6], "label": None, "prediction_id": "p2"}, labelled=False)
    assert spool.label("p1", 7) == "updated"  # waiting: labelled in place, no second copy
    assert spool.pending() == 2
    rows = spool.batch(10**6)
    assert [json.loads(p)["label"] for _, p in rows] == [7, None]  # labelled first
    spool.sent(rows)
    assert spool.pending() == 0
    assert spool.label("p1", 7) == spool.label("p2", 3) == "sent"  # uploaded: only the label goes
    assert spool.label("never", 1) == "absent"
    assert spool.batch(10**6) == []


def test_a_sample_labelled_while_its_upload_was_in_flight_goes_again_labelled(tmp_path):
    import json

    spool = CaptureSpool(tmp_path / "c.db", cfg_on())
    spool.offer({"inputs": [0.5], "label": None, "prediction_id": "p1"}, labelled=False)
    rows = spool.batch(10**6)  # the upload of the unlabelled copy starts ...
    assert spool.label("p1", 4) == "updated"  # ... the label comes ...
    spool.sent(rows)  # ... and the controller stores the unlabelled copy
    again = spool.batch(10**6)
    assert [json.loads(p)["label"] for _, p in again] == [4]  # the label is not lost


def test_tombstones_are_bounded_and_carry_no_payload(tmp_path, monkeypatch):
    import sqlite3

    from agent.telemetry import capture

    monkeypatch.setattr(capture, "TOMBSTONES", 5)
    spool = CaptureSpool(tmp_path / "c.db", cfg_on())
    for i in range(20):
        spool.offer({"inputs": [0.5] * 50, "label": None, "prediction_id": f"p{i}"}, labelled=False)
    spool.sent(spool.batch(10**6))
    db = sqlite3.connect(tmp_path / "c.db")
    assert db.execute("SELECT count(*), sum(length(payload)) FROM samples").fetchone() == (5, 0)
    assert spool.label("p19", 1) == "sent" and spool.label("p0", 1) == "absent"


def test_a_spool_made_by_an_older_agent_is_upgraded_in_place(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "c.db")
    db.executescript(
        "CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, labelled INTEGER NOT NULL, size INTEGER NOT NULL,"
        " payload BLOB NOT NULL); INSERT INTO samples (labelled, size, payload) VALUES (1, 2, x'7b7d');"
    )
    db.commit()
    db.close()
    spool = CaptureSpool(tmp_path / "c.db", cfg_on())
    assert spool.pending() == 1 and spool.batch(10**6) == [(1, b"{}")] and len(spool.spool_id) == 16
    assert spool.offer({"inputs": [1.0], "label": None, "prediction_id": "p"}, labelled=False)
    assert spool.label("p", 2) == "updated"
