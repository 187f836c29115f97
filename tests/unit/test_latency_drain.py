"""Issue 15's latency ratchet, in virtual time: every buffer on the bridge's path gives back what
a load stall's burst put in it (bridge/rtp/media.py `StandingDepth`, `FrameQueues(tx_target=)`,
`RtpSession.buffers()`; the SIP leg's receive buffer, adaptive from a 1-frame floor,
bridge/gateway/pyvoip; the carrier's `RtpStream`, adaptive from 3 frames; `PhoneLink`'s standing
drain, bridge/gateway/call.py). Delays are counted in 20 ms slots of the virtual clock, from the
slot a numbered frame was sent in to the slot it is heard in. A stall is the receiver's process
stopped for some slots: on waking it serves the slots it missed back to back before it reads the
datagrams that waited (uvloop runs timers before I/O), so they all land in its buffer at once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pytest

from bridge.carrier.media import RtpStream
from bridge.gateway.call import PhoneLink
from bridge.gateway.fakes import FakeLeg
from bridge.gateway.legs import SipLeg
from bridge.gateway.pyvoip.common import TrunkConfig
from bridge.gateway.pyvoip.leg import PyVoipLeg
from bridge.gateway.pyvoip.media import _MediaClient
from bridge.rtp import g711
from bridge.rtp.media import FRAME, FrameQueues, MediaFormat, RtpSession, StandingDepth
from bridge.sip.sdp import NegotiatedAudio

ADDR = ("127.0.0.1", 40000)
P = 0.020
IDS = 120  # frames are numbered modulo IDS by a sample value that survives mu-law exactly
VALUES = [int(v) for v in g711.decoder_for("PCMU")(bytes(range(0x7F - IDS, 0x7F)))]
ID_OF = {v: i for i, v in enumerate(VALUES)}
OLD_TRUNK = {"jitter_prefetch": 3, "jitter_adaptive": False, "tx_queue_target": None}  # before issue 15


def frame(k: int) -> np.ndarray:
    return np.full(FRAME, VALUES[k % IDS], dtype=np.int16)


def frame_id(pcm: np.ndarray | bytes | None) -> int | None:
    if pcm is None:
        return None
    x = np.frombuffer(pcm, dtype=np.int16) if isinstance(pcm, bytes) else pcm
    v = int(x[0])
    return ID_OF.get(v) if len(x) == FRAME and (x == v).all() else None


class Talker:
    """AudioPort: frame k in its slot k; keeps (slot, delay in slots) of each numbered frame heard."""

    def __init__(self) -> None:
        self.slot = 0
        self.heard: list[tuple[int, int]] = []

    def hear(self, pcm: np.ndarray | bytes | None) -> None:
        i = frame_id(pcm)
        if i is not None:
            self.heard.append((self.slot, (self.slot - i) % IDS))

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray:
        if live:
            self.hear(rx)
        k = self.slot
        self.slot += 1
        return frame(k)

    def delay(self, lo: int, hi: int) -> int:
        """The largest delay (slots) heard in slots [lo, hi)."""
        got = [d for s, d in self.heard if lo <= s < hi]
        assert got, f"nothing heard in slots {lo}..{hi}"
        return max(got)


@dataclass
class Collect:
    """The carrier's AudioSource (RtpStream.play): what it receives, one read per slot."""

    ear: Talker = field(default_factory=Talker)

    def read(self, n: int, rx: np.ndarray) -> np.ndarray:
        self.ear.hear(rx)
        self.ear.slot += 1
        return np.zeros(n, dtype=np.int16)


def drive(tx: RtpSession, rx: list[RtpSession], slots: int, stalls: dict[int, int],
          after: Callable[[int], None] | None = None, t0: float = 100.0) -> None:
    """`tx` ticks every 20 ms; its packets reach `rx[0]` 5 ms later; the `rx` sessions (one
    process) tick 10 ms into each slot, except that a stall {slot: n} stops them for n slots;
    on waking they serve the missed slots first and then read what waited."""
    pending: list[tuple[float, bytes]] = []
    tx.start(t0)
    for s in rx:
        s.start(t0 + 0.010)
    wake = -1
    for i in range(slots):
        now = t0 + i * P
        tx.tick(now)
        pending += [(now + 0.005, d) for d, _a, rtcp in tx.out if not rtcp]
        tx.out.clear()
        at = now + 0.010
        if i in stalls:
            wake = i + stalls[i]
        if i < wake:
            continue
        late = i == wake
        if not late:
            for due, d in pending:
                rx[0].receive(d, ADDR, due)
            pending.clear()
        for s in rx:
            s.tick(at)
            s.out.clear()
        if late:
            for _due, d in pending:
                rx[0].receive(d, ADDR, at)  # all at once, after the slots were served
            pending.clear()
        if after is not None:
            after(i)


def sender(port: Talker) -> RtpSession:
    return RtpSession(MediaFormat("PCMU", 0, None, remote=ADDR), port, rtcp=False, timestamp=0,
                      sequence_number=0)


