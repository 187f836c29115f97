"""bridge/net/sip_transport.py with real sockets on 127.0.0.1: a malformed request that carries a
Via is answered (400 with the reason, 505 for another SIP version, 501 for an unknown method) on
the socket it came from, and reported as RequestRejected; what cannot be answered (no Via, not
SIP at all, a stray response) is dropped with an event; the transport keeps serving after every
one; `on_event` replaces the queue; UDP-only and TCP-only listeners; a TCP send to a peer with no
connection opens one, and a refused one drops what was waiting.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.net.sip_transport import SipTransport
from bridge.sip.endpoint import (
    MessageDropped,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
    UnmatchedResponse,
)
from bridge.sip.message import new_request, parse_message


@pytest.fixture
async def transport() -> AsyncIterator[SipTransport]:
    t = SipTransport(SipEndpoint(), "127.0.0.1", 0)
    await t.start()
    yield t
    await t.close()


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    """A plain UDP socket on 127.0.0.1: the misbehaving peer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    yield s
    s.close()


def request(port: int, branch: str, *, drop: tuple[str, ...] = (), add: tuple[str, ...] = (),
            method: str = "OPTIONS", version: str = "SIP/2.0", cseq_method: str | None = None,
            length: int | None = 0, body: bytes = b"") -> bytes:
    lines = [f"{method} sip:x@127.0.0.1 {version}",
             f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport",
             "To: <sip:x@127.0.0.1>", "From: <sip:y@127.0.0.1>;tag=1", f"Call-ID: {branch}@x",
             f"CSeq: 1 {cseq_method or method}", "Max-Forwards: 70"]
    lines = [h for h in lines if not any(h.startswith(d + ":") for d in drop)] + list(add)
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def next_event(t: SipTransport) -> SipEvent:
    async with asyncio.timeout(3):
        return await t.events.get()


async def answer(s: socket.socket) -> bytes:
    async with asyncio.timeout(3):
        return await asyncio.get_running_loop().sock_recv(s, 65535)


def send(s: socket.socket, t: SipTransport, data: bytes) -> None:
    s.sendto(data, ("127.0.0.1", t.udp_port))


async def still_serving(t: SipTransport, s: socket.socket, branch: str) -> None:
    """A good OPTIONS gets through as RequestReceived and our 200 comes back to the peer."""
    port = s.getsockname()[1]
    send(s, t, request(port, branch))
    ev = await next_event(t)
    assert isinstance(ev, RequestReceived) and ev.request.call_id == f"{branch}@x", ev
    t.endpoint.respond(ev.key, 200, t.now())
    t.flush()
    resp = parse_message(await answer(s))
    assert resp.status == 200 and resp.call_id == f"{branch}@x"  # type: ignore[union-attr]


@pytest.mark.parametrize(("name", "status", "reason"), [
    ("nocallid", 400, "missing Call-ID header"),
    ("badcseq", 400, "CSeq: must be a number and a method"),
    ("mismatch", 400, "CSeq method does not match the request method"),
    ("short", 400, "body shorter than Content-Length"),
    ("version", 505, "Version Not Supported: SIP/3.0"),
    ("frob", 501, "Not Implemented"),
])
async def test_a_malformed_request_with_a_via_is_answered_with_its_reason(
        transport: SipTransport, peer: socket.socket, name: str, status: int, reason: str) -> None:
    port = peer.getsockname()[1]
    data = {
        "nocallid": request(port, name, drop=("Call-ID",)),
        "badcseq": request(port, name, drop=("CSeq",), add=("CSeq: x OPTIONS",)),
        "mismatch": request(port, name, cseq_method="INVITE"),
        "short": request(port, name, length=50, body=b"abc"),
        "version": request(port, name, version="SIP/3.0"),
        "frob": request(port, name, method="FROB"),
    }[name]
    send(peer, transport, data)
    raw = await answer(peer)
    assert raw.split(b"\r\n", 1)[0] == f"SIP/2.0 {status} {reason}".encode()
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    vias = [h for h in head if h.startswith(b"Via:")]
    assert len(vias) == 1 and f"branch=z9hG4bK{name}".encode() in vias[0]  # our Via, copied (§8.2.6.2)
    ev = await next_event(transport)
    assert isinstance(ev, RequestRejected) and (ev.status, ev.reason) == (status, reason)
    assert ev.addr == ("127.0.0.1", port)
    await still_serving(transport, peer, f"after{name}")


@pytest.mark.parametrize(("data", "why"), [
    (b"\x00\xff\xfe", "no empty line after the header fields"),
    (b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n", "missing"),
    (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKzz\r\nCall-ID: a\r\nCSeq: 1 OPTIONS\r\n"
     b"From: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nContent-Length: 5\r\n\r\n", "body shorter"),
])
async def test_what_cannot_be_answered_is_dropped_with_an_event_and_no_reply(
        transport: SipTransport, peer: socket.socket, data: bytes, why: str) -> None:
    send(peer, transport, data)
    ev = await next_event(transport)
    assert isinstance(ev, MessageDropped) and why in ev.reason, ev
    assert ev.addr == ("127.0.0.1", peer.getsockname()[1])
    await still_serving(transport, peer, "afterdrop")  # and the first thing the peer hears is that 200


async def test_a_response_to_nothing_we_sent_is_unmatched(transport: SipTransport, peer: socket.socket) -> None:
    send(peer, transport, b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKzz\r\nCall-ID: a\r\n"
                          b"CSeq: 1 OPTIONS\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nContent-Length: 0\r\n\r\n")
    ev = await next_event(transport)
    assert isinstance(ev, UnmatchedResponse) and ev.response.status == 200


async def test_an_empty_datagram_and_a_keepalive_do_not_crash(transport: SipTransport, peer: socket.socket) -> None:
    for data in (b"", b"\r\n\r\n", b"\r\n"):
        send(peer, transport, data)
        assert isinstance(await next_event(transport), MessageDropped)
    await still_serving(transport, peer, "afterkeepalive")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=600))
