#!/usr/bin/env python
"""Benchmarks: ``python scripts/bench.py NAME`` prints one JSON object as its last line.

Each benchmark lives in ``scripts/benches/<name>.py`` and exposes
``run() -> dict``. Progress goes to stderr; the JSON line to stdout. Ratios are
measured against a baseline in the same run, since this machine is shared.
``all`` runs every benchmark and prints one merged object.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def available() -> list[str]:
    import scripts.benches as benches

    return sorted(m.name for m in pkgutil.iter_modules(benches.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = available()
    if len(argv) != 1 or argv[0] not in [*names, "all"]:
        print(f"usage: bench.py {{{'|'.join([*names, 'all'])}}}", file=sys.stderr)
        return 2
    result: dict[str, object] = {}
    for name in names if argv[0] == "all" else argv:
        print(f"== benchmark {name}", file=sys.stderr)
        result.update(importlib.import_module(f"scripts.benches.{name}").run())
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
