"""Two SipTransports on 127.0.0.1 (port 0) exchange OPTIONS and INVITE/200/ACK/BYE over UDP and TCP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from bridge.net.sip_transport import SipTransport
from bridge.sip.endpoint import (
    AckReceived,
    RequestReceived,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
)
from bridge.sip.message import new_request, parse_message

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n"


async def expect(transport: SipTransport, kind: type, timeout: float = 3.0) -> SipEvent:
    """The next event of type `kind` (others, e.g. the 100 Trying, are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            ev = await transport.events.get()
            if isinstance(ev, kind) and not (isinstance(ev, ResponseReceived) and ev.response.status == 100):
                return ev


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SipTransport, SipTransport]]:
    a = SipTransport(SipEndpoint(), "127.0.0.1", 0)
    b = SipTransport(SipEndpoint(), "127.0.0.1", 0)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def test_ports_are_bound() -> None:
    async def main() -> None:
        t = SipTransport(SipEndpoint(), "127.0.0.1", 0)
        await t.start()
        try:
            assert t.udp_port > 0 and t.tcp_port > 0
            assert (t.endpoint.host, t.endpoint.port) == ("127.0.0.1", t.udp_port)
        finally:
            await t.close()
    asyncio.run(main())


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_options_and_call(pair: tuple[SipTransport, SipTransport], transport: str) -> None:
    a, b = pair
    dest = ("127.0.0.1", b.udp_port if transport == "udp" else b.tcp_port)

    # OPTIONS
    options = new_request("OPTIONS", f"sip:carrier@127.0.0.1:{dest[1]}", from_="<sip:jego@127.0.0.1>",
                          to=f"<sip:carrier@127.0.0.1:{dest[1]}>")
    key = a.endpoint.send_request(options, dest, a.now(), transport=transport)
    a.flush()
    got = await expect(b, RequestReceived)
    assert isinstance(got, RequestReceived) and got.request.method == "OPTIONS" and got.transport == transport
    b.endpoint.respond(got.key, 200, b.now())
    b.flush()
    answer = await expect(a, ResponseReceived)
    assert isinstance(answer, ResponseReceived) and answer.key == key and answer.response.status == 200
    assert "INVITE" in (answer.response.headers.get("Allow") or "")

    # INVITE / 200 / ACK
    invite = new_request("INVITE", f"sip:+8613800138000@127.0.0.1:{dest[1]}", from_="<sip:jego@127.0.0.1>",
                         to="<sip:+8613800138000@carrier.example>",
                         contact=f"<sip:jego@127.0.0.1:{a.udp_port}>", body=SDP, content_type="application/sdp")
    inv_key = a.endpoint.send_request(invite, dest, a.now(), transport=transport)
    a.flush()
    incoming = await expect(b, RequestReceived)
    assert isinstance(incoming, RequestReceived) and incoming.request.body == SDP
    b.endpoint.respond(incoming.key, 180, b.now())
    b.endpoint.respond(incoming.key, 200, b.now(), body=SDP, content_type="application/sdp")
    b.flush()
    ringing = await expect(a, ResponseReceived)
    assert isinstance(ringing, ResponseReceived) and ringing.response.status == 180
    ok = await expect(a, ResponseReceived)
    assert isinstance(ok, ResponseReceived) and ok.key == inv_key and ok.response.status == 200
    assert ok.dialog is not None and ok.response.body == SDP
    acked = await expect(b, AckReceived)
    assert isinstance(acked, AckReceived) and acked.request.cseq.seq == invite.cseq.seq

    # BYE from the callee, back over the same flow
    b.endpoint.send_in_dialog(acked.dialog, "BYE", b.now())
    b.flush()
    bye = await expect(a, RequestReceived)
    assert isinstance(bye, RequestReceived) and bye.request.method == "BYE" and bye.dialog == ok.dialog
    a.endpoint.respond(bye.key, 200, a.now())
    a.flush()
    done = await expect(b, ResponseReceived)
    assert isinstance(done, ResponseReceived) and done.response.status == 200
    assert a.endpoint.dialogs == {} and b.endpoint.dialogs == {}


async def test_tcp_framing_error_closes_connection(pair: tuple[SipTransport, SipTransport]) -> None:
    _, b = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", b.tcp_port)
    ok = (b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKt1\r\n"
          b"To: <sip:x@127.0.0.1>\r\nFrom: <sip:y@127.0.0.1>;tag=1\r\nCall-ID: t1@x\r\nCSeq: 1 OPTIONS\r\n"
          b"Content-Length: 0\r\n\r\n")
    writer.write(ok)
    got = await expect(b, RequestReceived)
    assert isinstance(got, RequestReceived)
    b.endpoint.respond(got.key, 200, b.now())
    b.flush()
    async with asyncio.timeout(3):
        head = await reader.readuntil(b"\r\n\r\n")
    resp = parse_message(head, stream=True)  # the response came back on our connection
    assert resp.call_id == "t1@x"
    writer.write(ok.replace(b"Content-Length: 0\r\n", b"").replace(b"t1", b"t2"))  # no Content-Length
    async with asyncio.timeout(3):
        assert await reader.read() == b""  # closed by the server
    writer.close()


async def test_udp_garbage_is_survived(pair: tuple[SipTransport, SipTransport]) -> None:
    a, b = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\xffnot sip at all\r\n\r\n", ("127.0.0.1", b.udp_port))
    options = new_request("OPTIONS", "sip:carrier@127.0.0.1", from_="<sip:jego@127.0.0.1>",
                          to="<sip:carrier@127.0.0.1>")
    a.endpoint.send_request(options, ("127.0.0.1", b.udp_port), a.now())
    a.flush()
    got = await expect(b, RequestReceived)
    assert isinstance(got, RequestReceived)
