"""RFC 2198 audio redundancy on the lean leg's receive path and the adaptive buffer's behaviour on
loss bursts (issue 15): the RED payload format, the buffer holding its place through an empty
stretch (a late packet still plays; a burst's slots are concealed once), and speech through two
RtpSessions over a seeded bursty network, judged by PESQ and the recovery counters."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.net.opus import OpusCodec
from bridge.net.webrtc import RED_LOSSY, WebRtcLeg
from bridge.rtp.media import MediaFormat, RtpSession
from bridge.rtp.packet import RtpPacket
from bridge.rtp.red import MAX_DISTANCE, RedBlock, RedEncoder, RedError, build_red, parse_red
from bridge.rtp.rtcp import ReceiverReport, SenderReport
from bridge.rtp.session import APP_LEG_FLOOR, JitterBuffer
from jego_call.media import analysis
from tests.integration.bridge_util import speech_8k
from tests.lossy_path import ADDR, Player, run_path


def test_red_payload_round_trip_and_refusals() -> None:
    payload = build_red(111, b"primary", [RedBlock(111, 1920, b"two"), RedBlock(111, 960, b"one!")])
    # RFC 2198 §3: F=1, PT, 14-bit offset, 10-bit length per redundant block; then F=0 + PT
    assert payload[0] == 0x80 | 111 and int.from_bytes(payload[1:4], "big") == (1920 << 10) | 3
    assert payload[8] == 111 and payload.endswith(b"twoone!primary")
    blocks = parse_red(payload)
    assert [(b.ts_offset, b.data) for b in blocks] == [(1920, b"two"), (960, b"one!"), (0, b"primary")]
    assert parse_red(bytes([111]) + b"x") == [RedBlock(111, 0, b"x")]  # primary only
    for bad in (b"", bytes([0x80 | 111, 0, 0]), bytes([0x80 | 111]) + ((960 << 10) | 50).to_bytes(3, "big") + b"\x6f"):
        with pytest.raises(RedError):
            parse_red(bad)


def test_red_encoder_carries_the_two_frames_before() -> None:
    enc = RedEncoder(111, distance=2)
    assert parse_red(enc.wrap(b"a", 1000)) == [RedBlock(111, 0, b"a")]
    assert [(b.ts_offset, b.data) for b in parse_red(enc.wrap(b"b", 1960))] == [(960, b"a"), (0, b"b")]
    got = parse_red(enc.wrap(b"c", 2920))
    assert [(b.ts_offset, b.data) for b in got] == [(1920, b"a"), (960, b"b"), (0, b"c")]
    assert [(b.ts_offset, b.data) for b in parse_red(enc.wrap(b"d", 3880))] == [(1920, b"b"), (960, b"c"), (0, b"d")]


def test_red_encoder_set_distance_keeps_its_history() -> None:
    enc = RedEncoder(111, distance=2)
    for i, frame in enumerate((b"a", b"b", b"c", b"d")):
        enc.wrap(frame, 960 * i)
    enc.set_distance(3)  # deeper: the very next packet carries the three frames before it
    got = parse_red(enc.wrap(b"e", 960 * 4))
    assert [(b.ts_offset, b.data) for b in got] == [(2880, b"b"), (1920, b"c"), (960, b"d"), (0, b"e")]
    enc.set_distance(1)
    assert [b.data for b in parse_red(enc.wrap(b"f", 960 * 5))] == [b"e", b"f"]
    enc.set_distance(3)  # and back: what was sent while shallower is still there
    assert [b.data for b in parse_red(enc.wrap(b"g", 960 * 6))] == [b"d", b"e", b"f", b"g"]
    enc.reset()
    assert [b.data for b in parse_red(enc.wrap(b"h", 960 * 7))] == [b"h"]
    for bad in (-1, MAX_DISTANCE + 1):
        with pytest.raises(ValueError, match="RED distance"):
            enc.set_distance(bad)


def _pkt(seq: int, ssrc: int = 7) -> RtpPacket:
    return RtpPacket(111, seq & 0xFFFF, (seq * 960) & 0xFFFFFFFF, ssrc, b"x%d" % seq)


def test_a_late_packet_still_plays_after_the_buffer_ran_dry() -> None:
    jb = JitterBuffer(prefetch=2, clock_rate=48000, frame_samples=960, adaptive=True)
    for s in (1, 2, 3):
        jb.push(_pkt(s), 0.0)
    assert [jb.pop_packet(0).sequence_number for _ in range(3)] == [1, 2, 3]  # type: ignore[union-attr]
    assert jb.pop_packet(0) is None and jb.pop_packet(0) is None  # dry: concealed, place held
    jb.push(_pkt(4), 0.1)  # it was late, not lost
    got = jb.pop_packet(0)
    assert got is not None and got.sequence_number == 4
    assert jb.take_stretched() == 2 and jb.stats().late == 0 and jb.stats().underruns == 0


def test_a_loss_burst_is_concealed_once_and_the_packet_after_it_plays_on_time() -> None:
    jb = JitterBuffer(prefetch=2, clock_rate=48000, frame_samples=960, adaptive=True)
    for s in (65534, 65535):  # across the sequence wrap
        jb.push(_pkt(s), 0.0)
    assert jb.pop_packet(0) is not None and jb.pop_packet(0) is not None
    assert jb.pop_packet(0) is None and jb.pop_packet(0) is None  # 0 and 1 lost
    jb.push(_pkt(65538), 0.1)  # seq 2
    got = jb.pop_packet(0)
    assert got is not None and got.sequence_number == 2
    assert jb.take_stretched() == 0 and jb.stats().concealed == 2 and jb.stats().lost == 2


def test_a_red_copy_fills_only_a_missing_unplayed_slot() -> None:
    jb = JitterBuffer(prefetch=2, clock_rate=48000, frame_samples=960, adaptive=True)
    for s in (10, 11, 13):
        jb.push(_pkt(s), 0.0)
    assert jb.push_redundant(_pkt(12), 1)  # 12 lost: its copy from 13 fills it
    assert not jb.push_redundant(_pkt(11), 2)  # 11 is here itself
    assert [jb.pop_packet(0).sequence_number for _ in range(4)] == [10, 11, 12, 13]  # type: ignore[union-attr]
    assert jb.stats().redundant_used == 1
    assert not jb.push_redundant(_pkt(12), 2)  # played already
    assert jb.stats().lost == 1  # RFC 3550 loss counts what the network did



def through(speech: np.ndarray, spec: str, red: int, seq: int | None = None) -> tuple[float, RtpSession]:
    """Speech through Opus (FEC planned for 10 %, RED ``red`` frames deep) over the seeded path,
    into the bridge's app leg buffer (adaptive, from its 1-frame floor)."""
    fmt = MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR,
                      red_pt=63, red_distance=red)
    tx_codec, rx_codec = OpusCodec(32000, 1), OpusCodec(32000, 1)
    tx_codec.enable_fec(10)
    pcm, rx, _net = run_path(speech, fmt, tx_codec, rx_codec, spec, jitter_adaptive=True, seq=seq,
                            jitter_prefetch=APP_LEG_FLOOR)
    heard = analysis.to_float(pcm)
    return analysis.pesq_score(analysis.to_float(speech), heard, 8000, mode="nb"), rx


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.asarray(np.clip(speech_8k()[: 8000 * 8] * 32768, -32768, 32767), dtype=np.int16)


