"""Host CPU and memory under Triton's names (``nv_cpu_*``), read from /proc at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

_PROC = Path("/proc")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None where /proc/stat is absent."""
    try:
        fields = (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _memory() -> tuple[int, int] | None:
    """(total, used) bytes: MemTotal and MemTotal - MemAvailable, as Triton reports them."""
    try:
        info = dict(
            line.split(":", 1) for line in (_PROC / "meminfo").read_text().splitlines() if ":" in line
        )
        total = int(info["MemTotal"].split()[0]) * 1024
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return total, total - available


class SystemCollector:
    """``nv_cpu_utilization`` (0-1 over the interval since the previous scrape) and memory bytes."""

    def __init__(self) -> None:
        self._last = _cpu_times()

    def collect(self) -> Iterator[Metric]:
        now = _cpu_times()
        if now is not None and self._last is not None:
            busy, total = now[0] - self._last[0], now[1] - self._last[1]
            utilization = busy / total if total > 0 else 0.0
            yield GaugeMetricFamily(
                "nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", value=utilization
            )
            self._last = now
        memory = _memory()
        if memory is not None:
            yield GaugeMetricFamily(
                "nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=memory[0]
            )
            yield GaugeMetricFamily(
                "nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=memory[1]
            )
