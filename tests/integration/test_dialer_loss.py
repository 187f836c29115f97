"""The dialer's receive path under loss (issue 15 item 2): a lean WebRTC leg (bridge/net/webrtc.py,
the bridge's side) sends speech to a MediaEndpoint (jego_call/media/endpoint.py, the dialer's)
whose received datagrams are dropped by a seeded network below DTLS/SRTP. With FEC asked for
(useinbandfec=1), the lean leg's encoder adds it once the dialer's RTCP reports the loss and the
dialer rebuilds lost frames from it (jego_call/media/receive.py); without, it only conceals. The
same seeded loss pattern both times; judged by the counters and by PESQ of the recording."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bridge.net.webrtc import WebRtcLeg
from jego_call.media import analysis
from jego_call.media.endpoint import MediaEndpoint, enable_loopback_candidates
from jego_call.media.impair import ImpairmentSpec
from jego_call.media.sinks import WavRecorder

from ..helpers import until
from .bridge_util import speech_8k


class Player:
    """AudioPort: plays `pcm` (int16 at 8 kHz, then silence)."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm = pcm
        self.at = 0

    def exchange(self, rx: np.ndarray, live: bool) -> np.ndarray | None:
        chunk = self.pcm[self.at:self.at + 160]
        self.at += 160
        return np.pad(chunk, (0, 160 - len(chunk))) if len(chunk) < 160 else chunk


async def call(tmp: Path, speech: np.ndarray, fec: bool, spec: str) -> tuple[dict[str, object], np.ndarray]:
    enable_loopback_candidates()
    wav = tmp / f"heard-{fec}.wav"
    a = WebRtcLeg(Player(speech), codecs=("opus",), name="bridge", fec=True, red=False)
    rec = WavRecorder(wav)
    b = MediaEndpoint(sinks=[rec], name="dialer", fec=fec, impair=ImpairmentSpec.parse(spec))
    try:
        answer = await b.accept_offer(await a.create_offer())
        await a.set_answer(answer)
        await asyncio.gather(a.wait_connected(15), b.wait_connected(15))
        await until(lambda: rec.duration_s >= len(speech) / 8000 + 0.5, 30, "the whole sample recorded")
        stats = await b.stats()
        assert (a.remote_fec, a.fec_loss_percent > 0) == (fec, fec)  # FEC sent only when asked and lossy
    finally:
        await b.close()
        await a.close()
    x, rate = analysis.read_wav(wav)
    return stats, analysis.resample(x, rate, 8000)


@pytest.mark.parametrize("spec", ["loss=8,seed=11"])
async def test_the_dialer_recovers_from_fec_and_conceals_the_rest(tmp_path: Path, spec: str) -> None:
    ref = speech_8k()[: 8000 * 8]
    speech = np.asarray(np.clip(ref * 32768, -32768, 32767), dtype=np.int16)
    on, heard_on = await call(tmp_path, speech, True, spec)
    off, heard_off = await call(tmp_path, speech, False, spec)
    lon, loff = on["loss"], off["loss"]
    assert isinstance(lon, dict) and isinstance(loff, dict)
    pesq_on = analysis.pesq_score(ref, heard_on, 8000, mode="nb")
    pesq_off = analysis.pesq_score(ref, heard_off, 8000, mode="nb")
    print(f"{spec}: FEC on {lon} PESQ {pesq_on:.2f}; off {loff} PESQ {pesq_off:.2f}")
    assert lon["lost_frames"] > 10 and loff["lost_frames"] > 10
    assert lon["fec_recovered"] > 0 and loff["fec_recovered"] == 0
    assert loff["concealed_frames"] > 0 and lon["concealed_frames"] < loff["concealed_frames"]
    assert pesq_on > pesq_off
