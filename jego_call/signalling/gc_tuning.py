"""The `jego serve` process's garbage collector: pauses measured, long-lived objects frozen.

    watch = GcWatch(); watch.install()             # gc.callbacks: pause time per generation
    metrics.register(Live(watch.collect))          # jego_gc_* series at /metrics
    tuner = GcTuner(cfg.signalling); tuner.start() # after the site listens; tuner.stop() at the end

Why (docs/benchmarks.md "Cluster: idle clients and reconnect storms"): 10,000 idle WebSocket
sessions are about a million objects the cyclic collector tracks, and CPython's full collection
walks all of them (0.6-2.5 s with the event loop stopped, every few seconds). Each heartbeat
also leaves about 11 objects per connection (the next read's coroutine and future, the next
heartbeat's timer) that live ~5 s, long enough to reach the old generations. Nearly all of it is
freed by reference counting, never by the collector. `GcTuner` moves whatever is alive out of the
collector's view every `[signalling] gc_freeze_s` (`gc.freeze()`, O(1)), so each collection walks
only about that long's allocations; frozen objects freed by reference counting leave the frozen
set as usual. What the freeze cannot do is free a *cycle* among frozen objects: every `gc_full_s`
the tuner unfreezes everything and runs one full collection for those (one pause of the old
length, rarely). Only `jego serve` does this: the settings are process-wide, so tests
that build apps in-process keep Python's defaults.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric

from ..config import SignallingConfig
from ..metrics import counter, gauge

log = logging.getLogger("jego.gc")


class GcWatch:
    """Pause times of the cyclic collector, per generation, from `gc.callbacks`."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._t0
        g = int(info.get("generation", 2))
        self.count[g] += 1
        self.total_s[g] += took
        self.max_s[g] = max(self.max_s[g], took)
        self.collected[g] += int(info.get("collected", 0))

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def collect(self) -> Iterator[Metric]:
        """The jego_gc_* series (a `Live` collector's function, jego_call/metrics.py)."""
        gens = [str(g) for g in range(3)]
        yield counter("jego_gc_collections", "Cyclic garbage collections, by generation", ["generation"],
                      (([g], float(self.count[i])) for i, g in enumerate(gens)))
        yield counter("jego_gc_pause_seconds", "Time the event loop stood still in collections, by generation",
                      ["generation"], (([g], self.total_s[i]) for i, g in enumerate(gens)))
        yield gauge("jego_gc_pause_max_seconds", "The longest collection so far, by generation", ["generation"],
                    (([g], self.max_s[i]) for i, g in enumerate(gens)))
        yield gauge("jego_gc_frozen_objects", "Objects moved out of the collector's view (gc.freeze)",
                    values=[([], float(gc.get_freeze_count()))])
        yield gauge("jego_gc_threshold", "The collector's thresholds (gc.get_threshold), by generation",
                    ["generation"], (([g], float(v)) for g, v in zip(gens, gc.get_threshold(), strict=True)))


class GcTuner:
    """Applies `[signalling] gc_*`: thresholds, a freeze after start-up and every `gc_freeze_s`,
    a full collection every `gc_full_s`. Nothing at all with `gc_freeze_s = 0` and no threshold."""

    def __init__(self, cfg: SignallingConfig) -> None:
        self.freeze_s = cfg.gc_freeze_s
        self.full_s = cfg.gc_full_s
        self.threshold = tuple(cfg.gc_threshold)
        self.freezes = 0
        self.full_collections = 0
        self._task: asyncio.Task[None] | None = None
        self._last_full = time.monotonic()

    def apply_threshold(self) -> None:
        if self.threshold:
            gc.set_threshold(*self.threshold)

    def freeze(self) -> None:
        """Collect the youngest generation, then freeze everything that is left (O(1)). Called
        every `gc_freeze_s`, so collections only ever walk about that long's allocations."""
        gc.collect(0)
        gc.freeze()
        self.freezes += 1

    def full(self) -> int:
        """Unfreeze, collect everything (one long pause), freeze again; the objects freed."""
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.full_collections += 1
        self._last_full = time.monotonic()
        return freed

    def start(self) -> None:
        """After start-up (the site listens): thresholds, the first freeze, the periodic task."""
        self.apply_threshold()
        if self.freeze_s <= 0:
            return
        gc.collect()  # start-up's garbage goes first: what is frozen now is what lives
        self.freeze()
        log.info("gc: %d start-up objects frozen; refreezing every %g s, full collection every %s",
                 gc.get_freeze_count(), self.freeze_s, f"{self.full_s:g} s" if self.full_s > 0 else "never")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.freeze_s)
            if self.full_s > 0 and time.monotonic() - self._last_full >= self.full_s:
                t0 = time.perf_counter()
                freed = self.full()
                log.info("gc: full collection freed %d objects in %.0f ms", freed, (time.perf_counter() - t0) * 1000)
            else:
                self.freeze()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

