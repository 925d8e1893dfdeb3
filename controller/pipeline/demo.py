"""Demo data: scikit-learn's bundled 8x8 digits (no download) and simulated sensor degradation as drift.

Raw inputs are what a camera would send: 64 pixel intensities from 0 to 16. The
degradations act on the raw image, the way an ageing sensor would: ``brightness``
(an offset), ``noise`` (Gaussian), ``blur`` (Gaussian, sigma in pixels) and
``rotation`` (degrees, a camera knocked askew). Each is seeded, so a drifted set
is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

N_FEATURES, N_CLASSES, MAX_PIXEL = 64, 10, 16.0


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """Digits as raw pixels (float32, 0..16) and their classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def feature_spec() -> dict[str, Any]:
    """The digits feature spec (``shared.features``): raw 8x8 intensities 0..16, less the sensor's dark level
    (a batch feature), to 64 model inputs in 0..1. The same spec as ``firmware_sim.modelgen.DIGITS_FEATURES``."""
    return {
        "version": "digits-8x8-v1",
        "input": {"name": "pixels", "dtype": "float32", "shape": [8, 8], "range": [0, MAX_PIXEL]},
        "steps": [
            {"op": "normalise", "mean": {"batch": "dark_level"}, "std": MAX_PIXEL},
            {"op": "clip", "min": 0, "max": 1},
            {"op": "reshape", "shape": [N_FEATURES]},
        ],
        "batch": [{"name": "dark_level", "default": 0.0}],
    }


@dataclass(frozen=True)
class Degradation:
    brightness: float = 0.0  # raw units added to every pixel
    noise: float = 0.0  # Gaussian sigma, raw units
    blur: float = 0.0  # Gaussian sigma, pixels
    rotation: float = 0.0  # degrees

    def to_dict(self) -> dict[str, float]:
        return {"brightness": self.brightness, "noise": self.noise, "blur": self.blur, "rotation": self.rotation}


AGED_SENSOR = Degradation(brightness=2.0, noise=1.0, blur=0.5, rotation=10.0)


def degrade(x: np.ndarray, d: Degradation, seed: int = 0) -> np.ndarray:
    """``x`` (rows x 64 raw pixels) as an ageing sensor would report it."""
    from scipy import ndimage

    imgs = np.asarray(x, dtype=np.float64).reshape(-1, 8, 8)
    if d.rotation:
        imgs = np.stack([ndimage.rotate(im, d.rotation, reshape=False, order=1, mode="constant") for im in imgs])
    if d.blur:
        imgs = np.stack([ndimage.gaussian_filter(im, d.blur) for im in imgs])
    imgs = imgs + d.brightness
    if d.noise:
        imgs = imgs + np.random.default_rng(seed).normal(0.0, d.noise, imgs.shape)
    return np.clip(imgs, 0.0, MAX_PIXEL).reshape(-1, N_FEATURES).astype(np.float32)
