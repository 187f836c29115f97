"""bridge/net/media.py, the shared RTP engine, in virtual time: a loop stand-in whose clock the test
moves and whose one `call_at` timer it fires, so the 20 ms grid, one wake-up serving every due
leg, start/close idempotency, the timer disarmed when the last leg goes, and what a raising send
or event handler costs (a counter, never the engine) are decided without waiting. Then real
sockets: `bind_pair` (RTP even, RTCP on port + 1 per RFC 3550 §11, a taken neighbour, nothing
free), `format_of`, and one engine per loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest

from bridge.net.media import PERIOD, MediaEngine, RtpEndpoint, bind_pair, format_of
from bridge.rtp import g711
from bridge.rtp.media import FrameQueues, MediaEvent, MediaFormat, RtpSession
from bridge.rtp.packet import RtpPacket
from bridge.sip.sdp import NegotiatedAudio


@dataclass
class Timer:
    when: float
    cb: Callable[..., None]
    args: tuple[Any, ...]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    """The five things MediaEngine asks of its loop, on a clock the test moves."""
    now: float = 1000.0
    timers: list[Timer] = field(default_factory=list)
    readers: dict[int, Any] = field(default_factory=dict)

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Callable[..., None], *args: Any) -> Timer:
        t = Timer(when, cb, args)
        self.timers.append(t)
        return t

    def add_reader(self, fd: int, cb: Callable[..., None], *args: Any) -> None:
        self.readers[fd] = (cb, args)

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def armed(self) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled]

    def run_until(self, until: float) -> int:
        """Fire due timers in order up to `until` (the clock jumps to each); how many fired."""
        fired = 0
        while True:
            due = sorted((t for t in self.armed() if t.when <= until), key=lambda t: t.when)
            if not due:
                self.now = max(self.now, until)
                return fired
            t = due[0]
            t.cancelled = True
            self.now = max(self.now, t.when)
            t.cb(*t.args)
            fired += 1


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


@pytest.fixture
def engine(loop: FakeLoop) -> MediaEngine:
    return MediaEngine(cast(asyncio.AbstractEventLoop, loop))


def session(remote: tuple[str, int] | None = ("127.0.0.1", 9), **kw: Any) -> tuple[RtpSession, FrameQueues]:
    q = FrameQueues(50, 50)
    return RtpSession(MediaFormat(remote=remote), q, sequence_number=100, timestamp=0, ssrc=0x1234, **kw), q


Sent = list[tuple[bytes, tuple[str, int], bool]]


def attach(engine: MediaEngine, **kw: Any) -> tuple[RtpEndpoint, Sent, FrameQueues, list[MediaEvent]]:
    sent: Sent = []
    events: list[MediaEvent] = []
    s, q = session(**kw)
    ep = engine.attach(s, send=lambda d, a, r: sent.append((d, a, r)), on_events=events.extend)
    return ep, sent, q, events


def rtp(sent: Sent) -> list[RtpPacket]:
    out = []
    for data, _, via_rtcp in sent:
        if not via_rtcp and data[1] & 0x7F < 64:  # RTP, not RTCP (RFC 5761 §4 payload type ranges)
            out.append(RtpPacket.parse(data))
    return out


def tone_frame(i: int) -> bytes:
    t = (np.arange(160) + 160 * i) / 8000.0
    return (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16).tobytes()


# --- the clock ------------------------------------------------------------------------------------------

def test_a_started_leg_sends_one_packet_per_20_ms_in_order(engine: MediaEngine, loop: FakeLoop) -> None:
    ep, sent, q, _ = attach(engine)
    for i in range(10):
        q.write(tone_frame(i))
    engine.start(ep)
    assert len(loop.armed()) == 1
    loop.run_until(loop.now + 10 * PERIOD - 1e-6)
    pkts = rtp(sent)
    assert len(pkts) == 10, len(pkts)
    assert [p.sequence_number for p in pkts] == list(range(100, 110))
    assert [p.timestamp for p in pkts] == [160 * i for i in range(10)]
    assert all(p.ssrc == 0x1234 and p.payload_type == 0 and len(p.payload) == 160 for p in pkts)
    assert engine.stats()["legs"] == 1 and engine.stats()["running"] == 1


def test_one_wake_up_serves_every_due_leg(engine: MediaEngine, loop: FakeLoop) -> None:
    legs = [attach(engine) for _ in range(3)]
    for ep, *_ in legs:
        engine.start(ep)
    assert len(loop.armed()) == 1  # one timer for all legs
    loop.run_until(loop.now + 5 * PERIOD - 1e-6)
    assert engine.ticks == 3 * engine.wakes and engine.wakes >= 4


def test_start_is_idempotent_and_a_closed_leg_does_not_start(engine: MediaEngine, loop: FakeLoop) -> None:
    ep, _, _, _ = attach(engine)
    engine.start(ep)
    engine.start(ep)
    assert len(loop.armed()) == 1 and engine.stats()["running"] == 1
    other, _, _, _ = attach(engine)
    engine.close(other)
    engine.start(other)
    assert not other.started and engine.stats()["running"] == 1


def test_closing_the_last_leg_disarms_the_timer_and_close_is_idempotent(engine: MediaEngine,
                                                                        loop: FakeLoop) -> None:
    ep, sent, _, _ = attach(engine)
    engine.start(ep)
    loop.run_until(loop.now + 3 * PERIOD)
    engine.close(ep, "bye")
    assert loop.armed() == [] and engine.stats() == {"legs": 0, "running": 0, "wakes": engine.wakes,
                                                     "ticks": engine.ticks}
    n = len(sent)
    assert ep.session.closed and ep.closed
    engine.close(ep)
    assert len(sent) == n
    engine.receive(ep, b"\x80" + b"\x00" * 11, ("127.0.0.1", 9))  # a closed leg ignores input
    assert ep.rx_errors == 0


def test_a_leg_started_later_joins_the_grid(engine: MediaEngine, loop: FakeLoop) -> None:
    a, _, _, _ = attach(engine)
    engine.start(a)
    origin = loop.now
    loop.run_until(loop.now + 2 * PERIOD + 0.007)  # 7 ms past a grid point
    b, _, _, _ = attach(engine)
    engine.start(b)
    due = b.session.next_due
    assert due is not None
    slots = (due - origin) / PERIOD
    assert abs(slots - round(slots)) < 1e-6, slots  # on the shared 20 ms grid


# --- the attached leg's input and failures -----------------------------------------------------------------

def test_received_audio_reaches_the_queue(engine: MediaEngine, loop: FakeLoop) -> None:
    ep, _, q, _ = attach(engine)
    engine.start(ep)
    for i in range(6):
        pkt = RtpPacket(payload_type=0, sequence_number=500 + i, timestamp=160 * i, ssrc=77,
                        payload=bytes([0xFF]) * 160)
        engine.receive(ep, pkt.serialize(), ("127.0.0.1", 9))
        loop.run_until(loop.now + PERIOD)
    assert ep.session.n["rx_audio"] == 6
    assert q.read() is not None


def test_audio_from_another_source_than_the_remote_is_dropped_and_counted(engine: MediaEngine) -> None:
    ep, _, _, _ = attach(engine)
    engine.start(ep)
    pkt = RtpPacket(payload_type=0, sequence_number=1, timestamp=0, ssrc=5, payload=b"\xff" * 160).serialize()
    engine.receive(ep, pkt, ("127.0.0.1", 10))
    assert ep.session.n["wrong_source"] == 1 and ep.session.n["rx_audio"] == 0
    engine.receive(ep, pkt, ("127.0.0.1", 9))
    assert ep.session.n["rx_audio"] == 1


def test_garbage_is_counted_and_never_stops_reception(engine: MediaEngine, loop: FakeLoop) -> None:
    ep, _, _, _ = attach(engine)
    for junk in (b"", b"\x00", b"\xff" * 40, b"\x80\x00"):
        engine.receive(ep, junk, ("127.0.0.1", 9))
    assert ep.rx_errors == 0  # malformed input is the session's counter, not an exception
    assert ep.session.n["malformed"] + ep.session.n["other"] >= 3


def test_a_raising_receive_is_counted(engine: MediaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    ep, _, _, _ = attach(engine)

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(ep.session, "receive", boom)
    engine.receive(ep, b"x", ("127.0.0.1", 9))
    engine.receive(ep, b"x", ("127.0.0.1", 9))
    assert ep.rx_errors == 2


def test_a_raising_send_or_handler_costs_a_counter_not_the_engine(engine: MediaEngine, loop: FakeLoop) -> None:
    s, q = session()
    calls: list[int] = []

    def bad_send(d: bytes, a: tuple[str, int], r: bool) -> None:
        calls.append(1)
        raise OSError("down")

    def bad_handler(events: list[MediaEvent]) -> None:
        raise RuntimeError("handler bug")

    ep = engine.attach(s, send=bad_send, on_events=bad_handler)
    for i in range(4):
        q.write(tone_frame(i))
    engine.start(ep)
    loop.run_until(loop.now + 4 * PERIOD - 1e-6)
    assert ep.tx_errors == len(calls) >= 4
    s.events.append(cast(MediaEvent, object()))
    engine.flush(ep)  # the handler raises: logged, events consumed
    assert s.events == []
    loop.run_until(loop.now + 2 * PERIOD)
    assert engine.stats()["running"] == 1  # still on the clock


def test_no_remote_sends_nothing(engine: MediaEngine, loop: FakeLoop) -> None:
    ep, sent, q, _ = attach(engine, remote=None)
    for i in range(5):
        q.write(tone_frame(i))
    engine.start(ep)
    loop.run_until(loop.now + 5 * PERIOD)
    assert rtp(sent) == []


# --- real sockets ---------------------------------------------------------------------------------------------

@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def test_bind_pair_gives_an_even_rtp_port_and_rtcp_next_to_it(closing: list[socket.socket]) -> None:
    for _ in range(5):
        rtp_sock, rtcp_sock = bind_pair("127.0.0.1")
        assert rtcp_sock is not None
        closing += [rtp_sock, rtcp_sock]
        p = rtp_sock.getsockname()[1]
        assert p % 2 == 0 and rtcp_sock.getsockname()[1] == p + 1
        assert not rtp_sock.getblocking() and not rtcp_sock.getblocking()


def test_bind_pair_without_rtcp_binds_one(closing: list[socket.socket]) -> None:
    rtp_sock, rtcp_sock = bind_pair("127.0.0.1", rtcp=False)
    closing.append(rtp_sock)
    assert rtcp_sock is None and rtp_sock.getsockname()[1] > 0


def test_a_fixed_port_whose_neighbour_is_taken_goes_without_rtcp(closing: list[socket.socket]) -> None:
    probe, _ = bind_pair("127.0.0.1", rtcp=False)
    port = probe.getsockname()[1]
    probe.close()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", port + 1))
    closing.append(blocker)
    rtp_sock, rtcp_sock = bind_pair("127.0.0.1", [port])
    closing.append(rtp_sock)
    assert rtp_sock.getsockname()[1] == port and rtcp_sock is None


def test_the_next_candidate_with_a_free_neighbour_wins(closing: list[socket.socket]) -> None:
    a, a_rtcp = bind_pair("127.0.0.1")
    b, b_rtcp = bind_pair("127.0.0.1")
    assert a_rtcp is not None and b_rtcp is not None
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    a.close()
    b.close()
    b_rtcp.close()
    closing.append(a_rtcp)  # pa + 1 stays taken
    rtp_sock, rtcp_sock = bind_pair("127.0.0.1", [pa, pb])
    closing.append(rtp_sock)
    assert rtcp_sock is not None
    closing.append(rtcp_sock)
    assert rtp_sock.getsockname()[1] == pb and rtcp_sock.getsockname()[1] == pb + 1


def test_no_free_port_is_an_oserror_naming_the_host(closing: list[socket.socket]) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    closing.append(taken)
    with pytest.raises(OSError, match="no free RTP port on 127.0.0.1"):
        bind_pair("127.0.0.1", [taken.getsockname()[1]])


async def test_bind_adopts_a_socket_reads_it_and_close_frees_the_ports() -> None:
    engine = MediaEngine()
    s, _ = session()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    ep = engine.bind(s, sock=sock)
    port = ep.local_port
    assert ep.local_address == ("127.0.0.1", port) and ep.sock is sock
    assert ep.rtcp_port in (None, port + 1)
    engine.close(ep)
    assert sock.fileno() == -1 and ep.closed
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    again.bind(("127.0.0.1", port))  # the port is free again
    again.close()


async def test_a_datagram_on_a_bound_socket_reaches_the_session() -> None:
    engine = MediaEngine()
    got: list[int] = []
    s, _ = session(latch=True)  # symmetric RTP (RFC 4961): the first source becomes the remote
    ep = engine.bind(s, rtcp=False)
    engine.start(ep)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        done = asyncio.get_running_loop().create_future()
        real = s.receive

        def receive(data: bytes, addr: tuple[str, int], now: float, *, rtcp_port: bool = False) -> None:
            real(data, addr, now, rtcp_port=rtcp_port)
            got.append(len(data))
            if not done.done():
                done.set_result(None)

        s.receive = receive  # type: ignore[method-assign]
        pkt = RtpPacket(payload_type=0, sequence_number=1, timestamp=0, ssrc=5, payload=b"\xff" * 160)
        sender.sendto(pkt.serialize(), ep.local_address)
        await asyncio.wait_for(done, 3)
        assert got == [172] and s.n["rx_audio"] == 1, dict(s.n)
        assert s.remote == ("127.0.0.1", sender.getsockname()[1]) and s.latched
    finally:
        sender.close()
        engine.close(ep)


async def test_one_engine_per_loop() -> None:
    a = MediaEngine.get()
    assert MediaEngine.get() is a and MediaEngine.get(asyncio.get_running_loop()) is a
    other = asyncio.new_event_loop()
    try:
        assert MediaEngine.get(other) is not a
    finally:
        other.close()


@pytest.mark.parametrize(("direction", "send", "recv"), [("sendrecv", True, True), ("sendonly", True, False),
                                                         ("recvonly", False, True), ("inactive", False, False)])
def test_format_of_takes_the_negotiated_audio(direction: str, send: bool, recv: bool) -> None:
    na = NegotiatedAudio("127.0.0.1", 4000, "pcma", 8, 8000, 101, 20, direction)  # type: ignore[arg-type]
    f = format_of(na)
    assert (f.codec, f.payload_type, f.telephone_event_pt) == ("PCMA", 8, 101)
    assert f.remote == ("127.0.0.1", 4000) and (f.send, f.recv) == (send, recv)
    assert f.remote_rtcp is None and not f.rtcp_mux
    held = format_of(NegotiatedAudio(None, 0, "PCMU", 0, 8000, None, 20, "sendrecv"))
    assert held.remote is None and not held.send
    mux = format_of(na, rtcp_mux=True, remote_rtcp=("127.0.0.1", 4000))
    assert mux.rtcp_mux and mux.remote_rtcp == ("127.0.0.1", 4000)


# --- serving another leg in the same slot ------------------------------------------------------------------

def test_serve_sends_the_frame_another_leg_just_queued_in_the_same_slot(engine: MediaEngine, loop: FakeLoop) -> None:
    """The bridge's hand-over (bridge/gateway/call.py PhoneLink): leg A's AudioPort queues a frame
    for leg B and calls `serve(B)`. B started first, so the engine ticks it first; once A has
    served it, every later frame leaves on B in the slot A queued it, not 20 ms later."""
    b, b_sent, bq, _ = attach(engine)
    encode = g711.encoder_for("PCMU")

    class Feeder:
        slot = 0

        def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray | None:
            if self.slot:  # from its second slot on (PhoneLink queues only once its leg plays)
                bq.write(tone_frame(self.slot))
            engine.serve(b)
            self.slot += 1
            return None

    a_session = RtpSession(MediaFormat(remote=("127.0.0.1", 8)), Feeder(), timestamp=0, rtcp=False)
    a = engine.attach(a_session, send=lambda d, ad, r: None)
    engine.start(b)
    engine.start(a)
    loop.run_until(loop.now + 10 * PERIOD - 1e-6)
    by_slot = {p.timestamp // 160: p.payload for p in rtp(b_sent)}
    assert len(by_slot) == 10
    for k in range(1, 10):
        assert by_slot[k] == encode(np.frombuffer(tone_frame(k), dtype=np.int16)), k
    assert b.fed_by is a and engine.ticks >= 2 * 9
