#!/usr/bin/env python
"""Regenerate tests/fixtures/digits_int8.tflite with TensorFlow's converter (needs the ``train`` extra).

The tests load this committed file instead of importing TensorFlow in every run.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware_sim.modelgen import make_tflite_model  # noqa: E402

if __name__ == "__main__":
    out = ROOT / "tests" / "fixtures" / "digits_int8.tflite"
    data = make_tflite_model(epochs=200, seed=0)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
