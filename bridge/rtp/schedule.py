"""Deadlines of many legs on one clock: which legs are due at ``now``, and when the next one is.

The asyncio engine (bridge/net/media.py) keeps one :class:`Scheduler` and one timer: on each
wake it calls :meth:`Scheduler.pop_due`, ticks those legs, puts each back with
:meth:`Scheduler.set` at its own next deadline, and re-arms the timer at
:meth:`Scheduler.next_deadline`. :func:`align` puts a new leg's first deadline on the shared
grid, so legs that run at the same period are all served by the same wake-up.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def align(now: float, origin: float, period: float) -> float:
    """The first grid point ``origin + k * period`` at or after ``now``."""
    if now <= origin:
        return origin
    return origin + math.ceil((now - origin) / period - 1e-9) * period


class Scheduler(Generic[K]):
    """Keys with deadlines (a heap with lazy deletion). ``tolerance``: a key due within this
    many seconds after ``now`` counts as due (timers may wake a little early)."""

    def __init__(self, tolerance: float = 0.001) -> None:
        self.tolerance = tolerance
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, tuple[float, int]] = {}
        self._counter = itertools.count()

    def set(self, key: K, due: float | None) -> None:
        """(Re)schedule ``key`` at ``due``; None removes it."""
        if due is None:
            self._due.pop(key, None)
            return
        n = next(self._counter)
        self._due[key] = (due, n)
        heapq.heappush(self._heap, (due, n, key))

    def remove(self, key: K) -> None:
        self._due.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)

    def deadline(self, key: K) -> float | None:
        entry = self._due.get(key)
        return entry[0] if entry else None

    def _prune(self) -> None:
        heap = self._heap
        while heap and self._due.get(heap[0][2]) != (heap[0][0], heap[0][1]):
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when nothing is scheduled."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key due at ``now`` (earliest first)."""
        out: list[K] = []
        limit = now + self.tolerance
        heap = self._heap
        while True:
            self._prune()
            if not heap or heap[0][0] > limit:
                return out
            _, _, key = heapq.heappop(heap)
            del self._due[key]
            out.append(key)
