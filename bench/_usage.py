"""What the benchmark's processes use, Linux /proc: CPU seconds of a server, of our children,
of the machine (the noise meter: `other_cores`), of each thread; resident memory."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _procs import Child, Children


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far: one server, our live processes, reaped children, the machine."""

    wall_s: float
    server_s: float | None
    ours_s: float  # this process and every live child
    reaped_s: float  # children already waited for (the load generator, once it ended)
    machine_s: float | None  # every process on the machine (Linux /proc/stat)

    def shares(self, before: CpuSample) -> dict[str, float]:
        """Cores kept busy between `before` and this sample: server, load generator, others."""
        wall = max(self.wall_s - before.wall_s, 1e-9)
        out = {"gen_cpu": (self.reaped_s - before.reaped_s) / wall}
        if self.server_s is not None and before.server_s is not None:
            out["server_cpu_s"] = self.server_s - before.server_s
            out["server_cpu"] = out["server_cpu_s"] / wall
        if self.machine_s is not None and before.machine_s is not None:
            ours = self.ours_s - before.ours_s + self.reaped_s - before.reaped_s
            out["other_cpu"] = max(self.machine_s - before.machine_s - ours, 0.0) / wall
        return out


def cpu_sample(children: Children, server: Child | None = None) -> CpuSample:
    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = groups_cpu_s({c.proc.pid for c in children.started if c.proc.poll() is None})
    return CpuSample(
        wall_s=time.monotonic(),
        server_s=server.cpu_s() if server is not None else None,
        ours_s=me.ru_utime + me.ru_stime + live,
        reaped_s=reaped.ru_utime + reaped.ru_stime,
        machine_s=_machine_busy_s(),
    )


def threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each thread of process `pid`, Linux /proc: "main"
    and "thread <id>" (Python 3.11 names no thread for the system); {} once it is gone."""
    out: dict[str, float] = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tid = int(stat.parent.name)
        name = "main" if tid == pid else f"thread {tid}"
        out[name] = sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return out


def groups_cpu_s(groups: set[int]) -> float:
    """CPU seconds of every process in these process groups (relay's worker processes too),
    with the children they have already waited for, as RUSAGE_CHILDREN counts them later."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in groups:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def other_cores(children: Children, before: CpuSample) -> float | None:
    """Cores other work on the machine kept busy since `before` (the noise meter). Take
    `before` before starting the children of the measurement and call this once they stopped."""
    return cpu_sample(children).shares(before).get("other_cpu")


def _machine_busy_s() -> float | None:
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident set size of a process (VmHWM: its peak so far), in MiB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
