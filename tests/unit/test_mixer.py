"""bridge.rtp.mixer: N-1 mixing judged by content (tone frequencies and levels), no clipping."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.rtp.mixer import Limiter, Mixer

RATE = 16000
N = 320


def tone(freq: float, dbfs: float, frames: int) -> np.ndarray:
    t = np.arange(frames * N) / RATE
    return np.rint(32767 * 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def level_at(x: np.ndarray, freq: float) -> float:
    """Sine-referenced dBFS of the component at `freq` (windowed FFT peak)."""
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    k = int(round(freq * len(x) / RATE))
    peak = spec[k - 2: k + 3].max()
    amplitude = 2 * peak / np.sum(np.hanning(len(x)))
    return float(20 * np.log10(amplitude / 32767 + 1e-12))


def run(mixer: Mixer, sources: dict[str, np.ndarray | None], frames: int,
        muted: set[str] | frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {p: [] for p in sources}
    for i in range(frames):
        frame = {p: (s[i * N:(i + 1) * N] if s is not None else None) for p, s in sources.items()}
        res = mixer.mix(frame, muted)
        for p in sources:
            out[p].append(res.for_participant(p))
    return {p: np.concatenate(v) for p, v in out.items()}


def test_each_hears_the_others_and_not_themselves() -> None:
    freqs = {"a": 500.0, "b": 900.0, "c": 1300.0}
    src = {p: tone(f, -12, 50) for p, f in freqs.items()}
    heard = run(Mixer(N), dict(src), 50)
    for p, f in freqs.items():
        others = [level_at(heard[p], g) for q, g in freqs.items() if q != p]
        assert level_at(heard[p], f) < -60, p        # own tone absent
        assert all(lvl == pytest.approx(-12, abs=1.0) for lvl in others), (p, others)  # at its own level
        assert abs(others[0] - others[1]) < 1.0


def test_mute_and_silence_drop_out_and_share_one_mix() -> None:
    src: dict[str, np.ndarray | None] = {"a": tone(500, -12, 10), "b": tone(900, -12, 10),
                                         "quiet": np.zeros(10 * N, dtype=np.int16), "phone": None}
    mixer = Mixer(N)
    frame = {p: (s[:N] if s is not None else None) for p, s in src.items()}
    res = mixer.mix(frame, muted={"b"})
    assert res.talkers == {"a"}
    assert res.for_participant("quiet") is res.for_participant("phone") is res.for_participant("b")
    heard = run(Mixer(N), src, 10, muted={"b"})
    assert level_at(heard["quiet"], 500) == pytest.approx(-12, abs=1.0)
    assert level_at(heard["quiet"], 900) < -60 and level_at(heard["a"], 500) < -60  # b muted, a alone


def test_loud_room_is_limited_not_clipped() -> None:
    src = {p: tone(f, -2, 50) for p, f in {"a": 400.0, "b": 600.0, "c": 800.0, "d": 1000.0}.items()}
    mixer = Mixer(N, ceiling_dbfs=-1.0)
    heard = run(mixer, dict(src), 50)
    ceiling = 32767 * 10 ** (-1 / 20)
    for p, x in heard.items():
        assert int(np.max(np.abs(x.astype(np.int32)))) <= ceiling + 1, p
        assert not np.any(np.abs(x.astype(np.int32)) >= 32767)
    assert mixer._limiters["a"].engaged_frames > 0


def test_limiter_releases_smoothly() -> None:
    lim = Limiter(ceiling=10_000, release_db=1.0)
    loud = np.full(N, 20_000, dtype=np.int32)
    assert int(lim.apply(loud).max()) == 10_000 and lim.gain == pytest.approx(0.5)
    quiet = np.full(N, 1_000, dtype=np.int32)
    out = lim.apply(quiet)
    assert out[0] == 500 and out[-1] > out[0] and lim.gain == pytest.approx(0.5 * 10 ** 0.05)
    for _ in range(200):
        lim.apply(quiet)
    assert lim.gain == 1.0 and int(lim.apply(quiet).max()) == 1_000


def test_alone_in_the_room_hears_silence_and_bad_frames_are_refused() -> None:
    mixer = Mixer(N)
    res = mixer.mix({"a": tone(500, -12, 1)})
    assert not res.for_participant("a").any()
    with pytest.raises(ValueError, match="frame of"):
        mixer.mix({"a": np.zeros(N + 1, dtype=np.int16)})
