"""The `--workers` delivery workers' own process figures, for the parent's /metrics.

`process_*` describe the process serving /metrics: with `--workers`, the parent, while the
workers (processes of their own, where every notification is rendered and sent) showed in no
metric: one growing towards its container's memory limit was seen only by the OOM killer.
Read from Linux's /proc at each scrape, like `process_*`; nothing on a system without it.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROC = "/proc"
# (worker index, pid) of each running worker
Children = Callable[[], Sequence[tuple[int, int]]]


def _none() -> Sequence[tuple[int, int]]:
    return ()


class WorkerProcesses(Collector):
    """`relay_delivery_worker_*{worker="N"}` of each running worker, read when scraped."""

    def __init__(self) -> None:
        self.children: Children = _none  # set by relay serve --workers once its pool exists
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = resource.getpagesize()

    def collect(self) -> Iterator[Metric]:
        memory = GaugeMetricFamily(
            "relay_delivery_worker_resident_memory_bytes",
            "Resident memory of each --workers delivery worker.",
            labels=["worker"],
        )
        fds = GaugeMetricFamily(
            "relay_delivery_worker_open_fds",
            "File descriptors open in each --workers delivery worker.",
            labels=["worker"],
        )
        cpu = CounterMetricFamily(
            "relay_delivery_worker_cpu_seconds_total",
            "CPU time, user and system, of each --workers delivery worker since it started.",
            labels=["worker"],
        )
        for index, pid in self.children():
            read = self._read(pid)
            if read is None:  # gone between the pool's list and here: its successor shows next
                continue
            label = [str(index)]
            memory.add_metric(label, read[0])
            fds.add_metric(label, read[1])
            cpu.add_metric(label, read[2])
        yield from (memory, fds, cpu)

    def _read(self, pid: int) -> tuple[float, float, float] | None:
        """(resident bytes, open fds, CPU seconds) of one process, None if it is gone."""
        try:
            with open(f"{PROC}/{pid}/stat", "rb") as f:
                stat = f.read()
            open_fds = len(os.listdir(f"{PROC}/{pid}/fd"))
        except OSError:  # exited, or no /proc here
            return None
        # after the command name, which may hold spaces and parentheses: state is field 3
        fields = stat[stat.rindex(b")") + 2 :].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
        return int(fields[21]) * self._page, open_fds, cpu_s  # rss in pages
