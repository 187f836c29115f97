"""Opus in-band FEC and PLC on the lean leg's receive path (issue 15), in virtual time: two
RtpSessions with bridge/net/opus.py codecs, the seeded impairment of jego_call/media/impair.py
between them. Judged by PESQ of what plays out and by the recovered/concealed counters."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.net.opus import OpusCodec, OpusDecoder, OpusEncoder
from bridge.rtp.media import MediaFormat, RtpSession
from jego_call.media import analysis
from tests.integration.bridge_util import speech_8k
from tests.lossy_path import ADDR, run_path


def through(speech: np.ndarray, spec: str, fec: bool) -> tuple[float, RtpSession]:
    """Speech through Opus (FEC on or off at the sender) over the impaired path; (PESQ, receiver)."""
    fmt = MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR)
    tx_codec, rx_codec = OpusCodec(32000, 1), OpusCodec(32000, 1)
    if fec:
        tx_codec.enable_fec(10)
    pcm, rx, _net = run_path(speech, fmt, tx_codec, rx_codec, spec)
    heard = analysis.to_float(pcm)
    return analysis.pesq_score(analysis.to_float(speech), heard, 8000, mode="nb"), rx


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.asarray(np.clip(speech_8k() * 32768, -32768, 32767), dtype=np.int16)


def test_a_packet_with_fec_rebuilds_the_one_before_it() -> None:
    enc = OpusEncoder(32000, 1)
    enc.configure(loss_percent=10)
    t = np.arange(160 * 20)
    tone = (np.sin(2 * np.pi * 440 * t / 8000) * 8000).astype(np.int16)
    packets = [enc.encode(tone[i:i + 160]) for i in range(0, len(tone), 160)]
    dec = OpusDecoder()
    for p in packets[:10]:
        dec.decode(p)
    got = dec.recover(packets[11], 160)  # packet 10 lost: rebuilt from 11's LBRR
    assert got is not None and len(got) == 160
    assert analysis.level_dbfs(analysis.to_float(got)) > -30  # audio, not silence
    plain = OpusEncoder(32000, 1)
    no_fec = [plain.encode(tone[i:i + 160]) for i in range(0, len(tone), 160)]
    assert OpusDecoder().recover(no_fec[11], 160) is None  # nothing to recover from: conceal instead


@pytest.mark.parametrize("spec", ["loss=5,seed=3", "loss=10,burst=2,seed=5"])
def test_fec_recovers_under_loss_and_beats_plc_alone(speech: np.ndarray, spec: str) -> None:
    with_fec, rx_on = through(speech, spec, fec=True)
    plc_only, rx_off = through(speech, spec, fec=False)
    on, off = rx_on.playout, rx_off.playout
    print(f"{spec}: PESQ nb FEC {with_fec:.2f} (recovered {on.recovered_frames}, concealed "
          f"{on.concealed_frames}), PLC only {plc_only:.2f} (concealed {off.concealed_frames})")
    assert rx_on.playout.jitter.stats().lost == rx_off.playout.jitter.stats().lost > 0  # the same pattern
    assert on.recovered_frames > 0
    assert off.recovered_frames == 0 and off.concealed_frames > 0
    assert with_fec > plc_only


def test_clean_path_needs_neither(speech: np.ndarray) -> None:
    score, rx = through(speech[: 8000 * 6], "", fec=True)
    assert rx.playout.recovered_frames == 0 and rx.playout.concealed_frames == 0
    assert score > 3.9


def test_our_sdp_asks_for_fec_and_a_voice_bitrate() -> None:
    from bridge.net.webrtc import fec_loss_percent, narrowband_opus, remote_wants_fec

    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96 0\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
    out = narrowband_opus(sdp, max_average_bitrate=32000)
    fmtp = [ln for ln in out.split("\r\n") if ln.startswith("a=fmtp:96 ")]
    assert fmtp == ["a=fmtp:96 maxplaybackrate=8000;sprop-maxcapturerate=8000;useinbandfec=1;maxaveragebitrate=32000"]
    assert out.index("a=rtpmap:96") < out.index("a=fmtp:96") < out.index("a=rtpmap:0")
    # a browser's own fmtp line keeps its values and gains only what it lacks
    chrome = sdp.replace("a=rtpmap:0", "a=fmtp:96 minptime=10;useinbandfec=1\r\na=rtpmap:0")
    [line] = [ln for ln in narrowband_opus(chrome).split("\r\n") if ln.startswith("a=fmtp:96 ")]
    assert line.startswith("a=fmtp:96 minptime=10;useinbandfec=1;") and line.count("useinbandfec") == 1
    assert "maxaveragebitrate=32000" in line
    assert remote_wants_fec(chrome, 96) and not remote_wants_fec(sdp, 96)
    assert not remote_wants_fec(chrome.replace("useinbandfec=1", "useinbandfec=0"), 96)
    assert [fec_loss_percent(f) for f in (0.0, 0.004, 0.05, 0.5)] == [0, 1, 5, 25]
