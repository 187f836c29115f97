"""The pure RTP leg (bridge/rtp/media.py RtpSession) in virtual time: pacing on the absolute
clock, skip after a stall, any packet length in, sequence/timestamp wrap, SSRC and sequence
across re-INVITEs, RFC 4733 timing, latching, RTCP between two sessions (RTT from LSR/DLSR),
and the scheduling core (bridge/rtp/schedule.py). Audio is judged by content."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import replace

import numpy as np
import pytest

from bridge.rtp import g711
from bridge.rtp.dtmf import DtmfReceiver, TelephoneEvent
from bridge.rtp.media import (
    FRAME,
    PERIOD,
    DtmfReceived,
    DtmfSent,
    FrameQueues,
    Latched,
    MediaFormat,
    RemoteBye,
    ReportReceived,
    RtpSession,
)
from bridge.rtp.packet import RtpPacket
from bridge.rtp.rtcp import (
    NTP_EPOCH_OFFSET,
    ReceiverReport,
    ReportBlock,
    SenderReport,
    build_compound,
    ntp_from_seconds,
    ntp_middle,
    parse_compound,
)
from bridge.rtp.schedule import Scheduler, align

A = ("192.0.2.1", 4000)
B = ("192.0.2.2", 5000)
RATE = 8000


def sine(freq: float, n: int, start: int = 0, dbfs: float = -10.0) -> np.ndarray:
    t = (np.arange(n) + start) / RATE
    return np.rint(32767 * 10 ** (dbfs / 20) * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def tone_of(x: np.ndarray) -> tuple[float, float]:
    """Dominant frequency (Hz) and sine-referenced RMS level (dBFS)."""
    y = x.astype(np.float64)
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    k = int(np.argmax(spec[1:])) + 1
    rms = math.sqrt(float(np.mean(y**2)))
    return k * RATE / len(y), 20 * math.log10(rms * math.sqrt(2) / 32767 + 1e-12)


def session(fmt: MediaFormat | None = None, audio: FrameQueues | None = None, **kw: object) -> RtpSession:
    kw.setdefault("rng", random.Random(7))
    return RtpSession(fmt or MediaFormat("PCMU", 0, 101, remote=B), audio or FrameQueues(), **kw)  # type: ignore[arg-type]


def sent(s: RtpSession) -> list[RtpPacket]:
    """Drain the session's RTP output as packets (RTCP left out)."""
    out = [RtpPacket.parse(d) for d, _, rtcp in s.out if not rtcp and not 192 <= d[1] <= 223]
    s.out.clear()
    return out


def run_ticks(s: RtpSession, until: float) -> list[tuple[float, RtpPacket]]:
    """Tick at every deadline up to ``until``; the packets with the time they left."""
    got: list[tuple[float, RtpPacket]] = []
    while (due := s.next_due) is not None and due <= until:
        s.tick(due)
        got += [(due, p) for p in sent(s)]
    return got


# -- sending ---------------------------------------------------------------------------------
def test_pacing_is_absolute_and_each_slot_sends_one_frame() -> None:
    q = FrameQueues(tx_max=1000)
    s = session(audio=q, sequence_number=100, timestamp=1000)
    for i in range(500):
        q.write(sine(1000, FRAME, i * FRAME).tobytes())
    s.start(10.0)
    # Wake at irregular moments (every 7 ms): each slot goes out at the first wake after its
    # deadline t0 + n * 20 ms, never drifting however the wakes fall.
    got: list[tuple[float, RtpPacket]] = []
    t = 10.0
    while t < 12.0:
        s.tick(t)
        got += [(t, p) for p in sent(s)]
        t += 0.007
    assert len(got) == math.floor((t - 0.007 - 10.0) / PERIOD) + 1
    for n, (when, p) in enumerate(got):
        deadline = 10.0 + n * PERIOD
        assert deadline - 0.001 <= when < deadline + 0.007
        assert p.sequence_number == 100 + n and p.timestamp == 1000 + n * FRAME and len(p.payload) == FRAME
    assert [p.marker for _, p in got[:3]] == [True, False, False]  # the first packet opens a talkspurt
    pcm = np.concatenate([g711.ulaw_decode(p.payload) for _, p in got])
    freq, level = tone_of(pcm)
    assert abs(freq - 1000) < 5 and abs(level + 10) < 0.3
    assert s.n["skipped"] == 0 and s.n["tx_underruns"] == 0


