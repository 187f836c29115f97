"""Judge audio by content: level, dominant frequency, alignment, PESQ, active duration.

numpy (and pesq) only; the one I/O is `read_wav`. Samples are 1-D arrays, int16 or float in
[-1, 1]. Levels are RMS relative to full scale (a full-scale square wave is 0 dBFS, so a sine
with peak -10 dBFS measures -13.01 dBFS; see `sine_rms_dbfs`).
"""

from __future__ import annotations

import math
import wave
from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
SILENCE_DBFS = -120.0


def to_float(samples: npt.ArrayLike) -> FloatArray:
    """Return samples as float64 in [-1, 1] (int16 input is divided by 32768)."""
    arr = np.asarray(samples)
    if arr.dtype == np.int16:
        return arr.astype(np.float64) / 32768.0
    return arr.astype(np.float64)


def read_wav(path: str | Path) -> tuple[FloatArray, int]:
    """Read a 16-bit PCM WAV file as mono float samples (channels averaged) and its rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate = w.getframerate()
        channels = w.getnchannels()
        raw = w.readframes(w.getnframes())
    data = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if channels > 1:
        data = data[: len(data) // channels * channels].reshape(-1, channels).mean(axis=1)
    return data, rate


def level_dbfs(samples: npt.ArrayLike) -> float:
    """RMS level in dBFS (full-scale square = 0 dBFS); -120 for digital silence or no samples."""
    x = to_float(samples)
    if x.size == 0:
        return SILENCE_DBFS
    rms = math.sqrt(float(np.mean(x * x)))
    if rms <= 10 ** (SILENCE_DBFS / 20):
        return SILENCE_DBFS
    return 20 * math.log10(rms)


def sine_rms_dbfs(peak_dbfs: float) -> float:
    """The RMS level `level_dbfs` reports for a sine whose peak is `peak_dbfs`."""
    return peak_dbfs - 10 * math.log10(2)


def dominant_frequency(samples: npt.ArrayLike, rate: int) -> float:
    """Frequency in Hz of the strongest spectral peak (Hann window, parabolic interpolation).

    Returns 0.0 for silence or fewer than 2 samples. DC is ignored.
    """
    x = to_float(samples)
    if x.size < 2 or level_dbfs(x) <= SILENCE_DBFS:
        return 0.0
    x = x - x.mean()
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spec[0] = 0.0
    k = int(np.argmax(spec))
    if k == 0:
        return 0.0
    delta = 0.0
    if 0 < k < spec.size - 1:
        a, b, c = np.log(spec[k - 1] + 1e-20), np.log(spec[k] + 1e-20), np.log(spec[k + 1] + 1e-20)
        denom = a - 2 * b + c
        if denom != 0:
            delta = 0.5 * (a - c) / denom
    return float((k + delta) * rate / x.size)


def active_duration(samples: npt.ArrayLike, rate: int, threshold_dbfs: float = -45.0,
                    window_s: float = 0.02) -> float:
    """Seconds of audio whose per-window (20 ms) RMS level is above `threshold_dbfs`."""
    x = to_float(samples)
    n = max(1, int(rate * window_s))
    frames = x[: x.size // n * n].reshape(-1, n)
    if frames.size == 0:
        return 0.0
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    active = rms > 10 ** (threshold_dbfs / 20)
    return float(np.count_nonzero(active) * n / rate)


def _lowpass(numtaps: int, cutoff: float, beta: float = 8.6) -> FloatArray:
    """Kaiser-windowed sinc low-pass; `cutoff` is a fraction of the Nyquist frequency."""
    m = np.arange(numtaps) - (numtaps - 1) / 2
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, beta)
    return np.asarray(h / h.sum(), dtype=np.float64)


def _fftconvolve(x: FloatArray, h: FloatArray) -> FloatArray:
    n = x.size + h.size - 1
    nfft = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[:n]


def resample(samples: npt.ArrayLike, from_rate: int, to_rate: int) -> FloatArray:
    """Rational polyphase resampling with an anti-aliasing (and anti-imaging) low-pass.

    Equivalent to up-sampling by L, filtering below the lower Nyquist frequency (Kaiser
    window, ~-90 dB stop band, pass band to 90 % of it), and down-sampling by M, with the
    filter delay removed: output sample i is at time i / to_rate.
    """
    x = to_float(samples)
    if from_rate == to_rate:
        return x.copy()
    g = gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    factor = max(up, down)
    half = 24 * factor
    h = _lowpass(2 * half + 1, 0.92 / factor) * up
    stuffed = np.zeros(x.size * up)
    stuffed[::up] = x
    y = _fftconvolve(stuffed, h)[half: half + stuffed.size]
    return y[::down][: int(math.ceil(x.size * to_rate / from_rate))]


def align(ref: npt.ArrayLike, deg: npt.ArrayLike, max_lag: int | None = None) -> tuple[FloatArray, FloatArray, int]:
    """Line `deg` up with `ref` by cross-correlation.

    Returns (ref, shifted deg, lag): the shifted deg has ref's length, padded with zeros, and
    `lag` is how many samples deg lagged behind ref (negative: it led).
    """
    r, d = to_float(ref), to_float(deg)
    if r.size == 0 or d.size == 0:
        return r, np.zeros_like(r), 0
    corr = _fftconvolve(d, r[::-1])  # index i <-> lag i - (r.size - 1)
    lags = np.arange(corr.size) - (r.size - 1)
    if max_lag is not None:
        corr = np.where(np.abs(lags) <= max_lag, corr, 0.0)
    lag = int(lags[int(np.argmax(np.abs(corr)))])
    out = np.zeros_like(r)
    if lag >= 0:
        seg = d[lag: lag + r.size]
        out[: seg.size] = seg
    else:
        seg = d[: r.size + lag]
        out[-lag: -lag + seg.size] = seg
    return r, out, lag


def pesq_score(ref: npt.ArrayLike, deg: npt.ArrayLike, rate: int, mode: str = "wb") -> float:
    """PESQ MOS-LQO of `deg` against `ref`, both at `rate`.

    Resamples to 16 kHz ("wb") or 8 kHz ("nb") as ITU-T P.862 needs, aligns by
    cross-correlation, and scores with the `pesq` package.
    """
    from pesq import pesq  # imported late: the package is a test extra

    if mode not in ("wb", "nb"):
        raise ValueError("mode must be 'wb' or 'nb'")
    target = 16000 if mode == "wb" else 8000
    r = resample(ref, rate, target)
    d = resample(deg, rate, target)
    r, d, _lag = align(r, d)
    return float(pesq(target, r.astype(np.float32), d.astype(np.float32), mode))


# --- latency: clicks sent at known instants, found again by cross-correlation -----------------
CLICK_MS = 8.0          # a click: an 8 ms Hann-windowed chirp, 300 -> 3400 Hz (telephone band)
CLICK_DBFS = -10.0      # its peak level


def click(rate: int, peak_dbfs: float = CLICK_DBFS, ms: float = CLICK_MS) -> FloatArray:
    """One click: a short Hann-windowed linear chirp across the telephone band (300-3400 Hz).

    Band-limited so that G.711 and Opus at 8 kHz carry it, and swept so that its
    autocorrelation has one sharp peak (a windowed tone would correlate a period early or late).
    """
    n = max(8, int(round(rate * ms / 1000)))
    t = np.arange(n) / rate
    f0, f1 = 300.0, min(3400.0, 0.45 * rate)
    dur = n / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * dur))
    return np.asarray(10 ** (peak_dbfs / 20) * np.hanning(n) * np.sin(phase), dtype=np.float64)


def click_train(rate: int, seconds: float, period_s: float = 1.0, first_s: float = 0.5,
                peak_dbfs: float = CLICK_DBFS) -> tuple[FloatArray, list[int]]:
    """`seconds` of silence with a click every `period_s` from `first_s` on.

    Returns (samples, the sample index where each click starts). Call `click_delays` on what
    the far end recorded, with these indices, to get each click's delay.
    """
    if period_s <= CLICK_MS / 1000 or seconds <= 0:
        raise ValueError("need seconds > 0 and a period longer than a click")
    out = np.zeros(int(round(seconds * rate)))
    c = click(rate, peak_dbfs)
    starts: list[int] = []
    t = first_s
    while True:
        i = int(round(t * rate))
        if i + c.size > out.size:
            break
        out[i: i + c.size] = c
        starts.append(i)
        t += period_s
    return out, starts


def click_delays(received: npt.ArrayLike, rate: int, sent_at: list[int], max_delay_s: float = 1.0,
                 min_score: float = 0.5, peak_dbfs: float = CLICK_DBFS) -> list[float | None]:
    """The delay in seconds of each click sent at sample `sent_at[i]`, as found in `received`
    (a recording on the same sample timeline: sample k of both is the same instant).

    For each click, the window [sent, sent + max_delay_s] of `received` is matched against the
    click (normalised cross-correlation, so level changes do not matter); the best match is
    its arrival. None where the best match scores below `min_score` (lost, or not a click).
    The clicks must be further apart than `max_delay_s`, or one click's echo is taken for the next.
    """
    x = to_float(received)
    c = click(rate, peak_dbfs)
    energy_c = float(np.sqrt(np.sum(c * c)))
    span = int(round(max_delay_s * rate))
    out: list[float | None] = []
    for s in sent_at:
        seg = x[max(0, s): s + span + c.size]
        if seg.size < c.size:
            out.append(None)
            continue
        corr = _fftconvolve(seg, c[::-1])[c.size - 1: seg.size]      # corr[k] = <seg[k:k+n], c>
        sq = np.concatenate([[0.0], np.cumsum(seg * seg)])
        local = np.sqrt(np.maximum(sq[c.size:] - sq[: seg.size - c.size + 1], 0.0))
        score = np.where(local > 1e-9, corr / (local * energy_c + 1e-20), 0.0)
        k = int(np.argmax(score))
        if float(score[k]) < min_score or s < 0:
            out.append(None)
            continue
        out.append((k + max(0, s) - s) / rate)
    return out


def delay_summary(delays: list[float | None]) -> dict[str, float | int | None]:
    """Median, min and max in ms of the found delays, and how many were found of how many."""
    found = sorted(d for d in delays if d is not None)
    if not found:
        return {"median_ms": None, "min_ms": None, "max_ms": None, "found": 0, "sent": len(delays)}
    mid = found[len(found) // 2] if len(found) % 2 else (found[len(found) // 2 - 1] + found[len(found) // 2]) / 2
    return {"median_ms": round(1000 * mid, 1), "min_ms": round(1000 * found[0], 1),
            "max_ms": round(1000 * found[-1], 1), "found": len(found), "sent": len(delays)}
