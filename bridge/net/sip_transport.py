"""Thin asyncio adapter around a SipEndpoint: one UDP socket and one TCP listener.

    transport = SipTransport(SipEndpoint(cfg), "127.0.0.1", 0)
    await transport.start()                      # transport.udp_port / transport.tcp_port
    key = transport.endpoint.send_request(req, dest, transport.now()); transport.flush()
    event = await transport.events.get()         # or pass on_event=callback
    await transport.close()

After any command on the endpoint call `flush()` so queued datagrams go out and the timer is
re-armed. All protocol decisions are the endpoint's; this module only moves bytes and frames TCP
streams (RFC 3261 §18.3: framing error -> close); the EndpointDriver (driver.py) delivers events
and keeps one `loop.call_at` for get_timer().
TCP messages for a peer go on the connection with that peer (responses: the one the request
came on), a new connection is opened when there is none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bridge.sip.endpoint import SipEndpoint, SipEvent
from bridge.sip.errors import SipError
from bridge.sip.message import StreamFramer
from bridge.sip.transaction import Addr

from .driver import EndpointDriver

log = logging.getLogger(__name__)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp error: %s", exc)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Addr | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        self.owner._on_connection(self)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            log.info("sip tcp framing error from %s: %s; closing", self.peer, exc)
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            self.owner._on_stream_message(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_connection_lost(self)


class SipTransport:
    """Owns `endpoint`, a UDP socket and a TCP listener on host:port (port 0: any free port).
    `udp=False` / `tcp=False` skip that listener (its port stays 0)."""

    def __init__(self, endpoint: SipEndpoint, host: str = "127.0.0.1", port: int = 0, *,
                 on_event: Callable[[SipEvent], None] | None = None, udp: bool = True,
                 tcp: bool = True) -> None:
        if not (udp or tcp):
            raise ValueError("SipTransport needs udp or tcp")
        self.listen_udp = udp
        self.listen_tcp = tcp
        self.endpoint = endpoint
        self.host = host
        self.port = port
        self.on_event = on_event
        self.events: asyncio.Queue[SipEvent] = asyncio.Queue()
        self.udp_port = 0
        self.tcp_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[Addr, _TcpProtocol] = {}
        self._pending: dict[Addr, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._driver = EndpointDriver(endpoint, send_datagram=self._send_udp, send_stream=self._write_stream,
                                      on_event=self._deliver)

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port number when possible; sets the endpoint's address."""
        loop = self._loop = asyncio.get_running_loop()
        self._driver.start(loop)
        if self.listen_udp:
            udp, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self),
                                                         local_addr=(self.host, self.port))
            self._udp = udp
            self.udp_port = int(udp.get_extra_info("sockname")[1])
        if self.listen_tcp:
            want = self.udp_port if self.listen_udp else self.port
            try:
                self._server = await loop.create_server(lambda: _TcpProtocol(self), self.host, want)
            except OSError:
                if not self.listen_udp:
                    raise
                self._server = await loop.create_server(lambda: _TcpProtocol(self), self.host, 0)
            self.tcp_port = int(self._server.sockets[0].getsockname()[1])
        self.endpoint.set_local_address(self.host, self.udp_port or self.tcp_port)

    def now(self) -> float:
        return self._driver.now()

    async def close(self) -> None:
        self._driver.close()
        for task in list(self._tasks):
            task.cancel()
        if self._udp is not None:
            self._udp.close()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # --- input from the network ----------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        self._driver.receive_datagram(data, addr)

    def _on_connection(self, conn: _TcpProtocol) -> None:
        assert conn.peer is not None
        self._conns[conn.peer] = conn
        for data in self._pending.pop(conn.peer, []):
            assert conn.transport is not None
            conn.transport.write(data)

    def _on_stream_message(self, conn: _TcpProtocol, data: bytes) -> None:
        assert conn.peer is not None
        self._driver.receive_stream_message(data, conn.peer)

    def _on_connection_lost(self, conn: _TcpProtocol) -> None:
        if conn.peer is not None and self._conns.get(conn.peer) is conn:
            del self._conns[conn.peer]

    # --- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the endpoint queued, deliver its events and re-arm the timer."""
        self._driver.flush()

    def _send_udp(self, data: bytes, addr: Addr) -> None:
        if self._udp is not None:
            self._udp.sendto(data, addr)

    def _deliver(self, event: SipEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
        else:
            self.events.put_nowait(event)

    def _write_stream(self, data: bytes, addr: Addr) -> None:
        conn = self._conns.get(addr)
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(data)
            return
        first = addr not in self._pending
        self._pending.setdefault(addr, []).append(data)
        if first:
            task = asyncio.ensure_future(self._connect(addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, addr: Addr) -> None:
        assert self._loop is not None
        try:
            await self._loop.create_connection(lambda: _TcpProtocol(self), addr[0], addr[1])
        except OSError as exc:
            # The client transaction will time out (Timer B/F); nothing else to decide here.
            log.info("sip tcp connect to %s failed: %s", addr, exc)
            self._pending.pop(addr, None)
