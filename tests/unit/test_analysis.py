"""Offline audio analysis and codec level checks on synthetic signals."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from jego_call.media import analysis
from jego_call.media.codecs import MonoOpusEncoder, compute_audio_level_dbov
from jego_call.media.tracks import ToneSource, parse_tone, source_from_spec

SPEECH = Path(__file__).resolve().parent.parent / "data" / "speech_en_48k.wav"
RATE = 48000


def sine(freq: float, seconds: float, peak_dbfs: float = -10.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 10 ** (peak_dbfs / 20) * np.sin(2 * np.pi * freq * t)


def test_level_of_sine_and_silence() -> None:
    assert analysis.level_dbfs(sine(1000, 1, -10)) == pytest.approx(-13.01, abs=0.01)
    assert analysis.level_dbfs(sine(1000, 1, -30)) == pytest.approx(-33.01, abs=0.01)
    assert analysis.level_dbfs(np.zeros(1000)) == analysis.SILENCE_DBFS
    assert analysis.level_dbfs(np.full(100, 16384, dtype=np.int16)) == pytest.approx(-6.02, abs=0.01)
    assert analysis.sine_rms_dbfs(-10) == pytest.approx(-13.01, abs=0.01)


@pytest.mark.parametrize("freq", [300.0, 440.0, 1000.0, 3150.0, 7000.0])
def test_dominant_frequency(freq: float) -> None:
    x = sine(freq, 0.5) + 0.01 * np.random.default_rng(1).standard_normal(RATE // 2)
    assert analysis.dominant_frequency(x, RATE) == pytest.approx(freq, abs=2)
    assert analysis.dominant_frequency(np.zeros(RATE), RATE) == 0.0


def test_dominant_frequency_picks_the_stronger_tone() -> None:
    x = sine(500, 1, -10) + sine(1500, 1, -20)
    assert analysis.dominant_frequency(x, RATE) == pytest.approx(500, abs=2)


def test_active_duration() -> None:
    x = np.concatenate([sine(1000, 1.0), np.zeros(RATE), sine(1000, 0.5, -30), np.zeros(RATE // 2)])
    assert analysis.active_duration(x, RATE) == pytest.approx(1.5, abs=0.04)
    assert analysis.active_duration(x, RATE, threshold_dbfs=-20) == pytest.approx(1.0, abs=0.04)


def test_resample_passes_band_and_blocks_aliases() -> None:
    x = sine(1000, 1)
    down = analysis.resample(x, RATE, 8000)
    assert down.size == 8000
    assert analysis.level_dbfs(down[100:-100]) == pytest.approx(analysis.level_dbfs(x), abs=0.05)
    assert analysis.dominant_frequency(down, 8000) == pytest.approx(1000, abs=1)
    # 5 kHz is above 8 kHz's Nyquist: a naive decimation would fold it to 3 kHz at full level
    alias = analysis.resample(sine(5000, 1), RATE, 8000)
    assert analysis.level_dbfs(alias[100:-100]) < -70
    naive = sine(5000, 1)[::6]
    assert analysis.level_dbfs(naive) > -20  # the test can tell the difference
    up = analysis.resample(down, 8000, 16000)
    assert up.size == 16000
    assert analysis.dominant_frequency(up, 16000) == pytest.approx(1000, abs=1)
    assert analysis.level_dbfs(up[200:-200]) == pytest.approx(analysis.level_dbfs(x), abs=0.1)


@pytest.mark.parametrize("lag", [0, 1234, -567])
def test_align_recovers_the_lag(lag: int) -> None:
    rng = np.random.default_rng(2)
    ref = rng.standard_normal(8000) * 0.1
    deg = np.concatenate([np.zeros(lag), ref])[: ref.size + 2000] if lag >= 0 else ref[-lag:]
    r, d, found = analysis.align(ref, deg)
    assert found == lag
    overlap = slice(max(0, -lag), ref.size)
    assert np.allclose(r[overlap], d[overlap])


def test_pesq_identical_delayed_and_degraded() -> None:
    ref, rate = analysis.read_wav(SPEECH)
    assert rate == RATE
    assert analysis.pesq_score(ref, ref, rate, "wb") > 4.4
    delayed = np.concatenate([np.zeros(int(0.25 * rate)), ref * 0.5])
    assert analysis.pesq_score(ref, delayed, rate, "wb") > 4.3
    assert analysis.pesq_score(ref, delayed, rate, "nb") > 4.2
    noisy = ref + 0.05 * np.random.default_rng(3).standard_normal(ref.size)
    assert analysis.pesq_score(ref, noisy, rate, "wb") < 2.0


def _opus_round_trip(encoder: object, mono: np.ndarray, layout: str = "mono") -> np.ndarray:
    dec = OpusDecoder()
    out = []
    for i in range(mono.size // 960):
        chunk = mono[i * 960:(i + 1) * 960]
        if layout == "stereo":
            chunk = np.repeat(chunk, 2)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = RATE
        frame.pts = i * 960
        payloads, ts = encoder.encode(frame)  # type: ignore[attr-defined]
        for p in payloads:
            for f in dec.decode(JitterFrame(p, ts)):
                out.append(f.to_ndarray().reshape(-1, 2))  # type: ignore[attr-defined]
    return np.concatenate(out)


@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_mono_opus_keeps_the_level(layout: str) -> None:
    sent = (sine(1000, 2) * 32767).astype(np.int16)
    got = _opus_round_trip(MonoOpusEncoder(32000), sent, layout)
    sent_db = analysis.level_dbfs(sent[RATE // 2:])
    for ch in (0, 1):
        assert analysis.level_dbfs(got[RATE // 2:, ch]) == pytest.approx(sent_db, abs=0.5)


def test_stock_aiortc_opus_loses_3_db() -> None:
    """The bug MonoOpusEncoder fixes: the level test above would catch it."""
    sent = (sine(1000, 2) * 32767).astype(np.int16)
    got = _opus_round_trip(OpusEncoder(), sent)
    loss = analysis.level_dbfs(sent[RATE // 2:]) - analysis.level_dbfs(got[RATE // 2:, 0])
    assert loss == pytest.approx(3.0, abs=0.5)


def test_mono_opus_bitrate_is_a_voice_bitrate() -> None:
    enc = MonoOpusEncoder(32000)
    sent = (sine(1000, 4) * 32767).astype(np.int16)
    total = 0
    for i in range(sent.size // 960):
        frame = av.AudioFrame.from_ndarray(sent[i * 960:(i + 1) * 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        payloads, _ = enc.encode(frame)
        total += sum(len(p) for p in payloads)
    assert total * 8 / 4 == pytest.approx(32000, rel=0.1)


def test_numpy_audio_level_matches_aiortc() -> None:
    from aiortc.rtp import compute_audio_level_dbov as stock

    for db in (-3, -20, -60):
        x = (sine(700, 0.02, db) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        assert compute_audio_level_dbov(frame) == stock(frame)


def test_parse_tone_and_bad_specs(tmp_path: Path) -> None:
    assert parse_tone("tone:440") == (440.0, -10.0, None)
    assert parse_tone("tone:1000:-20") == (1000.0, -20.0, None)
    assert parse_tone("tone:1000:-20:5") == (1000.0, -20.0, 5.0)
    for bad in ("tone:", "tone:abc", "tone:1:2:3:4", "tone:1000:-10:0"):
        with pytest.raises(ValueError, match="tone"):
            parse_tone(bad)
    with pytest.raises(FileNotFoundError):
        source_from_spec(str(tmp_path / "missing.wav"))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="cannot read"):
        source_from_spec(str(junk))


async def test_file_source_reads_the_speech_file() -> None:
    src = source_from_spec(str(SPEECH))
    frames = [await src.recv() for _ in range(10)]
    assert all(f.samples == 960 and f.sample_rate == RATE for f in frames)
    ref, _ = analysis.read_wav(SPEECH)
    got = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64) / 32768
    assert np.max(np.abs(got - ref[: got.size])) < 2e-4
    src.stop()


async def test_tone_source_paces_on_an_absolute_clock() -> None:
    src = ToneSource(1000, -10, duration=0.5)
    start = time.monotonic()
    frames = [await src.recv() for _ in range(50)]
    elapsed = time.monotonic() - start
    assert 0.95 <= elapsed <= 1.1  # frame 49 is due at 0.98 s
    assert [f.pts for f in frames] == [i * 960 for i in range(50)]
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert analysis.active_duration(samples, RATE) == pytest.approx(0.5, abs=0.021)
    assert src.pacing.on_time_ratio > 0.9


# --- clicks: latency by cross-correlation ------------------------------------------------------
@pytest.mark.parametrize("lag", [0, 37, 1234, 5000])
def test_click_delays_find_a_known_offset(lag: int) -> None:
    x, starts = analysis.click_train(8000, 10, period_s=1.0, first_s=0.3)
    assert len(starts) == 10 and starts[0] == 2400
    y = 0.25 * np.concatenate([np.zeros(lag), x])[: x.size]           # 12 dB quieter
    y = y + 0.001 * np.random.default_rng(4).standard_normal(y.size)   # and a little noise
    found = analysis.click_delays(y, 8000, starts, max_delay_s=0.9)
    expected = lag / 8000
    assert all(d is not None and d == pytest.approx(expected, abs=1 / 8000) for d in found[:-1]), found
    s = analysis.delay_summary(found)
    assert s["median_ms"] == pytest.approx(1000 * expected, abs=0.2) and s["sent"] == 10


def test_click_delays_say_none_for_a_lost_click() -> None:
    x, starts = analysis.click_train(8000, 5, period_s=1.0, first_s=0.5)
    y = x.copy()
    y[starts[2]: starts[2] + 200] = 0.0                                  # click 2 never arrived
    y[starts[3]: starts[3] + 200] = 0.3 * np.sin(np.arange(200) / 3)    # click 3: a tone instead
    found = analysis.click_delays(y, 8000, starts, max_delay_s=0.5)
    assert found[2] is None and found[3] is None
    assert found[0] == found[1] == found[4] == 0.0
    assert analysis.delay_summary([None, None])["found"] == 0


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "opus"])
def test_click_delays_through_a_codec(codec: str) -> None:
    """G.711 adds no delay; Opus at 8 kHz adds its 6.5 ms look-ahead (52 samples), and the click
    still correlates above 0.9 through both."""
    from bridge.net.opus import OpusDecoder as Dec8k
    from bridge.net.opus import OpusEncoder as Enc8k
    from bridge.rtp import g711

    lag = 300
    x, starts = analysis.click_train(8000, 6, period_s=0.5, first_s=0.25)
    pcm = np.asarray(np.clip(np.concatenate([np.zeros(lag), x]) * 32768, -32768, 32767), dtype=np.int16)
    if codec == "opus":
        enc, dec = Enc8k(32000, 1), Dec8k()
        out = np.concatenate([dec.decode(enc.encode(pcm[i:i + 160])) for i in range(0, pcm.size - 159, 160)])
        extra = 52
    else:
        out = g711.decoder_for(codec)(g711.encoder_for(codec)(pcm))
        extra = 0
    found = analysis.click_delays(analysis.to_float(out), 8000, starts, max_delay_s=0.45, min_score=0.9)
    assert all(d is not None for d in found[:-1]), found
    assert {round(d * 8000) for d in found if d is not None} == {lag + extra}
