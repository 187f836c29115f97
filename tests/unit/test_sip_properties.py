"""Property tests for the pure SIP core (bridge/sip): what is formatted parses back to the same
value (URIs, name-addrs, Via, CSeq, whole messages, Reason headers), the header multimap behaves
as a list of pairs, a stream cut anywhere frames the same messages, and no input makes a parser
raise anything but a SipError (which carries the 4xx the endpoint answers with).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.sip.causes import cause_for_sip, parse_reason_header, reason_header, sip_for_cause
from bridge.sip.errors import SipError, SipParseError
from bridge.sip.headers import (
    MAX_CSEQ,
    CSeq,
    Headers,
    Via,
    canonical_name,
    parse_cseq,
    parse_media_type,
    parse_token_list,
    parse_uint,
    parse_via,
    split_list,
)
from bridge.sip.message import (
    SipRequest,
    SipResponse,
    StreamFramer,
    error_response,
    make_response,
    new_request,
    parse_message,
)
from bridge.sip.status import SipStatus, reason_phrase
from bridge.sip.uri import (
    PARAM_CHARS,
    USER_CHARS,
    NameAddr,
    SipUri,
    drop_param,
    escape,
    get_param,
    is_token,
    is_valid_host,
    parse_name_addr,
    parse_uri,
    set_param,
    unescape,
)


def raised(fn: Callable[[], object]) -> SipError | None:
    """The SipError `fn()` raises, or None; any other exception fails the test."""
    try:
        fn()
    except SipError as exc:
        return exc
    return None


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies --------------------------------------------------------------------------------

TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "-.!%*_+`'~", min_size=1, max_size=12)
ALNUM = string.ascii_lowercase + string.digits
LABEL = st.builds(lambda a, mid, z: a + mid + z, st.sampled_from(string.ascii_lowercase),
                  st.text(alphabet=ALNUM + "-", max_size=8), st.sampled_from(ALNUM))
HOSTNAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
IPV4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
IPV6 = st.ip_addresses(v=6).map(lambda a: f"[{a.compressed}]")
HOST = st.one_of(HOSTNAME, IPV4, IPV6)
PORT = st.one_of(st.none(), st.integers(1, 65535))
# any text: escape() percent-encodes what the grammar does not allow
USER = st.text(min_size=1, max_size=16)
PARAM_NAME = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=8)
PARAM_VALUE = st.one_of(st.none(), st.text(min_size=1, max_size=10))


@st.composite
def params(draw: st.DrawFn, names: st.SearchStrategy[str] = PARAM_NAME,
           values: st.SearchStrategy[str | None] = PARAM_VALUE) -> tuple[tuple[str, str | None], ...]:
    keys = draw(st.lists(names, max_size=4, unique_by=str.lower))
    return tuple((k, draw(values)) for k in keys)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    scheme = draw(st.sampled_from(["sip", "sips"]))
    user = draw(st.one_of(st.none(), USER))
    password = draw(st.one_of(st.none(), st.text(min_size=1, max_size=8))) if user is not None else None
    headers = tuple(draw(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=8)), max_size=3)))
    return SipUri(scheme, user, draw(HOST), draw(PORT), password, draw(params()), headers)


DISPLAY = st.one_of(st.none(), st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
                                       min_size=1, max_size=16).map(str.strip).filter(bool))
# header params are written as tokens (tag=..., expires=...): values stay tokens here
HEADER_PARAMS = params(values=st.one_of(st.none(), TOKEN))


# --- URIs and name-addrs -----------------------------------------------------------------------

@PROPS
@given(sip_uris())
@example(SipUri("sip", "sips:user@example.com", "example.net"))
@example(SipUri("sip", "null-\x00-null", "example.com", params=(("lr", None),)))
def test_sip_uri_round_trips(uri: SipUri) -> None:
    text = str(uri)
    assert parse_uri(text) == uri
    assert str(parse_uri(text)) == text            # formatting is canonical: a second trip is stable


@PROPS
@given(st.text(alphabet=string.digits + "-.()", min_size=1, max_size=15), st.booleans())
def test_tel_uri_round_trips(digits: str, plus: bool) -> None:
    number = ("+" if plus else "") + digits
    uri = parse_uri(f"tel:{number}")
    assert isinstance(uri, SipUri) and (uri.scheme, uri.user, uri.host) == ("tel", number, "")
    assert str(uri) == f"tel:{number}"


@PROPS
@given(st.text(max_size=20))
def test_escape_unescape_round_trip(text: str) -> None:
    for allowed in (USER_CHARS, PARAM_CHARS, frozenset()):
        escaped = escape(text, allowed)
        assert unescape(escaped) == text
        assert all(c in allowed or c in "%0123456789ABCDEF" for c in escaped)


@PROPS
@given(sip_uris(), DISPLAY, HEADER_PARAMS)
def test_name_addr_round_trips(uri: SipUri, display: str | None, hparams: tuple[tuple[str, str | None], ...]) -> None:
    # a plain header param list never carries URI headers: they need the brackets (RFC 3261 §20.10)
    na = NameAddr(uri, display, hparams)
    back = parse_name_addr(str(na), "To")
    assert back.uri == uri and back.params == hparams
    assert back.display_name == display or (display is not None and back.display_name == display.strip())


@PROPS
@given(st.text(max_size=60))
@example("sip:@example.com")
@example("sip:a@b@c")
@example("sips:[2001:db8::1")
@example("sip:host:99999")
def test_parse_uri_raises_only_sip_parse_errors(text: str) -> None:
    uri = None
    error = raised(lambda: parse_uri(text))
    if error is None:
        uri = parse_uri(text)
        assert str(uri)   # what parsed can be formatted
    else:
        assert isinstance(error, SipParseError) and error.status == 400 and error.reason


@PROPS
@given(st.text(max_size=60))
def test_parse_name_addr_raises_only_sip_parse_errors(text: str) -> None:
    error = raised(lambda: parse_name_addr(text, "From"))
    assert error is None or (isinstance(error, SipParseError) and error.status == 400)


def test_host_validation() -> None:
    assert is_valid_host("example.com") and is_valid_host("a") and is_valid_host("192.0.2.1")
    assert is_valid_host("[2001:db8::1]") and is_valid_host("example.com.")
    assert not is_valid_host("256.1.1.1") and not is_valid_host("[2001:db8::1")
    assert not is_valid_host("[not-v6]") and not is_valid_host("ex ample.com") and not is_valid_host("")
    assert not is_valid_host("a" * 256)


@PROPS
@given(params(), PARAM_NAME, PARAM_VALUE)
def test_param_helpers_behave_as_a_case_insensitive_map(ps: tuple[tuple[str, str | None], ...], name: str,
                                                        value: str | None) -> None:
    after = set_param(ps, name.upper(), value)
    assert get_param(after, name) == ("" if value is None else value)
    assert len(after) == len(ps) + (0 if get_param(ps, name) is not None else 1)
    assert get_param(drop_param(after, name), name) is None
    others = [(k, v) for k, v in ps if k.lower() != name.lower()]
    assert [(k, v) for k, v in after if k.lower() != name.lower()] == others   # order kept


# --- headers -----------------------------------------------------------------------------------

NAMES = st.sampled_from(["Via", "via", "V", "Contact", "m", "Route", "X-Thing", "x-thing", "Subject", "s"])


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["add", "add_first", "set", "remove", "remove_first"]), NAMES,
                          st.text(alphabet=string.ascii_letters, min_size=1, max_size=5)), max_size=25))
def test_headers_behave_as_an_ordered_list_of_pairs(ops: list[tuple[str, str, str]]) -> None:
    """A reference model: a list of (canonical name, value), compared after every operation."""
    h = Headers()
    model: list[tuple[str, str]] = []
    for op, name, value in ops:
        key = canonical_name(name).lower()
        if op == "add":
            h.add(name, value)
            model.append((key, value))
        elif op == "add_first":   # before the first field of that name, else at the top
            h.add(name, value, first=True)
            model.insert(next((i for i, (k, _) in enumerate(model) if k == key), 0), (key, value))
        elif op == "set":
            h.set(name, value)
            first = next((i for i, (k, _) in enumerate(model) if k == key), None)
            model = [(k, v) for k, v in model if k != key]
            model.insert(first if first is not None else len(model), (key, value))
        elif op == "remove":
            h.remove(name)
            model = [(k, v) for k, v in model if k != key]
        else:
            h.remove_first(name)
            idx = next((i for i, (k, _) in enumerate(model) if k == key), None)
            if idx is not None:
                del model[idx]
        assert [(k.lower(), v) for k, v in h] == model
        assert h.get_all(name) == [v for k, v in model if k == key]
        assert h.count(name) == len(h.get_all(name)) and (name in h) == bool(h.get_all(name))
        assert h.get(name) == next((v for k, v in model if k == key), None)
    assert h.copy() == h


def test_compact_names_are_canonical() -> None:
    pairs = {"v": "Via", "m": "Contact", "f": "From", "t": "To", "i": "Call-ID", "l": "Content-Length",
             "c": "Content-Type", "k": "Supported", "s": "Subject", "call-id": "Call-ID", "CSEQ": "CSeq",
             "www-authenticate": "WWW-Authenticate"}
    for short, full in pairs.items():
        assert canonical_name(short) == full, short


@PROPS
@given(st.lists(st.one_of(TOKEN, st.builds(lambda t: f'"{t}"', st.text(alphabet="ab, ;", max_size=6)),
                          st.builds(lambda t: f"<sip:{t}@x>", st.text(alphabet="ab,;", max_size=6))),
                min_size=1, max_size=5))
def test_split_list_cuts_only_at_top_level_commas(items: list[str]) -> None:
    assert split_list(", ".join(items)) == items


@st.composite
def via_params(draw: st.DrawFn) -> tuple[tuple[str, str | None], ...]:
    """What RFC 3261 §20.42 / RFC 3581 allow: a valued branch, an address in received, rport empty
    or a port, and extension params."""
    out: list[tuple[str, str | None]] = [("branch", "z9hG4bK" + draw(TOKEN))]
    if draw(st.booleans()):
        out.append(("rport", draw(st.one_of(st.none(), st.integers(1, 65535).map(str)))))
    if draw(st.booleans()):
        out.append(("received", draw(st.one_of(IPV4, st.ip_addresses(v=6).map(str)))))
    if draw(st.booleans()):
        out.append(("x-ext", draw(st.one_of(st.none(), TOKEN))))
    return tuple(draw(st.permutations(out)))


@PROPS
@given(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]), HOST, PORT, via_params())
def test_via_round_trips(transport: str, host: str, port: int | None,
                         vparams: tuple[tuple[str, str | None], ...]) -> None:
    via = Via(transport, host, port, vparams)
    back = parse_via(str(via))
    assert back == via and str(back) == str(via)
    assert back.sent_by == f"{host.lower()}:{port or (5061 if transport == 'TLS' else 5060)}"


@pytest.mark.parametrize("bad", ["", "SIP/2.0/UDP", "SIP/2.0 host", "SIP/2.0/UDP host:70000",
                                 "SIP/2.0/UDP [::1", "SIP/2.0/UDP host;branch", "SIP/2.0/UDP host;rport=x",
                                 "SIP/2.0/UDP host;received=192.0.2.999", "SIP/2.0/UDP host;ttl=256"])
def test_bad_via_is_a_400(bad: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_via(bad)
    assert info.value.status == 400


@PROPS
@given(st.integers(0, MAX_CSEQ), TOKEN)
def test_cseq_round_trips(seq: int, method: str) -> None:
    assert parse_cseq(str(CSeq(seq, method))) == CSeq(seq, method)


@pytest.mark.parametrize("bad", ["", "1", "INVITE", "-1 INVITE", "2147483648 INVITE", "1 INV ITE",
                                 "١ INVITE", "99999999999 BYE", "1 INVITE extra"])
def test_bad_cseq_is_a_400(bad: str) -> None:
    with pytest.raises(SipParseError, match="CSeq"):
        parse_cseq(bad)


def test_uint_and_token_lists_and_media_types() -> None:
    assert parse_uint(" 70 ", "Max-Forwards", 255) == 70
    for bad in ("", "256", "-1", "7 0", "0x10", "²"):
        with pytest.raises(SipParseError, match="Max-Forwards"):
            parse_uint(bad, "Max-Forwards", 255)
    # the values as the parser stores them: one list element per entry (split_list ran first)
    assert parse_token_list(["100rel", "timer", "", "replaces"], "Supported") == ["100rel", "timer", "replaces"]
    with pytest.raises(SipParseError, match="Supported"):
        parse_token_list(["100rel", "ti mer"], "Supported")
    mt = parse_media_type("Application/SDP ; charset=utf-8")
    assert mt.mime == "application/sdp" and ("charset", "utf-8") in [(k.lower(), v) for k, v in mt.params]
    with pytest.raises(SipParseError, match="Content-Type"):
        parse_media_type("application")


# --- whole messages ----------------------------------------------------------------------------

@st.composite
def requests(draw: st.DrawFn) -> SipRequest:
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "REGISTER", "INFO", "MESSAGE"]))
    target = dataclasses.replace(draw(sip_uris()), headers=())   # no headers in a Request-URI (§19.1.1)
    frm = NameAddr(SipUri("sip", "alice", "example.com"), draw(DISPLAY))
    extra = draw(st.lists(st.tuples(st.sampled_from(["Subject", "X-Jego", "User-Agent", "Supported"]), TOKEN),
                          max_size=4))
    body = draw(st.binary(max_size=300))
    req = new_request(method, target, from_=frm, to=NameAddr(target), cseq=draw(st.integers(1, MAX_CSEQ)),
                      call_id=draw(TOKEN) + "@" + draw(HOSTNAME), headers=extra, body=body,
                      content_type="application/octet-stream" if body else None)
    req.headers.add("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{draw(TOKEN)}", first=True)
    return req


@PROPS
@given(requests())
def test_requests_round_trip_through_bytes(req: SipRequest) -> None:
    wire = req.serialise()
    back = parse_message(wire)
    assert isinstance(back, SipRequest)
    assert (back.method, back.uri, back.body) == (req.method, req.uri, req.body)
    assert (back.call_id, back.cseq, back.from_, back.to) == (req.call_id, req.cseq, req.from_, req.to)
    assert back.headers.get_all("Subject") == req.headers.get_all("Subject")
    assert int(back.headers.get("Content-Length") or "-1") == len(req.body)
    assert back.serialise() == wire


@PROPS
@given(requests(), st.sampled_from([100, 180, 183, 200, 202, 301, 404, 486, 488, 500, 503, 603]),
       st.one_of(st.none(), TOKEN))
def test_responses_round_trip_and_copy_the_dialog_headers(req: SipRequest, status: int, tag: str | None) -> None:
    resp = make_response(req, status, to_tag=tag)
    back = parse_message(resp.serialise())
    assert isinstance(back, SipResponse) and back.status == status and back.reason == resp.reason
    assert (back.call_id, back.cseq, back.from_) == (req.call_id, req.cseq, req.from_)  # RFC 3261 §8.2.6.2
    assert back.vias == req.vias
    if tag is not None and status > 100:
        assert back.to_tag == tag


@PROPS
@given(requests(), st.lists(st.integers(1, 40), max_size=30), st.integers(1, 3))
def test_stream_framer_frames_the_same_messages_however_the_bytes_are_cut(
        req: SipRequest, cuts: list[int], copies: int) -> None:
    stream = req.serialise() * copies
    framer = StreamFramer()
    out: list[bytes] = []
    pos = 0
    for n in cuts:
        out += framer.feed(stream[pos:pos + n])
        pos += n
    out += framer.feed(stream[pos:])
    assert out == [req.serialise()] * copies


VALID = (b"INVITE sip:+8613800138000@carrier.example SIP/2.0\r\n"
         b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc\r\nMax-Forwards: 70\r\n"
         b"From: <sip:jego@192.0.2.1>;tag=1\r\nTo: <sip:+8613800138000@carrier.example>\r\n"
         b"Call-ID: x@y\r\nCSeq: 1 INVITE\r\nContact: <sip:jego@192.0.2.1>\r\n"
         b"Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_parse_message_never_raises_anything_but_sip_errors_on_random_bytes(data: bytes) -> None:
    error = raised(lambda: parse_message(data))
    assert error is None or 400 <= error.status < 700


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 4),
                          st.binary(min_size=0, max_size=4)), min_size=1, max_size=6))
def test_mutated_messages_are_parsed_or_answered_with_a_status(edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(VALID)
    for pos, cut, insert in edits:
        data[pos:pos + cut] = insert
    error = raised(lambda: parse_message(bytes(data)))
    if error is None:
        msg = parse_message(bytes(data))
        assert parse_message(msg.serialise()).serialise() == msg.serialise()
    else:
        assert 400 <= error.status < 700 and error.reason
        assert "\r" not in error.reason and "\n" not in error.reason   # it goes into a status line


@PROPS
@given(st.binary(max_size=200), st.lists(st.integers(1, 50), max_size=10))
def test_stream_framer_raises_only_sip_errors(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(max_header_bytes=256, max_body_bytes=256)
    frames: list[bytes] = []

    def feed_all() -> None:
        pos = 0
        for n in [*cuts, len(data)]:
            frames.extend(framer.feed(data[pos:pos + n]))
            pos += n
    error = raised(feed_all)
    assert error is None or 400 <= error.status < 700
    assert all(b"\r\n\r\n" in f for f in frames)   # every frame holds a whole header block


def test_error_response_reason_never_breaks_the_status_line() -> None:
    req = parse_message(VALID)
    assert isinstance(req, SipRequest)
    resp = error_response(req, SipParseError("bad\r\nX-Injected: yes"))
    wire = resp.serialise()
    assert wire.split(b"\r\n", 1)[0].startswith(b"SIP/2.0 400 ")
    assert parse_message(wire).headers.get("X-Injected") is None


# --- status codes, causes, Reason --------------------------------------------------------------

@pytest.mark.parametrize("code", range(100, 700))
def test_every_status_code_has_words(code: int) -> None:
    words = reason_phrase(code)
    assert words and "\r" not in words and "\n" not in words
    if code in SipStatus._value2member_map_:
        assert words == SipStatus(code).phrase


def test_cause_mapping_is_total_and_lands_in_range() -> None:
    for cause in range(0, 128):   # 0: a normal clearing, the call ends with a BYE instead
        assert sip_for_cause(cause) == 0 or 400 <= sip_for_cause(cause) < 700, cause
    assert sip_for_cause(16) == 0
    for code in range(300, 700):
        assert 1 <= cause_for_sip(code) <= 127, code
    # RFC 3398 §7.2.4.1 / §8.2.6.1 anchors
    assert (sip_for_cause(17), sip_for_cause(1), sip_for_cause(34)) == (486, 404, 503)
    assert (cause_for_sip(486), cause_for_sip(404), cause_for_sip(480)) == (17, 1, 20)   # 480: the SBC default


@PROPS
@given(st.integers(1, 127), st.one_of(st.none(), st.text(max_size=30)))
def test_reason_header_round_trips(cause: int, text: str | None) -> None:
    value = reason_header(cause, text)
    assert "\r" not in value and "\n" not in value
    (proto, got, words), = parse_reason_header(value)
    assert proto.upper() == "Q.850" and got == cause
    if text is not None:   # control characters are dropped (they could end the header); the rest survives
        assert words == "".join(ch for ch in text if ch >= " " and ch != "\x7f")


@PROPS
@given(st.text(max_size=80))
def test_parse_reason_header_never_raises(value: str) -> None:
    for proto, cause, words in parse_reason_header(value):
        assert isinstance(proto, str) and (cause is None or isinstance(cause, int)) and isinstance(words, str)


def test_is_token() -> None:
    assert is_token("z9hG4bK-1.2!%*_+`'~") and not is_token("") and not is_token("a b")
    assert not is_token("a,b") and not is_token("é")
