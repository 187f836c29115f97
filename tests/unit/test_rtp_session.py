"""RFC 3550 App. A.1/A.3/A.8 receive state, the jitter buffer and the sender counters."""

from __future__ import annotations

import tracemalloc

import pytest

from bridge.rtp.packet import RtpPacket
from bridge.rtp.session import MAX_DROPOUT, JitterBuffer, PushResult, RtpSender, RtpSource

FRAME = 160
T = 0.02


def pkt(seq: int, ts: int | None = None, ssrc: int = 0x1111, payload: bytes | None = None) -> RtpPacket:
    """A PCMU packet that went over the wire (serialise + parse) whose payload names its seq."""
    seq &= 0xFFFF
    ts = seq * FRAME if ts is None else ts
    body = payload if payload is not None else seq.to_bytes(2, "big") * 80
    return RtpPacket.parse(RtpPacket(0, seq, ts & 0xFFFFFFFF, ssrc, body).serialize())


def drain(jb: JitterBuffer, n: int, now: float = 0.0) -> list[int | None]:
    out: list[int | None] = []
    for _ in range(n):
        p = jb.pop(now)
        out.append(None if p is None else int.from_bytes(p[:2], "big"))
    return out


def test_probation_then_in_order_playout() -> None:
    jb = JitterBuffer(capacity=16, prefetch=3)
    assert jb.push(pkt(100), 0.0) is PushResult.PROBATION  # A.1: MIN_SEQUENTIAL = 2
    for i, seq in enumerate(range(101, 106), start=1):
        assert jb.push(pkt(seq), i * T) is PushResult.ACCEPTED
    assert drain(jb, 7) == [100, 101, 102, 103, 104, 105, None]
    st = jb.stats()
    assert (
        st.lost == 0 and st.played == 6 and st.received == 5
    )  # the probation packet is not "received" (A.1)


def test_sequence_and_timestamp_wrap_is_continuous() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    seqs = [(65530 + i) & 0xFFFF for i in range(12)]
    ts0 = (1 << 32) - 3 * FRAME
    for i, seq in enumerate(seqs):
        jb.push(pkt(seq, ts0 + i * FRAME), i * T)
    assert drain(jb, 12) == seqs
    st = jb.stats()
    assert st.lost == 0 and st.resets == 0 and st.concealed == 0
    assert jb.source is not None and jb.source.cycles == 65536
    assert jb.source.extended_max == 65536 + 5


def test_reordering_and_duplicates() -> None:
    jb = JitterBuffer(capacity=16, prefetch=4)
    order = [0, 1, 3, 2, 2, 5, 4, 4, 6, 7]
    results = [jb.push(pkt(s), i * T) for i, s in enumerate(order)]
    assert results.count(PushResult.DUPLICATE) == 2
    assert drain(jb, 8) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert jb.stats().duplicates == 2


def test_loss_gives_a_gap_and_counts() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    for i, s in enumerate([0, 1, 2, 4, 5]):
        jb.push(pkt(s), i * T)
    assert drain(jb, 6) == [0, 1, 2, None, 4, 5]
    st = jb.stats()
    assert st.lost == 1 and st.concealed == 1


def test_late_packet_is_dropped_not_played() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    for s in (0, 1, 3):
        jb.push(pkt(s), 0.0)
    assert drain(jb, 3) == [0, 1, None]
    assert jb.push(pkt(2), 0.1) is PushResult.LATE
    assert drain(jb, 1) == [3]


def test_forged_timestamp_jump_is_bounded_and_resets() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    for s in range(5):
        jb.push(pkt(s), s * T)
    tracemalloc.start()
    try:
        jb.push(pkt(5, ts=5 * FRAME + 200_000_000), 5 * T)
        for s in range(6, 10):
            jb.push(pkt(s, ts=s * FRAME + 200_000_000), s * T)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # pyVoIP allocated ~200 MB here
    st = jb.stats()
    assert st.resets == 1 and st.depth <= 16
    assert drain(jb, 5) == [5, 6, 7, 8, 9]


def test_ssrc_change_resyncs() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    for s in range(4):
        jb.push(pkt(s), s * T)
    assert drain(jb, 2) == [0, 1]
    for i, s in enumerate(range(40000, 40004)):
        jb.push(pkt(s, ssrc=0x2222), 1 + i * T)
    st = jb.stats()
    assert st.ssrc == 0x2222 and st.ssrc_changes == 1 and st.resets >= 1
    assert drain(jb, 4) == [40000, 40001, 40002, 40003]


def test_a1_wild_jump_then_restart() -> None:
    jb = JitterBuffer(capacity=16, prefetch=1)
    for s in range(5):
        jb.push(pkt(s), s * T)
    assert jb.push(pkt(5 + MAX_DROPOUT + 10), 0.2) is PushResult.INVALID
    # Two sequential packets after the jump: the source restarted (A.1 bad_seq).
    assert jb.push(pkt(5 + MAX_DROPOUT + 11), 0.22) is PushResult.ACCEPTED
    assert jb.source is not None and jb.source.resyncs == 1
    assert drain(jb, 1) == [5 + MAX_DROPOUT + 11]


def test_burst_of_500_is_bounded() -> None:
    jb = JitterBuffer(capacity=16, prefetch=3)
    for s in range(500):
        jb.push(pkt(s), 0.0)
    assert jb.depth <= 16
    played = [x for x in drain(jb, 20) if x is not None]
    assert played == sorted(played) and played[-1] == 499


def test_non_audio_slot_is_silent_but_not_lost() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    jb.push(pkt(0), 0.0)
    jb.push(pkt(1), T)
    jb.push(pkt(2), 2 * T, audio=False)  # e.g. an RFC 4733 packet in the same sequence space
    jb.push(pkt(3), 3 * T)
    assert drain(jb, 4) == [0, 1, None, 3]
    st = jb.stats()
    assert st.lost == 0 and st.non_audio == 1 and st.concealed == 0


@pytest.mark.parametrize(("wobble", "expected"), [(0.0, 0.0), (0.005, 0.005), (0.002, 0.002)])
def test_interarrival_jitter_a8(wobble: float, expected: float) -> None:
    src = RtpSource(ssrc=1, seq=0)
    for i in range(400):
        arrival = i * T + (wobble if i % 2 else 0.0)
        src.update(pkt(i), arrival)
    assert src.jitter_seconds == pytest.approx(expected, abs=0.0005)


def test_fraction_lost_interval() -> None:
    src = RtpSource(ssrc=1, seq=0)
    for s in [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]:
        src.update(pkt(s), 0.0)
    assert src.cumulative_lost == 1
    assert src.fraction_lost() == pytest.approx(1 / 10)
    assert src.fraction_lost() == 0.0


def test_sender_wraps_and_marks_talkspurts() -> None:
    tx = RtpSender(payload_type=0, ssrc=7, sequence_number=65534, timestamp=(1 << 32) - FRAME)
    pkts = [RtpPacket.parse(tx.packet(b"\xff" * FRAME, FRAME).serialize()) for _ in range(3)]
    assert [p.sequence_number for p in pkts] == [65534, 65535, 0]
    assert [p.timestamp for p in pkts] == [(1 << 32) - FRAME, 0, FRAME]
    assert [p.marker for p in pkts] == [True, False, False]
    tx.start_talkspurt()
    assert tx.packet(b"", FRAME).marker is True
    ev = tx.event_packet(b"\x05\x0a\x00\xa0", 101, timestamp=1234, marker=True)
    assert (ev.timestamp, ev.sequence_number, tx.timestamp) == (1234, 2, 3 * FRAME)
    assert tx.packets_sent == 5
