"""[pure] The audio conference's mixer: each participant hears everyone but themselves (N-1).

    mixer = Mixer(frame_samples=320)                     # one 20 ms frame at 16 kHz, say
    out = mixer.mix({"alice": pcm_a, "bob": pcm_b, "+8613800138000": None}, muted={"bob"})
    out.for_participant("alice")    # bob is muted and the phone sent nothing: silence + others
    out.shared                      # what every participant who is not talking hears

Only *talking* participants are summed: a frame that is missing, muted or below the silence
floor costs nothing beyond the caller having decoded it. The sum of the talkers is computed
once; a talker hears that sum minus their own frame, and everyone else hears the sum itself, so
all silent participants share one mix (and the caller can encode it once per codec). Sums are
kept in int32 (headroom: no wrap-around) and each distinct output goes through a peak limiter
(instant attack, smooth release, ceiling `ceiling_dbfs`) before it becomes int16 again, so a
loud room never clips and a quiet one is passed at its own level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]
FULL_SCALE: Final = 32767
SHARED: Final = ""  # the limiter state key of the shared mix


def dbfs_to_amplitude(dbfs: float) -> float:
    return FULL_SCALE * 10 ** (dbfs / 20)


class Limiter:
    """Peak limiter for one output stream: gain drops at once to keep the frame's peak under the
    ceiling and recovers by at most `release_db` per frame (ramped within the frame, no click)."""

    def __init__(self, ceiling: float, release_db: float = 1.0) -> None:
        self.ceiling = ceiling
        self.release = 10 ** (release_db / 20)
        self.gain = 1.0
        self.engaged_frames = 0

    def apply(self, mix: npt.NDArray[np.int32]) -> Pcm:
        peak = int(np.max(np.abs(mix))) if mix.size else 0
        target = 1.0 if peak <= self.ceiling else self.ceiling / peak
        if target < self.gain:
            start = end = target  # attack: the whole frame at the lower gain
        else:
            start, end = self.gain, min(target, self.gain * self.release, 1.0)
        self.gain = end
        if start == end == 1.0:
            out = mix
        else:
            self.engaged_frames += 1
            ramp = np.linspace(start, end, num=mix.size, endpoint=False) if start != end else start
            out = np.rint(mix * ramp).astype(np.int32)
        return np.clip(out, -FULL_SCALE - 1, FULL_SCALE).astype(np.int16)


@dataclass(slots=True)
class MixResult:
    """One frame of the conference: `personal` mixes for the talkers, `shared` for the rest."""

    shared: Pcm
    personal: dict[str, Pcm] = field(default_factory=dict)
    talkers: frozenset[str] = frozenset()

    def for_participant(self, pid: str) -> Pcm:
        return self.personal.get(pid, self.shared)


class Mixer:
    """N-1 mixing of fixed-size int16 frames. Call `mix(frames, muted)` once per frame period."""

    def __init__(self, frame_samples: int, *, silence_dbfs: float = -55.0, ceiling_dbfs: float = -1.0,
                 release_db: float = 1.0) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.frame_samples = frame_samples
        # RMS threshold of a sine-referenced level (a -55 dBFS sine has RMS amplitude/sqrt 2)
        self.silence_rms = dbfs_to_amplitude(silence_dbfs) / math.sqrt(2)
        self.ceiling = dbfs_to_amplitude(ceiling_dbfs)
        self.release_db = release_db
        self._limiters: dict[str, Limiter] = {}
        self._zero: Pcm = np.zeros(frame_samples, dtype=np.int16)
        self.frames = 0

    def _limiter(self, key: str) -> Limiter:
        lim = self._limiters.get(key)
        if lim is None:
            lim = self._limiters[key] = Limiter(self.ceiling, self.release_db)
        return lim

    def is_talking(self, frame: Pcm | None) -> bool:
        """A frame counts when it is there and louder than the silence floor."""
        if frame is None or frame.size == 0:
            return False
        x = frame.astype(np.float32)
        return float(np.sqrt(np.mean(x * x))) >= self.silence_rms

    def mix(self, frames: Mapping[str, Pcm | None], muted: Set[str] = frozenset()) -> MixResult:
        """Mix one frame period. `frames` maps every participant to its decoded frame (None when
        nothing arrived); a frame of the wrong length is a caller bug (ValueError)."""
        self.frames += 1
        talkers: list[tuple[str, npt.NDArray[np.int32]]] = []
        for pid, frame in frames.items():
            if pid in muted or frame is None:
                continue
            if frame.shape != (self.frame_samples,):
                raise ValueError(f"{pid}: frame of {frame.shape}, expected ({self.frame_samples},)")
            if self.is_talking(frame):
                talkers.append((pid, frame.astype(np.int32)))
        for pid in [p for p in self._limiters if p != SHARED and p not in frames]:
            del self._limiters[pid]  # participants who left
        if not talkers:
            return MixResult(self._zero, {}, frozenset())
        total = talkers[0][1].copy()
        for _pid, x in talkers[1:]:
            total += x
        result = MixResult(self._limiter(SHARED).apply(total), {}, frozenset(p for p, _ in talkers))
        for pid, x in talkers:
            result.personal[pid] = self._limiter(pid).apply(total - x) if len(talkers) > 1 else self._zero
        return result
