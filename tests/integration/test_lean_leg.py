"""The lean WebRTC leg (bridge/net/webrtc.py) against itself over real ICE, DTLS and SRTP on
127.0.0.1: Opus at 8 kHz carries a 1 kHz tone at the right frequency and level both ways, across
the SRTP rollover (sequence numbers start just below 65535), and speech through it scores PESQ
within 0.1 of G.711 alone on the same speech."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from bridge.net.webrtc import WebRtcLeg
from bridge.rtp import g711
from jego_call.media import analysis
from jego_call.media.endpoint import enable_loopback_candidates

from ..helpers import until
from .bridge_util import segment, speech_8k, tone_ok

LEVEL = -10.0  # dBFS peak


class Player:
    """AudioPort: plays `pcm` (int16 at 8 kHz, then silence) and records what it receives."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm = pcm
        self.at = 0
        self.heard: list[np.ndarray] = []

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray | None:
        if live or self.heard:
            self.heard.append(rx.copy())
        chunk = self.pcm[self.at:self.at + 160]
        self.at += 160
        if len(chunk) < 160:
            chunk = np.concatenate([chunk, np.zeros(160 - len(chunk), dtype=np.int16)])
        return chunk

    def recording(self) -> np.ndarray:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)

    def heard_s(self) -> float:
        """Seconds of audio recorded so far (the engine's 20 ms ticks that reached this port)."""
        return sum(len(c) for c in self.heard) / 8000


def tone(hz: float, seconds: float) -> np.ndarray:
    n = np.arange(int(seconds * 8000))
    return (np.sin(2 * np.pi * hz * n / 8000) * 10 ** (LEVEL / 20) * 32767).astype(np.int16)


def as_int16(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(x * 32768.0, -32768, 32767), dtype=np.int16)


@pytest.fixture(autouse=True)
def _loopback() -> None:
    enable_loopback_candidates()


async def connect(a: WebRtcLeg, b: WebRtcLeg) -> None:
    offer = await a.create_offer()
    answer = await b.accept_offer(offer)
    await a.set_answer(answer)
    await asyncio.gather(a.wait_connected(15), b.wait_connected(15))


@pytest.fixture
async def legs() -> AsyncIterator[list[WebRtcLeg]]:
    made: list[WebRtcLeg] = []
    yield made
    for leg in made:
        await leg.close()


async def test_opus_tone_both_ways_across_the_srtp_rollover(legs: list[WebRtcLeg]) -> None:
    pa, pb = Player(tone(1000, 6)), Player(tone(700, 6))
    a = WebRtcLeg(pa, codecs=("opus",), sequence_number=65535 - 60, name="a")
    b = WebRtcLeg(pb, codecs=("opus",), sequence_number=65535 - 80, name="b")
    legs += [a, b]
    await connect(a, b)
    assert a.codec is not None and a.codec.name == "opus" and b.codec is not None and b.codec.name == "opus"
    await until(lambda: pa.heard_s() >= 4.6 and pb.heard_s() >= 4.6, 15, "4.6 s heard on each side")
    sa, sb = a.stats(), b.stats()
    assert sa["srtp"]["auth_failed"] == sb["srtp"]["auth_failed"] == 0
    # both senders wrapped past 65535 (after ~1.5 s) and audio kept arriving
    assert a.session is not None and b.session is not None
    assert a.session.sender.packets_sent > 200 and b.session.sender.packets_sent > 200
    assert sa["packets_received"] > 200 and sb["packets_received"] > 200
    expected = analysis.sine_rms_dbfs(LEVEL)
    heard_b = analysis.to_float(pb.recording())  # a's 1 kHz
    heard_a = analysis.to_float(pa.recording())  # b's 700 Hz
    # seconds 2.5..4.5 of what each heard: all of it after the rollover
    ok, hz, lvl = tone_ok(segment(heard_b, 8000, 2.5, 4.5), 8000, 1000.0, expected)
    assert ok, ("a -> b", hz, lvl)
    ok, hz, lvl = tone_ok(segment(heard_a, 8000, 2.5, 4.5), 8000, 700.0, expected)
    assert ok, ("b -> a", hz, lvl)


