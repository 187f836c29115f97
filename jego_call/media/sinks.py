"""Where incoming media goes. A sink has `handle(frame)` (cheap, synchronous, called in the
event loop for every decoded frame) and `close()`.

`MediaEndpoint(sinks=[...], video_sinks=[...])` feeds them; it closes them in `close()`.
Read `Analyser.level_dbfs`/`dominant_hz` while the call runs; read the WAV afterwards with
`analysis.read_wav`.
"""

from __future__ import annotations

import asyncio
import wave
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, AudioResampler, VideoFrame

from . import analysis
from .codecs import frame_to_mono

MAX_GAP_S = 60.0  # a larger jump in pts is treated as a new stream, not as silence


class Sink(Protocol):
    def handle(self, frame: Any) -> None: ...

    def close(self) -> None: ...


class _MonoAudio:
    """Turns arriving audio frames into mono int16 at a fixed rate, inserting silence for pts gaps."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate  # None: the rate of the first frame
        self._resampler: AudioResampler | None = None
        self._next_pts: int | None = None
        self._time_base: Fraction | None = None
        self.gap_samples = 0

    def convert(self, frame: AudioFrame) -> np.ndarray:
        if self.rate is None:
            self.rate = frame.sample_rate
        out: list[np.ndarray] = []
        # gap detection in the frame's own time base
        if frame.pts is not None and frame.time_base is not None:
            tb = Fraction(frame.time_base.numerator, frame.time_base.denominator)
            if self._next_pts is not None and self._time_base == tb:
                gap = frame.pts - self._next_pts
                if 0 < gap * tb <= MAX_GAP_S:
                    n = int(round(gap * tb * self.rate))
                    self.gap_samples += n
                    out.append(np.zeros(n, dtype=np.int16))
            self._time_base = tb
            self._next_pts = frame.pts + int(round(frame.samples / frame.sample_rate / tb))
        if frame.sample_rate == self.rate and frame.format.name == "s16":
            out.append(frame_to_mono(frame))
        else:
            if self._resampler is None:
                self._resampler = AudioResampler(format="s16", layout="mono", rate=self.rate)
            for f in self._resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1).astype(np.int16))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


class WavRecorder:
    """Writes received audio as mono 16-bit WAV at the received rate (or `rate`), with silence
    for gaps in frame pts, so the file lasts as long as the stream did."""

    def __init__(self, path: str | Path, rate: int | None = None) -> None:
        self.path = Path(path)
        self._conv = _MonoAudio(rate)
        self._wav: wave.Wave_write | None = None
        self.samples_written = 0
        parent = self.path.parent
        if not parent.is_dir():
            raise FileNotFoundError(f"no such directory: {parent}")

    def handle(self, frame: Any) -> None:
        if not isinstance(frame, AudioFrame):
            return
        data = self._conv.convert(frame)
        if self._wav is None:
            self._wav = wave.open(str(self.path), "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(int(self._conv.rate or frame.sample_rate))
        self._wav.writeframes(data.astype("<i2").tobytes())
        self.samples_written += data.size

    @property
    def duration_s(self) -> float:
        return self.samples_written / self._conv.rate if self._conv.rate else 0.0

    def close(self) -> None:
        if self._wav is None:  # nothing arrived: still leave a valid, empty file
            self._wav = wave.open(str(self.path), "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(int(self._conv.rate or 48000))
        self._wav.close()


class Analyser:
    """Live view of received audio: RMS level (dBFS) and dominant frequency over the last
    `window_s` seconds, plus totals. Cheap to feed; the FFT runs only when you read."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._conv = _MonoAudio(None)
        self._chunks: deque[np.ndarray] = deque()
        self._held = 0
        self.frames = 0
        self.samples = 0

    def handle(self, frame: Any) -> None:
        if not isinstance(frame, AudioFrame):
            return
        data = self._conv.convert(frame)
        self.frames += 1
        self.samples += data.size
        self._chunks.append(data)
        self._held += data.size
        limit = int(self.window_s * (self._conv.rate or 48000))
        while self._chunks and self._held - self._chunks[0].size >= limit:
            self._held -= self._chunks.popleft().size

    @property
    def rate(self) -> int:
        return int(self._conv.rate or 48000)

    def window(self) -> np.ndarray:
        """The last `window_s` seconds (or less) as int16 mono."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        data = np.concatenate(list(self._chunks))
        return data[-int(self.window_s * self.rate):]

    @property
    def level_dbfs(self) -> float:
        return analysis.level_dbfs(self.window())

    @property
    def dominant_hz(self) -> float:
        return analysis.dominant_frequency(self.window(), self.rate)

    @property
    def received_s(self) -> float:
        return self.samples / self.rate if self.samples else 0.0

    @property
    def gap_s(self) -> float:
        return self._conv.gap_samples / self.rate if self._conv.gap_samples else 0.0

    def close(self) -> None:
        pass


class VideoFrameCounter:
    """Counts received video frames and remembers the last frame size."""

    def __init__(self) -> None:
        self.frames = 0
        self.width = 0
        self.height = 0

    def handle(self, frame: Any) -> None:
        if isinstance(frame, VideoFrame):
            self.frames += 1
            self.width, self.height = frame.width, frame.height

    def close(self) -> None:
        pass


class _QueueTrack(MediaStreamTrack):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)

    async def recv(self) -> Any:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


class Mp4Recorder:
    """Records audio and/or video into an MP4 (or any container) with aiortc's MediaRecorder.

    Use one instance as both an audio and a video sink; call `await start()` once frames may
    arrive (MediaEndpoint does), and `await stop()` to finish the file.
    """

    def __init__(self, path: str | Path) -> None:
        from aiortc.contrib.media import MediaRecorder

        self.path = Path(path)
        self._recorder = MediaRecorder(str(self.path))
        self._tracks: dict[str, _QueueTrack] = {}
        self._started = False
        self._video_seen = False

    def track_for(self, kind: str) -> None:
        """Declare a track of `kind` ("audio"/"video") before `start()`."""
        if kind not in self._tracks:
            t = _QueueTrack(kind)
            self._tracks[kind] = t
            self._recorder.addTrack(t)

    async def start(self) -> None:
        if not self._started and self._tracks:
            self._started = True
            await self._recorder.start()

    def handle(self, frame: Any) -> None:
        kind = "video" if isinstance(frame, VideoFrame) else "audio"
        t = self._tracks.get(kind)
        if kind == "video":
            self._video_seen = True
        elif "video" in self._tracks and not self._video_seen:
            # the container is started by its first packet: before the first video frame (which
            # sizes the video stream) that would leave the video out; audio waits for it
            return
        if t is not None and self._started and not t.queue.full():
            t.queue.put_nowait(frame)

    async def stop(self) -> None:
        for t in self._tracks.values():
            if not t.queue.full():
                t.queue.put_nowait(None)
        if self._started:
            await self._recorder.stop()
            self._started = False

    def close(self) -> None:
        for t in self._tracks.values():
            if not t.queue.full():
                t.queue.put_nowait(None)
