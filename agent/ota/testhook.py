"""Test-only checkpoint: stop the agent dead at a named OTA point so a test can SIGKILL it there.

Set ``EDGEFLEET_TEST_PAUSE_AT`` to a state name (``VERIFYING``) or to
``DOWNLOADING.half`` (half the bundle written), optionally with ``@<version>``
to pause only while installing that model version (``VERIFYING@2``). The
daemon installs the hook as the updater's ``checkpoint`` only when the variable
is set, and says so loudly at start. At that point the agent logs that it
pauses, writes ``<data_dir>/paused`` with the name and then blocks forever.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.ota.updater import Checkpoint

ENV = "EDGEFLEET_TEST_PAUSE_AT"
log = logging.getLogger(__name__)


def from_env(data_dir: Path, environ: dict[str, str] | None = None) -> Checkpoint | None:
    """The pause hook when ``EDGEFLEET_TEST_PAUSE_AT`` is set, else None (always, in production)."""
    want = (os.environ if environ is None else environ).get(ENV)
    if not want:
        return None
    log.warning(
        "test pause hook active: %s=%s, the agent will stop at %s and wait to be killed (never set this in production)",
        ENV,
        want,
        want,
    )

    def pause_at(point: str, version: int | None) -> None:
        if want not in (point, f"{point}@{version}"):
            return
        log.warning("test pause hook: pausing at %s (version %s) until killed (%s=%s)", point, version, ENV, want)
        (data_dir / "paused").write_text(point)
        while True:  # pragma: no cover - the test kills the process here
            time.sleep(3600)

    return pause_at
