"""The bridge's app leg playout floor (bridge.rtp.session.JitterBuffer adaptive with prefetch
APP_LEG_FLOOR = 1, issue 15), in virtual time: a clean path plays at the floor and comes back to
it after a late packet; after a stall's burst the NetEq-like drain takes the delay back to the
floor; loss runs are counted at playout, so a run raises the delay to cover the next one while an
outage longer than LOSS_RUN_MAX does not. Delays are of the simulated path, in whole frames."""

from __future__ import annotations

import statistics

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