def test_red_rebuilds_bursts_that_fec_alone_cannot(speech: np.ndarray) -> None:
    spec = "loss=10,burst=2.5,seed=2"
    with_red, rx_red = through(speech, spec, red=2, seq=65500)  # the stream crosses 65535 -> 0
    fec_only, rx_fec = through(speech, spec, red=0, seq=65500)
    red, fec = rx_red.playout, rx_fec.playout
    print(f"{spec}: PESQ nb FEC+RED {with_red:.2f} (RED {red.red_recovered_frames}, FEC {red.recovered_frames}, "
          f"concealed {red.concealed_frames}); FEC only {fec_only:.2f} (FEC {fec.recovered_frames}, "
          f"concealed {fec.concealed_frames})")
    assert rx_red.n["rx_red"] > 0 and rx_fec.n["rx_red"] == 0
    assert red.jitter.stats().lost == fec.jitter.stats().lost > 20  # the same loss pattern
    assert red.red_recovered_frames > 0 and fec.red_recovered_frames == 0
    assert red.concealed_frames < fec.concealed_frames
    assert with_red > fec_only
    # our RTCP RR still tells the sender what the network lost (RED copies are not receptions), so
    # a browser raises its FEC (RFC 3550 §6.4.1 fraction lost)
    [report, _sdes] = rx_red.report_packets(99.0)
    assert isinstance(report, ReceiverReport | SenderReport)
    [block] = report.reports
    assert block.cumulative_lost == red.jitter.stats().lost and block.fraction > 0
    assert with_red >= 2.8  # docs/benchmarks.md: >= 3.0 in the median over seeds and voices


