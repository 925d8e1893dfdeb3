#!/usr/bin/env python
"""`make demo`: the whole loop with simulated devices running the real agent (see firmware_sim/demo.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.cli import main

raise SystemExit(main(["demo", *sys.argv[1:]]))
