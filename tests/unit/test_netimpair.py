"""jego_call/media/netimpair.py, the asyncio shell of the impairment model, on a loop in virtual
time: what it delivers and when, that it keeps one timer however many datagrams are held (a
long call must not pile up timers), that nothing is delivered after `close()`, and how
`impair_peer_connection` finds and wraps each ICE connection once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from jego_call.media.impair import ImpairmentSpec
from jego_call.media.netimpair import ImpairedReceiver, PeerImpairment, impair_peer_connection


class Handle:
    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualLoop:
    """The two loop methods ImpairedReceiver uses, in virtual time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Handle]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn: Callable[[], None]) -> Handle:
        h = Handle(when, fn)
        heapq.heappush(self.timers, (when, next(self._order), h))
        return h

    @property
    def pending(self) -> int:
        return sum(1 for _, _, h in self.timers if not h.cancelled)

    def advance_to(self, t: float) -> None:
        while self.timers and self.timers[0][0] <= t:
            when, _, h = heapq.heappop(self.timers)
            self.now = max(self.now, when)
            if not h.cancelled:
                h.fn()
        self.now = t


def receiver(spec: str) -> tuple[ImpairedReceiver, VirtualLoop, list[tuple[float, bytes, int]]]:
    loop = VirtualLoop()
    got: list[tuple[float, bytes, int]] = []
    r = ImpairedReceiver(ImpairmentSpec.parse(spec), lambda d, c: got.append((loop.now, d, c)),
                         cast(asyncio.AbstractEventLoop, loop))
    return r, loop, got


def test_a_delayed_datagram_is_delivered_at_its_time_with_its_component() -> None:
    r, loop, got = receiver("delay=100")
    r.data_received(b"a", 1)
    assert got == [] and loop.pending == 1
    loop.advance_to(0.0999)
    assert got == []
    loop.advance_to(0.1)
    assert got == [(0.1, b"a", 1)]
    assert loop.pending == 0                                   # nothing held: no timer
    assert (r.counters.received, r.counters.delivered) == (1, 1)


def test_without_delay_it_delivers_at_once_and_sets_no_timer() -> None:
    r, loop, got = receiver("loss=0,delay=0")
    r.data_received(b"x", 2)
    assert got == [(0.0, b"x", 2)] and loop.pending == 0


def test_a_steady_stream_through_a_delay_keeps_one_timer() -> None:
    """Every 20 ms a datagram, 100 ms delay: the queue is never empty. The shell keeps one timer,
    not one more for every datagram (which would fire thousands of callbacks per deadline in a
    long call)."""
    r, loop, got = receiver("delay=100")
    for i in range(500):
        loop.advance_to(i * 0.020)
        r.data_received(i.to_bytes(2, "big"), 1)
        assert loop.pending <= 1
    loop.advance_to(500 * 0.020 + 1)
    assert [int.from_bytes(d, "big") for _, d, _ in got] == list(range(500))
    assert all(abs(t - (i * 0.020 + 0.1)) < 1e-9 for i, (t, _, _) in enumerate(got))
    assert loop.pending == 0


def test_a_later_datagram_due_earlier_moves_the_timer_forward() -> None:
    r, loop, got = receiver("jitter=50,seed=3")
    r.data_received(b"1", 1)
    r.data_received(b"2", 1)
    r.data_received(b"3", 1)
    due = sorted(h.when for _, _, h in loop.timers if not h.cancelled)
    assert len(due) == 1 and due[0] == r.model.next_deadline()
    loop.advance_to(1.0)
    assert sorted(d for _, d, _ in got) == [b"1", b"2", b"3"]
    assert [t for t, _, _ in got] == sorted(t for t, _, _ in got)


def test_nothing_is_delivered_after_close() -> None:
    r, loop, got = receiver("delay=50")
    r.data_received(b"a", 1)
    r.close()
    assert loop.pending == 0
    r.data_received(b"b", 1)                 # a datagram racing the close
    loop.advance_to(1.0)
    assert got == [] and r.closed


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 30), st.floats(0, 80), st.floats(0, 60), st.integers(0, 2**32 - 1),
       st.lists(st.floats(0, 0.05), min_size=1, max_size=80))
