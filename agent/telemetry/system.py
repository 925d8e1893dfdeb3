"""System gauges: CPU, memory, disk, load, and temperature where sensors exist.

Gauges are sampled at window close and are not summed across devices. Each
instance keeps its own previous CPU samples (psutil's ``cpu_percent`` keeps one per
process, which agents sharing a process would read from each other).

On Linux (every device the agent targets) the gauges are read from ``/proc`` and
``/sys`` directly, with psutil's formulas: the few files it reads are not worth
psutil's ~0.7 MB resident for the life of the agent. Elsewhere (a developer's
macOS) psutil reads them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)
PROC = Path("/proc")
HWMON = Path("/sys/class/hwmon")
THERMAL = Path("/sys/class/thermal")
TEMP_RANGE_C = (-50.0, 200.0)  # readings outside are broken sensors, not temperatures


class SystemSource(Protocol):
    """What telemetry asks for at window close: gauges by name (the simulator gives its hardware profile's)."""

    def sample(self) -> dict[str, Any]: ...


class _Reader(Protocol):
    """Where the raw figures come from: ``/proc`` on Linux, psutil elsewhere."""

    def cpu_times(self) -> tuple[float, float]: ...  # (total, busy) CPU seconds since boot, all CPUs
    def mem_percent(self) -> float: ...
    def rss_bytes(self) -> int: ...
    def disk_percent(self, path: Path) -> float: ...
    def temperatures(self) -> list[float]: ...


class SystemMetrics:
    def __init__(self, disk_path: Path, reader: _Reader | None = None) -> None:
        self._r = reader or (ProcReader() if ProcReader.usable() else PsutilReader())
        self.disk_path = disk_path
        self._cpu = self._r.cpu_times()  # prime: the next sample reports usage since now
        self._proc = (time.monotonic(), time.process_time())

    def _cpu_percent(self) -> float:
        (total0, busy0), (total1, busy1) = self._cpu, self._r.cpu_times()
        self._cpu = (total1, busy1)
        spent = total1 - total0
        return round(min(100.0, max(0.0, 100.0 * (busy1 - busy0) / spent)), 1) if spent > 0 else 0.0

    def _agent_cpu_percent(self) -> float:
        """This process's CPU time over the wall time since the last sample, in % of one CPU (psutil's
        ``Process.cpu_percent``: above 100 when several threads are busy at once)."""
        (wall0, cpu0), (wall1, cpu1) = self._proc, (time.monotonic(), time.process_time())
        self._proc = (wall1, cpu1)
        return round(100.0 * (cpu1 - cpu0) / (wall1 - wall0), 2) if wall1 > wall0 else 0.0

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cpu_percent": self._cpu_percent(),
            "agent_cpu_percent": self._agent_cpu_percent(),
            "mem_percent": self._r.mem_percent(),
            "agent_rss_bytes": self._r.rss_bytes(),
        }
        try:
            out["disk_percent"] = self._r.disk_percent(self.disk_path)
        except OSError as exc:
            log.debug("disk usage unavailable: %s", exc)
        if hasattr(os, "getloadavg"):
            out["load1"] = round(os.getloadavg()[0], 2)
        temp = max_temperature(self._r)
        if temp is not None:
            out["temp_c"] = temp
        return out


def max_temperature(reader: _Reader | None = None) -> float | None:
    """Hottest current sensor reading in Celsius, or None where the hardware has no sensors."""
    r = reader or (ProcReader() if ProcReader.usable() else PsutilReader())
    try:
        temps = [t for t in r.temperatures() if TEMP_RANGE_C[0] < t < TEMP_RANGE_C[1]]
    except (OSError, RuntimeError) as exc:
        log.debug("temperature sensors unreadable: %s", exc)
        return None
    return round(max(temps), 1) if temps else None


# -- Linux: /proc and /sys ------------------------------------------------------------


