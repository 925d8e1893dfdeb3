"""System gauges: read from /proc and /sys on Linux with psutil's formulas, psutil elsewhere."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.telemetry.system import (
    ProcReader,
    PsutilReader,
    SystemMetrics,
    busy_of_stat,
    max_temperature,
    mem_percent_of_meminfo,
)

pytestmark = pytest.mark.unit
linux = pytest.mark.skipif(not ProcReader.usable(), reason="/proc gauges are Linux's")

MEMINFO = (
    "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n"
    "Buffers:          10 kB\nCached:           40 kB\n"
)


def test_cpu_line_is_summed_as_psutil_does():
    # user nice system idle iowait irq softirq steal guest guest_nice (ticks)
    total, busy = busy_of_stat("cpu  100 10 50 800 20 5 5 10 0 0 0\n", 100.0)
    assert total == pytest.approx(10.0)  # the ten fields psutil names; an eleventh is not one of them
    assert busy == pytest.approx(10.0 - 8.0 - 0.2)


def test_a_cpu_line_without_its_fields_is_refused():
    with pytest.raises(ValueError, match="fields"):
        busy_of_stat("cpu  1 2\n", 100.0)


def test_memory_percent_uses_available_memory():
    assert mem_percent_of_meminfo(MEMINFO) == 75.0


def test_memory_percent_without_memavailable_counts_free_buffers_and_cache():
    text = MEMINFO.replace("MemAvailable:    250 kB\n", "")
    assert mem_percent_of_meminfo(text) == 85.0  # 1000 - (100 + 10 + 40)


def test_memory_percent_in_a_distorted_container_falls_back_to_free():
    assert mem_percent_of_meminfo(MEMINFO.replace("250 kB", "5000 kB")) == 90.0


def test_meminfo_without_a_total_is_refused():
    with pytest.raises(ValueError, match="MemTotal"):
        mem_percent_of_meminfo("MemFree: 1 kB\n")


def _sysfs(tmp_path: Path, files: dict[str, str]) -> ProcReader:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return ProcReader(hwmon=tmp_path / "hwmon", thermal=tmp_path / "thermal")


def test_temperatures_from_hwmon_skip_unreadable_entries(tmp_path):
    r = _sysfs(
        tmp_path,
        {
            "hwmon/hwmon0/temp1_input": "45500\n",
            "hwmon/hwmon0/temp2_input": "garbage\n",
            "hwmon/hwmon1/device/temp1_input": "61000\n",
            "thermal/thermal_zone0/temp": "99000\n",  # only read where hwmon has nothing
        },
    )
    assert sorted(r.temperatures()) == [45.5, 61.0]
    assert max_temperature(r) == 61.0


def test_temperatures_fall_back_to_thermal_zones(tmp_path):
    r = _sysfs(tmp_path, {"thermal/thermal_zone0/temp": "52000\n", "thermal/thermal_zone1/temp": "250000\n"})
    assert sorted(r.temperatures()) == [52.0, 250.0]
    assert max_temperature(r) == 52.0  # 250 °C is a broken sensor


def test_no_sensors_no_temperature(tmp_path):
    r = _sysfs(tmp_path, {})
    assert r.temperatures() == []
    assert max_temperature(r) is None


class _Fixed:
    """A reader with figures set by the test."""

    def __init__(self) -> None:
        self.times = (100.0, 40.0)
        self.temps = [40.0]

    def cpu_times(self) -> tuple[float, float]:
        return self.times

    def mem_percent(self) -> float:
        return 12.5

    def rss_bytes(self) -> int:
        return 4096

    def disk_percent(self, path: Path) -> float:
        raise OSError("no such mount")

    def temperatures(self) -> list[float]:
        return self.temps


def test_a_sample_reports_cpu_since_the_last_one():
    r = _Fixed()
    m = SystemMetrics(Path("/"), reader=r)
    r.times = (110.0, 42.5)
    s = m.sample()
    assert s["cpu_percent"] == 25.0
    assert s["mem_percent"] == 12.5 and s["agent_rss_bytes"] == 4096 and s["temp_c"] == 40.0
    assert "disk_percent" not in s  # unreadable: left out, the window still closes
    assert s["agent_cpu_percent"] >= 0.0
    r.times = (110.0, 42.5)
    assert m.sample()["cpu_percent"] == 0.0  # no time passed: nothing to divide


@linux
def test_proc_figures_agree_with_psutil(tmp_path):
    proc, ps = ProcReader(), PsutilReader()
    (t1, b1), (t2, b2) = proc.cpu_times(), ps.cpu_times()
    assert abs(t1 - t2) < 2.0 and abs(b1 - b2) < 2.0  # the same /proc/stat, read a moment apart
    assert abs(proc.mem_percent() - ps.mem_percent()) < 1.0
    assert abs(proc.rss_bytes() - ps.rss_bytes()) < 4 * 1024 * 1024
    assert abs(proc.disk_percent(tmp_path) - ps.disk_percent(tmp_path)) < 0.5
    got, want = max_temperature(proc), max_temperature(ps)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert abs(got - want) < 2.0


@linux
def test_agent_cpu_percent_counts_this_process():
    """The gauge is this process's CPU time over wall time: compared with the same ratio measured around it
    (on a loaded machine a busy loop gets well under a whole CPU, so no fixed floor)."""
    wall0, cpu0 = time.monotonic(), time.process_time()
    m = SystemMetrics(Path("/"))
    while time.process_time() - cpu0 < 0.2:  # busy for 0.2 s of CPU
        pass
    got = m.sample()["agent_cpu_percent"]
    wall1, cpu1 = time.monotonic(), time.process_time()
    around = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
    assert got > 0.0 and got == pytest.approx(around, rel=0.25), (got, around)
