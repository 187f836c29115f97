"""The one place where we change aiortc's codecs (process-wide, idempotent).

aiortc 1.16's Opus encoder is stereo at 96 kb/s and up-mixes mono input at -3 dB per
channel (media-stack.md §2.1). `install_codecs()` swaps in `MonoOpusEncoder`: mono, voice
bitrate (32 kb/s by default), no level loss; stereo input (e.g. echoed decoded Opus) is
down-mixed as the mean of the channels, so identical channels keep their level. It also
replaces aiortc's pure-Python RTP audio-level loop with numpy (same result, ~75 µs less per
frame). `MediaEndpoint` calls `install_codecs()`; nothing else needs to.
"""

from __future__ import annotations

import fractions
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc import rtcrtpsender
from aiortc import rtp as aiortc_rtp
from aiortc.codecs import get_encoder as aiortc_get_encoder
from aiortc.codecs.base import Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import AudioFrame, AudioResampler, CodecContext
from av.frame import Frame
from av.packet import Packet

SAMPLE_RATE = 48000
SAMPLES_PER_FRAME = 960
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


@dataclass
class OpusSettings:
    """Process-wide settings for `MonoOpusEncoder` (set by `install_codecs`)."""

    bitrate: int = 32000
    complexity: int | None = None  # libopus default (10) when None
    fec_loss: int = 0  # > 0: in-band FEC planned for this loss % when the far end asks (useinbandfec=1)


SETTINGS = OpusSettings()


def frame_to_mono(frame: AudioFrame) -> np.ndarray:
    """Return an s16 audio frame's samples as a mono int16 array (channels averaged)."""
    if frame.format.name != "s16":
        raise ValueError(f"expected s16 audio, got {frame.format.name}")
    data = frame.to_ndarray().reshape(-1)
    channels = len(frame.layout.channels)
    if channels == 1:
        return data.astype(np.int16, copy=False)
    mixed = data.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels
    return np.asarray(mixed, dtype=np.int16)


def cutoff_for(max_playback_rate: int | None) -> int | None:
    """libopus's band limit (Hz) for the far end's RFC 7587 `maxplaybackrate` (None: full band)."""
    if not max_playback_rate:
        return None
    for rate, cutoff in ((8000, 4000), (12000, 6000), (16000, 8000), (24000, 12000)):
        if max_playback_rate <= rate:
            return cutoff
    return None


class MonoOpusEncoder(Encoder):
    """Opus encoder: mono, `SETTINGS.bitrate` (constrained VBR), application=voip, 20 ms at 48 kHz;
    band-limited to `cutoff` Hz (4000: narrowband) when the far end plays out no higher."""

    def __init__(self, bitrate: int | None = None, complexity: int | None = None, cutoff: int | None = None,
                 fec_loss: int = 0) -> None:
        self.bitrate = bitrate or SETTINGS.bitrate
        self.codec: Any = CodecContext.create("libopus", "w")
        self.codec.bit_rate = self.bitrate
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.time_base = TIME_BASE
        options = {"application": "voip", "vbr": "constrained"}  # unconstrained VBR doubles the rate on tones
        complexity = complexity if complexity is not None else SETTINGS.complexity
        if complexity is not None:
            options["compression_level"] = str(complexity)
        if cutoff is not None:
            options["cutoff"] = str(cutoff)
        if fec_loss > 0:  # RFC 6716 §2.1.7 LBRR, sized by the expected loss (libopusenc's options)
            options["fec"] = "1"
            options["packet_loss"] = str(min(100, fec_loss))
        self.codec.options = options
        self.resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE,
                                        frame_size=SAMPLES_PER_FRAME)
        self.first_packet_pts: int | None = None
        self._pts = 0

    def _mono_frames(self, frame: AudioFrame) -> list[AudioFrame]:
        if len(frame.layout.channels) != 1:
            mono = frame_to_mono(frame)
            down = AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
            down.sample_rate = frame.sample_rate
            if frame.pts is not None and frame.time_base is not None:
                down.pts = frame.pts
                down.time_base = frame.time_base
            frame = down
        if frame.sample_rate == SAMPLE_RATE and frame.samples == SAMPLES_PER_FRAME:
            frame.pts = self._pts
            frame.time_base = TIME_BASE
            self._pts += SAMPLES_PER_FRAME
            return [frame]
        return list(self.resampler.resample(frame))

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, AudioFrame)
        packets: list[Packet[Any]] = []
        for f in self._mono_frames(frame):
            packets += self.codec.encode(f)
        if not packets:
            return [], None  # type: ignore[return-value]  # aiortc's own encoders do this too
        pts = int(packets[0].pts or 0)
        if self.first_packet_pts is None:
            self.first_packet_pts = pts
        return [bytes(p) for p in packets], pts - self.first_packet_pts

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        assert packet.pts is not None and packet.time_base is not None
        return [bytes(packet)], int(packet.pts * packet.time_base / TIME_BASE)


def get_encoder(codec: RTCRtpCodecParameters) -> Encoder:
    """aiortc's encoder factory, with Opus replaced by `MonoOpusEncoder` (band-limited to what the
    far end plays out: `MediaEndpoint` notes its `maxplaybackrate` on the codec)."""
    if codec.mimeType.lower() == "audio/opus":
        fec = SETTINGS.fec_loss if getattr(codec, "remote_fec", False) else 0
        return MonoOpusEncoder(cutoff=cutoff_for(getattr(codec, "remote_max_playback_rate", None)), fec_loss=fec)
    return aiortc_get_encoder(codec)


def compute_audio_level_dbov(frame: AudioFrame) -> int:
    """RFC 6465 audio level in -dBov (0 loudest, -127 silence), like aiortc's, via numpy."""
    x = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16)[: frame.samples * len(frame.layout.channels)]
    if x.size == 0:
        return -127
    rms = math.sqrt(float(np.dot(x.astype(np.float64), x)) / (frame.samples * 32767.0 * 32767.0))
    if rms <= 0:
        return -127
    return round(min(0.0, max(-127.0, 20 * math.log10(rms))))


def install_codecs(opus_bitrate: int | None = None, opus_complexity: int | None = None,
                   opus_fec_loss: int | None = None) -> None:
    """Install `get_encoder` and the numpy audio level into aiortc (idempotent).

    `opus_bitrate`/`opus_complexity`/`opus_fec_loss` update the process-wide settings for
    encoders created from now on.
    """
    if opus_bitrate is not None:
        SETTINGS.bitrate = int(opus_bitrate)
    if opus_complexity is not None:
        SETTINGS.complexity = int(opus_complexity)
    if opus_fec_loss is not None:
        SETTINGS.fec_loss = max(0, int(opus_fec_loss))
    rtcrtpsender.get_encoder = get_encoder  # type: ignore[attr-defined]
    aiortc_rtp.compute_audio_level_dbov = compute_audio_level_dbov
