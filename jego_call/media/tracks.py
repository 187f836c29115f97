"""Outgoing media: audio sources paced on an absolute monotonic clock, and the echo.

Every audio source here is a `PacedAudioTrack`: frame n is released at t0 + n·20 ms
(t0 = the first `recv()`), never after a relative sleep, so it does not drift. Frames are
s16 mono at `rate` (48 kHz by default; use 8000 on a G.711 leg to skip a resample).

Pick a source with `source_from_spec("tone:1000:-10[:5]" | "silence" | PATH)`, hand it to
`MediaEndpoint(source=...)`. `EchoTrack` is both a sink (`handle(frame)`) and a source.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, AudioResampler, VideoFrame

from .codecs import frame_to_mono

PTIME = 0.020
ON_TIME_S = 0.010  # a frame handed over more than half a frame after its slot counts as late


@dataclass
class PacingStats:
    """How well a paced track kept time: frames released, how many within ON_TIME_S of their slot."""

    frames: int = 0
    on_time: int = 0
    max_late_ms: float = 0.0

    @property
    def on_time_ratio(self) -> float:
        return self.on_time / self.frames if self.frames else 1.0

    def record(self, late_s: float) -> None:
        self.frames += 1
        if late_s <= ON_TIME_S:
            self.on_time += 1
        self.max_late_ms = max(self.max_late_ms, late_s * 1000)


class PacedAudioTrack(MediaStreamTrack):
    """Base class: releases 20 ms s16 mono frames at t0 + n·20 ms; subclasses fill `_samples(n)`."""

    kind = "audio"

    def __init__(self, rate: int = 48000) -> None:
        super().__init__()
        self.rate = rate
        self.samples_per_frame = int(rate * PTIME)
        self.time_base = fractions.Fraction(1, rate)
        self.pacing = PacingStats()
        self._t0: float | None = None
        self._n = 0

    def _samples(self, n: int) -> np.ndarray:
        """Return frame n as int16 mono samples (exactly `samples_per_frame`)."""
        return np.zeros(self.samples_per_frame, dtype=np.int16)

    async def _wait_slot(self) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self._n * PTIME
        if due > now:
            await asyncio.sleep(due - now)
            now = time.monotonic()
        self.pacing.record(now - due)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._wait_slot()
        data = self._samples(self._n)
        frame = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._n * self.samples_per_frame
        frame.time_base = self.time_base
        self._n += 1
        return frame


class SilenceSource(PacedAudioTrack):
    """Digital silence, paced."""


class ToneSource(PacedAudioTrack):
    """A sine of `freq` Hz whose peak is `dbfs` dBFS (RMS is 3.01 dB lower), phase-continuous;
    silence after `duration` seconds if given."""

    def __init__(self, freq: float, dbfs: float = -10.0, rate: int = 48000,
                 duration: float | None = None) -> None:
        super().__init__(rate)
        self.duration = duration
        self._frames = None if duration is None else int(round(duration / PTIME))
        if not 0 < freq < rate / 2:
            raise ValueError(f"tone frequency must be between 0 and {rate // 2} Hz, got {freq}")
        if dbfs > 0:
            raise ValueError(f"tone level must be at most 0 dBFS, got {dbfs}")
        self.freq = freq
        self.dbfs = dbfs
        self._amp = 32767 * 10 ** (dbfs / 20)

    def _samples(self, n: int) -> np.ndarray:
        if self._frames is not None and n >= self._frames:
            return np.zeros(self.samples_per_frame, dtype=np.int16)
        idx = np.arange(n * self.samples_per_frame, (n + 1) * self.samples_per_frame)
        # phase modulo 1 cycle in exact integer arithmetic keeps long calls precise
        phase = (idx * self.freq % self.rate) / self.rate
        return np.round(self._amp * np.sin(2 * math.pi * phase)).astype(np.int16)


class FileSource(PacedAudioTrack):
    """Audio from any file av can read, resampled to s16 mono `rate`; silence after the end
    unless `loop`. Raises FileNotFoundError or ValueError at construction for a bad file."""

    def __init__(self, path: str | Path, rate: int = 48000, loop: bool = False) -> None:
        super().__init__(rate)
        self.path = Path(path)
        self.loop = loop
        self.finished = False
        if not self.path.is_file():
            raise FileNotFoundError(f"no such file: {self.path}")
        self._open()
        self._pending = np.zeros(0, dtype=np.int16)

    def _open(self) -> None:
        try:
            self._container: Any = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise ValueError(f"cannot read {self.path}: {exc}") from None
        if not self._container.streams.audio:
            self._container.close()
            raise ValueError(f"{self.path} has no audio stream")
        self._decoder = self._container.decode(audio=0)
        self._resampler = AudioResampler(format="s16", layout="mono", rate=self.rate)

    def _pull(self) -> bool:
        """Decode more samples into the pending buffer; False at the end of the file."""
        try:
            frame = next(self._decoder)
        except (StopIteration, av.FFmpegError):
            out = self._resampler.resample(None)
            for f in out:
                self._pending = np.concatenate([self._pending, f.to_ndarray().reshape(-1)])
            self._container.close()
            return False
        for f in self._resampler.resample(frame):
            self._pending = np.concatenate([self._pending, f.to_ndarray().reshape(-1)])
        return True

    def _samples(self, n: int) -> np.ndarray:
        need = self.samples_per_frame
        while self._pending.size < need and not self.finished:
            if not self._pull():
                if self.loop:
                    self._open()
                else:
                    self.finished = True
        chunk = self._pending[:need]
        self._pending = self._pending[need:]
        if chunk.size < need:
            chunk = np.concatenate([chunk, np.zeros(need - chunk.size, dtype=np.int16)])
        return chunk.astype(np.int16, copy=False)

    def stop(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - closing twice is harmless
            pass
        super().stop()


class EchoTrack(PacedAudioTrack):
    """Sends back what arrives: `handle(frame)` queues received audio (bounded, oldest dropped),
    `recv()` releases it paced, or silence when the queue is empty."""

    def __init__(self, rate: int = 48000, max_frames: int = 10) -> None:
        super().__init__(rate)
        self._queue: collections.deque[np.ndarray] = collections.deque(maxlen=max_frames)
        self._buf = np.zeros(0, dtype=np.int16)
        self._resampler: AudioResampler | None = None
        self.underruns = 0
        self.dropped = 0

    def handle(self, frame: Any) -> None:
        if not isinstance(frame, AudioFrame):
            return
        if frame.sample_rate != self.rate or frame.format.name != "s16":
            if self._resampler is None:
                self._resampler = AudioResampler(format="s16", layout="mono", rate=self.rate)
            parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
            mono = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        else:
            mono = frame_to_mono(frame)
        self._buf = np.concatenate([self._buf, mono])
        spf = self.samples_per_frame
        while self._buf.size >= spf:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(self._buf[:spf])
            self._buf = self._buf[spf:]

    def _samples(self, n: int) -> np.ndarray:
        if self._queue:
            return self._queue.popleft()
        if n > 0:
            self.underruns += 1
        return np.zeros(self.samples_per_frame, dtype=np.int16)

    def close(self) -> None:
        self._queue.clear()


class TestPatternVideo(MediaStreamTrack):
    """Moving colour bars, `fps` frames per second paced on an absolute monotonic clock."""

    kind = "video"
    __test__ = False  # not a pytest class

    BARS = np.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0],
                     [255, 0, 255], [255, 0, 0], [0, 0, 255], [0, 0, 0]], dtype=np.uint8)

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.pacing = PacingStats()
        cols = (np.arange(width * 2) * len(self.BARS) // width) % len(self.BARS)
        self._row = self.BARS[cols]  # two periods wide, so any offset can be sliced
        self._t0: float | None = None
        self._n = 0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self._n / self.fps
        if due > now:
            await asyncio.sleep(due - now)
            now = time.monotonic()
        self.pacing.record(now - due)
        off = (self._n * 4) % self.width
        img = np.broadcast_to(self._row[off: off + self.width], (self.height, self.width, 3))
        frame = VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = int(self._n * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return frame


def video_from_file(path: str | Path) -> MediaStreamTrack:
    """The video track of a media file (aiortc's MediaPlayer, paced by frame time, looping)."""
    from aiortc.contrib.media import MediaPlayer

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    player = MediaPlayer(str(p), loop=True)
    if player.video is None:
        raise ValueError(f"{p} has no video stream")
    return player.video


def parse_tone(spec: str) -> tuple[float, float, float | None]:
    """Parse "tone:FREQ[:DBFS[:SECONDS]]" into (freq, dbfs, seconds or None).

    Raises ValueError with a readable message.
    """
    parts = spec.split(":")
    if parts[0] != "tone" or len(parts) not in (2, 3, 4):
        raise ValueError(f"expected tone:FREQ[:DBFS[:SECONDS]], got {spec!r}")
    try:
        freq = float(parts[1])
        dbfs = float(parts[2]) if len(parts) >= 3 and parts[2] else -10.0
        seconds = float(parts[3]) if len(parts) == 4 else None
    except ValueError:
        raise ValueError(f"expected tone:FREQ[:DBFS[:SECONDS]] with numbers, got {spec!r}") from None
    if seconds is not None and seconds <= 0:
        raise ValueError(f"tone duration must be positive, got {spec!r}")
    return freq, dbfs, seconds


def source_from_spec(spec: str | None, rate: int = 48000, loop: bool = False) -> PacedAudioTrack:
    """Build a source from "tone:FREQ[:DBFS[:SECONDS]]", "silence" (or None), or a file path.

    Raises FileNotFoundError or ValueError (one readable line) for a bad spec.
    """
    if spec is None or spec == "silence":
        return SilenceSource(rate)
    if spec.startswith("tone:"):
        freq, dbfs, seconds = parse_tone(spec)
        return ToneSource(freq, dbfs, rate, duration=seconds)
    return FileSource(spec, rate, loop=loop)
