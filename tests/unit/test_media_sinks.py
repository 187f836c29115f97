"""Sinks and the echo track on synthetic frames: gaps become silence, levels are read live."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from av import AudioFrame

from jego_call.media import analysis
from jego_call.media.sinks import Analyser, WavRecorder
from jego_call.media.tracks import EchoTrack


def frame(n: int, rate: int = 48000, stereo: bool = True, freq: float = 1000.0, peak: float = 0.316) -> AudioFrame:
    spf = rate // 50
    t = (np.arange(spf) + n * spf) / rate
    mono = np.round(peak * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    data = np.repeat(mono, 2) if stereo else mono
    f = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="stereo" if stereo else "mono")
    f.sample_rate = rate
    f.pts = n * spf
    f.time_base = Fraction(1, rate)
    return f


def test_wav_recorder_fills_gaps_with_silence(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    for n in list(range(0, 50)) + list(range(75, 100)):  # 0.5 s of frames missing
        rec.handle(frame(n))
    rec.close()
    x, rate = analysis.read_wav(tmp_path / "r.wav")
    assert rate == 48000
    assert x.size / rate == pytest.approx(2.0, abs=0.001)  # wall time, not 1.5 s of frames
    assert analysis.active_duration(x, rate) == pytest.approx(1.5, abs=0.02)
    assert analysis.level_dbfs(x[rate + rate // 10: rate + rate // 2 - 100]) == analysis.SILENCE_DBFS
    assert analysis.level_dbfs(x[:rate]) == pytest.approx(analysis.sine_rms_dbfs(-10), abs=0.05)


def test_wav_recorder_resamples_to_a_chosen_rate(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r8k.wav", rate=8000)
    for n in range(50):
        rec.handle(frame(n))
    rec.close()
    x, rate = analysis.read_wav(tmp_path / "r8k.wav")
    assert rate == 8000
    assert analysis.dominant_frequency(x[800:], rate) == pytest.approx(1000, abs=5)


def test_analyser_reports_the_last_second() -> None:
    an = Analyser()
    for n in range(100):
        an.handle(frame(n, freq=440))
    for n in range(100, 150):
        an.handle(frame(n, freq=2000, peak=0.1))
    # the last second is all 2 kHz at -20 dBFS peak; the louder 440 Hz before it is forgotten
    assert an.dominant_hz == pytest.approx(2000, abs=5)
    assert an.level_dbfs == pytest.approx(analysis.sine_rms_dbfs(-20), abs=0.05)
    assert an.received_s == pytest.approx(3.0)
    assert an.window().size == 48000


async def test_echo_track_is_bounded_and_silent_when_empty() -> None:
    echo = EchoTrack(max_frames=5)
    first = await echo.recv()
    assert not np.any(first.to_ndarray())  # nothing arrived yet: silence
    for n in range(8):
        echo.handle(frame(n, rate=8000, stereo=False))  # G.711-rate input is resampled to 48 kHz
    got = [await echo.recv() for _ in range(6)]
    assert echo.dropped >= 2  # the queue kept at most 5 frames
    audio = np.concatenate([f.to_ndarray().reshape(-1) for f in got[:4]])
    assert analysis.dominant_frequency(audio, 48000) == pytest.approx(1000, abs=10)
    assert all(f.sample_rate == 48000 and f.samples == 960 for f in got)
