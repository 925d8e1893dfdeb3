"""Feature-spec benchmark: what the raw -> feature step costs on the request path.

- ``features_transform_us``: p50 of ``FeatureSpec.transform`` of one raw digits item (8x8 image,
  the bundle's spec: normalise by the joined dark level, clip, reshape), range checks included.
- ``features_transform_us_per_item_256``: the same per item for a batch of 256 items.
- ``raw_predict_overhead_us``: p50 of ``ModelHost.predict_arrays(raw, raw=True)`` minus p50 of the
  same call with the model inputs the spec makes (rounds interleaved, same run, no telemetry):
  what sending raw costs an app on the agent, beyond the transform's own time.
- ``batch_current_ns``: ``BatchFeatures.current()`` with delivered values in force (the cached path).
- ``skew_max_abs``: largest difference between the agent's features (``LoadedModel.featurize``)
  and the pipeline's (``FeatureSpec.transform``) over the 1,797 digits with sensor noise: 0 when
  both sides run the one implementation.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _p50(fn: Any, n: int) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def run() -> dict[str, Any]:
    from agent.batch import BatchFeatures
    from agent.host import ModelHost
    from agent.runtime import load_model
    from firmware_sim.modelgen import load_digits_raw, make_onnx_bundle
    from shared import bundle as bundle_fmt
    from shared.features import BatchFeatureValue

    _log("building the digits bundle")
    b = bundle_fmt.read(make_onnx_bundle())
    spec = b.manifest.features
    assert spec is not None
    raw, _ = load_digits_raw()
    noisy = np.clip(raw + np.random.default_rng(0).normal(0, 1.0, raw.shape), 0, 16).astype(np.float32)
    one = noisy[:1]
    batch = {"dark_level": 1.0}

    transform_s = _p50(lambda: spec.transform(one, batch), 5000)
    per_item_s = _p50(lambda: spec.transform(noisy[:256], batch), 300) / 256

    model = load_model(b.manifest, b.model, "bench")
    host = ModelHost("bench")
    host.swap("production", model)
    now = datetime.now(timezone.utc)
    host.batch.set([BatchFeatureValue("dark_level", 1.0, now - timedelta(hours=1), None, "device:bench")])
    features = spec.transform(one, host.batch.current())
    item = noisy[0]
    raw_t, plain_t = [], []
    for _ in range(20):  # interleaved rounds: machine noise hits both alike
        raw_t.append(_p50(lambda: host.predict_arrays(item, raw=True), 300))
        plain_t.append(_p50(lambda: host.predict_arrays(features), 300))
    overhead_s = statistics.median(raw_t) - statistics.median(plain_t)

    bf = BatchFeatures()
    bf.set(host.batch.history)
    bf.current()
    current_s = _p50(bf.current, 20000)

    agent_side = np.concatenate([model.featurize(noisy[i], bf.current())["input"] for i in range(len(noisy))])
    skew = float(np.max(np.abs(agent_side - spec.transform(noisy, {"dark_level": 1.0}))))
    _log(f"transform {transform_s * 1e6:.1f} µs/item; raw predict overhead {overhead_s * 1e6:.1f} µs; skew {skew}")
    return {
        "features_transform_us": round(transform_s * 1e6, 2),
        "features_transform_us_per_item_256": round(per_item_s * 1e6, 3),
        "raw_predict_overhead_us": round(overhead_s * 1e6, 2),
        "batch_current_ns": round(current_s * 1e9, 1),
        "skew_max_abs": skew,
    }