def test_red_on_a_clean_path_is_transparent(speech: np.ndarray) -> None:
    score, rx = through(speech[: 8000 * 4], "", red=2)
    p = rx.playout
    assert p.red_recovered_frames == 0 and p.concealed_frames == 0 and p.jitter.stats().stretched == 0
    assert score > 3.9


def test_a_bad_red_packet_is_counted_not_played() -> None:
    fmt = MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR, red_pt=63)
    rx = RtpSession(fmt, Player(np.zeros(0, dtype=np.int16)), codec=OpusCodec(32000, 1), rtcp=False)
    rx.start(0.0)
    truncated = RtpPacket(63, 1, 960, 9, bytes([0x80 | 111, 0, 0])).serialize()
    other_inner = RtpPacket(63, 2, 1920, 9, bytes([0]) + b"pcmu?").serialize()  # primary is PT 0, not Opus
    for data in (truncated, other_inner):
        rx.receive(data, ADDR, 0.01)
    assert rx.n["red_malformed"] == 1 and rx.n["unknown_pt"] == 1 and rx.n["rx_audio"] == 0


def test_a_session_sends_red_as_deep_as_set_and_only_when_red_is_sent() -> None:
    fmt = MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR, red_pt=63,
                      red_distance=2)
    tx = RtpSession(fmt, Player(np.zeros(8000, dtype=np.int16)), codec=OpusCodec(32000, 1), rtcp=False)
    now = 1.0
    tx.start(now)
    depths = []
    for slot in range(8):
        if slot == 4:
            tx.set_red_distance(3)
        tx.tick(now)
        depths += [len(parse_red(RtpPacket.parse(d).payload)) - 1 for d, _a, _r in tx.out]
        tx.out.clear()
        now += 0.02
    assert depths == [0, 1, 2, 2, 3, 3, 3, 3] and tx.fmt.red_distance == 3
    plain = RtpSession(MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR, red_pt=63),
                       Player(np.zeros(0, dtype=np.int16)), codec=OpusCodec(32000, 1), rtcp=False)
    plain.set_red_distance(3)  # RED accepted but not sent: stays plain Opus
    assert plain.fmt.red_distance == 0


