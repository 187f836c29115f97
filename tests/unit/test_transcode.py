"""bridge.gateway.transcode: tones keep frequency and level through both converters, 5 kHz does not
alias into the telephone band, frames are exactly 20 ms, and None becomes silence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from av import AudioFrame

from bridge.gateway.transcode import PHONE_BYTES, PHONE_SAMPLES, AppToPhone, PhoneToApp, mono_s16
from jego_call.media import analysis


def app_frames(freq: float, seconds: float, rate: int = 48000, layout: str = "stereo",
               peak_dbfs: float = -10.0, samples_per_frame: int | None = None) -> list[AudioFrame]:
    """A sine as aiortc's Opus decoder delivers it: s16 packed, 20 ms frames (or other sizes)."""
    n = samples_per_frame or rate // 50
    amp = 32767 * 10 ** (peak_dbfs / 20)
    total = int(seconds * rate) // n * n
    x = np.round(amp * np.sin(2 * math.pi * freq * np.arange(total) / rate)).astype(np.int16)
    frames = []
    for i in range(0, total, n):
        chunk = x[i:i + n]
        if layout == "stereo":
            f = AudioFrame.from_ndarray(np.repeat(chunk, 2).reshape(1, -1), format="s16", layout="stereo")
        else:
            f = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        f.sample_rate = rate
        frames.append(f)
    return frames


def to_phone(frames: list[AudioFrame]) -> tuple[np.ndarray, list[int]]:
    conv = AppToPhone()
    out: list[bytes] = []
    per_push = []
    for f in frames:
        got = conv.push(f)
        per_push.append(len(got))
        out += got
    assert all(len(p) == PHONE_BYTES for p in out)
    return np.frombuffer(b"".join(out), dtype="<i2"), per_push


@pytest.mark.parametrize("layout", ["stereo", "mono"])
@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_tone_keeps_frequency_and_level(freq: float, layout: str) -> None:
    pcm, _ = to_phone(app_frames(freq, 2.0, layout=layout))
    steady = pcm[800:]  # past the filter's start-up
    assert abs(analysis.dominant_frequency(steady, 8000) - freq) < freq * 0.005
    assert abs(analysis.level_dbfs(steady) - analysis.sine_rms_dbfs(-10.0)) < 0.2


@pytest.mark.parametrize("freq", [5000.0, 6000.0, 11000.0])
def test_above_4khz_does_not_alias(freq: float) -> None:
    # naive decimation would fold 5 kHz to 3 kHz at full level; the anti-aliasing filter removes it
    pcm, _ = to_phone(app_frames(freq, 1.0, peak_dbfs=0.0))
    assert analysis.level_dbfs(pcm[800:]) < analysis.sine_rms_dbfs(0.0) - 60


def test_frames_are_exactly_20ms_even_for_odd_input_sizes() -> None:
    frames = app_frames(1000.0, 1.0, samples_per_frame=480 + 7)  # ~10 ms frames of odd length
    pcm, per_push = to_phone(frames)
    # every sample in makes it out (less what waits for the next whole frame and the filter delay)
    assert abs(pcm.size - len(frames) * (480 + 7) / 6) < 2 * PHONE_SAMPLES
    assert set(per_push) <= {0, 1}


def test_one_stateful_converter_is_phase_continuous() -> None:
    pcm, _ = to_phone(app_frames(440.0, 1.0, layout="mono"))
    steady = pcm[800:].astype(np.float64)
    # a discontinuity at a frame boundary would show as a jump much larger than the sine's slope
    max_step = 32767 * 10 ** (-10 / 20) * 2 * math.pi * 440 / 8000
    assert np.max(np.abs(np.diff(steady))) < max_step * 1.05


def test_pcm_at_8k_goes_straight_through() -> None:
    frames = app_frames(1000.0, 0.2, rate=8000, layout="mono")
    pcm, per_push = to_phone(frames)
    assert per_push == [1] * len(frames)
    expected = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert np.array_equal(pcm, expected)


def phone_tone(freq: float, seconds: float, peak: int = 10000) -> list[bytes]:
    n = int(seconds * 8000)
    x = np.round(peak * np.sin(2 * math.pi * freq * np.arange(n) / 8000)).astype("<i2")
    return [x[i:i + PHONE_SAMPLES].tobytes() for i in range(0, n, PHONE_SAMPLES)]


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3400.0])
def test_phone_to_app_tone_at_48k(freq: float) -> None:
    conv = PhoneToApp(48000)
    frames = [conv.convert(p) for p in phone_tone(freq, 2.0)]
    assert all(f.samples == 960 and f.sample_rate == 48000 for f in frames)
    assert [f.pts for f in frames[:3]] == [0, 960, 1920]
    y = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])[4800:]
    assert abs(analysis.dominant_frequency(y, 48000) - freq) < freq * 0.005
    assert abs(analysis.level_dbfs(y) - analysis.level_dbfs(np.concatenate(
        [np.frombuffer(p, "<i2") for p in phone_tone(freq, 2.0)]))) < 0.2


def test_phone_to_app_none_is_silence_and_keeps_time() -> None:
    conv = PhoneToApp(48000)
    frames = [conv.convert(None) for _ in range(10)]
    assert all(f.samples == 960 for f in frames)
    assert not np.any(np.concatenate([f.to_ndarray().reshape(-1) for f in frames]))
    assert conv.silent_frames == 10


def test_phone_to_app_at_8k_is_untouched() -> None:
    conv = PhoneToApp(8000)
    tone = phone_tone(1000.0, 0.1)
    out = b"".join(conv.convert(p).to_ndarray().astype("<i2").tobytes() for p in tone)
    assert out == b"".join(tone)


def test_mono_s16_averages_channels() -> None:
    f = AudioFrame.from_ndarray(np.array([[100, 300, -50, 50]], dtype=np.int16), format="s16", layout="stereo")
    assert mono_s16(f).tolist() == [200, 0]