def busy_of_stat(line: str, ticks_per_s: float) -> tuple[float, float]:
    """(total, busy) seconds from ``/proc/stat``'s ``cpu`` line, as psutil sums them: every field
    it names (user .. guest_nice) in the total; idle and iowait are not busy."""
    fields = [float(x) / ticks_per_s for x in line.split()[1:11]]
    if len(fields) < 4:
        raise ValueError(f"/proc/stat cpu line has {len(fields)} fields, expected at least 4: {line[:80]!r}")
    total = sum(fields)
    return total, total - fields[3] - (fields[4] if len(fields) > 4 else 0.0)


def mem_percent_of_meminfo(text: str) -> float:
    """Used memory in % of the total, as psutil's ``virtual_memory().percent``: total minus MemAvailable
    (on kernels without it, or when it reads 0, free + buffers + page cache)."""
    kb: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if value:
            kb[name] = int(value[0])
    total = kb.get("MemTotal", 0)
    if total <= 0:
        raise ValueError("/proc/meminfo has no MemTotal")
    avail = kb.get("MemAvailable", 0)
    if avail <= 0:
        avail = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0) + kb.get("SReclaimable", 0)
    if avail > total:  # a container's distorted figures: psutil falls back to free
        avail = kb.get("MemFree", 0)
    return round(100.0 * (total - max(0, avail)) / total, 1)


class ProcReader:
    """The gauges from ``/proc`` and ``/sys`` (Linux)."""

    def __init__(self, proc: Path = PROC, hwmon: Path = HWMON, thermal: Path = THERMAL) -> None:
        self.proc, self.hwmon, self.thermal = proc, hwmon, thermal
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._page = os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def usable() -> bool:
        return (PROC / "stat").is_file() and (PROC / "self" / "statm").is_file()

    def cpu_times(self) -> tuple[float, float]:
        with open(self.proc / "stat") as f:
            return busy_of_stat(f.readline(), self._ticks)

    def mem_percent(self) -> float:
        return mem_percent_of_meminfo((self.proc / "meminfo").read_text())

    def rss_bytes(self) -> int:
        return int((self.proc / "self" / "statm").read_text().split()[1]) * self._page

    def disk_percent(self, path: Path) -> float:
        """Used space in % of what an unprivileged user may fill (psutil's ``disk_usage().percent``)."""
        st = os.statvfs(path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        total_user = used + st.f_bavail * st.f_frsize
        return round(100.0 * used / total_user, 1) if total_user > 0 else 0.0

    def temperatures(self) -> list[float]:
        """Every readable sensor in °C: hwmon's ``temp*_input``; thermal zones where there is no hwmon sensor."""
        paths = sorted({*self.hwmon.glob("hwmon*/temp*_input"), *self.hwmon.glob("hwmon*/device/temp*_input")})
        if not paths:
            paths = sorted(self.thermal.glob("thermal_zone*/temp"))
        out = []
        for p in paths:
            try:
                out.append(float(p.read_text()) / 1000.0)
            except (OSError, ValueError):  # sysfs entries that cannot be read now (a sensor asleep)
                continue
        return out


class PsutilReader:
    """The gauges from psutil (where there is no ``/proc``)."""

    def __init__(self) -> None:
        import psutil  # here: Linux agents never load it

        self._ps = psutil
        self._proc = psutil.Process(os.getpid())

    def cpu_times(self) -> tuple[float, float]:
        times = self._ps.cpu_times()
        total = float(sum(times))
        return total, total - float(times.idle) - float(getattr(times, "iowait", 0.0))

    def mem_percent(self) -> float:
        return float(self._ps.virtual_memory().percent)

    def rss_bytes(self) -> int:
        return int(self._proc.memory_info().rss)

    def disk_percent(self, path: Path) -> float:
        return float(self._ps.disk_usage(str(path)).percent)

    def temperatures(self) -> list[float]:
        read = getattr(self._ps, "sensors_temperatures", None)
        if read is None:
            return []
        return [t.current for entries in read().values() for t in entries if t.current is not None]
