"""Audio between the app leg (aiortc frames, Opus at 48 kHz) and the SIP leg (G.711 as 8 kHz PCM16).

Two stateful converters, one per direction and per call; av and numpy only, no I/O:

- `AppToPhone.push(frame)`: an aiortc audio frame (48 kHz stereo/mono s16 from the Opus
  decoder, or 8 kHz mono from PCMU/PCMA) in, a list of exact 160-sample (20 ms, 320 bytes)
  8 kHz mono PCM16 frames out, ready for `SipLeg.send_audio`.
- `PhoneToApp.convert(pcm)`: one 320-byte frame from `SipLeg.read_audio()` (or None when the
  leg has nothing) in, one `av.AudioFrame` of 20 ms at the app rate out (silence for None),
  for `PhoneToAppTrack.recv()`.

Down-sampling goes through libswresample (`av.AudioResampler`: a windowed-sinc polyphase
filter, so a 5 kHz tone does not alias into the 0-4 kHz band); its output sizes vary at the
start (filter delay), hence the re-chunking FIFOs. Stereo is mixed to mono as the mean of the
channels (identical channels keep their level). Samples stay 16-bit all the way.
"""

from __future__ import annotations

import ctypes
import fractions
import glob
import os

import av
import numpy as np
from av import AudioFrame, AudioResampler

PHONE_RATE = 8000
PHONE_SAMPLES = 160                 # 20 ms at 8 kHz (RFC 3551 §4.5.14: G.711 default ptime 20 ms)
PHONE_BYTES = 2 * PHONE_SAMPLES
PTIME = 0.020

__all__ = ["PHONE_BYTES", "PHONE_RATE", "PHONE_SAMPLES", "AppToPhone", "PhoneToApp", "mono_s16",
           "single_threaded_ffmpeg"]


def single_threaded_ffmpeg() -> bool:
    """Make FFmpeg (the av wheel's own libavutil) count one CPU, process-wide.

    Every `av.AudioResampler` is a libavfilter graph with a slice-thread pool sized by the CPU
    count: two threads per resampler here, three resamplers per bridged call, for 20 ms frames
    that take microseconds. With one CPU counted they run in the calling thread, so a bridge
    worker's threads do not grow with its calls. Call once at start; False if not applied.
    """
    libs = os.path.join(os.path.dirname(av.__file__), "..", "av.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libavutil*.so*"))):
        try:
            ctypes.CDLL(path).av_cpu_force_count(1)
        except (OSError, AttributeError):
            continue
        return True
    return False


def mono_s16(frame: AudioFrame) -> np.ndarray:
    """An audio frame's samples as mono int16 (channels averaged). Packed s16 or planar s16p."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    fmt = frame.format.name
    if fmt not in ("s16", "s16p"):
        raise ValueError(f"expected 16-bit audio, got {fmt}")
    if channels == 1:
        return data.reshape(-1).astype(np.int16, copy=False)
    if fmt == "s16":  # packed: one row, channels interleaved
        inter = data.reshape(-1, channels).astype(np.int32)
    else:             # planar: one row per channel
        inter = data.reshape(channels, -1).T.astype(np.int32)
    return np.asarray(inter.sum(axis=1) // channels, dtype=np.int16)


def _frame(samples: np.ndarray, rate: int, pts: int | None = None) -> AudioFrame:
    f = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    f.sample_rate = rate
    if pts is not None:
        f.pts = pts
        f.time_base = fractions.Fraction(1, rate)
    return f


class AppToPhone:
    """App audio -> 8 kHz mono PCM16 frames of exactly 160 samples. One per call.

    `push(frame)` returns the whole frames now available (0, 1 or more); the remainder waits
    for the next push. Frames at 8 kHz mono skip the resampler (PCMU/PCMA straight through).
    """

    def __init__(self) -> None:
        self._resampler: AudioResampler | None = None
        self._in_rate: int | None = None
        self._fifo = np.zeros(0, dtype=np.int16)
        self.frames_in = 0
        self.frames_out = 0

    def push(self, frame: AudioFrame) -> list[bytes]:
        """Convert one received app frame; returns 320-byte frames for `SipLeg.send_audio`."""
        self.frames_in += 1
        mono = mono_s16(frame)
        rate = int(frame.sample_rate)
        if rate == PHONE_RATE:
            out = mono
        else:
            if self._resampler is None or rate != self._in_rate:
                # a rate change mid-call (renegotiation) gets a fresh filter
                self._resampler = AudioResampler(format="s16", layout="mono", rate=PHONE_RATE)
                self._in_rate = rate
            parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(_frame(mono, rate))]
            out = np.concatenate(parts).astype(np.int16, copy=False) if parts else np.zeros(0, np.int16)
        self._fifo = np.concatenate([self._fifo, out]) if self._fifo.size else out
        n = self._fifo.size // PHONE_SAMPLES
        if n == 0:
            return []
        whole = self._fifo[: n * PHONE_SAMPLES].astype("<i2")
        self._fifo = self._fifo[n * PHONE_SAMPLES:].copy()
        self.frames_out += n
        raw = whole.tobytes()
        return [raw[i * PHONE_BYTES:(i + 1) * PHONE_BYTES] for i in range(n)]


class PhoneToApp:
    """8 kHz PCM16 frames from the SIP leg -> 20 ms `AudioFrame`s at `rate` (48000, or 8000 to
    hand PCMU/PCMA straight to the app). One per call; call `convert` once per 20 ms slot.

    None (the leg has nothing due) becomes silence, and silence is also fed through the
    resampler so its filter state and delay stay constant.
    """

    def __init__(self, rate: int = 48000) -> None:
        if rate % 50:
            raise ValueError(f"rate must be a multiple of 50 Hz, got {rate}")
        self.rate = rate
        self.samples_per_frame = rate // 50
        self._resampler = AudioResampler(format="s16", layout="mono", rate=rate) if rate != PHONE_RATE else None
        self._fifo = np.zeros(0, dtype=np.int16)
        self._silence = np.zeros(PHONE_SAMPLES, dtype=np.int16)
        self._pts = 0
        self.frames = 0
        self.silent_frames = 0

    def samples(self, pcm: bytes | None) -> np.ndarray:
        """The next 20 ms as int16 mono at `rate` (exactly `samples_per_frame`)."""
        self.frames += 1
        if pcm is None or len(pcm) != PHONE_BYTES:
            self.silent_frames += 1
            x = self._silence
        else:
            x = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        if self._resampler is None:
            return x.copy()
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(_frame(x, PHONE_RATE))]
        if parts:
            self._fifo = np.concatenate([self._fifo, *parts]).astype(np.int16, copy=False)
        need = self.samples_per_frame
        if self._fifo.size >= need:
            out = self._fifo[:need]
            self._fifo = self._fifo[need:].copy()
            return out
        # start-up: the filter still holds its delay; pad in front once, the stream then runs whole
        out = np.concatenate([np.zeros(need - self._fifo.size, dtype=np.int16), self._fifo])
        self._fifo = np.zeros(0, dtype=np.int16)
        return out

    def convert(self, pcm: bytes | None) -> AudioFrame:
        """One 20 ms AudioFrame (s16 mono, pts in 1/rate) for the app track."""
        f = _frame(self.samples(pcm), self.rate, self._pts)
        self._pts += self.samples_per_frame
        return f