def test_a_stall_is_skipped_not_burst() -> None:
    s = session(max_burst=3, sequence_number=0, timestamp=0)
    s.start(0.0)
    before = run_ticks(s, 0.5)
    assert len(before) == 26
    s.tick(0.8)  # the loop was blocked for 300 ms: 15 slots are due at once
    burst = sent(s)
    assert len(burst) == 3  # at most max_burst go out back to back
    assert s.n["skipped"] == 12 and s.n["ticks"] == 41  # every slot played out, skipped or sent
    assert s.sender.packets_sent == s.n["ticks"] - s.n["skipped"]
    seqs = [p.sequence_number for _, p in before] + [p.sequence_number for p in burst]
    assert seqs == list(range(len(seqs)))  # sequence numbers stay contiguous
    # the media clock moved on with real time: the first packet after the gap is 13 slots on
    last = before[-1][1]
    assert burst[0].timestamp - last.timestamp == 13 * FRAME and burst[0].marker
    assert [p.timestamp - burst[0].timestamp for p in burst] == [0, FRAME, 2 * FRAME]
    after = run_ticks(s, 1.0)
    assert [round(w, 3) for w, _ in after[:2]] == [0.82, 0.84]  # back on the original grid


def test_sequence_and_timestamp_wrap() -> None:
    q = FrameQueues(tx_max=100)
    s = session(audio=q, sequence_number=65533, timestamp=2**32 - 2 * FRAME)
    s.start(0.0)
    pkts = [p for _, p in run_ticks(s, 0.1)]
    assert [p.sequence_number for p in pkts] == [65533, 65534, 65535, 0, 1, 2]
    assert [p.timestamp for p in pkts] == [2**32 - 320, 2**32 - 160, 0, 160, 320, 480]
    # and a receiver on the other side plays across both wraps without a gap
    rx_q = FrameQueues(rx_max=100)
    r = session(MediaFormat("PCMU", 0, 101, remote=A), rx_q, jitter_prefetch=1)
    r.start(0.0)
    pcm = sine(440, FRAME * 40)
    seq, ts = 65520, 2**32 - 20 * FRAME
    for i in range(40):
        p = RtpPacket(0, (seq + i) & 0xFFFF, (ts + i * FRAME) & 0xFFFFFFFF, 99, g711.ulaw_encode(pcm[i * FRAME:(i + 1) * FRAME]))
        r.receive(p.serialize(), A, i * PERIOD)
        r.tick(i * PERIOD)
    got = np.concatenate([np.frombuffer(f, dtype=np.int16) for f in rx_q.rx])
    assert len(got) >= 36 * FRAME and np.all(np.abs(got[FRAME:]).reshape(-1, FRAME).max(axis=1) > 1000)
    js = r.playout.jitter.stats()
    assert js.lost == 0 and js.concealed == 0 and r.playout.jitter.source is not None
    assert r.playout.jitter.source.extended_max >= 65536  # the cycle was counted


def test_reinvite_keeps_ssrc_and_sequence_continuous() -> None:
    s = session(sequence_number=500, timestamp=8000)
    s.start(0.0)
    first = run_ticks(s, 0.1)
    ssrc = first[0][1].ssrc
    # re-INVITE: PCMA, another address, telephone-event now 96
    s.configure(MediaFormat("PCMA", 8, 96, remote=A))
    nxt = run_ticks(s, 0.2)
    assert all(p.ssrc == ssrc for _, p in first + nxt)
    seqs = [p.sequence_number for _, p in first + nxt]
    assert seqs == list(range(500, 500 + len(seqs)))
    ts = [p.timestamp for _, p in first + nxt]
    assert all(b - a == FRAME for a, b in zip(ts, ts[1:], strict=False))
    assert {p.payload_type for _, p in nxt} == {8} and {p.payload_type for _, p in first} == {0}
    # hold (sendonly from the far end: we go recvonly): nothing sent, but the clock runs on
    s.out.clear()
    s.configure(MediaFormat("PCMA", 8, 96, remote=A, send=False))
    assert run_ticks(s, 0.4) == []
    s.configure(MediaFormat("PCMA", 8, 96, remote=A))
    resumed = run_ticks(s, 0.5)
    assert resumed[0][1].sequence_number == seqs[-1] + 1 and resumed[0][1].marker
    assert resumed[0][1].timestamp == ts[-1] + FRAME * round((resumed[0][0] - nxt[-1][0]) / PERIOD)


