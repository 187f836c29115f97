"""RFC 3261 §17 timers for any T1/T2 (bridge/sip through SipEndpoint, virtual time): an INVITE is
retransmitted at T1, 2·T1, 4·T1 ... until Timer B (64·T1); a non-INVITE doubles up to T2 until
Timer F; a final response at any moment stops the retransmissions and is the only event; a
server transaction answers every retransmitted request with the same response, once to the TU.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sip.endpoint import (
    EndpointConfig,
    RequestReceived,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
    TransactionTimeout,
)
from bridge.sip.message import SipRequest, make_response, new_request, parse_message
from bridge.sip.transaction import TimerConfig

CARRIER = ("127.0.0.1", 5060)
PEER = ("127.0.0.1", 6000)
PROPS = settings(max_examples=60, deadline=None)
T1 = st.sampled_from([0.01, 0.1, 0.25, 0.5, 1.0, 2.0])


def drain(ep: SipEndpoint) -> list[SipEvent]:
    out = []
    while (ev := ep.next_event()) is not None:
        out.append(ev)
    return out


def run_until(ep: SipEndpoint, end: float) -> list[tuple[float, list[bytes], list[SipEvent]]]:
    log = []
    while (t := ep.get_timer()) is not None and t <= end:
        ep.handle_timer(t)
        log.append((t, [d for d, _ in ep.datagrams_to_send(t)], drain(ep)))
    return log


def endpoint(t1: float, t2_factor: int = 8) -> SipEndpoint:
    return SipEndpoint(EndpointConfig(timers=TimerConfig(t1=t1, t2=t1 * t2_factor, t4=t1 * 10)))


def request(method: str) -> SipRequest:
    return new_request(method, "sip:+8613800138000@carrier.example", from_="<sip:jego@jego.example>",
                       to="<sip:+8613800138000@carrier.example>", contact="<sip:jego@127.0.0.1:5070>")


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-9 * max(1.0, y) for x, y in zip(a, b, strict=True))


@PROPS
@given(T1)
def test_invite_timer_a_doubles_until_timer_b(t1: float) -> None:
    ep = endpoint(t1)
    key = ep.send_request(request("INVITE"), CARRIER, 0.0)
    wire = ep.datagrams_to_send(0.0)[0][0]
    log = run_until(ep, 100 * t1)
    sends = [t for t, ds, _ in log for d in ds if d == wire]
    assert close(sends, [t1 * (2**k - 1) for k in range(1, 7)])          # 1, 3, 7, 15, 31, 63 T1
    assert [(t, e) for t, _, es in log for e in es] == [(log[-1][0], TransactionTimeout(key))]
    assert abs(log[-1][0] - 64 * t1) < 1e-9 * 64 and ep.get_timer() is None


@PROPS
@given(T1, st.sampled_from([2, 4, 8]))
def test_non_invite_timer_e_doubles_up_to_t2_until_timer_f(t1: float, t2_factor: int) -> None:
    ep = endpoint(t1, t2_factor)
    key = ep.send_request(request("OPTIONS"), CARRIER, 0.0)
    wire = ep.datagrams_to_send(0.0)[0][0]
    log = run_until(ep, 100 * t1)
    sends = [t for t, ds, _ in log for d in ds if d == wire]
    want, t, interval = [], 0.0, t1
    while t + interval < 64 * t1 - 1e-9:
        t += interval
        want.append(t)
        interval = min(2 * interval, t2_factor * t1)
    assert close(sends, want)
    assert [e for _, _, es in log for e in es] == [TransactionTimeout(key)]


@PROPS
@given(T1, st.floats(0, 0.99), st.sampled_from([200, 404, 486, 503]), st.sampled_from(["INVITE", "OPTIONS"]))
def test_a_final_response_at_any_moment_stops_retransmission(t1: float, at: float, status: int, method: str) -> None:
    ep = endpoint(t1)
    key = ep.send_request(request(method), CARRIER, 0.0)
    wire = ep.datagrams_to_send(0.0)[0][0]
    when = at * 64 * t1                                   # before Timer B/F
    before = run_until(ep, when)
    out = parse_message(wire)
    assert isinstance(out, SipRequest)
    ep.receive_datagram(make_response(out, status, to_tag="far").serialise(), CARRIER, when)
    events = drain(ep)
    assert [(type(e), getattr(e, "key", None)) for e in events] == [(ResponseReceived, key)]
    ep.datagrams_to_send(when)   # a non-2xx INVITE answer is ACKed by the transaction (§17.1.1.3)
    after = run_until(ep, when + 200 * t1)
    assert not [d for _, ds, _ in after for d in ds if d == wire]        # no retransmission after it
    assert not [e for _, _, es in after for e in es if isinstance(e, TransactionTimeout)]
    assert all(t <= when for t, _, _ in before)


@PROPS
@given(T1, st.lists(st.floats(0, 30), min_size=1, max_size=6), st.sampled_from([200, 486]))
def test_a_server_transaction_answers_retransmissions_the_same(t1: float, gaps: list[float], status: int) -> None:
    ep = endpoint(t1)
    inv = request("OPTIONS")   # non-INVITE: the response is repeated until Timer J (§17.2.2)
    inv.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKsrv1", first=True)
    wire = inv.serialise()
    ep.receive_datagram(wire, PEER, 0.0)
    (ev,) = drain(ep)
    assert isinstance(ev, RequestReceived)
    resp = make_response(ev.request, status, to_tag="us")
    ep.send_response(ev.key, resp, 0.0)
    (first,) = [d for d, _ in ep.datagrams_to_send(0.0)]
    now = 0.0
    for g in gaps:
        now += g * t1
        if now >= 64 * t1:   # Timer J: the transaction is gone; a late copy is a new request
            break
        run_until(ep, now)
        ep.receive_datagram(wire, PEER, now)
        assert drain(ep) == []                                           # not again to the TU
        assert [d for d, _ in ep.datagrams_to_send(now)] == [first]      # the same answer
