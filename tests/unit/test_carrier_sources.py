"""The pure parts of bridge/carrier/media.py, judged by content: a tone's frequency (FFT peak) and
level (dBFS re a full-scale sine), phase-continuous across reads of any size, exact durations
in samples; the Chinese ringback cadence (450 Hz, 1 s on, 4 s off) and the E.180 special
information tone; playback once or looped; sequences; `source_for` for each scenario kind;
WAV load (stereo averaged, resampled with the tone kept) and record; the even-port pool; and
the RTCP address an m-line names (RFC 5761, RFC 3605).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.carrier.media import (
    FRAME,
    RATE,
    Announcement,
    AudioSource,
    Cadence,
    Echo,
    PcmPlayback,
    PortPool,
    Ringback,
    Sequence,
    Silence,
    Tone,
    WavRecorder,
    load_wav,
    rtcp_of,
    source_for,
)
from bridge.sip.sdp import SdpMedia

Pcm = npt.NDArray[np.int16]
NOTHING: Pcm = np.zeros(0, dtype=np.int16)


def drain(src: AudioSource, n: int = FRAME, limit_s: float = 60.0) -> Pcm:
    """Read `src` to its end (at most `limit_s`), in reads of `n`."""
    parts: list[Pcm] = []
    total = 0
    while total < limit_s * RATE:
        out = src.read(n, NOTHING)
        if out is None:
            break
        parts.append(out)
        total += len(out)
    return np.concatenate(parts) if parts else NOTHING


def take(src: AudioSource, samples: int, n: int = FRAME) -> Pcm:
    parts: list[Pcm] = []
    got = 0
    while got < samples:
        out = src.read(min(n, samples - got), NOTHING)
        assert out is not None
        parts.append(out)
        got += len(out)
    return np.concatenate(parts)


def peak_hz(x: Pcm) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[int(np.argmax(spectrum))])


def dbfs(x: Pcm) -> float:
    """RMS level re a full-scale sine (a 0 dBFS sine has RMS 32767/sqrt 2)."""
    rms = max(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 1e-9)
    return float(20 * np.log10(rms / (32767 / np.sqrt(2))))


# --- tones --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("hz", "level"), [(440.0, -10.0), (1000.0, -20.0), (3400.0, -3.0), (300.0, -30.0)])
def test_a_tone_has_its_frequency_and_level(hz: float, level: float) -> None:
    x = take(Tone(hz, level), RATE)
    assert abs(peak_hz(x) - hz) <= 1.0
    assert abs(dbfs(x) - level) < 0.05


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=2, max_size=30))
def test_a_tone_is_the_same_whatever_the_read_sizes(sizes: list[int]) -> None:
    """Phase-continuous: reading in any chunks gives the samples one long read gives."""
    tone = Tone(697.0, -6.0)
    parts = [tone.read(n, NOTHING) for n in sizes]
    chunked = np.concatenate([p for p in parts if p is not None])
    whole = Tone(697.0, -6.0).read(sum(sizes), NOTHING)
    assert whole is not None and np.array_equal(chunked, whole)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.02, 0.5, 1.234])
def test_a_timed_tone_lasts_exactly_its_samples(seconds: float) -> None:
    x = drain(Tone(1000.0, -10.0, seconds), n=333)
    assert len(x) == round(seconds * RATE)


@pytest.mark.parametrize("hz", [0.0, -5.0, 4000.0, 8000.0])
def test_a_tone_outside_the_band_is_refused(hz: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 4000\)"):
        Tone(hz)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.25, 0.5, 1.234])
def test_silence_and_echo_last_exactly_their_samples(seconds: float) -> None:
    """Not rounded up to whole frames: Silence(0.25) then a tone starts the tone at 250 ms."""
    assert len(drain(Silence(seconds), n=FRAME)) == round(seconds * RATE)
    assert len(drain(Echo(seconds), n=FRAME)) == round(seconds * RATE)


def test_silence_and_echo_last_their_time() -> None:
    assert len(drain(Silence(0.5))) == 4000 and not drain(Silence(0.5)).any()
    assert Silence().read(FRAME, NOTHING) is not None            # forever
    rx = np.arange(100, dtype=np.int16)
    e = Echo(0.04)
    first = e.read(FRAME, rx)
    assert first is not None and np.array_equal(first[:100], rx) and not first[100:].any()  # padded
    long_rx = np.arange(300, dtype=np.int16)
    second = e.read(FRAME, long_rx)
    assert second is not None and np.array_equal(second, long_rx[:FRAME])                   # cut
    assert e.read(FRAME, rx) is None


# --- cadences ------------------------------------------------------------------------------------
def on_off(x: Pcm, block: int = 400) -> list[bool]:
    """Whether each 50 ms block carries a tone."""
    return [bool(np.abs(x[i:i + block]).max(initial=0) > 100) for i in range(0, len(x) - block + 1, block)]


def test_chinese_ringback_is_450_hz_one_second_on_four_off() -> None:
    x = take(Ringback(-10.0), 10 * RATE)
    blocks = on_off(x)
    assert blocks == ([True] * 20 + [False] * 80) * 2
    assert abs(peak_hz(x[:RATE]) - 450) <= 1.0
    assert abs(dbfs(x[:RATE]) - -10.0) < 0.1
    assert len(drain(Ringback(seconds=2.5))) == 20000


def test_the_announcement_is_the_special_information_tone_repeated() -> None:
    one = 0.33 * 3 + 0.03 * 2 + 1.0
    x = drain(Announcement(repeats=2))
    assert len(x) == round(one * RATE) * 2 or abs(len(x) - 2 * one * RATE) <= 6
    seg = round(0.33 * RATE)
    gap = round(0.03 * RATE)
    starts = [0, seg + gap, 2 * (seg + gap)]
    assert [round(peak_hz(x[s + 200:s + seg - 200]) / 10) * 10 for s in starts] == [950, 1400, 1800]
    assert not x[3 * seg + 2 * gap + 10:3 * seg + 2 * gap + RATE - 10].any()    # the second of silence


def test_a_cadence_without_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="no duration"):
        Cadence([(440.0, 0.0)])


# --- playback and sequences ----------------------------------------------------------------------
def test_playback_plays_once_or_loops() -> None:
    samples = np.arange(1, 251, dtype=np.int16)
    once = PcmPlayback(samples)
    assert np.array_equal(drain(once), samples)
    looped = take(PcmPlayback(samples, loop=True), 600, n=160)
    assert np.array_equal(looped, np.concatenate([samples, samples, samples[:100]]))
    assert PcmPlayback(NOTHING, loop=True).read(FRAME, NOTHING) is None     # nothing to loop


def test_a_sequence_plays_each_source_in_turn() -> None:
    x = drain(Sequence(Tone(500.0, -10.0, 0.25), Silence(0.25), Tone(1500.0, -10.0, 0.25)), n=FRAME)
    assert len(x) == 6000
    assert abs(peak_hz(x[:2000]) - 500) <= 4 and not x[2000:4000].any() and abs(peak_hz(x[4000:]) - 1500) <= 4
    assert Sequence().read(FRAME, NOTHING) is None


# --- scenario media --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    kind: str
    seconds: float | None = None
    frequency_hz: float | None = None
    path: str | None = None


def write_wav(path: Path, x: npt.NDArray[np.int16], rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes() if width == 2 else x.astype(np.uint8).tobytes())
    return path


def test_source_for_builds_each_kind(tmp_path: Path) -> None:
    tone = drain(source_for(Spec("tone", 0.5, 2000.0)))
    assert len(tone) == 4000 and abs(peak_hz(tone) - 2000) <= 2
    assert abs(peak_hz(drain(source_for(Spec("tone", 0.5)))) - 1000) <= 2      # default 1 kHz
    assert len(drain(source_for(Spec("silence", 0.1)))) == 800
    assert len(drain(source_for(Spec("ringback", 1.0)))) == 8000
    assert len(drain(source_for(Spec("announcement", 0.7)))) == 5600            # cut to its seconds
    assert isinstance(source_for(Spec("echo")), Echo)
    short = write_wav(tmp_path / "short.wav", np.full(800, 1000, dtype=np.int16), 8000)
    padded = drain(source_for(Spec("file", 0.5, path=str(short))))
    assert len(padded) == 4000 and (padded[:800] == 1000).all() and not padded[800:].any()
    assert len(drain(source_for(Spec("file", path=str(short))))) == 800


@pytest.mark.parametrize(("spec", "words"), [(Spec("file"), "needs a path"), (Spec("music"), "unknown media kind")])
def test_source_for_refuses_what_it_cannot_play(spec: Spec, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        source_for(spec)


# --- WAV files -----------------------------------------------------------------------------------
def test_a_stereo_wav_is_averaged_to_mono(tmp_path: Path) -> None:
    frames = np.array([100, 300, -200, -400, 7, 8], dtype=np.int16)         # L R pairs
    x, rate = load_wav(write_wav(tmp_path / "s.wav", frames, 8000, channels=2))
    assert rate == 8000 and x.tolist() == [200, -300, 8]                    # 7.5 rounds to even


def test_a_16_khz_tone_resampled_to_8_khz_keeps_its_pitch_and_level(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    src = np.rint(0.3 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    x, rate = load_wav(write_wav(tmp_path / "w.wav", src, 16000), rate=RATE)
    assert rate == 8000 and len(x) == 8000
    assert abs(peak_hz(x) - 1000) <= 1 and abs(dbfs(x[500:-500]) - dbfs(src[1000:-1000])) < 0.3


def test_resampling_removes_what_the_new_rate_cannot_carry(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    src = np.rint(0.3 * 32767 * np.sin(2 * np.pi * 6000 * t)).astype(np.int16)  # above 4 kHz
    x, _ = load_wav(write_wav(tmp_path / "hi.wav", src, 16000), rate=RATE)
    assert dbfs(x[500:-500]) < -40                                            # not aliased to 2 kHz


def test_an_8_bit_wav_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only 16-bit PCM"):
        load_wav(write_wav(tmp_path / "b.wav", np.full(10, 128, dtype=np.int16), 8000, width=1))


def test_a_recording_reads_back_sample_for_sample(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    a = np.arange(-500, 500, dtype=np.int16)
    rec.write(a[:160])
    rec.write(a[160:])
    assert rec.samples == 1000
    rec.close()
    rec.close()                                                               # twice: fine
    rec.write(a)                                                              # after close: ignored
    x, rate = load_wav(tmp_path / "r.wav")
    assert rate == 8000 and np.array_equal(x, a)


# --- ports and RTCP ------------------------------------------------------------------------------
def test_the_port_pool_hands_out_even_ports_and_reuses_the_last() -> None:
    pool = PortPool(10001, 10010)
    assert pool.candidates() == [10002, 10004, 10006, 10008]
    pool.take(10002)
    pool.take(10006)
    assert pool.candidates() == [10004, 10008]
    pool.release(10002)
    assert pool.candidates() == [10004, 10008, 10002]                         # released goes last
    pool.release(12345)                                                       # not ours: harmless


@pytest.mark.parametrize(("low", "high"), [(0, 10), (10, 10), (20, 10), (1, 70000)])
def test_a_bad_port_range_is_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="bad port range"):
        PortPool(low, high)


def media(*attrs: tuple[str, str | None]) -> SdpMedia:
    return SdpMedia("audio", 4000, "RTP/AVP", ["0"], attributes=list(attrs))


@pytest.mark.parametrize(("attrs", "remote", "want"), [
    ((), ("10.0.0.1", 4000), (False, None)),
    ((("rtcp-mux", None),), ("10.0.0.1", 4000), (True, None)),
    ((("rtcp", "4005"),), ("10.0.0.1", 4000), (False, ("10.0.0.1", 4005))),
    ((("rtcp", "4005 IN IP4 192.0.2.9"),), ("10.0.0.1", 4000), (False, ("192.0.2.9", 4005))),
    ((("rtcp", "4005"),), None, (False, None)),                  # no address to send to yet
    ((("rtcp", "0"),), ("10.0.0.1", 4000), (False, None)),
    ((("rtcp", "70000"),), ("10.0.0.1", 4000), (False, None)),
    ((("rtcp", "abc"),), ("10.0.0.1", 4000), (False, None)),
    ((("rtcp", ""),), ("10.0.0.1", 4000), (False, None)),
])
def test_the_rtcp_address_an_m_line_names(attrs: tuple[tuple[str, str | None], ...], remote: tuple[str, int] | None,
                                          want: tuple[bool, tuple[str, int] | None]) -> None:
    assert rtcp_of(media(*attrs), remote) == want
