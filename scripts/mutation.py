"""`make mutation`: mutation testing of the safety-critical modules with mutmut.

What is mutated and which tests guard it is configured in ``[tool.mutmut]`` in
pyproject.toml (only the lines those tests cover). Surviving mutants must be
killed by a test or listed, with the reason they cannot be told apart from the
original, in ``tests/mutation_equivalents.txt`` (``<mutant name>  <reason>``
per line). Prints progress, then one JSON object last::

    {"mutants": 412, "killed": 380, "survived": 32, "equivalent": 32, "unreviewed": [], "other": {}, "seconds": 301.2}

Exit status 1 when a survivor is not in the reviewed list (or a listed name no
longer survives, so the list stays honest). Other outcomes (mutmut's
"suspicious": the test run ended in an unexpected way) are shown in ``other``.
Not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EQUIVALENTS = REPO / "tests" / "mutation_equivalents.txt"
KILLED = {"killed", "caught by type check", "timeout"}


def reviewed() -> dict[str, str]:
    out = {}
    for line in EQUIVALENTS.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{EQUIVALENTS}: {name} has no reason")
        out[name] = reason.strip()
    return out


def main() -> int:
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    jobs = os.environ.get("MUTATION_JOBS", "2")
    if "--keep" not in sys.argv:
        shutil.rmtree(REPO / "mutants", ignore_errors=True)  # a fresh run: no stale results
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts mutants/ first itself
    run = subprocess.run([mutmut, "run", "--max-children", jobs], cwd=REPO, env=env, check=False)
    seconds = time.monotonic() - t0
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    status: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    counts = Counter(status.values())
    survived = sorted(n for n, s in status.items() if s == "survived")
    equivalents = reviewed()
    unreviewed = [n for n in survived if n not in equivalents]
    stale = sorted(n for n in equivalents if status.get(n) != "survived")
    for name in unreviewed:
        print(f"survivor not reviewed: {name} (see: mutmut show {name})", file=sys.stderr)
    for name in stale:
        print(f"listed as equivalent but not a survivor of this run: {name}", file=sys.stderr)
    killed = sum(counts[s] for s in KILLED)
    other = {s: c for s, c in counts.items() if s not in KILLED | {"survived"}}
    result = {
        "mutants": len(status),
        "killed": killed,
        "survived": len(survived),
        "equivalent": len(survived) - len(unreviewed),
        "unreviewed": unreviewed,
        "other": other,
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result))
    ok = run.returncode == 0 and not unreviewed and not stale and bool(status)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
