"""System gauges from psutil: CPU, memory, disk, load, and temperature where sensors exist.

Gauges are sampled at window close and are not summed across devices.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SystemMetrics:
    def __init__(self, disk_path: Path) -> None:
        import psutil  # here, not at the top: an agent with system_metrics = false never loads it

        self._ps = psutil
        self.disk_path = disk_path
        self._proc = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)  # prime: the next call reports usage since now
        self._proc.cpu_percent(interval=None)

    def sample(self) -> dict[str, Any]:
        psutil = self._ps
        out: dict[str, Any] = {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "agent_cpu_percent": round(self._proc.cpu_percent(interval=None), 2),
            "mem_percent": psutil.virtual_memory().percent,
            "agent_rss_bytes": self._proc.memory_info().rss,
        }
        try:
            out["disk_percent"] = psutil.disk_usage(str(self.disk_path)).percent
        except OSError as exc:
            log.debug("disk usage unavailable: %s", exc)
        if hasattr(os, "getloadavg"):
            out["load1"] = round(os.getloadavg()[0], 2)
        temp = max_temperature()
        if temp is not None:
            out["temp_c"] = temp
        return out


def max_temperature() -> float | None:
    """Hottest current sensor reading in Celsius, or None where the hardware has no sensors."""
    import psutil

    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError) as exc:
        log.debug("temperature sensors unreadable: %s", exc)
        return None
    temps = [t.current for entries in sensors.values() for t in entries if t.current is not None and -50 < t.current < 200]
    return round(max(temps), 1) if temps else None
