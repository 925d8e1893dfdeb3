"""Agent logging: plain lines, or JSON lines; no timestamp of our own when journald adds one.

systemd sets ``JOURNAL_STREAM=<device>:<inode>`` for a service whose stderr is the
journal; when it matches our stderr, journald records the time (and the level,
as priority prefixes would), so a timestamp in the line would only repeat it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import IO, Any

FORMATS = ("text", "json")


def under_journald(stream: IO[Any], env: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd announced in ``JOURNAL_STREAM``."""
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, device_id, message, and exc when there is one."""

    def __init__(self, device_id: str, with_time: bool = True) -> None:
        super().__init__()
        self.device_id = device_id
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {}
        if self.with_time:
            out["ts"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        out.update(level=record.levelname, logger=record.name, device_id=self.device_id, message=record.getMessage())
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def formatter(device_id: str, fmt: str, journald: bool) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(device_id, with_time=not journald)
    stamp = "" if journald else "%(asctime)s "
    return logging.Formatter(f"{stamp}%(levelname)s [{device_id}] %(name)s: %(message)s")


def setup(
    level: str, device_id: str, fmt: str = "text", stream: IO[Any] | None = None, env: Mapping[str, str] | None = None
) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(device_id, fmt, under_journald(stream, os.environ if env is None else env)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
