"""EndpointDriver: runs a sans-I/O SipEndpoint on an asyncio loop, whoever owns the socket.

    driver = EndpointDriver(endpoint, send_datagram=sock_sendto, on_event=handle)
    driver.start(asyncio.get_running_loop())
    driver.receive_datagram(data, addr)              # on the loop thread, or from another thread:
    driver.receive_datagram_threadsafe(data, addr)   # (e.g. pyVoIP's SIP receive thread)
    key = endpoint.send_request(req, dest, driver.now()); driver.flush()   # after any command
    driver.close()

`flush()` sends what the endpoint queued, delivers its events (a handler may issue more
commands: they go out in the same pass) and keeps exactly one `loop.call_at` armed at
`endpoint.get_timer()`, which calls `endpoint.handle_timer(now)`. `now` is always `loop.time()`.
No protocol decision is made here. Used by SipTransport (its own UDP/TCP sockets, the carrier)
and by the pyVoIP trunk (pyVoIP's socket and receive thread, bridge/gateway/pyvoip/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from bridge.sip.endpoint import SipEndpoint, SipEvent
from bridge.sip.transaction import Addr

log = logging.getLogger(__name__)

SendFn = Callable[[bytes, Addr], None]


class EndpointDriver:
    """One SipEndpoint on one event loop: input, output, events and its single timer."""

    def __init__(self, endpoint: SipEndpoint, *, send_datagram: SendFn, send_stream: SendFn | None = None,
                 on_event: Callable[[SipEvent], None] | None = None) -> None:
        self.endpoint = endpoint
        self.send_datagram = send_datagram
        self.send_stream = send_stream
        self.on_event = on_event
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flushing = False
        self._again = False
        self._closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to `loop` (the loop every other call runs on). Then feed and flush."""
        self._loop = loop
        self._closed = False

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._closed

    def now(self) -> float:
        assert self._loop is not None, "start() first"
        return self._loop.time()

    def close(self) -> None:
        """Stop: the timer is cancelled, later input and flushes are ignored."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    # --- input ---------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr) -> None:
        """One UDP datagram from `addr` (on the loop thread)."""
        if not self.running:
            return
        self.endpoint.receive_datagram(data, addr, self.now())
        self.flush()

    def receive_stream_message(self, data: bytes, addr: Addr) -> None:
        """One framed message from the TCP connection with peer `addr` (on the loop thread)."""
        if not self.running:
            return
        self.endpoint.receive_stream_message(data, addr, self.now())
        self.flush()

    def receive_datagram_threadsafe(self, data: bytes, addr: Addr) -> None:
        """`receive_datagram` from another thread: handed to the loop, never run here."""
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.receive_datagram, data, addr)

    # --- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the endpoint queued, deliver its events, re-arm the timer. Re-entrant: a
        flush from inside an event handler is folded into the one running."""
        if not self.running:
            return
        if self._flushing:
            self._again = True
            return
        self._flushing = True
        try:
            while True:
                self._again = False
                now = self.now()
                for data, addr in self.endpoint.datagrams_to_send(now):
                    self.send_datagram(data, addr)
                for data, addr in self.endpoint.stream_messages_to_send(now):
                    if self.send_stream is not None:
                        self.send_stream(data, addr)
                delivered = False
                while (event := self.endpoint.next_event()) is not None:
                    delivered = True
                    if self.on_event is None:
                        continue
                    try:
                        self.on_event(event)
                    except Exception:  # noqa: BLE001 - one bad handler must not stop the SIP stack
                        log.exception("SIP event handler failed on %s", type(event).__name__)
                if not (delivered or self._again) or self._closed:
                    break
        finally:
            self._flushing = False
        self._arm()

    def _arm(self) -> None:
        if self._closed or self._loop is None:
            return
        at = self.endpoint.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._on_timer) if at is not None else None
        self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self.running:
            return
        self.endpoint.handle_timer(self.now())
        self.flush()
