"""Filling a (small, test-mounted) file system: the agent's full-disk faults."""

from __future__ import annotations

import os
from pathlib import Path


def fill_completely(directory: Path) -> Path:
    """Write zeros into ``directory`` until the file system refuses another byte; return the filler file."""
    filler = directory / "filler-all"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
