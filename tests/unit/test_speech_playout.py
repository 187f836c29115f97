"""The bridge's app leg's speech-aware playout (issue 15; bridge.rtp.session.JitterBuffer
START_COVER and QUIET_RUN, bridge.rtp.media.Playout ``speech=True``), in virtual time through
tests/lossy_path.py: a fresh stream starts with a 2-frame loss cover, so the first losses of a
lossy path are rebuilt from the next packet's RED / FEC instead of concealed; on a clean path
those frames are given back after START_MEMORY slots, in a pause, never inside a tone burst.
Judged by the received audio (burst lengths, PESQ) and the counters."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.net.opus import OpusCodec
from bridge.rtp import g711
from bridge.rtp.media import MediaFormat
from bridge.rtp.session import APP_LEG_FLOOR, JitterBuffer
from jego_call.media import analysis
from tests.integration.bridge_util import speech_8k
from tests.lossy_path import ADDR, run_path

RATE = 8000


def _opus_fmt(red: int) -> MediaFormat:
    return MediaFormat(codec="opus", payload_type=111, telephone_event_pt=None, remote=ADDR,
                       red_pt=63 if red else None, red_distance=red)


def _through(pcm: np.ndarray, spec: str, speech: bool, red: int = 3) -> tuple[np.ndarray, object]:
    tx, rx = OpusCodec(32000, 1), OpusCodec(32000, 1)
    tx.enable_fec(10)
    heard, sess, _net = run_path(pcm, _opus_fmt(red), tx, rx, spec, jitter_adaptive=True,
                                 jitter_prefetch=APP_LEG_FLOOR, jitter_speech=speech)
    return heard, sess


def _bursts(x: np.ndarray) -> list[int]:
    """Lengths (in 5 ms blocks) of the runs of loud 5 ms blocks in ``x``."""
    blocks = x[: len(x) // 40 * 40].astype(np.float64).reshape(-1, 40)
    loud = np.sqrt((blocks ** 2).mean(axis=1)) > 1000
    runs, n = [], 0
    for b in loud:
        if b:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def _tones(lead_s: float) -> tuple[np.ndarray, int]:
    """`lead_s` of silence, then 10 x (400 ms of 440 Hz, 400 ms of silence); the burst length."""
    t = np.arange(int(0.4 * RATE)) / RATE
    tone = np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    lead = np.zeros(int(lead_s * RATE), dtype=np.int16)
    return np.concatenate([lead, *[np.concatenate((tone, np.zeros_like(tone))) for _ in range(10)]]), len(tone)


def _onset(x: np.ndarray, sent: int) -> int:
    """Samples from ``sent`` to the first loud sample at or after it."""
    return int(np.flatnonzero(np.abs(x[sent:]) > 1000)[0])


@pytest.mark.parametrize("lead_s", [0.0, 0.3, 0.5])
def test_a_clean_path_gives_the_start_cover_back_in_a_pause(lead_s: float) -> None:
    pcm, n = _tones(lead_s)
    heard, sess = _through(pcm, "", speech=True)
    jb = sess.playout.jitter  # type: ignore[attr-defined]
    st = jb.stats()
    assert st.latency_dropped == JitterBuffer.START_COVER  # the cover's frames, given back
    assert st.concealed == 0 and st.stretched == 0
    assert jb.target == APP_LEG_FLOOR
    # every tone burst came through whole: 400 ms = 80 blocks of 5 ms (Opus blurs the edges)
    runs = _bursts(heard)
    assert len(runs) == 10 and all(abs(r - 80) <= 2 for r in runs), runs
    # and the delay came down by the cover: each burst's onset against when it was sent
    lead = int(lead_s * RATE)
    delays = [_onset(heard, lead + k * 2 * n) for k in range(10)]
    assert delays[0] - delays[-1] == JitterBuffer.START_COVER * 160, delays


def test_without_quiet_drops_the_drain_cuts_a_burst() -> None:
    """The same drain taking its frames at once (QUIET_WAIT 0), from several start phases: some
    cut falls inside a tone burst, which the quiet drop above never lets happen."""
    saved = JitterBuffer.QUIET_WAIT
    cut = []
    try:
        JitterBuffer.QUIET_WAIT = 0
        for k in range(8):
            heard, _sess = _through(_tones(k / 10)[0], "", speech=True)
            cut.append(any(abs(r - 80) > 2 for r in _bursts(heard)))
    finally:
        JitterBuffer.QUIET_WAIT = saved
    assert any(cut), cut


def _speech() -> np.ndarray:
    return np.asarray(np.clip(speech_8k() * 32768, -32768, 32767), dtype=np.int16)


def test_the_start_cover_rebuilds_the_first_losses_and_scores_higher() -> None:
    speech = _speech()
    scores, concealed = {}, {}
    for speech_aware in (False, True):
        heard, sess = _through(speech, "loss=5,seed=1", speech=speech_aware)
        phone = g711.decoder_for("PCMU")(g711.encoder_for("PCMU")(heard))
        scores[speech_aware] = analysis.pesq_score(analysis.to_float(speech), analysis.to_float(phone), RATE, mode="nb")
        concealed[speech_aware] = sess.playout.concealed_frames  # type: ignore[attr-defined]
    print(f"5 % loss, RED 3 + FEC: PESQ nb {scores[False]:.2f} plain, {scores[True]:.2f} speech-aware; "
          f"concealed {concealed[False]} / {concealed[True]}")
    assert concealed[False] > 0  # at the 1-frame floor the first loss finds no next packet
    assert concealed[True] == 0  # with the cover every loss was rebuilt
    assert scores[True] >= scores[False] + 0.05


def test_a_clean_call_scores_the_same_with_it() -> None:
    speech = _speech()
    got = {}
    for speech_aware in (False, True):
        heard, _ = _through(speech, "", speech=speech_aware)
        phone = g711.decoder_for("PCMU")(g711.encoder_for("PCMU")(heard))
        got[speech_aware] = analysis.pesq_score(analysis.to_float(speech), analysis.to_float(phone), RATE, mode="nb")
    assert got[True] >= got[False] - 0.03, got
