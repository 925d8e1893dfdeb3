"""The leader's ``pipeline.compact`` job in a running controller (ADR 0081): it exports what the capture route
stored, merges the closed partitions' small files, counts what it did in the metrics, and a second run does nothing."""

from __future__ import annotations

import json
import logging
import time

import pytest

from controller.pipeline import datasets, partitions
from tests.controller_app import running_api, settings_for

T0 = 1_790_000_000.0  # 2026-09-21: a closed day


def test_the_leader_job_exports_compacts_and_counts(tmp_path, database_url, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, database_url).model_copy(update={"pipeline_compact_interval_s": 600.0})
    capture = settings.data_dir / "capture" / "cam-1"
    capture.mkdir(parents=True)
    for b in range(20):  # twenty uploads of three samples, as POST /v1/capture/{device} stores them
        lines = [
            {"id": b * 3 + k + 1, "spool": "s1", "ts": T0 + b * 60 + k, "role": "production", "model": "digits", "version": 1,
             "inputs": [0.1 * k] * 4, "prediction": k, "label": k if k else None, "prediction_id": f"p{b}-{k}"}
            for k in range(3)
        ]  # fmt: skip
        (capture / f"s1-{b * 3 + 1:012d}-{b * 3 + 3:012d}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with caplog.at_level(logging.INFO, logger="controller.pipeline.job"), running_api(settings) as api:
        leader = api.app.state.leader
        deadline = time.monotonic() + 30
        while leader.status().jobs["pipeline.compact"]["runs"] < 1:  # the leader's first tick runs every job
            assert time.monotonic() < deadline, f"the leader did not run the compaction: {leader.status()}"
            time.sleep(0.1)
        assert leader.status().jobs["pipeline.compact"]["failures"] == 0
        assert "pipeline compaction: 20 files merged into 1 in 1 partitions (60 rows" in caplog.text
        root = settings.data_dir / "datasets"
        live = partitions.live_files(root)
        assert [p.name.startswith("compacted-") for p in live] == [True]
        assert datasets.sql(root, "SELECT count(*), count(label) FROM samples") == [(60, 40)]
        text = api.admin.get("/metrics").text
        assert 'edgefleet_pipeline_compacted_files_total{direction="in"} 20.0' in text
        assert 'edgefleet_pipeline_compacted_files_total{direction="out"} 1.0' in text
        assert "edgefleet_pipeline_compacted_rows_total 60.0" in text
        job = api.app.state.compaction
        assert job.run(api.app.state.engine).inputs == 0  # idempotent: the batches are exported once, merged once
        assert partitions.live_files(root) == live
