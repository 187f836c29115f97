"""Property tests for the E.164 helper (jego_call/numbering: `normalise`, `e164_of`, `classify`)
and RTCP (bridge/rtp/rtcp): what a user can type gives E.164 or a NumberError with a kind,
E.164 is a fixed point, `classify` never raises; RTCP compounds round-trip and bad bytes are an
RtcpError, never anything else.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.rtp.rtcp import (
    COMPENSATION,
    Bye,
    OtherRtcp,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    Sdes,
    SenderReport,
    build_compound,
    ntp_from_seconds,
    ntp_middle,
    parse_compound,
    rtcp_interval,
)
from jego_call.numbering import NumberError, NumberInfo, classify, e164_of, normalise


def number_error(fn: Callable[[], object]) -> NumberError | None:
    """The NumberError `fn()` raises, or None; any other exception fails the test."""
    try:
        fn()
    except NumberError as exc:
        return exc
    return None


PROPS = settings(max_examples=200, deadline=None)

# what people type: digits with the separators and prefixes the module documents
TYPED = st.builds(lambda pre, body, sep: pre + sep.join(body[i:i + 4] for i in range(0, len(body), 4)),
                  st.sampled_from(["", "+", "+86", "0086", "00 86 ", "0", "+86 0", "+49", "001"]),
                  st.text(alphabet=string.digits, min_size=0, max_size=14), st.sampled_from(["", " ", "-", "."]))


@PROPS
@given(st.one_of(TYPED, st.text(max_size=20)), st.sampled_from(["CN", "DE", "US", "GB", "cn", ""]))
@example("138 0013 8000", "CN")
@example("010 6552 9988", "CN")
@example("+", "CN")
@example("+310000000", "CN")   # phonenumbers strips a Dutch trunk 0 twice: E.164 must be a fixed point
def test_normalise_gives_e164_or_a_number_error(dial: str, region: str) -> None:
    error = number_error(lambda: normalise(dial, region))
    if error is not None:   # the kind the API promises, and words for the user
        assert error.kind in {"invalid", "incomplete"} and error.message and error.dial_string == dial
        return
    e164 = normalise(dial, region)
    # E.164: at most 15 digits; short numbers keep their few ("110" -> "+86110")
    assert e164.startswith("+") and e164[1:].isdigit() and 4 <= len(e164) <= 16, e164
    assert normalise(e164, region) == e164           # E.164 is a fixed point, whatever the region
    assert e164_of(e164) == e164 and e164_of(e164 + ";isub=12") == e164


@PROPS
@given(st.text(max_size=24))
@example("")
@example("+")
@example("+86")
@example("+8613800138000")
def test_classify_never_raises_and_keeps_the_number(text: str) -> None:
    info = classify(text)
    assert isinstance(info, NumberInfo) and info.e164 == text and info.kind
    assert info.valid == (info.kind not in {"invalid", "incomplete", "unallocated"})
    if info.routable:
        assert info.valid and info.kind in {"mobile", "fixed", "satellite"}
    if not info.valid:
        assert info.reason, info   # the log and the error say why


@PROPS
@given(st.sampled_from(["130", "138", "150", "186", "199", "170"]), st.text(alphabet=string.digits, min_size=8,
                                                                           max_size=8))
def test_cn_mobiles_in_every_written_form_are_one_number(prefix: str, rest: str) -> None:
    national = prefix + rest
    want = "+86" + national
    forms = [national, f"+86{national}", f"0086{national}", f"+86 {national[:3]} {national[3:7]} {national[7:]}",
             f"{national[:3]}-{national[3:7]}-{national[7:]}", f"00 86 {national}"]
    assert {normalise(f) for f in forms} == {want}
    info = classify(want)
    assert info.national_number == national and info.international.replace(" ", "") == want


@PROPS
@given(st.one_of(st.none(), st.just(""), st.text(max_size=12)))
def test_e164_of_never_raises(raw: str | None) -> None:
    got = e164_of(raw)
    user = (raw or "").split(";", 1)[0].strip()
    if not raw:
        assert got == ""
    elif number_error(lambda: normalise(user)) is None:
        assert got == normalise(user)
    else:
        assert got == user   # no number: kept as it came (e.g. "anonymous")


def test_e164_of_keeps_what_is_no_number() -> None:
    assert e164_of("anonymous") == "anonymous" and e164_of(None) == "" and e164_of("  ") == ""
    assert e164_of("13800138000;isub=1") == "+8613800138000"


# --- RTCP --------------------------------------------------------------------------------------

U32 = st.integers(0, 0xFFFFFFFF)
BLOCK = st.builds(ReportBlock, U32, st.integers(0, 255), st.integers(-(2**23), 2**23 - 1), U32, U32, U32, U32)
BLOCKS = st.lists(BLOCK, max_size=4).map(tuple)
SDES_TEXT = st.binary(min_size=1, max_size=40)
REPORT = st.one_of(st.builds(SenderReport, U32, st.integers(0, 2**64 - 1), U32, U32, U32, BLOCKS),
                   st.builds(ReceiverReport, U32, BLOCKS))
OTHER = st.one_of(
    st.builds(lambda ssrc, items: Sdes(((ssrc, tuple((1 + i % 8, v) for i, v in enumerate(items))),)), U32,
              st.lists(SDES_TEXT, min_size=1, max_size=3)),
    st.builds(Bye, st.lists(U32, min_size=1, max_size=4).map(tuple),
              st.text(alphabet=string.ascii_letters + " ", max_size=30)),
    st.builds(OtherRtcp, st.sampled_from([204, 205, 206, 207]), st.binary(max_size=12).map(lambda b: b + b"\0" * (-len(b) % 4))),
)


@PROPS
@given(REPORT, st.lists(OTHER, max_size=3))
def test_compounds_round_trip(first: SenderReport | ReceiverReport, rest: list[RtcpPacket]) -> None:
    packets: list[RtcpPacket] = [first, *rest]
    data = build_compound(packets)
    assert len(data) % 4 == 0                     # RFC 3550 §6.1: 32-bit aligned
    assert parse_compound(data) == packets


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_parse_compound_raises_only_rtcp_errors(data: bytes) -> None:
    try:
        packets = parse_compound(data)
    except RtcpError:
        return   # a clean refusal; anything else fails the test
    assert packets and isinstance(packets[0], SenderReport | ReceiverReport)


@PROPS
@given(REPORT, st.integers(0, 200), st.integers(0, 255))
def test_corrupted_compounds_parse_or_fail_cleanly(first: SenderReport | ReceiverReport, pos: int, byte: int) -> None:
    data = bytearray(build_compound([first]))
    data[pos % len(data)] = byte
    parsed: list[object] | None = None
    refusal = ""
    try:
        parsed = list(parse_compound(bytes(data)))
    except RtcpError as exc:   # a clean refusal; any other exception fails the test
        refusal = str(exc) or type(exc).__name__
    assert refusal or parsed is not None


@PROPS
@given(st.floats(0, 2**31, allow_nan=False))
def test_ntp_arithmetic(seconds: float) -> None:
    ntp = ntp_from_seconds(seconds)
    assert 0 <= ntp < 2**64
    middle = ntp_middle(ntp)
    assert middle == (ntp >> 16) & 0xFFFFFFFF


@PROPS
@given(st.integers(1, 10_000), st.integers(0, 10_000), st.booleans(), st.booleans())
def test_rtcp_interval_is_bounded(members: int, senders: int, we_sent: bool, initial: bool) -> None:
    lo, hi = (0.0, 0.999999)
    tmin = 2.5 if initial else 5.0
    for rand in (lo, hi):   # App. A.7: [0.5, 1.5) times the deterministic interval, over e - 1.5
        t = rtcp_interval(members=members, senders=min(senders, members), rtcp_bw=400.0, we_sent=we_sent,
                          avg_rtcp_size=100.0, initial=initial, rand=rand)
        assert t >= tmin * 0.5 / COMPENSATION - 1e-9
    assert rtcp_interval(members=members, senders=0, rtcp_bw=400.0, we_sent=False, avg_rtcp_size=100.0,
                         initial=initial, rand=0.5) >= tmin / COMPENSATION - 1e-9


def test_bad_compounds_are_named() -> None:
    with pytest.raises(RtcpError):
        parse_compound(b"")
    with pytest.raises(ValueError, match="starts with an SR or RR"):   # a caller's bug, not bad input
        build_compound([Bye((1,))])
