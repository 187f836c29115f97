"""Property tests for the pure media cores: SDP offer/answer (bridge/sip/sdp), RTP and RFC 4733
packets (bridge/rtp/packet, dtmf), G.711 (bridge/rtp/g711) and the deadline scheduler
(bridge/rtp/schedule). Round trips hold for every value; bad input raises the module's own
error (a 400/488 for SDP, RtpParseError, DtmfError), never anything else.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.rtp import g711
from bridge.rtp.dtmf import DtmfError, DtmfReceiver, TelephoneEvent, digit_to_event, dtmf_packets, event_name
from bridge.rtp.packet import (
    PacketKind,
    RtpHeaderExtension,
    RtpPacket,
    RtpParseError,
    classify,
    seq_delta,
    ts_delta,
)
from bridge.rtp.schedule import Scheduler, align
from bridge.sip.errors import SipError
from bridge.sip.sdp import (
    Direction,
    SdpError,
    SdpNotAcceptable,
    SdpSession,
    answer_offer,
    build_offer,
    negotiated_from_answer,
)


def sdp_error(fn: Callable[[], object]) -> SdpError | None:
    """The SdpError `fn()` raises, or None; any other exception fails the test."""
    try:
        fn()
    except SdpError as exc:
        return exc
    return None


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DIRECTIONS: list[Direction] = ["sendrecv", "sendonly", "recvonly", "inactive"]
# RFC 3264 §6.1: the answerer's direction given the offer's (for an answerer that would sendrecv)
ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
ADDRESS = st.one_of(st.tuples(*[st.integers(1, 254)] * 4).map(lambda t: ".".join(map(str, t))),
                    st.ip_addresses(v=6).map(lambda a: a.compressed).filter(lambda a: a != "::"))
CODECS = st.lists(st.sampled_from(["PCMU", "PCMA"]), min_size=1, max_size=2, unique=True)


# --- SDP ---------------------------------------------------------------------------------------

@PROPS
@given(ADDRESS, st.integers(1024, 65534), CODECS, st.one_of(st.none(), st.integers(96, 127)),
       st.sampled_from([10, 20, 30, 40, 60]), st.sampled_from(DIRECTIONS), st.integers(0, 2**31))
def test_offer_serialises_and_parses_back(address: str, port: int, codecs: list[str], te: int | None,
                                          ptime: int, direction: Direction, version: int) -> None:
    offer = build_offer(address, port, codecs=codecs, telephone_event_pt=te, ptime=ptime,
                        direction=direction, session_version=version)
    text = offer.serialize()
    back = SdpSession.parse(text)
    assert back.serialize() == text
    audio = back.audio()
    assert audio is not None and audio.port == port and audio.ptime == ptime
    assert [c.encoding for c in audio.codecs][: len(codecs)] == codecs
    assert back.direction_for(audio) == direction
    conn = back.connection_for(audio)
    assert conn is not None and conn.address == address


@PROPS
@given(ADDRESS, st.integers(1024, 65534), CODECS, CODECS, st.booleans(), st.sampled_from(DIRECTIONS),
       st.integers(1024, 65534))
def test_offer_answer_agree_on_codec_port_and_directions(
        address: str, port: int, offered: list[str], supported: list[str], te: bool, direction: Direction,
        answer_port: int) -> None:
    offer = build_offer(address, port, codecs=offered, telephone_event_pt=101 if te else None,
                        direction=direction)
    common = [c for c in offered if c in supported]
    if not common:
        with pytest.raises(SdpNotAcceptable) as info:
            answer_offer(offer.serialize(), port=answer_port, supported=supported)
        assert info.value.status == 488
        return
    ans = answer_offer(offer.serialize(), address="127.0.0.1", port=answer_port, supported=supported)
    # RFC 3264 §6.1: the offerer's order wins; the answerer mirrors the direction
    assert ans.audio.codec == common[0] and ans.audio.payload_type == {"PCMU": 0, "PCMA": 8}[common[0]]
    assert (ans.audio.remote_host, ans.audio.remote_port) == (address, port)
    assert ans.audio.direction == ANSWER_DIRECTION[direction]
    assert ans.audio.telephone_event_pt == (101 if te else None)
    # and the offerer reads the same agreement back from the answer
    mine = negotiated_from_answer(ans.sdp.serialize(), offer, supported=offered)
    assert (mine.codec, mine.payload_type) == (ans.audio.codec, ans.audio.payload_type)
    assert (mine.remote_host, mine.remote_port) == ("127.0.0.1", answer_port)
    assert mine.direction == direction
    assert mine.send == (direction in ("sendrecv", "sendonly")) and mine.recv == (direction in ("sendrecv", "recvonly"))


@PROPS
@given(st.lists(st.sampled_from(["audio", "video", "application"]), min_size=1, max_size=4))
def test_answer_keeps_one_m_line_per_offered_and_rejects_the_others(kinds: list[str]) -> None:
    lines = ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"]
    for i, kind in enumerate(kinds):
        lines.append(f"m={kind} {20000 + 2 * i} RTP/AVP {0 if kind == 'audio' else 96}")
        if kind != "audio":
            lines.append("a=rtpmap:96 VP8/90000")
    offer = "\r\n".join(lines) + "\r\n"
    if "audio" not in kinds:
        with pytest.raises(SdpNotAcceptable):
            answer_offer(offer, port=30000)
        return
    ans = answer_offer(offer, port=30000)
    assert len(ans.sdp.media) == len(kinds)                                   # RFC 3264 §6
    assert ans.media_index == kinds.index("audio")
    assert [m.port for m in ans.sdp.media] == [30000 if i == ans.media_index else 0 for i in range(len(kinds))]


SDP_LINE = st.one_of(
    st.sampled_from(["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
                     "m=audio 4000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000",
                     "a=fmtp:101 0-16", "a=ptime:20", "a=sendonly", "c=IN IP4 0.0.0.0", "m=video 0 RTP/AVP 96",
                     "b=AS:64", "a=rtcp-mux", "m=audio 70000 RTP/AVP 0", "a=rtpmap:x", "a=ptime:abc",
                     "o=- x y IN IP4 a", "c=IN IP9 foo", "m=audio", "a=rtpmap:0 PCMU/notanumber"]),
    st.text(alphabet=string.printable, max_size=30))


@settings(max_examples=400, deadline=None)
@given(st.lists(SDP_LINE, max_size=14), st.sampled_from(["\r\n", "\n"]))
@example(["v=0"], "\r\n")
def test_sdp_parse_and_answer_raise_only_sdp_errors(lines: list[str], eol: str) -> None:
    text = eol.join(lines) + eol
    error = sdp_error(lambda: SdpSession.parse(text))
    if error is not None:
        assert error.status in (400, 413, 488) and error.reason
        return
    session = SdpSession.parse(text)
    assert SdpSession.parse(session.serialize()).serialize() == session.serialize()
    error = sdp_error(lambda: answer_offer(session, port=30000))
    if error is not None:
        assert error.status in (400, 488)
        return
    ans = answer_offer(session, port=30000)
    assert ans.audio.codec in ("PCMU", "PCMA") and ans.sdp.media[ans.media_index].port == 30000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_sdp_parse_raises_only_sdp_errors_on_bytes(data: bytes) -> None:
    error = sdp_error(lambda: SdpSession.parse(data))
    assert error is None or (isinstance(error, SipError) and error.status in (400, 413, 488))


def test_build_offer_refuses_what_it_cannot_offer() -> None:
    with pytest.raises(ValueError, match="PCMU/PCMA only"):
        build_offer("192.0.2.1", 4000, codecs=["G729"])
    with pytest.raises(ValueError, match="96..127"):
        build_offer("192.0.2.1", 4000, telephone_event_pt=95)
    assert "c=IN IP6 2001:db8::1" in build_offer("2001:db8::1", 4000).serialize()


# --- RTP packets -------------------------------------------------------------------------------

@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    ext = None
    if draw(st.booleans()):
        words = draw(st.integers(0, 4))
        ext = RtpHeaderExtension(draw(st.integers(0, 0xFFFF)), draw(st.binary(min_size=4 * words, max_size=4 * words)))
    return RtpPacket(
        # 64-95 would read as RTCP on a muxed port (RFC 5761 §4): dynamic types are 96-127
        payload_type=draw(st.one_of(st.integers(0, 63), st.integers(96, 127))),
        sequence_number=draw(st.integers(0, 0xFFFF)), timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)), payload=draw(st.binary(max_size=200)), marker=draw(st.booleans()),
        csrc=draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=15)), extension=ext,
        padding_size=draw(st.sampled_from([0, 0, 1, 4, 17])))


@PROPS
@given(rtp_packets())
def test_rtp_packets_round_trip(pkt: RtpPacket) -> None:
    wire = pkt.serialize()
    assert len(wire) == 12 + 4 * len(pkt.csrc) + (4 + len(pkt.extension.data) if pkt.extension else 0) \
        + len(pkt.payload) + pkt.padding_size
    assert wire[0] >> 6 == 2 and classify(wire) is PacketKind.RTP
    assert RtpPacket.parse(wire) == pkt


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_rtp_parse_raises_only_rtp_parse_errors(data: bytes) -> None:
    try:
        pkt = RtpPacket.parse(data)
    except RtpParseError:
        return   # any other exception fails the test
    assert RtpPacket.parse(pkt.serialize()) == pkt


@PROPS
@given(rtp_packets(), st.integers(0, 11), st.integers(0, 255))
def test_rtp_corrupted_headers_parse_or_fail_cleanly(pkt: RtpPacket, pos: int, byte: int) -> None:
    wire = bytearray(pkt.serialize())
    wire[pos] = byte
    parsed: RtpPacket | None = None
    refusal = ""
    try:
        parsed = RtpPacket.parse(bytes(wire))
    except RtpParseError as exc:   # a clean refusal; any other exception fails the test
        refusal = str(exc) or type(exc).__name__
    # Either refused with words, or a packet whose payload is at most the bytes after its header.
    assert refusal or (parsed is not None and len(parsed.payload) <= len(wire) - 12)


@PROPS
@given(st.integers(0, 0xFFFF), st.integers(-30000, 30000))
def test_sequence_arithmetic_wraps(a: int, step: int) -> None:
    assert seq_delta((a + step) & 0xFFFF, a) == step


@PROPS
@given(st.integers(0, 0xFFFFFFFF), st.integers(-(2**30), 2**30))
def test_timestamp_arithmetic_wraps(a: int, step: int) -> None:
    assert ts_delta((a + step) & 0xFFFFFFFF, a) == step


# --- RFC 4733 telephone-events -----------------------------------------------------------------

@PROPS
@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_telephone_event_round_trips(event: int, end: bool, volume: int, duration: int) -> None:
    ev = TelephoneEvent(event, end, volume, duration)
    wire = ev.serialize()
    assert len(wire) == 4 and TelephoneEvent.parse(wire + b"extra") == ev


@pytest.mark.parametrize("bad", [TelephoneEvent(256), TelephoneEvent(1, volume=64), TelephoneEvent(1, duration=-1),
                                 TelephoneEvent(1, duration=0x10000)])
def test_telephone_event_out_of_range_is_refused(bad: TelephoneEvent) -> None:
    with pytest.raises(DtmfError, match="out of range"):
        bad.serialize()


def test_digits_and_names() -> None:
    for i, d in enumerate("0123456789"):
        assert digit_to_event(d) == i and event_name(i) == d
    assert (digit_to_event("*"), digit_to_event("#"), event_name(10), event_name(11)) == (10, 11, "*", "#")
    assert [digit_to_event(d) for d in "ABCD"] == [12, 13, 14, 15] == [digit_to_event(d) for d in "abcd"]
    assert event_name(16) == "flash" and event_name(200) == "event-200"
    for bad in ("", "E", "12", " "):
        with pytest.raises(DtmfError):
            digit_to_event(bad)
    with pytest.raises(DtmfError, match="need 4"):
        TelephoneEvent.parse(b"\x01\x02")


@PROPS
@given(st.text(alphabet="0123456789*#ABCD", min_size=1, max_size=8), st.integers(0, 0xFFFFFFFF),
       st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF))
def test_dtmf_packets_are_received_as_the_digits_sent(digits: str, ssrc: int, ts0: int, seq0: int) -> None:
    """Sender and receiver agree however the timestamps and sequence numbers wrap (RFC 4733 §2.5)."""
    rx = DtmfReceiver()
    ts, seq = ts0, seq0
    for d in digits:
        for p in dtmf_packets(d):   # every packet of one event carries its start timestamp (§2.5.1.2)
            pkt = RtpPacket(101, seq & 0xFFFF, ts, ssrc, p.payload, marker=p.marker)
            back = RtpPacket.parse(pkt.serialize())
            rx.receive(back.payload, back.timestamp, ssrc=back.ssrc, marker=back.marker)
            rx.receive(back.payload, back.timestamp, ssrc=back.ssrc, marker=back.marker)   # duplicates
            seq += 1
        ts = (ts + 8000) & 0xFFFFFFFF
    assert rx.digits == [event_name(digit_to_event(d)) for d in digits]
    assert all(e.ended for e in rx.events) and rx.malformed == 0


# --- G.711 -------------------------------------------------------------------------------------

PCM = st.lists(st.integers(-32768, 32767), min_size=1, max_size=200)


@PROPS
@given(PCM)
def test_g711_quantisation_error_is_bounded_by_the_segment(samples: list[int]) -> None:
    """Each encoded sample comes back within half a step of its segment (G.711 tables): about 3 %
    of its magnitude, plus the smallest step near zero."""
    x = np.array(samples, dtype=np.int16)
    for enc, dec, floor in ((g711.ulaw_encode, g711.ulaw_decode, 8), (g711.alaw_encode, g711.alaw_decode, 16)):
        y = dec(enc(x)).astype(np.int32)
        err = np.abs(y - x.astype(np.int32))
        assert np.all(err <= np.abs(x.astype(np.int32)) / 16 + floor + 1), (x[err.argmax()], y[err.argmax()])


@PROPS
@given(PCM)
def test_g711_encoding_is_idempotent_after_one_pass(samples: list[int]) -> None:
    x = np.array(samples, dtype=np.int16)
    for enc, dec in ((g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)):
        once = enc(x)
        assert enc(dec(once)) == once and len(once) == len(samples)


def test_g711_decoding_tables_are_sign_symmetric() -> None:
    """Flipping a code's sign bit (0x80) negates its value, for all 256 codes of both laws; the
    encoders' rounding near zero follows the reference (audioop) and is not symmetric."""
    codes = bytes(range(256))
    flipped = bytes(c ^ 0x80 for c in codes)
    for dec in (g711.ulaw_decode, g711.alaw_decode):
        assert np.array_equal(dec(codes).astype(np.int32), -dec(flipped).astype(np.int32))
    assert int(g711.ulaw_decode(b"\xff")[0]) == 0 and int(g711.alaw_decode(b"\xd5")[0]) == 8


