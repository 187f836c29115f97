"""SDP parse/serialise (RFC 4566) and audio offer/answer (RFC 3264) on real-world offers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.sip.errors import SipError
from bridge.sip.sdp import (
    MAX_SDP_BYTES,
    SdpError,
    SdpNotAcceptable,
    SdpParseError,
    SdpSession,
    answer_offer,
    build_offer,
    negotiated_from_answer,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sdp"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def sdp(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


BASE = ("v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0")


def test_parse_chrome_offer() -> None:
    s = SdpSession.parse(load("chrome_offer.sdp"))
    assert s.origin.session_id == 4611731400430051336
    audio = s.audio()
    assert audio is not None and audio.proto == "UDP/TLS/RTP/SAVPF"
    assert audio.payload_types == [111, 63, 9, 0, 8, 13, 110, 126]
    assert [c.encoding for c in audio.codecs] == [
        "opus",
        "red",
        "G722",
        "PCMU",
        "PCMA",
        "CN",
        "telephone-event",
    ] + ["telephone-event"]
    assert audio.rtpmaps[111].channels == 2 and audio.fmtp[111] == "minptime=10;useinbandfec=1"
    assert audio.direction == "sendrecv" and audio.attribute("rtcp-mux") == ""
    # Round trip: serialise then parse gives the same structure, byte-exact with the CRLF input.
    crlf = load("chrome_offer.sdp").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert s.serialize().encode() == crlf
    assert SdpSession.parse(s.serialize()) == s


def test_chrome_offer_is_488_on_the_plain_rtp_trunk_but_codec_choice_is_pcmu() -> None:
    with pytest.raises(SdpNotAcceptable) as err:
        answer_offer(load("chrome_offer.sdp"), port=4000)
    assert err.value.status == 488 and "transport" in err.value.reason
    # With the WebRTC profile allowed, the first codec in Chrome's order we support is PCMU,
    # and the telephone-event PT is Chrome's 8 kHz one (126), not ours.
    ans = answer_offer(load("chrome_offer.sdp"), port=4000, profiles=("UDP/TLS/RTP/SAVPF",))
    assert (ans.audio.codec, ans.audio.payload_type, ans.audio.telephone_event_pt) == ("PCMU", 0, 126)
    assert ans.audio.remote is None  # c=0.0.0.0 with trickle: nowhere to send yet


def test_answer_sipp_offer() -> None:
    ans = answer_offer(load("sipp_offer.sdp"), address="127.0.0.1", port=40000, session_id=7)
    a = ans.audio
    assert (a.remote, a.codec, a.payload_type, a.telephone_event_pt) == (("127.0.0.1", 6000), "PCMU", 0, 101)
    assert a.direction == "sendrecv" and a.send and a.recv and a.ptime == 20
    text = ans.sdp.serialize()
    assert "m=audio 40000 RTP/AVP 0 101\r\n" in text
    assert "a=rtpmap:101 telephone-event/8000\r\n" in text and "a=fmtp:101 0-15\r\n" in text
    assert text.startswith("v=0\r\no=- 7 0 IN IP4 127.0.0.1\r\ns=") and "\r\nc=IN IP4 127.0.0.1\r\n" in text
    # The answer parses back, and the offerer's view of it is consistent.
    offer = SdpSession.parse(load("sipp_offer.sdp"))
    back = negotiated_from_answer(text, offer)
    assert (back.remote, back.codec, back.telephone_event_pt) == (("127.0.0.1", 40000), "PCMU", 101)


def test_offerer_order_wins() -> None:
    offer = sdp(*BASE, "m=audio 6000 RTP/AVP 8 0 96", "a=rtpmap:96 telephone-event/8000")
    ans = answer_offer(offer, port=5000, supported=["PCMU", "PCMA"])
    assert (ans.audio.codec, ans.audio.payload_type, ans.audio.telephone_event_pt) == ("PCMA", 8, 96)
    # Static PTs without rtpmap are understood (RFC 3551 table 4).
    assert ans.sdp.media[0].formats == ["8", "96"]


def test_g729_only_is_488_with_warning() -> None:
    with pytest.raises(SdpNotAcceptable) as err:
        answer_offer(load("g729_offer.sdp"), port=4000)
    e = err.value
    assert isinstance(e, SipError) and isinstance(e, ValueError)
    assert e.status == 488 and "G729" in e.reason and e.q850 == 65
    assert e.headers[0][0] == "Warning" and e.headers[0][1].startswith("305 ")


def test_video_only_is_488() -> None:
    offer = sdp(*BASE, "m=video 6002 RTP/AVP 96", "a=rtpmap:96 VP8/90000")
    with pytest.raises(SdpNotAcceptable) as err:
        answer_offer(offer, port=4000)
    assert err.value.status == 488 and err.value.warning == 304
    with pytest.raises(SdpNotAcceptable):
        answer_offer(sdp(*BASE), port=4000)  # no m-line at all


def test_port_zero_audio_is_skipped_and_other_lines_rejected_in_answer() -> None:
    offer = sdp(*BASE, "m=audio 0 RTP/AVP 0", "m=video 6002 RTP/AVP 96", "m=audio 6004 RTP/AVP 8 0")
    ans = answer_offer(offer, port=4000)
    assert ans.media_index == 2 and ans.audio.codec == "PCMA"
    assert [m.port for m in ans.sdp.media] == [0, 0, 4000]  # RFC 3264 §6: same number of m-lines
    with pytest.raises(SdpNotAcceptable) as err:
        answer_offer(sdp(*BASE, "m=audio 0 RTP/AVP 0"), port=4000)
    assert "port 0" in err.value.reason


@pytest.mark.parametrize(
    ("extra", "ours", "send"),
    [
        (("a=sendonly",), "recvonly", False),
        (("a=recvonly",), "sendonly", True),
        (("a=inactive",), "inactive", False),
        ((), "sendrecv", True),
    ],
)
def test_directions(extra: tuple[str, ...], ours: str, send: bool) -> None:
    ans = answer_offer(sdp(*BASE, "m=audio 6000 RTP/AVP 0", *extra), port=4000)
    assert ans.audio.direction == ours and ans.audio.send is send
    assert f"a={ours}\r\n" in ans.sdp.serialize()


def test_old_style_hold_c_zero() -> None:
    offer = sdp(
        "v=0", "o=- 1 2 IN IP4 10.0.0.1", "s=-", "c=IN IP4 0.0.0.0", "t=0 0", "m=audio 6000 RTP/AVP 0"
    )
    a = answer_offer(offer, port=4000).audio
    assert a.remote is None and not a.send and a.direction == "recvonly"


def test_hold_offer_we_build() -> None:
    offer = build_offer("127.0.0.1", 4000, direction="sendonly", session_id=5, session_version=1)
    text = offer.serialize()
    assert "m=audio 4000 RTP/AVP 0 8 101\r\n" in text and "a=sendonly\r\n" in text
    ans = answer_offer(text, port=6000)
    assert ans.audio.direction == "recvonly"
    mine = negotiated_from_answer(ans.sdp.serialize(), offer)
    assert mine.direction == "sendonly" and mine.remote == ("127.0.0.1", 6000)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("", "empty"),
        (sdp("o=- 1 1 IN IP4 1.2.3.4", "s=-", "t=0 0"), "no v="),
        (sdp("v=0", "s=-", "t=0 0"), "no o="),
        (sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "t=0 0"), "no s="),
        (sdp("v=0", "o=- 1 1 IN IP4 1.2.3.4", "s=-"), "no t="),
        (sdp(*BASE, "m=audio 70000 RTP/AVP 0"), "port > 65535"),
        (sdp(*BASE, "m=audio -1 RTP/AVP 0"), "negative port"),
        (sdp(*BASE, "m=audio 6000 RTP/AVP 128"), "PT > 127"),
        (sdp(*BASE, "m=audio 6000 RTP/AVP ²"), "unicode digit"),
        (sdp(*BASE, "m=audio 6000 RTP/AVP " + " ".join(["0"] * 1000)), "1000 codecs"),
        (sdp(*BASE, "garbage line"), "not type=value"),
        (sdp(*BASE, "c=IN IP4"), "bad c="),
        (sdp(*BASE, *[f"m=audio {6000 + i} RTP/AVP 0" for i in range(65)]), "65 media"),
        (sdp(*BASE, "m=audio 6000 RTP/AVP 0", *["a=x"] * 257), "257 attributes"),
    ],
)
def test_malformed_is_400(body: str, why: str) -> None:
    with pytest.raises(SdpParseError) as err:
        SdpSession.parse(body)
    assert err.value.status == 400


def test_oversize_is_rejected_before_parsing() -> None:
    big = sdp(*BASE, "m=audio 6000 RTP/AVP 0") + "a=x\r\n" * (MAX_SDP_BYTES // 5 + 1)
    with pytest.raises(SdpParseError) as err:
        SdpSession.parse(big.encode())
    assert "exceeds" in err.value.reason
    with pytest.raises(SdpError):
        SdpSession.parse(b"v=0\r\n\xff\xfe")


def test_bad_rtpmap_lines_are_ignored() -> None:
    s = SdpSession.parse(
        sdp(*BASE, "m=audio 6000 RTP/AVP 0 96", "a=rtpmap:96 foo/0", "a=rtpmap:200 PCMU/8000", "a=rtpmap:x")
    )
    audio = s.audio()
    assert audio is not None and audio.rtpmaps == {} and [c.encoding for c in audio.codecs] == ["PCMU"]
    assert answer_offer(s, port=4000).audio.codec == "PCMU"


def test_lf_only_and_ptime() -> None:
    s = SdpSession.parse(
        "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\nm=audio 1 RTP/AVP 0\na=ptime:30\n"
    )
    audio = s.audio()
    assert audio is not None and audio.ptime == 30
