"""bridge.sip.message / headers / uri: real wire bytes in, typed values and bytes out."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bridge.sip.errors import MessageTooLarge, SipError, SipParseError, VersionNotSupported
from bridge.sip.headers import Headers, parse_via, split_list
from bridge.sip.message import (
    PartialMessage,
    SipRequest,
    SipResponse,
    StreamFramer,
    error_response,
    make_response,
    new_request,
    parse_message,
)
from bridge.sip.status import SipStatus, reason_phrase
from bridge.sip.uri import AbsoluteUri, NameAddr, SipUri, parse_name_addr, parse_uri

DATA = Path(__file__).resolve().parents[1] / "data" / "sip"


def wire(text: str) -> bytes:
    """Test messages are written with \\n; SIP needs CRLF."""
    return text.replace("\n", "\r\n").encode()


OPTIONS = wire("""OPTIONS sip:carrier@203.0.113.5 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKopt1
Max-Forwards: 70
To: <sip:carrier@203.0.113.5>
From: <sip:jego@192.0.2.10>;tag=ab12
Call-ID: opt-1@192.0.2.10
CSeq: 1 OPTIONS
Content-Length: 0

""")


# --- URIs --------------------------------------------------------------------------------------

def test_sip_uri_fields_and_escapes() -> None:
    uri = parse_uri("sip:alice%20smith:se%2Fcret@Example.COM:5070;transport=tcp;lr?subject=hi%20there&x=1")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip", "alice smith", "se/cret", "Example.COM", 5070)
    assert uri.param("TRANSPORT") == "tcp"
    assert uri.param("lr") == ""
    assert uri.param("maddr") is None
    assert uri.headers == (("subject", "hi there"), ("x", "1"))
    assert str(uri) == "sip:alice%20smith:se%2Fcret@Example.COM:5070;transport=tcp;lr?subject=hi%20there&x=1"
    assert parse_uri(str(uri)) == uri


def test_ipv6_reference_and_sips_and_tel() -> None:
    uri = parse_uri("sips:[2001:db8::10]:5061;maddr=[2001:db8::1]")
    assert isinstance(uri, SipUri)
    assert uri.host == "[2001:db8::10]" and uri.port == 5061 and uri.default_port == 5061
    assert uri.param("maddr") == "[2001:db8::1]"
    tel = parse_uri("tel:+86-10-6552-9988;phone-context=+86")
    assert isinstance(tel, SipUri) and tel.user == "+86-10-6552-9988" and tel.param("phone-context") == "+86"
    assert str(tel) == "tel:+86-10-6552-9988;phone-context=+86"


def test_unknown_scheme_is_opaque() -> None:
    uri = parse_uri("soap.beep://192.0.2.103:3002")
    assert isinstance(uri, AbsoluteUri) and uri.scheme == "soap.beep"
    assert str(uri) == "soap.beep://192.0.2.103:3002"


def test_escaped_user_round_trip_keeps_meaning() -> None:
    uri = parse_uri("sip:sips%3Auser%40example.com@example.net")
    assert isinstance(uri, SipUri) and uri.user == "sips:user@example.com" and uri.host == "example.net"
    assert parse_uri(str(uri)) == uri
    semi = parse_uri("sip:user;par=u%40example.net@example.com")
    assert isinstance(semi, SipUri) and semi.user == "user;par=u@example.net" and semi.params == ()


@pytest.mark.parametrize("bad", [
    "sip:", "sip:user@", "sip:user@host:99999", "sip:user@host:12a", "sip:a@b@c", "sip:[2001:db8::1",
    "sip:[zz::1]", "sip:user@-bad-.example.com", "sip:us er@example.com", "sip:user@host;;lr",
    "sip:user@host;=x", "sip:user@host?a", "sip:%zz@example.com", "sip:user@256.1.1.1", "1sip:x",
    "tel:abc-xyz", "<sip:user@example.com>",
])
def test_bad_uris_rejected(bad: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(bad)


def test_name_addr_forms() -> None:
    na = parse_name_addr('"Li \\"Wei\\"" <sip:liwei@jego.example>;tag=99;x="a b"')
    assert na.display_name == 'Li "Wei"' and na.tag == "99" and na.param("x") == '"a b"'
    assert parse_name_addr(str(na)) == na
    tokens = parse_name_addr("Li Wei <sip:liwei@jego.example>")
    assert tokens.display_name == "Li Wei" and tokens.tag is None
    spec = parse_name_addr("sip:liwei@jego.example;tag=7")  # addr-spec: ;tag is a header param
    assert isinstance(spec.uri, SipUri) and spec.uri.params == () and spec.tag == "7"
    assert str(NameAddr(parse_uri("sip:a@b")).with_tag("t1")) == "<sip:a@b>;tag=t1"


@pytest.mark.parametrize("bad", [
    'Bell, Alexander <sip:a@example.com>',          # ',' in an unquoted display name
    '"unbalanced <sip:a@example.com>',             # missing closing quote
    '< sip:a@example.com >',                        # whitespace inside <>
    'sip:a@example.com?Route=%3Csip:x%3E',          # '?' needs <>
    '<sip:a@example.com>;;',                        # empty parameter
    '<sip:a@example.com',                           # missing >
])
def test_bad_name_addrs_rejected(bad: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(bad)


# --- messages ----------------------------------------------------------------------------------

def test_parse_compact_forms_and_multivalue_from_file() -> None:
    msg = parse_message((DATA / "invite_compact.sip").read_bytes())
    assert isinstance(msg, SipRequest) and msg.method == "INVITE"
    assert isinstance(msg.uri, SipUri) and msg.uri.user == "+8613800138000" and msg.uri.param("user") == "phone"
    vias = msg.vias
    assert [v.branch for v in vias] == ["z9hG4bK776asdhds", "z9hG4bK-proxy-1", "z9hG4bK-ipv6"]
    assert vias[0].has_rport and vias[0].rport is None
    assert vias[2].host == "[2001:db8::9]" and vias[2].port == 5061 and vias[2].transport == "TCP"
    assert msg.headers.get("TO") == msg.headers.get("t") == "<sip:+8613800138000@carrier.example;user=phone>"
    assert msg.from_.display_name == "Li Wei" and msg.from_tag == "1928301774"
    assert msg.call_id == "a84b4c76e66710@192.0.2.10"
    assert (msg.cseq.seq, msg.cseq.method) == (314159, "INVITE")
    assert [c.param("q") for c in msg.contacts] == [None, "0.5"]
    assert msg.token_list("Supported") == ["timer", "100rel"]
    assert [str(r.uri) for r in msg.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert msg.content_type is not None and msg.content_type.mime == "application/sdp"
    assert msg.body.startswith(b"v=0\r\n") and msg.body.endswith(b"telephone-event/8000\r\n")
    names = [n for n, _ in msg.headers]
    assert "Via" in names and "Call-ID" in names and "i" not in names  # compact forms expanded


def test_round_trip_request_and_response() -> None:
    for path in sorted(DATA.glob("*.sip")):
        first = parse_message(path.read_bytes())
        again = parse_message(first.serialise())
        assert again == first, path.name
        assert first.serialise() == again.serialise()


def test_serialise_sets_content_length_and_crlf() -> None:
    req = new_request("MESSAGE", "sip:bob@example.com", from_="<sip:alice@example.com>",
                      to="<sip:bob@example.com>", body="你好".encode(), content_type="text/plain;charset=utf-8")
    req.headers.add("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx")
    req.headers.add("Content-Length", "999")  # wrong on purpose: serialise fixes it
    data = req.serialise()
    head, body = data.split(b"\r\n\r\n", 1)
    assert body == "你好".encode() and b"\r\nContent-Length: 6" in head and b"999" not in head
    assert b"\n" not in head.replace(b"\r\n", b"")
    parsed = parse_message(data)
    assert isinstance(parsed, SipRequest) and parsed.from_tag and parsed.body == body


def test_headers_case_insensitive_ordered_multimap() -> None:
    h = Headers([("via", "a"), ("X-Custom", "1"), ("VIA", "b"), ("x-custom", "2")])
    assert h.get_all("Via") == ["a", "b"] and h.get_all("v") == ["a", "b"]
    assert [n for n, _ in h] == ["Via", "X-Custom", "Via", "x-custom"]
    h.add("Via", "top", first=True)
    assert h.get("via") == "top"
    h.set_first("Via", "TOP")
    assert h.get_all("Via") == ["TOP", "a", "b"]
    h.set("x-CUSTOM", "3")
    assert h.get_all("X-Custom") == ["3"] and "x-custom" in h
    h.remove("v")
    assert "Via" not in h and len(h) == 1


def test_split_list_respects_quotes_and_brackets() -> None:
    assert split_list('"a, b" <sip:x@y>;p=1, <sip:u,v@w>, sip:z@q') == [
        '"a, b" <sip:x@y>;p=1', "<sip:u,v@w>", "sip:z@q"]
    assert split_list("") == [""]


def test_folding_and_whitespace_rules() -> None:
    data = wire("""OPTIONS sip:a@example.com SIP/2.0