def test_any_bytes_leave_the_transport_serving(junk: bytes) -> None:
    async def main() -> None:
        t = SipTransport(SipEndpoint(), "127.0.0.1", 0, tcp=False)
        await t.start()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        try:
            send(s, t, junk)
            send(s, t, request(s.getsockname()[1], "probe"))
            async with asyncio.timeout(3):
                while True:  # whatever the junk did, the probe arrives after it
                    ev = await t.events.get()
                    if isinstance(ev, RequestReceived) and ev.request.call_id == "probe@x":
                        break
        finally:
            s.close()
            await t.close()
    asyncio.run(main())


async def test_on_event_receives_events_instead_of_the_queue(peer: socket.socket) -> None:
    got: asyncio.Queue[SipEvent] = asyncio.Queue()
    t = SipTransport(SipEndpoint(), "127.0.0.1", 0, on_event=got.put_nowait)
    await t.start()
    try:
        send(peer, t, request(peer.getsockname()[1], "cb"))
        async with asyncio.timeout(3):
            ev = await got.get()
        assert isinstance(ev, RequestReceived) and t.events.empty()
    finally:
        await t.close()


def test_a_transport_needs_udp_or_tcp() -> None:
    with pytest.raises(ValueError, match="udp or tcp"):
        SipTransport(SipEndpoint(), udp=False, tcp=False)


async def test_udp_only_and_tcp_only_listeners() -> None:
    u = SipTransport(SipEndpoint(), "127.0.0.1", 0, tcp=False)
    t = SipTransport(SipEndpoint(), "127.0.0.1", 0, udp=False)
    await u.start()
    await t.start()
    try:
        assert u.udp_port > 0 and u.tcp_port == 0 and u.endpoint.port == u.udp_port
        assert t.tcp_port > 0 and t.udp_port == 0 and t.endpoint.port == t.tcp_port
        with pytest.raises(ConnectionRefusedError):  # no TCP listener beside the UDP-only socket
            await asyncio.open_connection("127.0.0.1", u.udp_port)
    finally:
        await u.close()
        await t.close()


async def test_tcp_takes_the_udp_port_number_when_free(transport: SipTransport) -> None:
    assert transport.tcp_port == transport.udp_port


async def test_a_tcp_request_opens_a_connection_and_the_answer_returns_on_it() -> None:
    a = SipTransport(SipEndpoint(), "127.0.0.1", 0, udp=False)
    b = SipTransport(SipEndpoint(), "127.0.0.1", 0, udp=False)
    await a.start()
    await b.start()
    try:
        dest = ("127.0.0.1", b.tcp_port)
        for n in range(3):  # several requests: one connection, queued while it opens
            options = new_request("OPTIONS", f"sip:b@127.0.0.1:{b.tcp_port}", from_="<sip:a@127.0.0.1>",
                                  to=f"<sip:b@127.0.0.1:{b.tcp_port}>", call_id=f"tcp{n}")
            a.endpoint.send_request(options, dest, a.now(), transport="tcp")
        a.flush()
        seen = []
        for _ in range(3):
            ev = await next_event(b)
            assert isinstance(ev, RequestReceived) and ev.transport == "tcp"
            seen.append(ev.request.call_id)
            b.endpoint.respond(ev.key, 200, b.now())
            b.flush()
        assert seen == ["tcp0", "tcp1", "tcp2"]
        assert len(b._conns) == 1 and len(a._conns) == 1
        answers: list[int] = []
        while len(answers) < 3:
            ev = await next_event(a)
            assert isinstance(ev, ResponseReceived), ev
            answers.append(ev.response.status)
        assert answers == [200, 200, 200]
    finally:
        await a.close()
        await b.close()


async def test_a_refused_tcp_connection_drops_what_was_waiting() -> None:
    a = SipTransport(SipEndpoint(), "127.0.0.1", 0, udp=False)
    await a.start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    try:
        options = new_request("OPTIONS", f"sip:b@127.0.0.1:{port}", from_="<sip:a@127.0.0.1>",
                              to=f"<sip:b@127.0.0.1:{port}>")
        a.endpoint.send_request(options, ("127.0.0.1", port), a.now(), transport="tcp")
        a.flush()
        assert ("127.0.0.1", port) in a._pending
        async with asyncio.timeout(3):
            while a._tasks:
                await asyncio.gather(*a._tasks, return_exceptions=True)
        assert ("127.0.0.1", port) not in a._pending and a._conns == {}
    finally:
        await a.close()


async def test_close_is_quiet_and_later_datagrams_are_ignored(peer: socket.socket) -> None:
    t = SipTransport(SipEndpoint(), "127.0.0.1", 0)
    await t.start()
    port = t.udp_port
    await t.close()
    peer.sendto(request(peer.getsockname()[1], "late"), ("127.0.0.1", port))
    t._on_datagram(request(peer.getsockname()[1], "late2"), ("127.0.0.1", 1))  # as if it raced the close
    assert t.events.empty()
