"""CPU time of a server process from ``/proc`` (Linux): the whole process tree, and its main thread alone.

The main thread of ``python -m server`` and of ``bench.naive`` runs uvicorn's event loop (HTTP parsing,
routing, the upload, logging, metrics); the other threads do the codec, inference and thread-pool work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(stat: Path) -> int:
    """utime + stime of one ``/proc/.../stat`` file (fields 14 and 15; the name may hold spaces)."""
    fields = stat.read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending += [int(child) for child in children.read_text().split()]
            except OSError:
                continue
    return found


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds of a process tree and of the top process's main thread."""

    total_s: float
    main_thread_s: float

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.total_s - other.total_s, self.main_thread_s - other.main_thread_s)


def cpu_sample(pid: int) -> CpuSample:
    """CPU seconds used so far by ``pid``'s tree and by its main thread (thread id == pid)."""
    total = 0
    for member in process_tree(pid):
        try:
            total += _cpu_ticks(Path(f"/proc/{member}/stat"))
        except (OSError, IndexError, ValueError):
            continue  # exited between the listing and the read
    main = _cpu_ticks(Path(f"/proc/{pid}/task/{pid}/stat"))
    return CpuSample(total / TICKS_PER_S, main / TICKS_PER_S)