def test_g711_codec_lookup() -> None:
    assert g711.silence_payload("PCMU", 160) == g711.ulaw_encode(np.zeros(160, dtype=np.int16))
    assert g711.silence_payload(8, 80) == g711.alaw_encode(np.zeros(80, dtype=np.int16))
    assert g711.decoder_for("pcma") is g711.decoder_for(8)
    with pytest.raises((KeyError, ValueError)):
        g711.encoder_for("G729")


# --- the deadline scheduler --------------------------------------------------------------------

@PROPS
@given(st.lists(st.tuples(st.integers(0, 9), st.one_of(st.none(), st.floats(0, 100))), max_size=40),
       st.floats(0, 100))
def test_scheduler_matches_a_dict_model(ops: list[tuple[int, float | None]], now: float) -> None:
    sched: Scheduler[int] = Scheduler(tolerance=0.0)
    model: dict[int, float] = {}
    for key, due in ops:
        sched.set(key, due)
        if due is None:
            model.pop(key, None)
        else:
            model[key] = due
        assert len(sched) == len(model) and sched.next_deadline() == (min(model.values()) if model else None)
        assert all(sched.deadline(k) == v for k, v in model.items())
    due_now = sched.pop_due(now)
    assert sorted(due_now) == sorted(k for k, v in model.items() if v <= now)
    assert [model[k] for k in due_now] == sorted(model[k] for k in due_now)       # earliest first
    assert all(k not in sched for k in due_now) and len(sched) == len(model) - len(due_now)


@PROPS
@given(st.floats(0, 1e6), st.floats(0, 1e6), st.sampled_from([0.01, 0.02, 0.03]))
def test_align_lands_on_the_grid_at_or_after_now(now: float, origin: float, period: float) -> None:
    t = align(now, origin, period)
    if now <= origin:
        assert t == origin
        return
    k = (t - origin) / period
    assert abs(k - round(k)) < 1e-6 * max(1.0, k)            # on the grid
    assert now - 1e-6 <= t < now + period + 1e-6             # the first grid point at or after now