def test_dtmf_events_on_the_media_clock() -> None:
    q = FrameQueues(tx_max=100)
    s = session(audio=q, sequence_number=0, timestamp=0)
    s.start(0.0)
    run_ticks(s, 0.04)  # 3 audio packets
    jobs = s.send_dtmf("5#")
    assert len(jobs) == 2
    pkts = run_ticks(s, 1.0)
    events = [(w, p) for w, p in pkts if p.payload_type == 101]
    by_ts: dict[int, list[tuple[float, RtpPacket]]] = {}
    for w, p in events:
        by_ts.setdefault(p.timestamp, []).append((w, p))
    assert len(by_ts) == 2
    starts = sorted(by_ts)
    assert starts[0] == 3 * FRAME  # the event starts at the media clock of its first slot
    for start in starts:
        group = by_ts[start]
        tes = [TelephoneEvent.parse(p.payload) for _, p in group]
        # 100 ms: 4 growing packets then 3 end packets, one per 20 ms slot
        assert [t.duration for t in tes] == [160, 320, 480, 640, 800, 800, 800]
        assert [t.end for t in tes] == [False] * 4 + [True] * 3
        assert group[0][1].marker and not any(p.marker for _, p in group[1:])
        gaps = [round(b[0] - a[0], 6) for a, b in zip(group, group[1:], strict=False)]
        assert gaps == [PERIOD] * 6
    # 60 ms of audio between the digits; the media clock ran on underneath the events
    second = by_ts[starts[1]][0][1]
    assert starts[1] - starts[0] == (7 + 3) * FRAME
    audio_between = [p for _, p in pkts if p.payload_type == 0 and starts[0] < p.timestamp < starts[1]]
    assert len(audio_between) == 3 and audio_between[0].marker and second.sequence_number == audio_between[-1].sequence_number + 1
    done = [e for e in s.events if isinstance(e, DtmfSent)]
    assert [e.job for e in done] == jobs and s.n["dtmf_sent"] == 2
    rx = DtmfReceiver()
    for _, p in events:
        rx.receive(p.payload, p.timestamp, ssrc=p.ssrc)
    assert rx.digits == ["5", "#"]
    with pytest.raises(ValueError, match="DTMF|digit"):
        s.send_dtmf("5x")  # nothing queued for a bad digit
    assert s.dtmf_pending == 0
    with pytest.raises(ValueError, match="telephone-event was not negotiated"):
        session(MediaFormat("PCMU", 0, None, remote=B)).send_dtmf("1")


# -- receiving -------------------------------------------------------------------------------
@pytest.mark.parametrize("ptime_ms", [10, 20, 30, 40, 60])
def test_any_packet_length_arrives_whole(ptime_ms: int) -> None:
    q = FrameQueues(rx_max=1000)
    s = session(audio=q)
    s.start(0.0)
    n = RATE * ptime_ms // 1000
    count = 3000 // ptime_ms  # 3 s of tone
    pcm = sine(1000, n * count)
    arrivals = [(0.005 + i * ptime_ms / 1000, i) for i in range(count)]
    t = 0.0
    for at, i in arrivals:
        while (due := s.next_due) is not None and due <= at:
            s.tick(due)
        p = RtpPacket(0, 7 + i, 90_000 + i * n, 0xABC, g711.ulaw_encode(pcm[i * n:(i + 1) * n]))
        s.receive(p.serialize(), B, at)
        t = at
    while (due := s.next_due) is not None and due <= t + 0.5:
        s.tick(due)
    frames = [np.frombuffer(f, dtype=np.int16) for f in q.rx]
    got = np.concatenate(frames)
    levels = np.array([np.abs(f).max() for f in frames])
    on = np.nonzero(levels > 1000)[0]
    tone = got[on[0] * FRAME:(on[-1] + 1) * FRAME]
    # every sample arrived (G.711 round trip), once, in order and without holes
    assert len(tone) == len(pcm)
    assert np.all(levels[on[0]:on[-1] + 1] > 1000)
    assert np.array_equal(tone, g711.ulaw_decode(g711.ulaw_encode(pcm)))
    freq, level = tone_of(tone)
    assert abs(freq - 1000) < 2 and abs(level + 10) < 0.2


