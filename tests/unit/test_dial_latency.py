"""`jego dial --latency`'s arithmetic on a virtual clock: clicks leave on frame slots, the
"network" hands frames back a known delay later (in whole frames, bursts allowed), and the
round trip comes out to the sample; the JSON takes the echo's own delay off and halves."""

from __future__ import annotations

import av
import numpy as np
import pytest

from jego_call.cli.dial import ClickListener, ClickSource, latency_report

RATE = 48000
FRAME = 960


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def frame(samples: np.ndarray, n: int) -> av.AudioFrame:
    f = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    f.sample_rate, f.pts = RATE, n * FRAME
    return f


@pytest.mark.parametrize(("delay_frames", "lost"), [(7, set()), (12, {3})])
def test_round_trips_on_a_virtual_clock(delay_frames: int, lost: set[int]) -> None:
    clock = Clock()
    src, rx = ClickSource(RATE, clock=clock), ClickListener(clock=clock)
    sent: list[np.ndarray] = []
    for n in range(250):                     # 5 s: clicks at 0.5, 1.5, 2.5, 3.5, 4.5 s
        clock.t = 100.0 + n * 0.02
        sent.append(src._samples(n))
        k = n - delay_frames
        if k >= 0:                           # the echo of frame k arrives now
            out = np.zeros(FRAME, dtype=np.int16) if any(abs(k * FRAME - (24000 + i * 48000)) < FRAME
                                                          for i in lost) else sent[k] // 2
            rx.handle(frame(out, k))
    assert src.sent == pytest.approx([100.5, 101.5, 102.5, 103.5, 104.5])
    trips = rx.round_trips(src.sent)
    for i, t in enumerate(trips):
        if i in lost:
            assert t is None
        else:
            assert t is not None and t == pytest.approx(delay_frames * 0.02, abs=1 / RATE)
    found = [t for t in trips if t is not None]
    assert len(found) == 5 - len(lost)
    rep = latency_report(src.sent, rx, echo_delay_ms=50.0)
    rt = 1000 * delay_frames * 0.02
    assert rep["round_trip_ms"] == pytest.approx(rt, abs=0.1)
    assert rep["one_way_ms"] == pytest.approx((rt - 50.0) / 2, abs=0.1)
    assert rep["clicks_sent"] == 5 and rep["clicks_found"] == len(found)


def test_no_echo_no_figure() -> None:
    clock = Clock()
    src, rx = ClickSource(RATE, clock=clock), ClickListener(clock=clock)
    for n in range(100):
        clock.t = 100.0 + n * 0.02
        src._samples(n)
        rx.handle(frame(np.zeros(FRAME, dtype=np.int16), n))
    rep = latency_report(src.sent, rx, echo_delay_ms=50.0)
    assert rep["clicks_sent"] == 2 and rep["clicks_found"] == 0
    assert rep["round_trip_ms"] is None and rep["one_way_ms"] is None
