"""EndpointDriver (bridge/net/driver.py) on a real event loop, no sockets: two endpoints wired in
memory. The driver alone runs the timers (no handle_timer call here), folds a flush made inside
an event handler into the running one, and survives a handler that raises."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridge.net.driver import EndpointDriver
from bridge.sip.endpoint import (
    EndpointConfig,
    RequestReceived,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
    TransactionTimeout,
)
from bridge.sip.message import new_request
from bridge.sip.transaction import Addr, TimerConfig
from tests.helpers import until

A = ("127.0.0.1", 5070)
B = ("127.0.0.1", 5080)
FAST = EndpointConfig(timers=TimerConfig(t1=0.01, t2=4.0, t4=0.05))


class Wire:
    """Drivers for A and B; datagrams are delivered on the next loop iteration unless `mute`."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: dict[Addr, list[SipEvent]] = {A: [], B: []}
        self.sent: list[tuple[Addr, bytes]] = []
        self.mute: set[Addr] = set()
        self.drivers: dict[Addr, EndpointDriver] = {}
        for addr in (A, B):
            ep = SipEndpoint(FAST, host=addr[0], port=addr[1])
            drv = EndpointDriver(ep, send_datagram=self._sender(addr), on_event=self.events[addr].append)
            drv.start(self.loop)
            self.drivers[addr] = drv

    def _sender(self, src: Addr) -> Callable[[bytes, Addr], None]:
        return lambda data, dest: self._send(src, data, dest)

    def _send(self, src: Addr, data: bytes, dest: Addr) -> None:
        self.sent.append((dest, data))
        if dest not in self.mute:
            self.loop.call_soon(self.drivers[dest].receive_datagram, data, src)

    def options(self) -> None:
        drv = self.drivers[A]
        req = new_request("OPTIONS", "sip:127.0.0.1:5080", from_="<sip:a@127.0.0.1>", to="<sip:b@127.0.0.1>")
        drv.endpoint.send_request(req, B, drv.now())
        drv.flush()


async def test_the_driver_runs_timer_e_and_f_by_itself() -> None:
    wire = Wire()
    wire.mute.add(B)  # B never hears: A retransmits (Timer E) until Timer F = 64*T1
    wire.options()
    await until(lambda: wire.events[A], 2, "Timer F")
    assert [type(e) for e in wire.events[A]] == [TransactionTimeout]
    # T1 doubling from 0.01 s: sent at 0, then 0.01 0.03 0.07 0.15 0.31 0.63; F at 0.64
    assert len([d for dest, d in wire.sent if dest == B]) == 7
    assert wire.drivers[A].endpoint.get_timer() is None


async def test_a_flush_inside_a_handler_is_folded_and_a_raising_handler_is_survived() -> None:
    wire = Wire()
    b = wire.drivers[B]
    calls: list[str] = []

    def answer(ev: SipEvent) -> None:
        calls.append(type(ev).__name__)
        if isinstance(ev, RequestReceived):
            b.endpoint.respond(ev.key, 200, b.now())
            b.flush()  # re-entrant: folded into the flush delivering this event
            raise RuntimeError("a bug in the handler")

    b.on_event = answer
    wire.options()
    await until(lambda: wire.events[A], 1, "the 200")
    assert calls == ["RequestReceived"]
    (ok,) = wire.events[A]
    assert isinstance(ok, ResponseReceived) and ok.response.status == 200
    # B's server transaction still has its Timer J armed by the driver despite the exception
    assert b.endpoint.get_timer() is not None
    wire.options()  # and B still answers the next request
    await until(lambda: len(wire.events[A]) == 2, 1, "the second 200")
    assert [e.response.status for e in wire.events[A] if isinstance(e, ResponseReceived)] == [200, 200]


async def test_closed_driver_ignores_input_and_cancels_its_timer() -> None:
    wire = Wire()
    wire.mute.add(B)
    wire.options()
    a = wire.drivers[A]
    a.close()
    sent = len(wire.sent)
    await asyncio.sleep(0.1)   # a negative over real time: Timer E (T1 0.01 s) would have fired by now
    assert len(wire.sent) == sent and wire.events[A] == []  # no Timer E retransmission
    a.receive_datagram(b"garbage", B)
    a.flush()
    assert wire.events[A] == []