def test_every_kept_datagram_arrives_once_no_earlier_than_its_delay(loss: float, delay: float, jitter: float,
                                                                    seed: int, gaps: list[float]) -> None:
    r, loop, got = receiver(f"loss={loss},delay={delay},jitter={jitter},seed={seed}")
    sent: dict[bytes, float] = {}
    t = 0.0
    for i, gap in enumerate(gaps):
        t += gap
        loop.advance_to(t)
        data = i.to_bytes(2, "big")
        sent[data] = t
        r.data_received(data, 1)
        assert loop.pending <= 1
    loop.advance_to(t + (delay + 2 * jitter) / 1000 + 1)
    c = r.counters
    names = [d for _, d, _ in got]
    assert len(names) == len(set(names)) == c.delivered == c.received - c.dropped
    assert c.received == len(gaps)
    for when, data, _ in got:
        assert sent[data] + delay / 1000 - 1e-9 <= when <= sent[data] + (delay + 2 * jitter) / 1000 + 1e-9
    assert loop.pending == 0 and r.model.held == 0


# --- impair_peer_connection on a peer connection's shape ------------------------------------------
@dataclass
class FakeConnection:
    seen: list[tuple[bytes, int]] = field(default_factory=list)

    def data_received(self, data: bytes, component: int) -> None:
        self.seen.append((data, component))


@dataclass
class FakeTransceiver:
    receiver: Any


def transceiver(conn: FakeConnection | None) -> FakeTransceiver:
    ice = type("Ice", (), {"_connection": conn})()
    dtls = type("Dtls", (), {"transport": ice})()
    return FakeTransceiver(type("Receiver", (), {"transport": dtls})())


class FakePc:
    def __init__(self, *transceivers: FakeTransceiver) -> None:
        self.transceivers = list(transceivers)

    def getTransceivers(self) -> list[FakeTransceiver]:  # noqa: N802 - aiortc's name
        return self.transceivers


async def test_each_ice_connection_is_wrapped_once_even_when_called_again() -> None:
    shared, other = FakeConnection(), FakeConnection()
    pc = FakePc(transceiver(shared), transceiver(shared), transceiver(None))
    shell = impair_peer_connection(pc, ImpairmentSpec.parse("delay=0,loss=50,seed=1"))
    assert len(shell.receivers) == 1                          # two transceivers on one bundle: one wrap
    pc.transceivers.append(transceiver(other))                # renegotiation added a transport
    assert impair_peer_connection(pc, shell.spec, shell) is shell
    assert len(shell.receivers) == 2
    for i in range(200):
        shared.data_received(bytes([i % 256]), 1)             # the network calls the wrapped method
    kept = len(shared.seen)
    counts = shell.counters
    assert counts["received"] == 200 and counts["delivered"] == kept
    assert counts["dropped"] == 200 - kept and 50 < kept < 150
    shell.close()
    assert all(r.closed for r in shell.receivers)


async def test_an_inactive_spec_changes_nothing() -> None:
    conn = FakeConnection()
    original = conn.data_received
    shell = impair_peer_connection(FakePc(transceiver(conn)), ImpairmentSpec())
    assert shell.receivers == [] and conn.data_received == original
    assert shell.counters == {"received": 0, "dropped": 0, "delivered": 0, "reordered": 0, "loss_runs": 0}


def test_peer_counters_sum_their_receivers() -> None:
    shell = PeerImpairment(ImpairmentSpec.parse("loss=50,seed=2"))
    rs = []
    for _ in range(2):
        r, _, _ = receiver("loss=50,seed=2")
        shell.receivers.append(r)
        rs.append(r)
    for i in range(40):
        rs[i % 2].data_received(b"x", 1)
    c = shell.counters
    assert c["received"] == 40
    assert c["dropped"] == sum(r.counters.dropped for r in rs)
    assert c["loss_runs"] == sum(r.counters.loss_runs for r in rs) > 0
