"""Test-only hook: stop the agent dead at a named point so a test can SIGKILL it there.

Set ``EDGEFLEET_TEST_PAUSE_AT`` to a state name (``VERIFYING``) or to
``DOWNLOADING.half`` (half the bundle written), optionally with ``@<version>``
to pause only while installing that model version (``VERIFYING@2``). When the agent reaches that
point it writes ``<data_dir>/paused`` with the name and then blocks forever.
Unset (always, in production) this is one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "EDGEFLEET_TEST_PAUSE_AT"


def pause_at(point: str, data_dir: Path, version: int | None = None) -> None:
    want = os.environ.get(ENV)
    if want is None or want not in (point, f"{point}@{version}"):
        return
    (data_dir / "paused").write_text(point)
    while True:  # pragma: no cover - the test kills the process here
        time.sleep(3600)