async def test_speech_through_the_lean_leg_scores_like_g711(legs: list[WebRtcLeg]) -> None:
    ref = speech_8k()
    speech = as_int16(ref)
    pa, pb = Player(speech), Player(np.zeros(0, dtype=np.int16))
    a = WebRtcLeg(pa, codecs=("opus",), name="a")
    b = WebRtcLeg(pb, codecs=("opus",), name="b")
    legs += [a, b]
    await connect(a, b)
    await until(lambda: pb.heard_s() >= len(speech) / 8000 + 0.5, 30, "the whole sample heard at b")
    heard = analysis.to_float(pb.recording())
    lean = analysis.pesq_score(ref, heard, 8000, mode="nb")
    g711_alone = analysis.to_float(g711.decoder_for("PCMU")(g711.encoder_for("PCMU")(speech)))
    base = analysis.pesq_score(ref, g711_alone, 8000, mode="nb")
    print(f"PESQ nb: lean leg (Opus 8 kHz) {lean:.2f}, G.711 alone {base:.2f}")
    assert lean >= base - 0.1, (lean, base)
    assert a.red_send and a.stats()["red_distance"] == 2  # a clean path: RED at its normal depth


@pytest.mark.parametrize("fec", [True, False])
async def test_fec_through_lossy_lean_legs(legs: list[WebRtcLeg], fec: bool) -> None:
    """b's receive path loses 8 % of the SRTP datagrams (seeded, below SRTP); with FEC asked for,
    a's encoder adds it once b's RTCP reports the loss and b rebuilds lost frames from it;
    without, b only conceals."""
    from jego_call.media.impair import ImpairmentSpec

    speech = as_int16(speech_8k())
    pa, pb = Player(speech), Player(np.zeros(0, dtype=np.int16))
    # RED off: this is about FEC alone (RED would rebuild these single losses first: test_red_...)
    a = WebRtcLeg(pa, codecs=("opus",), name="a", fec=fec, red=False)
    b = WebRtcLeg(pb, codecs=("opus",), name="b", fec=fec, red=False, impair=ImpairmentSpec.parse("loss=8,seed=11"))
    legs += [a, b]
    await connect(a, b)
    await until(lambda: pb.heard_s() >= 7.5, 20, "7.5 s heard at b")
    sb = b.stats()
    print(f"fec={fec}: b {sb['impaired']}, recovered {sb['fec_recovered']}, concealed {sb['concealed_frames']}, "
          f"a plans FEC for {a.fec_loss_percent} % loss")
    assert sb["impaired"]["dropped"] > 0 and sb["packets_lost"] > 0
    assert sb["srtp"]["auth_failed"] == 0
    if fec:
        assert a.remote_fec and a.fec_loss_percent > 0
        assert sb["fec_recovered"] > 0
    else:
        assert not a.remote_fec and a.fec_loss_percent == 0
        assert sb["fec_recovered"] == 0 and sb["concealed_frames"] > 0


async def test_red_through_a_lossy_lean_leg(legs: list[WebRtcLeg]) -> None:
    """The caller offers RFC 2198 RED after Opus, the answerer lists it first and so gets it; with
    10 % loss in bursts on b's receive path, b plays most lost frames from the copies, and a sends
    them 3 deep once b's RTCP reports the loss (WebRtcLeg.red_lossy_distance)."""
    from jego_call.media.impair import ImpairmentSpec

    speech = as_int16(speech_8k())
    pa, pb = Player(speech), Player(np.zeros(0, dtype=np.int16))
    a = WebRtcLeg(pa, codecs=("opus",), name="a")
    b = WebRtcLeg(pb, codecs=("opus",), name="b", impair=ImpairmentSpec.parse("loss=10,burst=2,seed=4"))
    legs += [a, b]
    await connect(a, b)
    assert a.red_pt is not None and a.red_send and b.red_pt == a.red_pt and not b.red_send
    await until(lambda: pb.heard_s() >= 5.5, 20, "5.5 s heard at b")
    sb, sa = b.stats(), a.stats()
    print(f"b {sb['impaired']}, RED received {sb['red_received']}, RED recovered {sb['red_recovered']}, "
          f"FEC {sb['fec_recovered']}, concealed {sb['concealed_frames']}")
    assert sa["red_sent"] and sb["red_received"] > 200
    assert sa["red_distance"] == 3 and a.red_lossy_distance == 3 and sb["red_distance"] == 0  # b sends plain Opus
    assert sb["impaired"]["dropped"] > 10 and sb["red_recovered"] > sb["concealed_frames"]
