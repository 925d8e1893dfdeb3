"""The digits "camera": a stream of 8x8 frames with their true labels, and drift to inject.

Frames are scikit-learn's bundled digits (no download), scaled to [0, 1] as the
models expect; ``raw_frame`` gives what the sensor itself reports, 8x8 intensities
0..16, for apps that send raw inputs (the agent applies the model's feature spec).
Drift changes what the camera sees, as a dirty lens, a new light or a different
population would:

- ``brightness``: every pixel brighter by ``level`` (clipped to 1);
- ``noise``: Gaussian noise with standard deviation ``level``;
- ``contrast``: pixels pulled towards grey by ``level``;
- ``classes``: the scene shows mostly the digits 0-4 (share ``level`` of frames);
- ``aged``: an ageing sensor, the pipeline's ``controller.pipeline.demo.AGED_SENSOR``
  (brighter, noisier, blurred, knocked 10 degrees askew), each effect scaled by ``level``.

``level`` 0 is no drift. Labels stay the truth, so accuracy falls where the model suffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.pipeline.demo import AGED_SENSOR, MAX_PIXEL, Degradation, degrade

__all__ = ["DRIFT_KINDS", "Camera", "Drift", "apply_drift"]

DRIFT_KINDS = ("none", "brightness", "noise", "contrast", "classes", "aged")
RAW_SHAPE = (8, 8)  # the sensor's frame: intensities 0..MAX_PIXEL


@dataclass(frozen=True)
class Drift:
    kind: str = "none"
    level: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; expected one of {', '.join(DRIFT_KINDS)}")
        if not 0.0 <= self.level <= 1.0:
            raise ValueError(f"drift level must be within 0..1, got {self.level}")


def apply_drift(x: np.ndarray, drift: Drift, rng: np.random.Generator) -> np.ndarray:
    """``x`` (frames in [0, 1]) as a drifted camera would see them."""
    if drift.kind == "brightness":
        return np.minimum(1.0, x + drift.level).astype(np.float32)
    if drift.kind == "noise":
        return np.clip(x + rng.normal(0.0, drift.level, x.shape), 0.0, 1.0).astype(np.float32)
    if drift.kind == "contrast":
        return (x * (1.0 - drift.level) + 0.5 * drift.level).astype(np.float32)
    if drift.kind == "aged":
        a, k = AGED_SENSOR, drift.level
        aged = Degradation(a.brightness * k, a.noise * k, a.blur * k, a.rotation * k)
        return (degrade(x * MAX_PIXEL, aged, seed=int(rng.integers(2**31))) / MAX_PIXEL).astype(np.float32)
    return x


class Camera:
    """Frames for one device: ``frame()`` -> (input of shape (1, 64), true label)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.x, self.y = x, y
        self.rng = np.random.default_rng(seed)
        self.drift = Drift()
        self._low = np.flatnonzero(y < 5)

    def frame(self) -> tuple[np.ndarray, int]:
        d = self.drift
        if d.kind == "classes" and self.rng.random() < d.level:
            i = int(self._low[self.rng.integers(len(self._low))])
        else:
            i = int(self.rng.integers(len(self.x)))
        return apply_drift(self.x[i : i + 1], d, self.rng), int(self.y[i])

    def raw_frame(self) -> tuple[np.ndarray, int]:
        """What the sensor reports: one (8, 8) frame of intensities 0..16, and its true label."""
        x, label = self.frame()
        return (x * MAX_PIXEL).reshape(RAW_SHAPE), label