def test_a_lost_packet_is_silence_of_its_length_and_an_ssrc_change_resyncs() -> None:
    q = FrameQueues(rx_max=1000)
    s = session(audio=q)
    s.start(0.0)
    pcm = sine(500, 30 * 240)
    for i in range(30):
        at = 0.003 + i * 0.03
        while (due := s.next_due) is not None and due <= at:
            s.tick(due)
        if i != 10:  # packet 10 (30 ms) is lost
            s.receive(RtpPacket(0, i, i * 240, 1, g711.ulaw_encode(pcm[i * 240:(i + 1) * 240])).serialize(), B, at)
    # the far end restarts: new SSRC, unrelated timestamp and sequence
    for i in range(20):
        at = 0.903 + i * 0.02
        while (due := s.next_due) is not None and due <= at:
            s.tick(due)
        s.receive(RtpPacket(0, 40000 + i, 7_000_000 + i * FRAME, 2, g711.ulaw_encode(sine(500, FRAME, i * FRAME))).serialize(), B, at)
    while (due := s.next_due) is not None and due <= 1.8:
        s.tick(due)
    got = np.concatenate([np.frombuffer(f, dtype=np.int16) for f in q.rx])
    quiet = np.abs(got) < 50
    # exactly one 240-sample hole inside the first stream (plus the zero crossings of a sine)
    runs = np.diff(np.concatenate(([0], quiet.astype(np.int8), [0])))
    starts, ends = np.nonzero(runs == 1)[0], np.nonzero(runs == -1)[0]
    holes = [(a, b - a) for a, b in zip(starts, ends, strict=False) if b - a > 20]
    first_on = int(np.argmax(~quiet))
    inside = [h for h in holes if first_on < h[0] < first_on + 29 * 240]
    assert len(inside) == 1 and 240 <= inside[0][1] <= 242
    assert s.playout.jitter.stats().ssrc_changes == 1
    # the new source plays at once: no silence worth its timestamp jump was inserted
    assert len(got) < 2 * 8000


def test_latching_and_wrong_source() -> None:
    s = session(MediaFormat("PCMU", 0, 101, remote=("192.0.2.9", 9)), latch=True)
    pkt = RtpPacket(0, 1, 0, 5, b"\xff" * FRAME).serialize()
    s.receive(pkt, A, 0.0)
    assert s.remote == A and s.latched and s.remote_rtcp == (A[0], A[1] + 1)
    assert [e for e in s.events if isinstance(e, Latched)] == [Latched(A)]
    s.receive(RtpPacket(0, 2, 160, 5, b"\xff" * FRAME).serialize(), B, 0.02)
    assert s.n["wrong_source"] == 1 and s.n["received"] == 1
    s.start(0.0)
    s.tick(0.0)
    assert {addr for _, addr, _ in s.out} == {A}


def test_garbage_is_counted_and_dropped() -> None:
    s = session()
    for data in (b"", b"\x80", bytes(11), bytes([0x8F]) + bytes(11), bytes.fromhex("81c90007") + bytes(28),
                 RtpPacket(99, 1, 1, 1, b"x").serialize(), RtpPacket(0, 1, 1, 1, b"").serialize()):
        s.receive(data, B, 0.0)
    assert s.n["malformed"] == 3 and s.n["other"] == 1 and s.n["rtcp_on_rtp_port"] == 1
    assert s.n["unknown_pt"] == 1 and s.n["bad_payload"] == 1 and s.n["received"] == 0


def test_dtmf_received_once_per_event() -> None:
    from bridge.rtp.dtmf import dtmf_packets

    s = session()
    for i, item in enumerate(dtmf_packets("9")):
        s.receive(RtpPacket(101, 10 + i, 4000, 3, item.payload, item.marker).serialize(), B, i * 0.02)
    got = [e for e in s.events if isinstance(e, DtmfReceived)]
    assert len(got) == 1 and got[0].event.name == "9"


