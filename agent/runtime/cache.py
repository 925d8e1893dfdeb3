"""Loaded models shared by the agents of one process, keyed by bundle hash.

A real device runs one agent and gains nothing from this; a simulated fleet runs
hundreds of agents in one process, all serving the same few bundles, and would
otherwise hold one runtime session per device. Entries are weak: a model no
agent serves any more is freed. Only verified bundles reach ``get`` (the hash is
the key and was checked before), so sharing never mixes two models.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from agent.runtime.base import LoadedModel

__all__ = ["ModelCache"]


class ModelCache:
    """``get(sha256, threads, load)``: the loaded model for that bundle, loading it once per process.

    ``adapt`` (the simulator's hardware profile: slower runtime, memory limit) is applied once to
    each newly loaded model; it may raise ``ModelLoadError`` like a load that fails on the device.
    """

    def __init__(self, adapt: Callable[[LoadedModel], LoadedModel] | None = None) -> None:
        self.adapt = adapt
        self._models: weakref.WeakValueDictionary[tuple[str, int], LoadedModel] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self.loads = 0  # models really loaded (a hit costs none)

    def get(self, sha256: str, threads: int, load: Callable[[], LoadedModel]) -> LoadedModel:
        key = (sha256, threads)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                return model
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per bundle even when many agents ask at once
            with self._lock:
                model = self._models.get(key)
            if model is None:
                model = load()
                if self.adapt is not None:
                    model = self.adapt(model)
                with self._lock:
                    self._models[key] = model
                    self.loads += 1
        with self._lock:
            self._loading.pop(key, None)
        return model

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
