"""Latency through the bridge by clicks (issue 15), shared by tests and scripts/bench_latency.py,
scripts/bench_soak.py.

The caller is a lean `WebRtcLeg` (real ICE, DTLS, SRTP, Opus) whose `ClickPort` sends a click
every `period_s` and keeps every received frame: slot n of both is the instant t0 + n * 20 ms
of the leg's media clock, so the round trip of each click is found in `ClickPort.received()`
on the sending timeline (`analysis.click_delays`). The simulated carrier logs its own media
clock's t0 (CLOCK_MONOTONIC, like ours) and records slot by slot, so its recording lines up
with our sends too: app -> phone is found there, phone -> app is the round trip minus it (the
carrier's echo sends the frame it records in the same slot).

`GatedLeg` lets a benchmark play the network on the caller's send path: `gate.hold()` keeps
datagrams and `gate.release()` sends them together (a stall), `gate.drop()` loses them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.net.webrtc import WebRtcLeg
from jego_call.media import analysis
from tests.helpers import wait_for

RATE = 8000
FRAME = 160
Addr = tuple[str, int]
Pcm = npt.NDArray[np.int16]
T0_RE = re.compile(r"carrier RTP port (\d+): media clock t0 ([0-9.]+) \(monotonic\)")


class ClickPort:
    """An AudioPort: a click every `period_s` seconds from `first_s` on (slot-exact), and every
    received frame kept (up to `max_s` seconds; later ones are counted only)."""

    def __init__(self, period_s: float = 1.0, first_s: float = 1.0, max_s: float = 120.0,
                 peak_dbfs: float = analysis.CLICK_DBFS) -> None:
        self.period = int(round(period_s * RATE))
        self.first = int(round(first_s * RATE))
        self.click = np.asarray(np.round(analysis.click(RATE, peak_dbfs) * 32767), dtype=np.int16)
        self.rx = np.zeros(int(max_s * RATE) + FRAME, dtype=np.int16)
        self.slot = 0
        self.live = 0
        self.live_at: list[tuple[float, int]] = []   # (monotonic, live frames so far), by mark()
        # per slot, the ms its received frame waited in the leg's receive buffer (NaN: none of its
        # own played), from `hold_of` (one_call sets it to the leg's RtpSession.last_hold)
        self.holds = np.full(self.rx.size // FRAME + 1, np.nan, dtype=np.float32)
        self.hold_of: Callable[[], float | None] | None = None

    def click_starts(self, upto_s: float | None = None) -> list[int]:
        """Sample indices (on the sending timeline) of the clicks sent so far."""
        end = self.slot * FRAME if upto_s is None else int(upto_s * RATE)
        return list(range(self.first, max(self.first, end - self.click.size + 1), self.period))

    def exchange(self, rx: Pcm, live: bool) -> Pcm:
        k = self.slot
        self.slot += 1
        a = k * FRAME
        if a + FRAME <= self.rx.size:
            self.rx[a: a + FRAME] = rx[:FRAME]
        if live:
            self.live += 1
        if self.hold_of is not None and k < self.holds.size:
            hold = self.hold_of()
            if hold is not None:
                self.holds[k] = 1000.0 * hold
        tx = np.zeros(FRAME, dtype=np.int16)
        # the clicks that overlap samples [a, a + FRAME)
        i = max(0, (a - self.first - self.click.size) // self.period)
        while True:
            s = self.first + i * self.period
            if s >= a + FRAME:
                break
            lo, hi = max(s, a), min(s + self.click.size, a + FRAME)
            if lo < hi:
                tx[lo - a: hi - a] = self.click[lo - s: hi - s]
            i += 1
        return tx

    def received(self) -> Pcm:
        return self.rx[: min(self.rx.size, self.slot * FRAME)]


class Gate:
    """The caller's network: pass, drop or hold (then release) datagrams."""

    def __init__(self) -> None:
        self.mode = "pass"
        self.held: list[tuple[bytes, Addr]] = []
        self.dropped = 0
        self.inner: Callable[[bytes, Addr], None] | None = None

    def send(self, data: bytes, addr: Addr) -> None:
        if self.mode == "drop":
            self.dropped += 1
        elif self.mode == "hold":
            self.held.append((data, addr))
        elif self.inner is not None:
            self.inner(data, addr)

    def drop(self) -> None:
        self.mode = "drop"

    def hold(self) -> None:
        self.mode = "hold"

    def release(self) -> None:
        self.mode = "pass"
        held, self.held = self.held, []
        if self.inner is not None:
            for data, addr in held:
                self.inner(data, addr)


class GatedLeg(WebRtcLeg):
    """A WebRtcLeg whose sent datagrams go through `self.gate`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = Gate()

    def _pick_pair(self) -> None:
        super()._pick_pair()
        if self._sendto is not None:
            self.gate.inner = self._sendto
            self._sendto = self.gate.send


def carrier_t0s(log_text: str) -> list[tuple[int, float]]:
    """(RTP port, media clock t0) of every carrier stream the log names, in order."""
    return [(int(m.group(1)), float(m.group(2))) for m in T0_RE.finditer(log_text)]


def wait_t0(read_log: Callable[[], str], count: int, timeout: float = 10.0) -> float:
    """The t0 of the `count`-th carrier stream (1-based) once its line is logged."""
    def logged() -> float | None:
        t0s = carrier_t0s(read_log())
        return t0s[count - 1][1] if len(t0s) >= count else None

    return wait_for(logged, timeout, "the carrier's media clock t0 in its log (log level INFO?)", interval=0.05)


def one_way(recording: npt.ArrayLike, rec_t0: float, send_t0: float, starts: list[int],
            max_delay_s: float = 0.5) -> list[float | None]:
    """Each click's delay from our send (slot timeline from `send_t0`) to the carrier's
    recording (its slots from `rec_t0`)."""
    shift = int(round((send_t0 - rec_t0) * RATE))
    return analysis.click_delays(recording, RATE, [s + shift for s in starts], max_delay_s=max_delay_s)


def hold_at(holds: npt.NDArray[np.float32], sample: int) -> float | None:
    """The receive-buffer hold (ms) of the frame holding `sample` (or the next one with its own
    packet), from ClickPort.holds or a carrier `.hold` file; None when neither has one."""
    n = sample // FRAME
    for k in (n, n + 1):
        if 0 <= k < holds.size and not np.isnan(holds[k]):
            return float(holds[k])
    return None


def wav_8k(path: str | Path) -> npt.NDArray[np.float64]:
    x, rate = analysis.read_wav(path)
    return x if rate == RATE else analysis.resample(x, rate, RATE)
