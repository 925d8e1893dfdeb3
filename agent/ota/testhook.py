"""Test-only hook: stop the agent dead at a named point so a test can SIGKILL it there.

Set ``EDGEFLEET_TEST_PAUSE_AT`` to a state name (``VERIFYING``) or to
``DOWNLOADING.half`` (half the bundle written). When the agent reaches that
point it writes ``<data_dir>/paused`` with the name and then blocks forever.
Unset (always, in production) this is one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "EDGEFLEET_TEST_PAUSE_AT"


def pause_at(point: str, data_dir: Path) -> None:
    if os.environ.get(ENV) != point:
        return
    (data_dir / "paused").write_text(point)
    while True:  # pragma: no cover - the test kills the process here
        time.sleep(3600)
