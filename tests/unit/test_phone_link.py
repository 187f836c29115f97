"""The bridge's hand-over between its two legs (bridge/gateway/call.py `PhoneLink`, issue 15), in
virtual time on the real media engine (bridge/net/media.py, the FakeLoop of test_media_engine.py):
the app leg's frame leaves on the SIP leg in the slot the app leg played it, not one slot (20 ms)
later, and the SIP leg's received frame reaches the app leg in its own slot too, whichever leg the
engine happens to tick first. Frames are numbered by a sample value that survives mu-law exactly."""

from __future__ import annotations

import asyncio
from typing import cast

import numpy as np

from bridge.gateway.call import PhoneLink
from bridge.gateway.legs import SipLeg
from bridge.net.media import PERIOD, MediaEngine, RtpEndpoint
from bridge.rtp import g711
from bridge.rtp.media import AudioPort, FrameQueues, MediaFormat, RtpSession
from bridge.rtp.packet import RtpPacket
from tests.unit.test_media_engine import FakeLoop, Sent, rtp

IDS = 120
VALUES = [int(v) for v in g711.decoder_for("PCMU")(bytes(range(0x7F - IDS, 0x7F)))]  # not 0x7F: silence
ID_OF = {v: i for i, v in enumerate(VALUES)}
APP, PHONE = ("127.0.0.1", 5000), ("127.0.0.1", 6000)
ENCODE = g711.encoder_for("PCMU")


def frame_id(pcm: np.ndarray) -> int | None:
    v = int(pcm[0])
    return ID_OF[v] if v in ID_OF and (pcm == v).all() else None


def packet(n: int, base: int) -> bytes:
    """Frame `base + n` (its id modulo IDS) as the n-th PCMU packet of a far end."""
    pcm = np.full(160, VALUES[(base + n) % IDS], dtype=np.int16)
    return RtpPacket(0, 1000 + n, 160 * n, 0xABC + base, ENCODE(pcm)).serialize()


class Tap:
    """An AudioPort in front of another: notes the id of the frame played in each slot."""

    def __init__(self, inner: AudioPort) -> None:
        self.inner = inner
        self.played: list[int | None] = []

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray | None:
        self.played.append(frame_id(rx) if live else None)
        return self.inner.exchange(rx, live)


class EngineSipLeg:
    """The part of a SipLeg that PhoneLink uses, as PyVoipLeg does it: 16-bit frames through
    FrameQueues to an RtpSession on the media engine; `serve_media` is `MediaEngine.serve`."""

    def __init__(self, engine: MediaEngine, queues: FrameQueues, ep: RtpEndpoint) -> None:
        self.engine, self.queues, self.ep = engine, queues, ep

    def send_audio(self, pcm: bytes) -> None:
        self.queues.write(pcm)

    def read_audio(self) -> bytes | None:
        return self.queues.read()

    def serve_media(self) -> None:
        self.engine.serve(self.ep)


def sent_ids(sent: Sent) -> dict[int, int | None]:
    """Slot number (RTP timestamp / 160) -> id of the frame sent in it."""
    out = {}
    for p in rtp(sent):
        out[p.timestamp // 160] = frame_id(g711.decoder_for("PCMU")(p.payload))
    return out


def run_bridge(slots: int = 40) -> tuple[Tap, Tap, dict[int, int | None], dict[int, int | None]]:
    """Both legs on one engine, the SIP leg started first (as when the phone answers before the
    app's ICE is up, scripts/bench_latency.py); each far end delivers a numbered frame 5 ms before
    every slot. Returns what each leg played per slot and what each sent per slot."""
    loop = FakeLoop()
    engine = MediaEngine(cast(asyncio.AbstractEventLoop, loop))
    sip_sent: Sent = []
    app_sent: Sent = []
    queues = FrameQueues(5, 25)
    sip_tap = Tap(queues)
    fmt = MediaFormat(telephone_event_pt=None)
    sip = RtpSession(MediaFormat(remote=PHONE, telephone_event_pt=None), sip_tap, timestamp=0, jitter_prefetch=1,
                     rtcp=False)
    sip_ep = engine.attach(sip, send=lambda d, a, r: sip_sent.append((d, a, r)))
    leg = EngineSipLeg(engine, queues, sip_ep)
    link = PhoneLink(cast(SipLeg, leg), clock=loop.time)
    app_tap = Tap(link)
    app = RtpSession(MediaFormat(remote=APP, telephone_event_pt=fmt.telephone_event_pt), app_tap, timestamp=0,
                     jitter_prefetch=1, jitter_adaptive=True, rtcp=False)
    app_ep = engine.attach(app, send=lambda d, a, r: app_sent.append((d, a, r)))
    engine.start(sip_ep)
    engine.start(app_ep)
    t0 = loop.now
    for n in range(slots):
        loop.run_until(t0 + n * PERIOD - 0.005)
        engine.receive(app_ep, packet(n, 0), APP)
        engine.receive(sip_ep, packet(n, 60), PHONE)
        loop.run_until(t0 + n * PERIOD)
    return app_tap, sip_tap, sent_ids(app_sent), sent_ids(sip_sent)


def test_the_app_legs_frame_leaves_on_the_sip_leg_in_the_same_slot() -> None:
    app_played, _sip_played, _app_sent, sip_sent = run_bridge()
    pairs = [(k, f, sip_sent.get(k)) for k, f in enumerate(app_played.played) if f is not None]
    assert len(pairs) > 30  # the app leg played (nearly) every slot
    assert all(f == s for _k, f, s in pairs), pairs[:5]


def test_the_sip_legs_frame_reaches_the_app_leg_in_the_same_slot() -> None:
    _app_played, sip_played, app_sent, _sip_sent = run_bridge()
    pairs = [(k, f, app_sent.get(k)) for k, f in enumerate(sip_played.played) if f is not None]
    assert len(pairs) > 30
    assert all(f == s for _k, f, s in pairs), pairs[:5]