async def test_the_legs_red_depth_follows_the_loss_its_far_end_reports() -> None:
    """A sending lean leg's RtpSession and a receiver's, RTCP between them (virtual time): 3 s
    of clean path, 6 s of 12 % loss in runs of 3, then clean again. The leg sends RED 2 deep,
    3 deep from the first receiver report that says RED_LOSSY or more, 2 again some calm reports
    later (RFC 3550 §6.4.1 fraction lost, as ``WebRtcLeg._on_events`` gets it from the engine)."""
    fmt = MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR, rtcp_mux=True,
                      red_pt=63, red_distance=2)
    leg = WebRtcLeg(Player(np.zeros(0, dtype=np.int16)), codecs=("opus",), name="tx")
    try:
        tx = RtpSession(fmt, Player(np.zeros(0, dtype=np.int16)), codec=OpusCodec(32000, 1), rtcp_interval=1.0)
        rx = RtpSession(fmt, Player(np.zeros(0, dtype=np.int16)), codec=OpusCodec(32000, 1), rtcp_interval=1.0)
        leg.session = tx
        now = 10.0
        tx.start(now)
        rx.start(now)
        depth: list[tuple[float, int]] = []  # (seconds in, RED blocks behind the primary)
        for slot in range(20 * 50):
            t = slot * 0.02
            tx.tick(now)
            for data, _a, _r in tx.out:
                if data[1] & 0x7F == 63:  # RTP on the RED payload type (RTCP: 200-204)
                    pkt = RtpPacket.parse(data)
                    depth.append((t, len(parse_red(pkt.payload)) - 1))
                    if 3 <= t < 9 and pkt.sequence_number % 25 < 3:
                        continue  # lost
                rx.receive(data, ADDR, now + 0.001)
            tx.out.clear()
            rx.tick(now + 0.002)
            for data, _a, _r in rx.out:
                tx.receive(data, ADDR, now + 0.003)  # its RR (no RTP: rx sends nothing)
            rx.out.clear()
            leg._on_events(tx.events)  # what the media engine hands the leg
            tx.events.clear()
            now += 0.02
        deep = [t for t, d in depth if d == 3]
        print(f"RED 3 deep from {deep[0]:.2f} s to {deep[-1]:.2f} s (loss 3..9 s)" if deep else "never RED 3")
        assert {d for t, d in depth if 0.1 < t < 3} == {2}  # clean: the normal depth
        assert deep and 3 < deep[0] < 5.5  # from the first reports of the lossy stretch
        assert {d for t, d in depth if deep[0] <= t < 9} == {3}
        assert 9 < deep[-1] < 16 and {d for t, d in depth if t > deep[-1]} == {2}  # calm again
        assert RED_LOSSY == 0.03 and leg.stats()["red_distance"] == 2
    finally:
        leg.session = None
        await leg.close()


def test_runs_of_four_need_red_three_and_a_delay_that_covers_them(speech: np.ndarray,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten loss runs of 4 frames (explicit pattern): RED 3 deep + the LBRR in its oldest copy
    rebuild each run after the first (which raised the delay to cover 4); RED 2 leaves one frame
    of each concealed, and so does RED 3 with a delay that covers only 3 (the packet after a run
    comes when the run's first frame is already due)."""
    drop = {i for start in range(20, 400, 40) for i in range(start, start + 4)}

    def run(red: int, cover: int) -> tuple[float, RtpSession]:
        monkeypatch.setattr(JitterBuffer, "LOSS_COVER", cover)
        fmt = MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR,
                          red_pt=63, red_distance=red)
        tx_codec, rx_codec = OpusCodec(32000, 1), OpusCodec(32000, 1)
        tx_codec.enable_fec(10)
        pcm, rx, net = run_path(speech, fmt, tx_codec, rx_codec, "", jitter_adaptive=True, drop=drop)
        assert net.counters.dropped == rx.playout.jitter.stats().lost == 40
        return analysis.pesq_score(analysis.to_float(speech), analysis.to_float(pcm), 8000, mode="nb"), rx

    assert JitterBuffer.LOSS_COVER == 4
    (red3, rx3), (red2, rx2), (short, rxs) = run(3, 4), run(2, 4), run(3, 3)
    p3, p2, ps = rx3.playout, rx2.playout, rxs.playout
    print(f"runs of 4: RED 3 + cover 4 {red3:.2f} (RED {p3.red_recovered_frames}, FEC {p3.recovered_frames}, "
          f"concealed {p3.concealed_frames}); RED 2 {red2:.2f} (concealed {p2.concealed_frames}); "
          f"RED 3 + cover 3 {short:.2f} (concealed {ps.concealed_frames})")
    assert p3.red_recovered_frames == 30 and p2.red_recovered_frames == 20  # 3 resp. 2 copies a run
    # the first run is concealed (1 frame + the delay raised) and a quiet frame may carry no LBRR
    assert p3.concealed_frames <= 6 < 10 <= p2.concealed_frames
    assert ps.concealed_frames >= 10 and ps.recovered_frames == 0  # the FEC is there too late
    assert red3 > max(red2, short) + 0.2
