"""The adaptive playout delay of the bridge's app -> phone path (bridge.rtp.session.JitterBuffer
adaptive=True inside an RtpSession, issue 15), in virtual time: a stall and its burst raise the
delay, which comes back to its floor within 2 s; a fixed buffer keeps the extra delay for good;
the ceiling drops and counts what is later than it; a jittery path gets a deeper target."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bridge.rtp import g711
from bridge.rtp.media import MediaFormat, RtpSession

ADDR = ("127.0.0.1", 9)
FRAME_S = 0.020
IDS = 120  # frames are numbered modulo IDS by a sample value that survives mu-law exactly
VALUES = [int(v) for v in g711.decoder_for("PCMU")(bytes(range(0x7F - IDS, 0x7F)))]  # not 0x7F: silence
ID_OF = {v: i for i, v in enumerate(VALUES)}


class Clicks:
    """AudioPort: sends frames numbered (modulo IDS) by their sample value, records what plays."""

    def __init__(self) -> None:
        self.n = 0
        self.heard: list[tuple[float, int]] = []
        self.now = 0.0

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray:
        if live and int(rx[0]) in ID_OF and (rx == rx[0]).all():
            self.heard.append((self.now, ID_OF[int(rx[0])]))
        frame = np.full(160, VALUES[self.n % IDS], dtype=np.int16)
        self.n += 1
        return frame


def run(adaptive: bool, schedule: list[float], capacity: int = 16,
        prefetch: int = 3) -> tuple[list[tuple[float, float]], RtpSession]:
    """Packets sent every 20 ms, delivered at `schedule[i]` seconds after they were sent (None:
    lost); returns (receive time, playout delay in s) per played frame, and the receiver."""
    fmt = MediaFormat(codec="PCMU", payload_type=0, telephone_event_pt=None, remote=ADDR)
    src, dst = Clicks(), Clicks()
    tx = RtpSession(fmt, src, rtcp=False)
    rx = RtpSession(fmt, dst, rtcp=False, jitter_adaptive=adaptive, jitter_capacity=capacity,
                    jitter_prefetch=prefetch)
    t0 = 100.0
    tx.start(t0)
    rx.start(t0 + 0.005)
    in_flight: list[tuple[float, bytes]] = []
    sent_at: dict[int, list[float]] = {}
    delays: list[tuple[float, float]] = []
    steps = len(schedule)
    for i in range(steps + 100):
        now = t0 + i * FRAME_S
        if i < steps:
            src.now = now
            tx.tick(now)
            for data, _a, _v in tx.out:
                sent_at.setdefault((src.n - 1) % IDS, []).append(now)
                in_flight.append((now + schedule[i], data))
            tx.out.clear()
        at = now + 0.005
        for due, data in sorted(in_flight):
            if due <= at:
                rx.receive(data, ADDR, due)
        in_flight = [(d, x) for d, x in in_flight if d > at]
        dst.now = at
        before = len(dst.heard)
        rx.tick(at)
        rx.out.clear()
        if len(dst.heard) > before:
            played_at, frame_id = dst.heard[-1]
            sends = [t for t in sent_at.get(frame_id, []) if t <= played_at]
            if sends:
                delays.append((played_at - t0, played_at - max(sends)))
    return delays, rx


def stall(seconds: float, at_s: float = 3.0, total_s: float = 10.0) -> list[float]:
    """Every packet takes 5 ms, except those sent during a `seconds` stall starting at `at_s`:
    they all arrive together when it ends (a Wi-Fi hiccup)."""
    sched = []
    for i in range(int(total_s / FRAME_S)):
        t = i * FRAME_S
        sched.append(at_s + seconds - t + 0.005 if at_s <= t < at_s + seconds else 0.005)
    return sched


def delay_at(delays: list[tuple[float, float]], t: float) -> float:
    """The median playout delay of the frames played within 0.2 s after `t`."""
    near = [d for when, d in delays if t <= when < t + 0.2]
    assert near, f"nothing played around {t} s"
    return float(np.median(near))


def test_after_a_stall_the_delay_returns_to_its_floor_within_2_s() -> None:
    delays, rx = run(True, stall(0.3))
    floor = delay_at(delays, 2.0)
    peak = max(d for when, d in delays if 3.0 <= when < 4.0)
    back = delay_at(delays, 3.3 + 2.0)
    print(f"adaptive: floor {floor * 1000:.0f} ms, peak {peak * 1000:.0f} ms, 2 s after the burst {back * 1000:.0f} ms")
    assert peak > floor + 0.1  # the burst did raise it
    assert back <= floor + 0.060
    assert rx.playout.jitter.stats().latency_dropped > 0
    assert delay_at(delays, 9.0) <= floor + 0.060  # and it stays down


def test_a_fixed_buffer_keeps_the_burst_delay() -> None:
    """What the adaptive buffer is for (aiortc issue #543): without it the delay stays up."""
    delays, _ = run(False, stall(0.3))
    floor = delay_at(delays, 2.0)
    assert delay_at(delays, 9.0) > floor + 0.2


def test_the_ceiling_drops_and_counts_what_is_later_than_it() -> None:
    delays, rx = run(True, stall(1.0), capacity=16)
    st = rx.playout.jitter.stats()
    assert st.overflow_dropped + st.late > 0
    assert max(d for _, d in delays) <= 16 * FRAME_S + 0.1  # never more than the ceiling
    assert delay_at(delays, 4.0 + 2.0) <= delay_at(delays, 2.0) + 0.060


@pytest.mark.parametrize("jitter_ms", [0, 40])
def test_the_target_follows_the_measured_jitter(jitter_ms: int) -> None:
    rng = random.Random(7)
    sched = [0.005 + rng.uniform(0, 2 * jitter_ms / 1000) for _ in range(400)]
    _, rx = run(True, sched)
    jb = rx.playout.jitter
    if jitter_ms:
        assert jb.target > jb.prefetch
    else:
        assert jb.target == jb.prefetch
