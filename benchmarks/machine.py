"""How busy the machine was with work that is not the benchmark's own.

Benchmarks here share two cores with whatever else runs (a test suite, an
editor's checks).  `Foreign` measures, over a phase, the CPU that processes
outside the benchmark's own process tree used (system busy time from
/proc/stat minus the CPU of this process and its descendants, reaped ones
included), so that a report can say how quiet the machine was;
`wait_for_quiet` waits, up to a limit, for a quiet moment before starting.
Linux only; elsewhere both report nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "Foreign",
    "main_and_descendants_cpu",
    "system_busy_seconds",
    "tree_cpu_seconds",
    "wait_for_quiet",
]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(x) for x in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user and nice
    return (sum(values) - idle - guest) / _TICK


def _stat(pid: str) -> tuple[int, float, float] | None:
    """(parent pid, the process's own utime + stime, its reaped children's
    cutime + cstime), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / _TICK
    return int(fields[1]), own, (int(fields[13]) + int(fields[14])) / _TICK


def main_and_descendants_cpu(root: int) -> tuple[float, float]:
    """(CPU seconds of process `root` itself, of all its descendants): for a
    daemon with worker processes, its main process against its workers."""
    found = _stat(str(root))
    if found is None:
        return 0.0, 0.0
    return found[1], tree_cpu_seconds(root) - found[1]


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds of process `root` (default: this one) and all its descendants,
    including children they have reaped."""
    root = root or os.getpid()
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _stat(entry.name)) is not None:
            stats[int(entry.name)] = found
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1] + stats[pid][2]
        todo.extend(children.get(pid, ()))
    return total


class Foreign:
    """Context manager: CPU used by other processes while the block ran."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Foreign:
        self._t = time.perf_counter()
        self._busy = system_busy_seconds()
        self._own = tree_cpu_seconds()
        self._load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def __exit__(self, *exc: object) -> None:
        busy = system_busy_seconds()
        if busy is None or self._busy is None:
            return
        wall = time.perf_counter() - self._t
        own = tree_cpu_seconds() - self._own
        other = max(0.0, (busy - self._busy) - own)
        self.result = {
            "wall_s": round(wall, 2),
            "own_cpu_cores": round(own / wall, 2) if wall else 0.0,
            "other_cpu_cores": round(other / wall, 2) if wall else 0.0,
            "load_avg_1m_at_start": self._load,
        }


def wait_for_quiet(max_wait: float, threshold: float = 0.25, window: float = 5.0) -> dict[str, Any]:
    """Wait until other processes use under `threshold` cores over `window`
    seconds, or `max_wait` seconds have passed; what was seen."""
    start = time.perf_counter()
    seen = []
    while True:
        with Foreign() as f:
            time.sleep(window)
        cores = f.result.get("other_cpu_cores", 0.0)
        seen.append(cores)
        waited = time.perf_counter() - start
        if cores < threshold or waited >= max_wait:
            if cores >= threshold:
                print(f"the machine is still busy ({cores:.2f} cores used by other processes) "
                      f"after {waited:.0f} s; measuring anyway", file=sys.stderr, flush=True)  # fmt: skip
            return {
                "waited_s": round(waited, 1),
                "other_cpu_cores": cores,
                "quiet": cores < threshold,
            }
        if len(seen) == 1:
            print(f"other processes use {cores:.2f} cores; waiting up to {max_wait:.0f} s for a "
                  "quiet machine ...", file=sys.stderr, flush=True)  # fmt: skip
