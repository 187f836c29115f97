"""RFC 3261 §17 transactions through SipEndpoint, driven with an explicit clock (no sockets)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bridge.sip.endpoint import (
    CancelReceived,
    EndpointConfig,
    MessageDropped,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
    TransactionTimeout,
    UnmatchedResponse,
)
from bridge.sip.errors import CallDoesNotExist
from bridge.sip.message import SipRequest, SipResponse, make_response, new_request, parse_message
from bridge.sip.transaction import TimerConfig

PEER = ("127.0.0.1", 6000)
CARRIER = ("127.0.0.1", 5060)


def drain(ep: SipEndpoint) -> list[SipEvent]:
    out = []
    while (ev := ep.next_event()) is not None:
        out.append(ev)
    return out


def sent(ep: SipEndpoint, now: float = 0.0) -> list[SipRequest | SipResponse]:
    return [parse_message(data) for data, _ in ep.datagrams_to_send(now)]


def run_until(ep: SipEndpoint, end: float) -> list[tuple[float, list[bytes], list[SipEvent]]]:
    """Fire timers up to `end`; returns (time, datagrams, events) for each firing."""
    log = []
    while (t := ep.get_timer()) is not None and t <= end:
        ep.handle_timer(t)
        log.append((t, [d for d, _ in ep.datagrams_to_send(t)], drain(ep)))
    return log


def invite_bytes(branch: str = "z9hG4bKinv1", *, via_host: str = "192.0.2.10", cseq: int = 1,
                 call_id: str = "call-1@192.0.2.10", method: str = "INVITE", to_tag: str = "",
                 extra: str = "") -> bytes:
    to = "<sip:+8613800138000@carrier.example>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} sip:+8613800138000@carrier.example SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via_host}:5060;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nTo: {to}\r\n"
            f"From: <sip:jego@jego.example>;tag=caller1\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:jego@192.0.2.10:5060>\r\n{extra}"
            f"Content-Length: 0\r\n\r\n").encode()


def ack_for(response: SipResponse, branch: str = "z9hG4bKinv1") -> bytes:
    return (f"ACK sip:+8613800138000@carrier.example SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\r\nMax-Forwards: 70\r\n"
            f"To: {response.headers.get('To')}\r\nFrom: <sip:jego@jego.example>;tag=caller1\r\n"
            f"Call-ID: {response.call_id}\r\nCSeq: {response.cseq.seq} ACK\r\nContent-Length: 0\r\n\r\n").encode()


def uac_invite() -> SipRequest:
    return new_request("INVITE", "sip:+8613800138000@carrier.example", from_="<sip:jego@jego.example>",
                       to="<sip:+8613800138000@carrier.example>", contact="<sip:jego@127.0.0.1:5070>")


# --- client transactions -----------------------------------------------------------------------

def test_invite_client_retransmits_with_timer_a_and_times_out_with_timer_b() -> None:
    ep = SipEndpoint()
    key = ep.send_request(uac_invite(), CARRIER, 0.0)
    first = ep.datagrams_to_send(0.0)
    assert len(first) == 1 and first[0][1] == CARRIER
    log = run_until(ep, 40.0)
    retransmits = [t for t, datagrams, _ in log for d in datagrams if d == first[0][0]]
    assert retransmits == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    timeouts = [(t, ev) for t, _, evs in log for ev in evs if isinstance(ev, TransactionTimeout)]
    assert timeouts == [(32.0, TransactionTimeout(key))]
    assert ep.get_timer() is None


def test_non_invite_client_timer_e_capped_at_t2_and_timer_f() -> None:
    ep = SipEndpoint()
    req = new_request("OPTIONS", "sip:carrier.example", from_="<sip:jego@jego.example>",
                      to="<sip:carrier.example>")
    key = ep.send_request(req, CARRIER, 0.0)
    wire = ep.datagrams_to_send(0.0)[0][0]
    log = run_until(ep, 40.0)
    assert [t for t, ds, _ in log for d in ds if d == wire] == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, ev) for t, _, evs in log for ev in evs] == [(32.0, TransactionTimeout(key))]


def test_non_invite_client_proceeding_uses_t2_and_absorbs_retransmitted_final() -> None:
    ep = SipEndpoint(EndpointConfig(timers=TimerConfig(t1=0.5, t2=4.0, t4=5.0)))
    req = new_request("MESSAGE", "sip:bob@carrier.example", from_="<sip:a@jego.example>",
                      to="<sip:bob@carrier.example>", body=b"hi", content_type="text/plain")
    key = ep.send_request(req, CARRIER, 0.0)
    out = parse_message(ep.datagrams_to_send(0.0)[0][0])
    assert isinstance(out, SipRequest)
    ep.receive_datagram(make_response(out, 100).serialise(), CARRIER, 0.2)
    assert [type(e) for e in drain(ep)] == [ResponseReceived]
    log = run_until(ep, 9.0)
    # §17.1.2.2: the pending Timer E still fires, then it is reset to T2 each time
    assert [t for t, ds, _ in log if ds] == [0.5, 4.5, 8.5]
    final = make_response(out, 202, to_tag="x").serialise()
    ep.receive_datagram(final, CARRIER, 9.0)
    ep.receive_datagram(final, CARRIER, 9.1)
    events = drain(ep)
    assert [e.response.status for e in events if isinstance(e, ResponseReceived)] == [202]
    assert all(e.key == key for e in events if isinstance(e, ResponseReceived))
    assert run_until(ep, 9.0 + 5.0)[-1][0] == 14.0 and ep.get_timer() is None  # Timer K = T4


def test_no_retransmission_over_tcp() -> None:
    ep = SipEndpoint()
    key = ep.send_request(uac_invite(), CARRIER, 0.0, transport="tcp")
    assert ep.datagrams_to_send(0.0) == [] and len(ep.stream_messages_to_send(0.0)) == 1
    log = run_until(ep, 40.0)
    assert [(t, ds) for t, ds, _ in log] == [(32.0, [])]
    assert log[0][2] == [TransactionTimeout(key)]


def test_invite_client_acks_non_2xx_itself() -> None:
    ep = SipEndpoint()
    key = ep.send_request(uac_invite(), CARRIER, 0.0)
    inv = parse_message(ep.datagrams_to_send(0.0)[0][0])
    assert isinstance(inv, SipRequest)
    ep.receive_datagram(make_response(inv, 180, to_tag="callee").serialise(), CARRIER, 0.1)
    busy = make_response(inv, 486, to_tag="callee").serialise()
    ep.receive_datagram(busy, CARRIER, 0.2)
    events = drain(ep)
    assert [(type(e), e.response.status) for e in events if isinstance(e, ResponseReceived)] == [
        (ResponseReceived, 180), (ResponseReceived, 486)]
    (ack,) = sent(ep)
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.top_via.branch == inv.top_via.branch and ack.to_tag == "callee"  # §17.1.1.3
    assert ack.cseq.seq == inv.cseq.seq and ack.cseq.method == "ACK" and ack.uri == inv.uri
    ep.receive_datagram(busy, CARRIER, 1.0)  # retransmitted final: ACK again, no new event
    assert drain(ep) == [] and [m.method for m in sent(ep) if isinstance(m, SipRequest)] == ["ACK"]
    assert key.method == "INVITE"


def test_send_cancel_waits_for_provisional_rfc3261_9_1() -> None:
    ep = SipEndpoint()
    key = ep.send_request(uac_invite(), CARRIER, 0.0)
    inv = parse_message(ep.datagrams_to_send(0.0)[0][0])
    assert isinstance(inv, SipRequest)
    cancel_key = ep.send_cancel(key, 0.1)
    assert cancel_key is not None and ep.datagrams_to_send(0.1) == []
    ep.receive_datagram(make_response(inv, 100).serialise(), CARRIER, 0.2)
    (cancel,) = sent(ep)
    assert isinstance(cancel, SipRequest) and cancel.method == "CANCEL"
    assert cancel.top_via.branch == inv.top_via.branch and cancel.cseq.seq == inv.cseq.seq
    ep.receive_datagram(make_response(cancel, 200, to_tag="t").serialise(), CARRIER, 0.3)
    ep.receive_datagram(make_response(inv, 487, to_tag="t").serialise(), CARRIER, 0.3)
    statuses = [(e.key, e.response.status) for e in drain(ep) if isinstance(e, ResponseReceived)]
    assert statuses == [(key, 100), (cancel_key, 200), (key, 487)]


# --- server transactions -----------------------------------------------------------------------

def test_invite_server_trying_retransmission_absorbed_and_final_repeated() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(), PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestReceived) and ev.request.method == "INVITE" and ev.addr == PEER
    assert [m.status for m in sent(ep) if isinstance(m, SipResponse)] == [100]
    ep.receive_datagram(invite_bytes(), PEER, 0.3)  # retransmission: same branch
    assert drain(ep) == [] and [m.status for m in sent(ep) if isinstance(m, SipResponse)] == [100]
    ep.respond(ev.key, 486, 1.0)
    (busy,) = sent(ep, 1.0)
    assert isinstance(busy, SipResponse) and busy.status == 486 and busy.to_tag
    ep.receive_datagram(invite_bytes(), PEER, 1.2)
    assert [m.status for m in sent(ep) if isinstance(m, SipResponse)] == [486]
    log = run_until(ep, 10.0)  # Timer G: T1, 2T1, 4T1, capped at T2
    assert [t for t, ds, _ in log if ds] == [1.5, 2.5, 4.5, 8.5]
    ep.receive_datagram(ack_for(busy), PEER, 10.0)
    assert drain(ep) == []  # ACK absorbed by the transaction
    assert [t for t, ds, _ in run_until(ep, 40.0) if ds] == []  # no more retransmissions
    assert ep.get_timer() is None


def test_invite_server_timer_h_without_ack() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(), PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestReceived)
    ep.respond(ev.key, 404, 0.0)
    log = run_until(ep, 40.0)
    assert [(t, evs) for t, _, evs in log if evs] == [(32.0, [TransactionTimeout(ev.key)])]


def test_response_goes_to_source_not_via_and_via_is_stamped() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(via_host="198.51.100.77"), PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestReceived)
    ep.respond(ev.key, 480, 0.0)
    datagrams = ep.datagrams_to_send(0.0)
    assert [addr for _, addr in datagrams] == [PEER, PEER]
    resp = parse_message(datagrams[1][0])
    assert resp.top_via.received == "127.0.0.1" and resp.top_via.rport == 6000  # RFC 3581


def test_cancel_200_then_user_answers_487() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(), PEER, 0.0)
    (invite_ev,) = drain(ep)
    assert isinstance(invite_ev, RequestReceived)
    ep.respond(invite_ev.key, 180, 0.0)
    ep.datagrams_to_send(0.0)
    ep.receive_datagram(invite_bytes(method="CANCEL"), PEER, 1.0)
    (cancel_ev,) = drain(ep)
    assert isinstance(cancel_ev, CancelReceived) and cancel_ev.invite_key == invite_ev.key
    assert not cancel_ev.final_sent
    (ok,) = sent(ep, 1.0)
    assert isinstance(ok, SipResponse) and (ok.status, ok.cseq.method) == (200, "CANCEL")
    ep.respond(cancel_ev.invite_key, 487, 1.0)  # the user's one line
    (terminated,) = sent(ep, 1.0)
    assert isinstance(terminated, SipResponse) and (terminated.status, terminated.cseq.method) == (487, "INVITE")
    assert terminated.to_tag == ok.to_tag  # §9.2: same tag as the INVITE's responses
    ep.receive_datagram(ack_for(terminated), PEER, 1.1)
    assert drain(ep) == []


def test_cancel_without_invite_gets_481() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(method="CANCEL"), PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestRejected) and ev.status == 481
    assert [m.status for m in sent(ep) if isinstance(m, SipResponse)] == [481]


def test_non_invite_server_retransmissions_and_timer_j() -> None:
    ep = SipEndpoint()
    options = invite_bytes(method="OPTIONS", branch="z9hG4bKopt")
    ep.receive_datagram(options, PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestReceived)
    assert sent(ep) == []
    ep.receive_datagram(options, PEER, 0.1)  # Trying: absorbed silently
    assert drain(ep) == [] and sent(ep) == []
    resp = ep.respond(ev.key, 200, 0.2)
    assert resp.headers.get("Allow") and resp.headers.get("Accept") == "application/sdp"
    assert [m.status for m in sent(ep) if isinstance(m, SipResponse)] == [200]
    ep.receive_datagram(options, PEER, 5.0)  # Completed: the final response again
    assert [m.status for m in sent(ep) if isinstance(m, SipResponse)] == [200]
    run_until(ep, 40.0)
    ep.receive_datagram(options, PEER, 40.0)  # after Timer J: a new transaction
    assert [type(e) for e in drain(ep)] == [RequestReceived]


def test_reused_branch_for_other_request_is_rejected() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(method="OPTIONS", branch="z9hG4bKsame"), PEER, 0.0)
    ep.receive_datagram(invite_bytes(method="OPTIONS", branch="z9hG4bKsame", call_id="other@x"), PEER, 0.1)
    events = drain(ep)
    assert [type(e) for e in events] == [RequestReceived, RequestRejected]


def test_rfc2543_requests_match_without_branch() -> None:
    ep = SipEndpoint()
    legacy = invite_bytes().replace(b";branch=z9hG4bKinv1;rport", b"")
    ep.receive_datagram(legacy, PEER, 0.0)
    ep.receive_datagram(legacy, PEER, 0.4)
    events = drain(ep)
    assert [type(e) for e in events] == [RequestReceived]
    ev = events[0]
    assert isinstance(ev, RequestReceived)
    ep.respond(ev.key, 603, 0.5)
    busy = [m for m in sent(ep, 0.5) if isinstance(m, SipResponse) and m.status == 603][0]
    ep.receive_datagram(ack_for(busy).replace(b";branch=z9hG4bKinv1", b""), PEER, 0.6)
    assert drain(ep) == [] and [t for t, ds, _ in run_until(ep, 40.0) if ds] == []


# --- validation the endpoint does itself (§8.2) ------------------------------------------------

@pytest.mark.parametrize(("mutation", "status", "header"), [
    (lambda b: b.replace(b"Max-Forwards: 70", b"Require: 100rel, foo\r\nMax-Forwards: 70"), 420,
     ("Unsupported", "100rel")),
    (lambda b: b.replace(b"INVITE sip", b"FROB sip").replace(b"1 INVITE", b"1 FROB"), 501, ("Allow", None)),
    (lambda b: b.replace(b"INVITE sip", b"SUBSCRIBE sip").replace(b"1 INVITE", b"1 SUBSCRIBE"), 405,
     ("Allow", None)),
    (lambda b: b.replace(b"INVITE sip:+8613800138000@carrier.example", b"INVITE mailto:x@example.com"), 416,
     None),
    (lambda b: b.replace(b"Content-Length: 0\r\n\r\n", b"Content-Type: text/html\r\nContent-Length: 2\r\n\r\nhi"),
     415, ("Accept", "application/sdp")),
    (lambda b: b.replace(b" SIP/2.0\r\n", b" SIP/2.1\r\n", 1), 505, None),
    (lambda b: b.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), 400, None),
    (lambda b: b.replace(b"Max-Forwards: 70", b"X-Big: " + b"x" * 66000), 513, None),
])
def test_stateless_checks(mutation: Callable[[bytes], bytes], status: int,
                          header: tuple[str, str | None] | None) -> None:
    ep = SipEndpoint()
    ep.receive_datagram(mutation(invite_bytes()), PEER, 0.0)
    events = drain(ep)
    assert [type(e) for e in events] == [RequestRejected] and events[0].status == status  # type: ignore[union-attr]
    datagrams = ep.datagrams_to_send(0.0)
    assert len(datagrams) == 1 and datagrams[0][1] == PEER
    resp = parse_message(datagrams[0][0], validate=False)
    assert isinstance(resp, SipResponse) and resp.status == status
    if header is not None:
        name, value = header
        assert resp.headers.get(name) is not None
        if value is not None:
            assert value in (resp.headers.get(name) or "")


def test_in_dialog_request_for_unknown_dialog_is_easy_to_481() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(method="BYE", to_tag="nosuch"), PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestReceived) and ev.in_dialog and ev.dialog is None
    ep.reject(ev.key, CallDoesNotExist(), 0.0)
    (resp,) = sent(ep)
    assert isinstance(resp, SipResponse) and resp.status == 481 and resp.to_tag == "nosuch"


def test_responses_bad_or_stray() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(b"SIP/2.0 200 OK\r\nVia: broken\r\n\r\n", PEER, 0.0)
    inv = parse_message(invite_bytes())
    assert isinstance(inv, SipRequest)
    ep.receive_datagram(make_response(inv, 200, to_tag="x").serialise(), PEER, 0.0)
    events = drain(ep)
    assert [type(e) for e in events] == [MessageDropped, UnmatchedResponse]
    assert ep.datagrams_to_send(0.0) == []


def test_garbage_never_raises() -> None:
    ep = SipEndpoint()
    rng = random.Random(3261)
    base = invite_bytes()
    for i in range(500):
        if i % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:
            mutated = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(mutated))
                mutated[pos:pos + rng.randint(0, 3)] = bytes(rng.choice(b";,:<>\"% \r\n@=") for _ in range(2))
            data = bytes(mutated)
        ep.receive_datagram(data, PEER, i * 0.01)
        ep.datagrams_to_send(i * 0.01)
        drain(ep)
    ep.receive_datagram(invite_bytes(branch="z9hG4bKafter"), PEER, 10.0)
    assert any(isinstance(e, RequestReceived) for e in drain(ep))


def test_unanswered_non_invite_server_transaction_is_dropped() -> None:
    ep = SipEndpoint()
    ep.receive_datagram(invite_bytes(method="MESSAGE", branch="z9hG4bKmsg"), PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestReceived)
    run_until(ep, 40.0)
    assert ep.get_timer() is None
    with pytest.raises(KeyError):
        ep.respond(ev.key, 200, 40.0)