# -- RTCP ------------------------------------------------------------------------------------
class Net:
    """Two sessions joined by a virtual network with a one-way delay; run in virtual time."""

    def __init__(self, a: RtpSession, b: RtpSession, delay: float) -> None:
        self.peers = {A: a, B: b}
        self.addr = {id(a): A, id(b): B}
        self.delay = delay
        self.queue: list[tuple[float, int, bytes, tuple[str, int], tuple[str, int], bool]] = []
        self.n = 0
        self.lost: set[int] = set()  # RTP sequence numbers to drop (a -> b)

    def run(self, until: float) -> None:
        t = 0.0
        while t <= until:
            nexts = [s.next_due for s in self.peers.values() if s.next_due is not None]
            if self.queue:
                nexts.append(self.queue[0][0])
            if not nexts:
                return
            t = min(nexts)
            if t > until:
                return
            while self.queue and self.queue[0][0] <= t:
                at, _, data, src, dst, rtcp = heapq.heappop(self.queue)
                host, port = dst
                key = (host, port - 1) if rtcp and (host, port - 1) in self.peers else (host, port)
                self.peers[key].receive(data, src, at, rtcp_port=key != dst)
            for s in self.peers.values():
                if s.next_due is not None and s.next_due <= t:
                    s.tick(t)
                src = self.addr[id(s)]
                for data, dst, rtcp in s.out:
                    if not rtcp and not 192 <= data[1] <= 223 and src == A:
                        if RtpPacket.parse(data).sequence_number in self.lost:
                            continue
                    self.n += 1
                    heapq.heappush(self.queue, (t + self.delay, self.n, data, src if not rtcp else (src[0], src[1] + 1), dst, rtcp))
                s.out.clear()


def test_rtcp_round_trip_between_two_sessions() -> None:
    a = session(MediaFormat("PCMU", 0, 101, remote=B), rtcp_interval=1.0, rng=random.Random(1), ntp_offset=NTP_EPOCH_OFFSET + 1e9)
    b = session(MediaFormat("PCMU", 0, 101, remote=A), rtcp_interval=1.0, rng=random.Random(2), ntp_offset=NTP_EPOCH_OFFSET + 2e9)
    net = Net(a, b, delay=0.030)
    net.lost = {a.sender.sequence_number + k for k in (50, 51, 52, 53, 54)}  # 5 of A's packets never reach B
    a.start(0.0)
    b.start(0.0)
    net.run(8.0)
    assert a.n["rtcp_sent"] >= 4 and b.n["rtcp_received"] >= 4 and a.n["rtcp_malformed"] == 0
    # each side measured the round trip (2 x 30 ms) from the other's LSR/DLSR, whatever its clock
    assert a.rtt is not None and b.rtt is not None
    assert abs(a.rtt - 0.060) < 0.001 and abs(b.rtt - 0.060) < 0.001
    ra, rb = a.remote_stats, b.remote_stats
    assert ra is not None and rb is not None
    assert ra.cumulative_lost == 5 and rb.cumulative_lost == 0  # B saw A's loss and reported it
    assert ra.jitter < 0.001  # a constant delay has no jitter
    assert any(isinstance(e, ReportReceived) for e in a.events)
    # a leaving session says BYE (RFC 3550 §6.6)
    a.close(8.0)
    data, dest, via_rtcp = a.out[-1]
    assert dest == (B[0], B[1] + 1) and via_rtcp
    kinds = [type(p).__name__ for p in parse_compound(data)]
    assert kinds == ["SenderReport", "Sdes", "Bye"]
    b.receive(data, (A[0], A[1] + 1), 8.03, rtcp_port=True)
    assert any(isinstance(e, RemoteBye) for e in b.events)


def test_rtt_from_crafted_lsr_and_dlsr() -> None:
    """RFC 3550 §6.4.1 Figure 2: RTT = A - LSR - DLSR. We send an SR at t=100; the far end
    holds it for 0.25 s and its RR arrives at t=100.4: RTT is 0.15 s exactly."""
    offset = NTP_EPOCH_OFFSET + 1_700_000_000.0
    s = session(rtcp_interval=5.0, ntp_offset=offset)
    s.start(95.0)
    s.tick(95.0)
    s.out.clear()
    sr = s.report_packets(100.0)[0]
    assert isinstance(sr, SenderReport) and sr.ntp == ntp_from_seconds(100.0 + offset)
    lsr = ntp_middle(sr.ntp)
    block = ReportBlock(s.ssrc, fraction_lost=64, cumulative_lost=12, highest_seq=70000, jitter=80, lsr=lsr,
                        dlsr=int(0.25 * 65536))
    rr = build_compound([ReceiverReport(0xFEED, (block,))])
    s.receive(rr, (B[0], B[1] + 1), 100.4, rtcp_port=True)
    st = s.remote_stats
    assert st is not None and st.rtt is not None and s.rtt == st.rtt
    assert abs(st.rtt - 0.15) < 2 / 65536
    assert (st.fraction_lost, st.cumulative_lost, st.jitter) == (0.25, 12, 0.01)
    # a block that names no SR of ours (LSR 0) gives loss and jitter but no RTT
    s.receive(build_compound([ReceiverReport(0xFEED, (replace(block, lsr=0),))]), B, 101.0, rtcp_port=True)
    assert s.remote_stats is not None and s.remote_stats.rtt is None and s.rtt == st.rtt


