"""G.711 tables: bit-exact with Sun g711.c, and a tone keeps its frequency and level."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bridge.rtp import g711


def test_known_code_points() -> None:
    assert g711.ulaw_decode(b"\xff\x7f\x00\x80").tolist() == [0, 0, -32124, 32124]
    assert g711.alaw_decode(b"\xd5\x55\x2a\xaa").tolist() == [8, -8, -32256, 32256]
    assert g711.ulaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)) == b"\xff\x7e\x80\x00"
    assert g711.alaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)) == b"\xd5\x55\xaa\x2a"
    # Classic reference pairs from Sun g711.c: 1000 -> 0xce (μ) / 0xfa (A)
    assert g711.ulaw_encode(np.array([1000], dtype=np.int16)) == b"\xce"
    assert g711.alaw_encode(np.array([1000], dtype=np.int16)) == b"\xfa"


def test_round_trip_of_every_code() -> None:
    codes = bytes(range(256))
    # Decoding then encoding gives the code back, except μ-law 0x7F (-0), which maps to 0xFF (+0).
    mu = g711.ulaw_encode(g711.ulaw_decode(codes))
    assert [c for c in range(256) if mu[c] != c] == [0x7F]
    assert g711.alaw_encode(g711.alaw_decode(codes)) == codes


def test_encode_is_monotonic_and_bytes_api_matches_arrays() -> None:
    lin = np.arange(-32768, 32768, dtype=np.int16)
    dec = g711.ulaw_decode(g711.ulaw_encode(lin)).astype(np.int32)
    assert np.all(np.diff(dec) >= 0)
    err = np.abs(dec - lin)
    assert err.max() <= 1024  # largest μ-law step/2 in the top segment
    assert g711.ulaw_encode(lin.tobytes()) == g711.ulaw_encode(lin)
    assert g711.alaw_to_pcm_bytes(b"\xd5") == np.array([8], dtype=np.int16).tobytes()


def test_bit_exact_with_audioop_when_available() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    lin = np.arange(-32768, 32768, dtype=np.int16).tobytes()
    assert g711.ulaw_encode(lin) == audioop.lin2ulaw(lin, 2)
    assert g711.alaw_encode(lin) == audioop.lin2alaw(lin, 2)
    codes = bytes(range(256))
    assert g711.ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


def _tone(freq: float, dbfs: float, seconds: float = 1.0, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.rint(32767 * 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _measure(x: np.ndarray, rate: int = 8000) -> tuple[float, float]:
    """Dominant frequency (Hz, parabolic peak interpolation) and level (dBFS, sine-referenced)."""
    xf = x.astype(np.float64)
    spec = np.abs(np.fft.rfft(xf * np.hanning(len(xf))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    peak = k + 0.5 * (a - c) / (a - 2 * b + c)
    rms = float(np.sqrt(np.mean(xf**2)))
    return peak * rate / len(xf), 20 * np.log10(rms * np.sqrt(2) / 32767)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
@pytest.mark.parametrize(("freq", "dbfs"), [(1000.0, -10.0), (440.0, -20.0), (2800.0, -30.0)])
def test_tone_keeps_frequency_and_level(codec: str, freq: float, dbfs: float) -> None:
    x = _tone(freq, dbfs)
    y = g711.decoder_for(codec)(g711.encoder_for(codec)(x))
    f, level = _measure(y)
    assert abs(f - freq) / freq < 0.01
    assert abs(level - dbfs) < 0.5
    # And the codec really is lossy but close: SNR of G.711 on a sine is > 30 dB.
    noise = (y.astype(np.float64) - x) ** 2
    assert 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise)) > 30


def test_silence_and_lookup_helpers() -> None:
    assert g711.ulaw_decode(g711.silence_payload("PCMU")).tolist() == [0] * 160
    assert set(g711.alaw_decode(g711.silence_payload(8)).tolist()) == {8}
    with pytest.raises(ValueError, match="unsupported G.711 codec"):
        g711.decoder_for("G729")
