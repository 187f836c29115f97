"""RFC 4475 torture messages fed to a SipEndpoint as datagrams from 127.0.0.1:5999.

The messages live outside the repo (../shared/sip/rfc4475/*.dat, with EXPECTED.txt) and are never
copied here nor sent on a socket: they name foreign hosts. The table below is our reading of
EXPECTED.txt and, where it is empty, of RFC 4475 itself (section numbers in the comments).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.sip.auth import DigestChallenger, parse_credentials
from bridge.sip.endpoint import (
    DEFAULT_ALLOW,
    EndpointConfig,
    MessageDropped,
    RequestReceived,
    RequestRejected,
    SipEndpoint,
    SipEvent,
    UnmatchedResponse,
)
from bridge.sip.message import SipRequest, SipResponse, parse_message
from bridge.sip.uri import AbsoluteUri, SipUri

TORTURE = Path(__file__).resolve().parents[2].parent / "shared" / "sip" / "rfc4475"
SRC = ("127.0.0.1", 5999)
# The carrier is a registrar too, so REGISTER is served here (see test_register_not_served_is_405).
CONFIG = EndpointConfig(allow=DEFAULT_ALLOW + ("REGISTER",))

ACCEPT = "accept"      # RequestReceived: the application answers
RESPONSE = "response"  # a well-formed response, passed up as UnmatchedResponse
DROP = "drop"          # nothing sent, MessageDropped


@dataclass(frozen=True)
class Expect:
    outcome: str | int  # ACCEPT / RESPONSE / DROP, or the status the endpoint itself answers
    app_status: int = 200  # for ACCEPT: what our test application answers


EXPECTED: dict[str, Expect] = {
    # §3.1.1 valid messages: parsers must accept them
    "wsinv": Expect(ACCEPT), "escnull": Expect(ACCEPT), "lwsdisp": Expect(ACCEPT),
    "longreq": Expect(ACCEPT), "dblreq": Expect(ACCEPT), "semiuri": Expect(ACCEPT),
    "transports": Expect(ACCEPT), "mpart01": Expect(ACCEPT), "esc01": Expect(ACCEPT),
    "intmeth": Expect(501),     # §3.1.1.2: well formed, but an unknown method: an endpoint says 501
    "esc02": Expect(501),       # §3.1.1.5: "An endpoint would reject this message with a 501"
    "unreason": Expect(RESPONSE), "noreason": Expect(RESPONSE),
    # §3.1.2 invalid messages
    "badinv01": Expect(400), "clerr": Expect(400), "ncl": Expect(400), "scalar02": Expect(400),
    "scalarlg": Expect(DROP),   # a response: "simply discard it"
    "quotbal": Expect(400), "ltgtruri": Expect(400), "lwsruri": Expect(400),
    "lwsstart": Expect(400), "trws": Expect(400), "escruri": Expect(400), "baddate": Expect(400),
    "regbadct": Expect(400), "badaspec": Expect(400), "baddn": Expect(400),
    "badvers": Expect(505), "mismatch01": Expect(400), "mismatch02": Expect(501),
    "bigcode": Expect(DROP),
    # §3.2.1: reject statelessly (the branch is only the magic cookie)
    "badbranch": Expect(400),
    # §3.3 application-layer semantics
    "insuf": Expect(400),       # §3.3.1 no Call-ID/From/To
    "unkscm": Expect(416),      # §3.3.2
    "novelsc": Expect(416),     # §3.3.3
    "unksm2": Expect(ACCEPT),   # §3.3.4 parsers must not fail; To/From/Contact schemes are not ours to judge
    "bext01": Expect(420),      # §3.3.5 with Unsupported
    "invut": Expect(415),       # §3.3.6 with Accept: application/sdp
    "regaut01": Expect(ACCEPT, 401),  # §3.3.7 a registrar that cares re-challenges with Digest
    "multi01": Expect(400),     # §3.3.8
    "mcl01": Expect(400),       # §3.3.9
    "bcast": Expect(DROP),      # §3.3.10 a UA discards responses with more than one Via (§8.1.3.3)
    "zeromf": Expect(ACCEPT),   # §3.3.11 Max-Forwards 0 is for proxies; a UA answers normally
    "cparam01": Expect(ACCEPT), "cparam02": Expect(ACCEPT),  # §3.3.12/13
    "regescrt": Expect(ACCEPT),  # §3.3.14
    "sdp01": Expect(ACCEPT),    # §3.3.15 the application may answer 406 or without SDP
    "inv2543": Expect(ACCEPT),  # §3.4.1 RFC 2543 request (no branch, no Max-Forwards)
    # not an RFC 4475 message (no SIP-Version, no Via, no CSeq): nothing to answer to
    "test": Expect(DROP),
}

CHALLENGER = DigestChallenger(b"torture-test-secret-0123456789", "carrier.example")


def require_torture_dir() -> Path:
    if not TORTURE.is_dir():
        pytest.skip("../shared/sip/rfc4475 is absent: the RFC 4475 messages are not in this repo")
    return TORTURE


def drain(ep: SipEndpoint) -> list[SipEvent]:
    out = []
    while (ev := ep.next_event()) is not None:
        out.append(ev)
    return out


def application(ep: SipEndpoint, ev: RequestReceived, now: float) -> SipResponse:
    """What a simple UA/registrar on top of the endpoint answers."""
    if ev.request.method == "REGISTER" and "Authorization" in ev.request.headers \
            and parse_credentials(ev.request.headers.get("Authorization")) is None:
        return ep.respond(ev.key, 401, now, headers=[("WWW-Authenticate", v) for v in CHALLENGER.challenge(now)])
    return ep.respond(ev.key, 200, now)


def probe(ep: SipEndpoint, n: int, now: float) -> None:
    """An ordinary OPTIONS must still work after any torture message."""
    data = (f"OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKprobe{n}\r\n"
            f"Max-Forwards: 70\r\nTo: <sip:probe@127.0.0.1>\r\nFrom: <sip:t@127.0.0.1>;tag=p{n}\r\n"
            f"Call-ID: probe-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    ep.receive_datagram(data, SRC, now)
    events = drain(ep)
    assert len(events) == 1 and isinstance(events[0], RequestReceived), events
    ep.respond(events[0].key, 200, now)
    sent = ep.datagrams_to_send(now)
    assert len(sent) == 1 and sent[0][1] == SRC and sent[0][0].startswith(b"SIP/2.0 200 OK\r\n")


def check_one(ep: SipEndpoint, name: str, data: bytes, now: float) -> None:
    expect = EXPECTED[name]
    ep.receive_datagram(data, SRC, now)
    events = drain(ep)
    sent = ep.datagrams_to_send(now)
    assert all(addr == SRC for _, addr in sent), "responses go to the packet's source, never to Via hosts"
    # Rejections copy the (malformed) request headers as they are (§8.2.6.2): parse without validation.
    replies = [parse_message(d, validate=False) for d, _ in sent]
    assert all(isinstance(r, SipResponse) for r in replies)
    if expect.outcome == ACCEPT:
        assert [type(e) for e in events] == [RequestReceived], events
        ev = events[0]
        assert isinstance(ev, RequestReceived)
        assert [r.status for r in replies if isinstance(r, SipResponse)] == (
            [100] if ev.request.method == "INVITE" else [])
        resp = application(ep, ev, now)
        assert resp.status == expect.app_status
        out = ep.datagrams_to_send(now)
        assert len(out) == 1 and out[0][1] == SRC
        answer = parse_message(out[0][0])
        assert isinstance(answer, SipResponse) and answer.status == expect.app_status
        assert answer.call_id == ev.request.call_id and answer.to_tag
        top = answer.top_via
        assert top.received == "127.0.0.1"
    elif expect.outcome == RESPONSE:
        assert [type(e) for e in events] == [UnmatchedResponse] and not sent, events
    elif expect.outcome == DROP:
        assert [type(e) for e in events] == [MessageDropped] and not sent, events
    else:
        assert [type(e) for e in events] == [RequestRejected], events
        rejected = events[0]
        assert isinstance(rejected, RequestRejected) and rejected.status == expect.outcome
        assert len(replies) == 1
        reply = replies[0]
        assert isinstance(reply, SipResponse) and reply.status == expect.outcome and reply.reason
        if reply.status == 420:
            assert reply.headers.get_all("Unsupported") == ["nothingSupportsThis", "nothingSupportsThisEither"]
        if reply.status == 501:
            assert "INVITE" in (reply.headers.get("Allow") or "")
        if reply.status == 415:
            assert reply.headers.get("Accept") == "application/sdp"


def test_table_covers_every_file() -> None:
    directory = require_torture_dir()
    files = {p.stem for p in directory.glob("*.dat")}
    assert files == set(EXPECTED), files ^ set(EXPECTED)
    described = {line.split(":", 1)[0] for line in (directory / "EXPECTED.txt").read_text().splitlines()
                 if ":" in line}
    assert described <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torture_message(name: str) -> None:
    directory = require_torture_dir()
    path = directory / f"{name}.dat"
    if not path.exists():
        pytest.fail(f"{path} listed in the table but missing")
    ep = SipEndpoint(CONFIG)
    check_one(ep, name, path.read_bytes(), 0.0)
    probe(ep, 0, 0.0)


def test_all_messages_through_one_endpoint_then_timers() -> None:
    directory = require_torture_dir()
    ep = SipEndpoint(CONFIG)
    now = 0.0
    for n, name in enumerate(sorted(EXPECTED)):
        check_one(ep, name, (directory / f"{name}.dat").read_bytes(), now)
        probe(ep, n, now)
        # Many messages reuse "branch=z9hG4bKkdjuw" from the same host: on a real network they would
        # be far apart, so let every transaction and 2xx retransmission run out (64*T1) in between.
        now = run_timers(ep, now + 33.0)
    assert ep.get_timer() is None
    probe(ep, 999, now)


def run_timers(ep: SipEndpoint, until: float) -> float:
    """Fire every deadline up to `until`; nothing may raise. Returns `until`."""
    for _ in range(10_000):
        deadline = ep.get_timer()
        if deadline is None or deadline > until:
            break
        ep.handle_timer(deadline)
        ep.datagrams_to_send(deadline)
        drain(ep)
    return until


def test_parsed_details_of_valid_messages() -> None:
    directory = require_torture_dir()

    def load(name: str) -> SipRequest | SipResponse:
        return parse_message((directory / f"{name}.dat").read_bytes())

    def load_request(name: str) -> SipRequest:
        msg = load(name)
        assert isinstance(msg, SipRequest), name
        return msg

    wsinv = load("wsinv")
    assert (wsinv.cseq.seq, wsinv.cseq.method, wsinv.max_forwards) == (9, "INVITE", 68)
    assert [v.host for v in wsinv.vias] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert wsinv.from_.display_name == 'J Rosenberg \\"' and wsinv.to_tag == "1918181833n"
    assert wsinv.contacts[0].param("q") == "0.33" and wsinv.headers.get("Subject") == ""
    esc01 = load_request("esc01")
    assert isinstance(esc01.uri, SipUri) and esc01.uri.user == "sips:user@example.com"
    assert isinstance(esc01.to.uri, SipUri) and esc01.to.uri.user == "user"
    dblreq = load_request("dblreq")
    assert dblreq.method == "REGISTER" and dblreq.body == b""
    longreq = load("longreq")
    assert len(longreq.vias) == 34 and longreq.headers.get_all("Via")[0] == "SIP/2.0/TCP sip33.example.com"
    escnull = load("escnull")
    assert isinstance(escnull.to.uri, SipUri) and escnull.to.uri.user == "null-\x00-null"
    mpart01 = load("mpart01")
    assert len(mpart01.body) == 553 and mpart01.content_type is not None
    assert mpart01.content_type.mime == "multipart/mixed"
    unksm2 = load("unksm2")
    assert isinstance(unksm2.to.uri, AbsoluteUri) and unksm2.to.uri.scheme == "isbn"
    assert parse_credentials(load("regaut01").headers.get("Authorization")) is None
    noreason = load("noreason")
    assert isinstance(noreason, SipResponse) and noreason.status == 100 and noreason.reason == ""


def test_register_not_served_is_405_with_allow() -> None:
    directory = require_torture_dir()
    ep = SipEndpoint(EndpointConfig())  # default: no REGISTER (RFC 4475 §3.3.7: "A 405 ... is appropriate")
    ep.receive_datagram((directory / "regaut01.dat").read_bytes(), SRC, 0.0)
    (reply, addr), = ep.datagrams_to_send(0.0)
    resp = parse_message(reply)
    assert addr == SRC and isinstance(resp, SipResponse) and resp.status == 405
    assert "REGISTER" not in (resp.headers.get("Allow") or "") and "INVITE" in (resp.headers.get("Allow") or "")
