#!/usr/bin/env python
"""`make demo`: a small local fleet with real processes (see firmware_sim/demo.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.cli import main

raise SystemExit(main(["demo", *sys.argv[1:]]))