def negotiated() -> NegotiatedAudio:
    return NegotiatedAudio(remote_host=ADDR[0], remote_port=ADDR[1], codec="PCMU", payload_type=0,
                           clock_rate=8000, telephone_event_pt=None, ptime=20, direction="sendrecv")


@dataclass
class _Owner:
    call_id: str = "drain"

    def _dtmf_from_thread(self, digit: str) -> None:
        pass


@pytest.fixture
def udp() -> Iterator[Callable[[], socket.socket]]:
    socks: list[socket.socket] = []

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close()


def sip_leg(sock: socket.socket, **cfg: object) -> _MediaClient:
    """The bridge's SIP leg media (bridge/gateway/pyvoip/media.py), not started: driven by hand."""
    return _MediaClient(cast(PyVoipLeg, _Owner()), sock, negotiated(), TrunkConfig(**cfg))  # type: ignore[arg-type]


class QueueLeg:
    """The seam PyVoipLeg gives PhoneLink: send_audio / read_audio on the media client's queues."""

    def __init__(self, mc: _MediaClient) -> None:
        self.mc = mc

    def send_audio(self, pcm: bytes) -> None:
        self.mc.write(pcm)

    def read_audio(self) -> bytes | None:
        return self.mc.read() or None


class Ear:
    """The app leg's AudioPort in a bridged call: PhoneLink, with what it hands the app kept."""

    def __init__(self, link: PhoneLink) -> None:
        self.link = link
        self.talker = Talker()

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray | None:
        out = self.link.exchange(rx, live)
        self.talker.hear(out)
        self.talker.slot += 1
        return out


# --- the gauge and the send queue ----------------------------------------------------------------------
def test_standing_depth_tells_a_standing_backlog_from_frames_passing_through() -> None:
    g = StandingDepth(1, after=5, window=10)
    assert not any(g.observe(d) for d in [1, 0, 1, 2, 1] * 10)  # comes and goes: no drain
    assert g.standing == 0 and g.peak == 2 and g.drained == 0
    got = [g.observe(3) for _ in range(10)]
    assert got == [False, False, False, False, True] * 2 and g.drained == 2
    assert g.standing == 3  # the least of the last whole window
    assert not StandingDepth(None, after=1).observe(100)  # a gauge only


def test_the_send_queue_drains_a_backlog_to_its_target_and_keeps_the_order() -> None:
    def run(target: int | None) -> tuple[list[int], list[int], FrameQueues]:
        q = FrameQueues(tx_max=10, tx_target=target)
        for k in range(4):
            q.write(frame(k).tobytes())  # a burst: 4 frames at once, then one in, one out
        depth, out = [], []
        for k in range(4, 60):
            q.write(frame(k).tobytes())
            depth.append(len(q.tx))
            i = frame_id(q.exchange(frame(0), False))
            assert i is not None
            out.append(i)
        return depth, out, q

    depth, out, q = run(1)
    assert depth[-20:] == [1] * 20 and q.tx_drained == 4 and q.tx_dropped == 0
    assert out == sorted(out) and len(set(out)) == len(out)  # oldest dropped, never reordered
    old_depth, old_out, _ = run(None)
    assert old_depth[-20:] == [5] * 20 and old_out == list(range(len(old_out)))  # the ratchet


def test_the_send_queue_at_its_target_loses_nothing() -> None:
    q = FrameQueues(tx_max=10, tx_target=1)
    out = []
    for k in range(500):
        q.write(frame(k).tobytes())
        if k % 7 == 3:
            q.write(frame(k).tobytes())  # now and then two in a slot: a passing frame, not a backlog
            q.tx.pop()
        out.append(frame_id(q.exchange(frame(0), False)))
    assert out == [k % IDS for k in range(500)] and q.tx_drained == 0


# --- the SIP leg's receive buffer, the carrier's -------------------------------------------------------
def test_the_sip_leg_buffer_starts_at_one_frame_and_gives_back_a_stall(udp: Callable[[], socket.socket]) -> None:
    def run(**cfg: object) -> Talker:
        mc = sip_leg(udp(), **cfg)
        src, ear = Talker(), Talker()

        def read(i: int) -> None:
            while (pcm := mc.read()):
                ear.hear(pcm)
            ear.slot = i + 1

        drive(sender(src), [mc.session], 500, {100: 7, 200: 7}, after=read)
        return ear

    new = run()
    before = new.delay(20, 100)
    assert before <= 1  # the 1-frame floor (RFC 3550 A.1 probation holds the first packet a slot)
    # both stalls given back: to the adaptive target (3 x jitter + 1 frame, 2 with any jitter
    # measured), so at most a frame above the start, and the second stall adds nothing
    assert new.delay(150, 200) <= before + 1 and new.delay(300, 500) <= new.delay(150, 200)
    old = run(**OLD_TRUNK)
    assert old.delay(20, 100) == 2 and old.delay(300, 500) >= 2 + 5  # fixed: the stall stays