Via  : SIP / 2.0 / UDP
   h.example.com ;branch = z9hG4bKfold
Subject: first
  second
To: <sip:a@example.com>
From: <sip:b@example.com>;tag=1
Call-ID: fold@x
CSeq: 7
 OPTIONS
Content-Length: 0

""")
    msg = parse_message(data)
    assert msg.top_via.host == "h.example.com" and msg.top_via.branch == "z9hG4bKfold"
    assert msg.headers.get("Subject") == "first   second"
    assert msg.cseq.seq == 7


def test_udp_body_rules_rfc3261_18_3() -> None:
    short = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 10")
    with pytest.raises(SipParseError) as exc:
        parse_message(short)
    assert exc.value.status == 400 and "shorter" in exc.value.reason
    extra = OPTIONS + b"garbage after the message"
    assert parse_message(extra).body == b""
    no_cl = OPTIONS.replace(b"Content-Length: 0\r\n", b"Content-Type: text/plain\r\n") + b"hello"
    assert parse_message(no_cl).body == b"hello"  # UDP without Content-Length: rest of datagram
    with pytest.raises(SipParseError):
        parse_message(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: -1"))
    with pytest.raises(SipParseError):
        parse_message(no_cl, stream=True)


def test_errors_carry_partial_for_responses() -> None:
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 99999999999 OPTIONS")
    with pytest.raises(SipParseError) as exc:
        parse_message(bad)
    partial = exc.value.partial
    assert isinstance(partial, PartialMessage) and partial.is_request
    resp = error_response(partial, exc.value)
    assert resp.status == 400 and "CSeq" in resp.reason
    assert resp.headers.get("Via") == "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKopt1"
    assert resp.to_tag  # a 400 gets a To tag


def test_version_and_start_line() -> None:
    with pytest.raises(VersionNotSupported) as exc:
        parse_message(OPTIONS.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1))
    assert exc.value.status == 505 and isinstance(exc.value.partial, PartialMessage)
    for bad_line in (b"OPTIONS  sip:carrier@203.0.113.5 SIP/2.0", b"OPTIONS sip:carrier@203.0.113.5 SIP/2.0 ",
                     b"OPTIONS <sip:carrier@203.0.113.5> SIP/2.0", b"OPTIONS sip:carrier@203.0.113.5"):
        with pytest.raises(SipParseError):
            parse_message(OPTIONS.replace(b"OPTIONS sip:carrier@203.0.113.5 SIP/2.0", bad_line))


def test_response_parse_and_status_rules() -> None:
    resp = parse_message((DATA / "response_180.sip").read_bytes())
    assert isinstance(resp, SipResponse) and resp.status == 180 and resp.reason == "Ringing"
    assert resp.to_tag == "a6c85cf" and resp.is_provisional
    for bad in (b"SIP/2.0 1800 Ringing", b"SIP/2.0 099 Low", b"SIP/2.0 18 Ringing", b"SIP/2.0 700 Big"):
        with pytest.raises(SipParseError):
            parse_message((DATA / "response_180.sip").read_bytes().replace(b"SIP/2.0 180 Ringing", bad))


def test_make_response_copies_rfc3261_8_2_6_headers() -> None:
    req = parse_message((DATA / "invite_compact.sip").read_bytes())
    assert isinstance(req, SipRequest)
    req.headers.add("Record-Route", "<sip:rr.example.com;lr>")
    resp = make_response(req, 180, to_tag="xyz")
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.to_tag == "xyz" and resp.from_tag == req.from_tag and resp.call_id == req.call_id
    assert str(resp.cseq) == "314159 INVITE" and resp.reason == "Ringing"
    assert resp.headers.get_all("Record-Route") == ["<sip:rr.example.com;lr>"]
    trying = make_response(req, 100, to_tag="xyz")
    assert trying.to_tag is None and "Record-Route" not in trying.headers


def test_error_response_headers_and_q850() -> None:
    req = parse_message(OPTIONS)
    assert isinstance(req, SipRequest)
    err = SipError(486, "Busy Here", q850=17, headers=[("Retry-After", "60")])
    resp = error_response(req, err)
    assert resp.status == 486 and resp.headers.get("Retry-After") == "60"
    assert resp.headers.get("Reason") == 'Q.850;cause=17;text="User busy"'
    assert SipStatus(487).phrase == "Request Terminated" and reason_phrase(499) == "Client Error"
    assert SipError(400, "bad\r\nInjected: 1").reason == "bad  Injected: 1"


def test_limits_are_bounded() -> None:
    many = OPTIONS.replace(b"Content-Length: 0\r\n", b"".join(b"X-H%d: v\r\n" % i for i in range(300))
                           + b"Content-Length: 0\r\n")
    with pytest.raises(SipParseError) as exc:
        parse_message(many)
    assert "header fields" in exc.value.reason
    huge = OPTIONS.replace(b"Content-Length: 0\r\n", b"X-Big: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n")
    with pytest.raises(MessageTooLarge) as big:
        parse_message(huge)
    assert big.value.status == 513


def test_duplicate_single_headers_and_missing_mandatory() -> None:
    dup = OPTIONS.replace(b"Call-ID: opt-1@192.0.2.10\r\n", b"Call-ID: a@b\r\nCall-ID: c@d\r\n")
    with pytest.raises(SipParseError, match="multiple Call-ID"):
        parse_message(dup)
    with pytest.raises(SipParseError, match="missing From"):
        parse_message(OPTIONS.replace(b"From: <sip:jego@192.0.2.10>;tag=ab12\r\n", b""))


def test_stream_framer_cuts_messages_and_rejects_bad_framing() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + OPTIONS + OPTIONS.replace(b"opt-1", b"opt-2")
    out: list[bytes] = []
    for i in range(0, len(stream), 7):  # byte dribble
        out += framer.feed(stream[i:i + 7])
    assert [parse_message(m, stream=True).call_id for m in out] == ["opt-1@192.0.2.10", "opt-2@192.0.2.10"]
    with pytest.raises(SipParseError):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(SipParseError):
        StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: five"))
    with pytest.raises(MessageTooLarge):
        StreamFramer(max_body_bytes=100).feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 101"))
    with pytest.raises(MessageTooLarge):
        StreamFramer().feed(b"X" * 70000)


def test_via_parse_and_params() -> None:
    via = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport=5070;received=198.51.100.1")
    assert via.rport == 5070 and via.received == "198.51.100.1" and via.sent_by == "192.0.2.1:5060"
    assert str(via.with_param("received", "203.0.113.9")).endswith("received=203.0.113.9")
    for bad in ("SIP/2.0/UDP", "SIP/2.0 192.0.2.1", "SIP/2.0/UDP 192.0.2.1;branch=",
                "SIP/2.0/UDP 192.0.2.1;received=not an ip", "SIP/2.0/UDP 192.0.2.1:70000"):
        with pytest.raises(SipParseError):
            parse_via(bad)


def test_random_mutations_never_raise_anything_but_sip_errors() -> None:
    rng = random.Random(4475)
    seeds = [OPTIONS] + [p.read_bytes() for p in sorted(DATA.glob("*.sip"))]
    parsed = 0
    for _ in range(600):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos:pos + rng.randint(1, 20)]
            else:
                data[pos:pos] = bytes(rng.choice(b":;,<>\"\\%@ \r\n\t") for _ in range(rng.randint(1, 4)))
        try:
            msg = parse_message(bytes(data))
        except SipError:
            continue
        assert msg.serialise()  # a parsed message always serialises
        parsed += 1
    assert 0 < parsed < 600  # the mutations hit both paths
