"""The per-process loaded-model cache: one load per bundle, adapted once, freed when unused."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest

from agent.runtime import LoadedModel, ModelLoadError
from agent.runtime.cache import ModelCache

pytestmark = pytest.mark.unit


def _model(tag: str) -> LoadedModel:
    return LoadedModel(manifest=None, sha256=tag, runtime=None, loaded_at=0.0)  # type: ignore[arg-type]


def test_one_load_per_bundle_even_when_many_agents_ask_at_once() -> None:
    cache = ModelCache()
    calls: list[str] = []
    gate = threading.Event()

    def load() -> LoadedModel:
        gate.wait(1.0)
        calls.append("a")
        return _model("a")

    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a", 1, load))) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert calls == ["a"] and cache.loads == 1
    assert all(m is got[0] for m in got)


def test_threads_and_hash_are_the_key() -> None:
    cache = ModelCache()
    a1 = cache.get("a", 1, lambda: _model("a"))
    a2 = cache.get("a", 2, lambda: _model("a"))
    b1 = cache.get("b", 1, lambda: _model("b"))
    assert a1 is not a2 and a1 is not b1 and cache.loads == 3


def test_adapt_runs_once_and_may_refuse_like_a_failed_load() -> None:
    seen: list[str] = []

    def adapt(m: LoadedModel) -> LoadedModel:
        seen.append(m.sha256)
        if m.sha256 == "big":
            raise ModelLoadError("out of memory: needs 900 MB, the device has 512 MB")
        return m

    cache = ModelCache(adapt)
    m = cache.get("a", 1, lambda: _model("a"))
    assert cache.get("a", 1, lambda: _model("other")) is m
    with pytest.raises(ModelLoadError, match="out of memory"):
        cache.get("big", 1, lambda: _model("big"))
    assert seen == ["a", "big"] and len(cache) == 1


def test_a_model_no_agent_holds_is_freed() -> None:
    cache = ModelCache()
    m = cache.get("a", 1, lambda: _model("a"))
    assert len(cache) == 1
    del m
    gc.collect()
    assert len(cache) == 0
    cache.get("a", 1, lambda: _model("a"))
    assert cache.loads == 2
