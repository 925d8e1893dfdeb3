"""Hardware profiles of simulated devices: how much slower, how much memory, how much storage.

The agent code is the real one; a profile changes what it runs on:

- ``cpu_slowdown``: every inference takes this many times as long as on the host
  (the extra time is slept, so a simulated slow device costs the host nothing);
- ``memory_mb``: a model whose estimated resident size does not fit beside the
  agent fails to load, as it would on the device (the update is refused);
- ``storage_mb``: the device's storage, for the disk gauge (a full disk is a
  fault, ``disk_full``, on a real small file system).

Slowdowns are relative to an x86-64 host core and come from the single-thread
CPU ratios of the boards (Cortex-A72 1.5 GHz, Cortex-A76 2.4 GHz, Cortex-A78AE
1.5 GHz); they are rough and only order devices correctly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import LoadedModel, ModelLoadError

__all__ = ["PROFILES", "Profile", "SimSystem", "adapter", "profile"]

AGENT_BASE_MB = 40.0  # the agent's own resident memory on a device, before models
MODEL_RESIDENT_FACTOR = 3.0  # resident bytes per model file byte (runtime session, arenas)


@dataclass(frozen=True)
class Profile:
    name: str
    cpu_slowdown: float  # x the host's inference time
    memory_mb: int
    storage_mb: int
    arch: str = "aarch64"

    def model_mb(self, model_bytes: int) -> float:
        return model_bytes * MODEL_RESIDENT_FACTOR / 1e6


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("rpi4", cpu_slowdown=4.0, memory_mb=1024, storage_mb=16 * 1024),
        Profile("rpi5", cpu_slowdown=2.0, memory_mb=4096, storage_mb=32 * 1024),
        Profile("jetson-orin-nano", cpu_slowdown=2.5, memory_mb=8192, storage_mb=64 * 1024),
    )
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown hardware profile {name!r}; expected one of {sorted(PROFILES)}") from None


class _SlowRuntime:
    """Runs the real runtime, then sleeps ``(slowdown - 1)`` times what it took."""

    def __init__(self, inner: Any, slowdown: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.extra = max(0.0, slowdown - 1.0)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out: dict[str, np.ndarray] = self.inner.run(inputs)
        if self.extra:
            time.sleep((time.perf_counter() - t0) * self.extra)
        return out


def adapter(p: Profile, model_size: dict[str, int]) -> Any:
    """The ``ModelCache`` hook for profile ``p``: refuse what does not fit in memory, slow the rest down.

    ``model_size`` maps a bundle hash to its model file size (the simulator knows its bundles).
    """

    def adapt(model: LoadedModel) -> LoadedModel:
        need = AGENT_BASE_MB + p.model_mb(model_size.get(model.sha256, 0))
        if need > p.memory_mb:
            raise ModelLoadError(f"out of memory on {p.name}: needs ~{need:.0f} MB, the device has {p.memory_mb} MB")
        if p.cpu_slowdown <= 1.0:
            return model
        return LoadedModel(model.manifest, model.sha256, _SlowRuntime(model.runtime, p.cpu_slowdown), model.loaded_at)

    return adapt


class SimSystem:
    """System gauges of a simulated device (the agent's ``SystemSource``): its own memory and storage."""

    def __init__(self, p: Profile, data_dir: Path, loaded_mb: Any) -> None:
        self.p = p
        self.data_dir = data_dir
        self.loaded_mb = loaded_mb  # () -> MB of models this device holds
        self._used = (0.0, 0)  # (monotonic time, bytes): the directory is walked at most once a minute

    def _used_bytes(self) -> int:
        at, used = self._used
        if time.monotonic() - at > 60.0:
            try:
                used = sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file())
            except OSError:
                pass
            self._used = (time.monotonic(), used)
        return used

    def sample(self) -> dict[str, Any]:
        used = self._used_bytes()
        mem = AGENT_BASE_MB + float(self.loaded_mb())
        return {
            "cpu_percent": 0.0,
            "mem_percent": round(min(100.0, 100.0 * mem / self.p.memory_mb), 2),
            "disk_percent": round(min(100.0, 100.0 * used / (self.p.storage_mb * 1e6)), 3),
        }