async def test_the_carrier_buffer_gives_back_a_stall_down_to_its_floor_of_three() -> None:
    def run(**kw: object) -> Talker:
        stream = RtpStream(rtcp=False, **kw)  # type: ignore[arg-type]
        got = Collect()
        stream.play(got)
        drive(sender(Talker()), [stream.session], 500, {100: 7, 200: 7})
        return got.ear

    new = run()
    assert new.delay(20, 100) == 2  # three frames of floor: two waiting, one playing
    # drained back to the target of three waiting (a frame above the start), no further
    assert new.delay(150, 200) <= 3 and new.delay(300, 500) <= new.delay(150, 200)
    old = run(jitter_adaptive=False)
    assert old.delay(300, 500) >= 2 + 5


# --- PhoneLink ---------------------------------------------------------------------------------------
def test_phonelink_drains_a_standing_backlog_to_its_prefill() -> None:
    leg = FakeLeg()
    link = PhoneLink(cast(SipLeg, leg), clock=lambda: 0.0)
    silence = np.zeros(FRAME, dtype=np.int16)
    out: list[int | None] = []
    for k in range(60):
        leg.feed_audio(frame(k).tobytes())
        if k == 10:
            for j in (100, 101, 102):
                leg.feed_audio(frame(j).tobytes())  # a burst of 3 more: under the trim at 4
        out.append(frame_id(link.exchange(silence, False)))
    assert link.trimmed == 0 and link.drained == 3 and len(link._buf) == 0
    assert out[-10:] == [k % IDS for k in range(50, 60)]  # back to the slot it came in
    assert None not in out


@pytest.mark.parametrize("sip_first", [True, False])
def test_phonelink_passing_one_frame_a_slot_never_drains(sip_first: bool) -> None:
    """Whichever leg ticks first in the engine's wake-up, one frame a slot goes straight through."""
    leg = FakeLeg()
    link = PhoneLink(cast(SipLeg, leg), clock=lambda: 0.0)
    silence = np.zeros(FRAME, dtype=np.int16)
    out = []
    for k in range(1000):
        if sip_first:
            leg.feed_audio(frame(k).tobytes())
        out.append(frame_id(link.exchange(silence, False)))
        if not sip_first:
            leg.feed_audio(frame(k).tobytes())  # the app leg first: it takes the last slot's frame
    lag = 0 if sip_first else 1
    assert out[lag:] == [k % IDS for k in range(1000 - lag)]
    assert link.drained == 0 and link.underruns == 0 and link.trimmed == 0


# --- which buffer holds what -------------------------------------------------------------------------
def test_buffers_say_which_buffer_holds_what(udp: Callable[[], socket.socket]) -> None:
    mc = sip_leg(udp(), **OLD_TRUNK)
    for k in range(3):
        mc.write(frame(k).tobytes())
    drive(sender(Talker()), [mc.session], 200, {50: 7}, after=lambda i: mc.queues.rx.clear())
    b = mc.stats()["buffers"]  # the fixed buffer kept the stall's packets; the send queue went out
    assert b == {"jitter": 8, "jitter_standing": 8, "jitter_peak": 8, "fifo": 0, "tx": 0,
                 "tx_standing": 0, "tx_drained": 0, "rx": 0}
    new = sip_leg(udp())
    drive(sender(Talker()), [new.session], 400, {50: 7}, after=lambda i: new.queues.rx.clear())
    assert new.session.buffers()["jitter_standing"] <= 2  # back at the adaptive target


# --- the whole phone -> app path ---------------------------------------------------------------------------
def test_phone_to_app_comes_back_after_every_stall(udp: Callable[[], socket.socket]) -> None:
    """Carrier -> SIP leg -> PhoneLink -> the app leg's slot, eight stalls of 3-9 slots: the delay
    after them is the delay before, where the fixed buffers ratchet up by about the sum."""
    def run(drain: bool, **cfg: object) -> Talker:
        mc = sip_leg(udp(), **cfg)
        link = PhoneLink(cast(SipLeg, QueueLeg(mc)), clock=lambda: 0.0, drain_after=5 if drain else 10**9)
        ear = Ear(link)
        app = RtpSession(MediaFormat("PCMU", 0, None, remote=ADDR), ear, rtcp=False, max_burst=3)
        stalls = {300 + 150 * k: 3 + (k * 5) % 7 for k in range(8)}
        drive(sender(Talker()), [mc.session, app], 2000, stalls)
        return ear.talker

    new = run(True)
    before, first = new.delay(50, 300), new.delay(400, 450)
    assert before <= 1 and first <= before + 1  # at most the SIP leg's adaptive target's frame
    assert new.delay(1700, 2000) <= first  # and flat: seven more stalls add nothing
    old = run(False, **OLD_TRUNK)
    assert old.delay(1700, 2000) >= old.delay(50, 300) + 8