def test_receiver_report_blocks_carry_loss_and_lsr() -> None:
    s = session(rtcp_interval=5.0)
    s.start(0.0)
    for i in range(100):
        if i % 10 != 3:  # lose 10 %
            s.receive(RtpPacket(0, 1000 + i, i * FRAME, 0x77, b"\xff" * FRAME).serialize(), B, i * PERIOD)
    peer_sr = SenderReport(0x77, ntp_from_seconds(123.5), 0, 90, 14400)
    s.receive(build_compound([peer_sr]), B, 2.0, rtcp_port=True)
    pkts = s.report_packets(2.5)
    report = pkts[0]
    assert isinstance(report, ReceiverReport | SenderReport)
    (block,) = report.reports
    assert block.ssrc == 0x77 and block.cumulative_lost == 10 and block.highest_seq == 1099
    assert block.fraction_lost == int(10 / 100 * 256)
    assert block.lsr == ntp_middle(peer_sr.ntp) and block.dlsr == int(0.5 * 65536)


# -- the scheduling core ---------------------------------------------------------------------
def test_scheduler_due_and_next_deadline() -> None:
    sch: Scheduler[str] = Scheduler(tolerance=0.001)
    assert sch.next_deadline() is None and sch.pop_due(100.0) == []
    sch.set("a", 1.0)
    sch.set("b", 0.5)
    sch.set("c", 1.0006)
    sch.set("a", 2.0)  # rescheduled: the old entry is gone
    assert sch.next_deadline() == 0.5 and len(sch) == 3
    assert sch.pop_due(0.2) == []
    assert sch.pop_due(0.9995) == ["b"]  # due within the tolerance
    assert sch.pop_due(1.0) == ["c"]
    assert sch.next_deadline() == 2.0
    sch.remove("a")
    assert sch.next_deadline() is None and "a" not in sch
    # many legs on one grid: one wake serves them all
    for i in range(50):
        sch.set(f"leg{i}", align(10.0 + i * 0.0037, 10.0, PERIOD))
    groups = []
    while (t := sch.next_deadline()) is not None:
        due = sch.pop_due(t)
        groups.append(len(due))
    assert sum(groups) == 50 and len(groups) == math.ceil(49 * 0.0037 / PERIOD) + 1
    assert align(10.0, 10.0, 0.02) == 10.0 and abs(align(10.021, 10.0, 0.02) - 10.04) < 1e-9


def test_a_timestamp_jump_resyncs_without_inserting_silence() -> None:
    """Same SSRC and contiguous sequence numbers, but the timestamp leaps by 100 s (a restarted
    or forged clock): playout restarts at the new timestamp instead of waiting out the gap."""
    q = FrameQueues(rx_max=1000)
    s = session(audio=q)
    s.start(0.0)
    pcm = sine(700, 100 * FRAME)
    for i in range(100):
        at = 0.002 + i * PERIOD
        while (due := s.next_due) is not None and due <= at:
            s.tick(due)
        ts = i * FRAME + (800_000 if i >= 50 else 0)
        s.receive(RtpPacket(0, i, ts, 9, g711.ulaw_encode(pcm[i * FRAME:(i + 1) * FRAME])).serialize(), B, at)
    while (due := s.next_due) is not None and due <= 2.3:
        s.tick(due)
    frames = [np.frombuffer(f, dtype=np.int16) for f in q.rx]
    levels = np.array([np.abs(f).max() for f in frames])
    on = np.nonzero(levels > 1000)[0]
    # all 100 frames of tone came out, with at most a frame or two of re-buffering at the leap
    assert levels[on[0]:on[-1] + 1].size <= 103 and (levels > 1000).sum() >= 98
    assert s.playout.jitter.stats().resets >= 1
