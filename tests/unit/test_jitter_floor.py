"""The bridge's app leg playout floor (bridge.rtp.session.JitterBuffer adaptive with prefetch
APP_LEG_FLOOR = 1, issue 15), in virtual time: a clean path plays at the floor and comes back to
it after a late packet; after a stall's burst the NetEq-like drain takes the delay back to the
floor; loss runs are counted at playout, so a run raises the delay to cover the next one while an
outage longer than LOSS_RUN_MAX does not. On a calm path whose small jitter alone asks for 2
frames, the frame a late packet or a burst left is dropped after CALM_WINDOW slots of unused
slack; a jittery path (or one with a late packet every few seconds) keeps it, with no more gaps
than without that drop. Delays are of the simulated path, in whole frames."""

from __future__ import annotations

import random
import statistics

import pytest

from bridge.rtp.media import RtpSession
from bridge.rtp.packet import RtpPacket
from bridge.rtp.session import APP_LEG_FLOOR, JitterBuffer
from tests.unit.test_adaptive_jitter import FRAME_S, run, stall


def frames(delays: list[tuple[float, float]], start: float, end: float) -> list[int]:
    """The playout delays (whole frames beyond the 5 ms path) of what played in [start, end)."""
    return [round((d - 0.005) / FRAME_S) for t, d in delays if start <= t < end]


def test_a_clean_path_plays_at_the_floor_and_returns_to_it_after_a_late_packet() -> None:
    sched = [0.005] * 500
    sched[100] = 0.020  # one packet 15 ms late (still before the next): its slot is stretched
    delays, rx = run(True, sched, prefetch=APP_LEG_FLOOR)
    jb = rx.playout.jitter
    before = frames(delays, 0.5, 2.0)
    assert set(before) == {0}  # nothing waits beyond the frame being played
    assert jb.stats().stretched >= 1  # the late packet did raise it
    assert set(frames(delays, 6.0, 10.0)) == {0}  # and the drain took it back down
    assert jb.stats().latency_dropped >= 1 and jb.target == APP_LEG_FLOOR


def test_after_a_stall_the_drain_brings_the_delay_back_to_the_floor() -> None:
    delays, rx = run(True, stall(0.3), prefetch=APP_LEG_FLOOR)
    st = rx.playout.jitter.stats()
    assert max(frames(delays, 3.0, 4.0)) >= 10  # the burst: 15 frames at once
    # back within a frame of the floor 2 s after it (the burst came a little out of order, one
    # packet after its slot: a loss run of 1 at playout, which the delay covers for a while)
    assert statistics.median(frames(delays, 5.3, 5.5)) <= 1
    assert max(frames(delays, 8.0, 10.0)) <= 1
    assert st.latency_dropped >= 10


def _pkt(seq: int) -> RtpPacket:
    return RtpPacket(0, seq, 160 * seq, 7, b"\xff" * 160)


def _play(jb: JitterBuffer, seqs: list[int | None], t: float = 0.0) -> float:
    """One slot per entry: push that packet (None: lost) 20 ms apart, then pop the slot."""
    for s in seqs:
        t += FRAME_S
        if s is not None:
            jb.push(_pkt(s), t)
        jb.pop_packet(t)
    return t


def test_a_loss_run_raises_the_target_to_cover_it_an_outage_does_not() -> None:
    jb = JitterBuffer(prefetch=APP_LEG_FLOOR, adaptive=True)
    t = _play(jb, list(range(1, 40)))
    assert jb.target == APP_LEG_FLOOR
    t = _play(jb, [None, None, *range(42, 60)], t)  # 40, 41 lost: a run of 2 at playout
    assert jb.target == 3  # the run + 1: the packet after the next such run is in time
    jb2 = JitterBuffer(prefetch=APP_LEG_FLOOR, adaptive=True)
    t = _play(jb2, list(range(1, 40)))
    lost = JitterBuffer.LOSS_RUN_MAX + 3
    _play(jb2, [None] * lost + list(range(40 + lost, 60 + lost)), t)
    assert jb2.stats().lost == lost
    assert jb2.target == APP_LEG_FLOOR  # an outage: no cover would have helped


def _calm(seconds: float, seed: int = 1) -> list[float]:
    """A calm real path: every packet takes 4..5 ms, so RFC 3550 jitter is small but never 0
    (as on loopback), and the 3 x jitter + 1 frame term of the target alone says 2 frames."""
    rng = random.Random(seed)
    return [0.004 + rng.uniform(0, 0.001) for _ in range(int(seconds / FRAME_S))]


@pytest.mark.parametrize("disturbance", ["late packet", "stall"])
def test_a_calm_path_comes_back_to_the_floor_below_the_jitter_term(disturbance: str) -> None:
    total = 24.0
    sched = _calm(total)
    if disturbance == "late packet":
        sched[150] = 0.020  # at 3 s, 15 ms late (before the next one): its slot is stretched
        settled = 3.0 + 1.0  # the drain down to the jitter target needs no more than a second
    else:
        for i, d in enumerate(stall(0.3, total_s=total)):
            if d > 0.005:
                sched[i] = d  # the stall at 3 s: its packets arrive together when it ends
        # the burst plays one packet after its slot: a loss run of 1, covered for LOSS_MEMORY
        settled = 3.3 + JitterBuffer.LOSS_MEMORY * FRAME_S
    delays, rx = run(True, sched, prefetch=APP_LEG_FLOOR)
    jb = rx.playout.jitter
    assert set(frames(delays, 1.0, 3.0)) == {0}  # at the floor before it
    assert jb.target == 2  # the measured jitter's term alone asks for 2 frames
    assert max(frames(delays, 3.0, 4.0)) >= 1  # the disturbance raised the delay
    assert max(frames(delays, settled - 1.0, settled)) == 1  # drained to that target
    # and within a CALM_WINDOW (3 s) the arrivals showed that frame is not needed: back at the floor
    assert set(frames(delays, settled + JitterBuffer.CALM_WINDOW * FRAME_S + 0.5, total)) == {0}
    assert set(frames(delays, total - 5.0, total)) == {0}


def _jittery(seconds: float, seed: int) -> list[float]:
    """A jittery path: each packet takes 5..35 ms, independently (RFC 3550 jitter ~10 ms)."""
    rng = random.Random(seed)
    return [0.005 + rng.uniform(0, 0.030) for _ in range(int(seconds / FRAME_S))]


def _gaps(rx: RtpSession) -> int:
    st = rx.playout.jitter.stats()
    return st.concealed + st.stretched


@pytest.mark.parametrize("path", ["jittery 1", "jittery 2", "jittery 3", "a late packet every 4 s"])
def test_a_jittery_path_keeps_its_extra_frame_and_does_not_oscillate(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.startswith("jittery"):
        sched = _jittery(60.0, int(path[-1]))
    else:
        sched = _calm(60.0)
        for i in range(100, len(sched), 200):
            sched[i] = 0.020  # 15 ms late: past its slot at the floor, in time one frame deeper
    delays, rx = run(True, sched, prefetch=APP_LEG_FLOOR)
    jb = rx.playout.jitter
    assert jb.target >= 2
    assert statistics.median(frames(delays, 10.0, 60.0)) >= 1  # it keeps the frame the jitter needs
    monkeypatch.setattr(JitterBuffer, "CALM_WINDOW", 10**9)  # without the drop below the target
    _, rx_before = run(True, sched, prefetch=APP_LEG_FLOOR)
    print(f"{path}: concealed + stretched in a minute {_gaps(rx_before)} -> {_gaps(rx)}")
    assert _gaps(rx) <= _gaps(rx_before) * 1.05 + 5  # not materially more gaps
