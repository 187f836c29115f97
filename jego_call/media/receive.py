"""The dialer's Opus receive path with in-band FEC and loss concealment (issue 15).

aiortc's own audio path stalls on a lost packet (its jitter buffer waits for the hole until 16
packets later, then drops it) and its decoder neither recovers nor conceals, so the recording
gets silence. `install_receive_path(receiver, counters)` puts two things in its place on one
`RTCRtpReceiver`:

- `LossBuffer` (the receiver's jitter buffer): packets in sequence order, a missing one waited
  for while ``window`` later packets arrive, then declared lost; each released packet says how
  many were lost just before it (`LossFrame`).
- `LossAwareOpusDecoder` (aiortc's decoder thread, through `get_decoder`): before the packet, the
  lost frames: the last one from the packet's in-band FEC (LBRR, RFC 6716 §2.1.7) when it
  carries some, the others concealed (libopus PLC, jego_call/media/libopus.py), at most
  ``MAX_CONCEAL`` frames (a longer gap stays a pts gap: silence in the sinks).

`ReceiveCounters` counts recovered, concealed and lost frames (MediaEndpoint.stats()).
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import rtcrtpreceiver
from aiortc.codecs import get_decoder as aiortc_get_decoder
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from av import AudioFrame
from av.frame import Frame

from .libopus import OpusDecoder

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
TIME_BASE = fractions.Fraction(1, RATE)
MAX_CONCEAL = 5  # frames of PLC for one gap (100 ms); the rest of a longer gap is silence


@dataclass
class ReceiveCounters:
    """Per call: lost 20 ms frames rebuilt from FEC, concealed (PLC), and packets lost in all."""

    fec: bool = True  # recover from in-band FEC (False: conceal only)
    recovered: int = 0
    concealed: int = 0
    lost: int = 0
    late: int = 0  # arrived after their slot was declared lost (dropped)

    def as_dict(self) -> dict[str, int]:
        return {"fec_recovered": self.recovered, "concealed_frames": self.concealed,
                "lost_frames": self.lost, "late_dropped": self.late}


@dataclass
class Part:
    lost_before: int  # packets lost just before this one
    offset: int  # RTP timestamp units after the frame's first part
    payload: bytes


class LossFrame(JitterFrame):
    """Packets released together, in order, each with the losses before it."""

    def __init__(self, parts: list[Part], timestamp: int, counters: ReceiveCounters) -> None:
        super().__init__(b"".join(p.payload for p in parts), timestamp)
        self.parts = parts
        self.counters = counters


@dataclass
class LossBuffer:
    """Drop-in for aiortc's audio JitterBuffer: ``add(packet) -> (pli, frame or None)``."""

    counters: ReceiveCounters
    window: int = 2  # later packets to see before a missing one counts as lost
    capacity: int = 16
    _next: int | None = None
    _last_ext: int | None = None
    _pending: dict[int, RtpPacket] = field(default_factory=dict)

    def _extend(self, seq: int) -> int:
        last = self._last_ext
        if last is None:
            ext = seq
        else:
            delta = (seq - last) & 0xFFFF
            ext = last + (delta if delta < 0x8000 else delta - 0x10000)
        if last is None or ext > last:
            self._last_ext = ext
        return ext

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        ext = self._extend(packet.sequence_number)
        if self._next is None:
            self._next = ext
        if ext < self._next:
            self.counters.late += 1
            return False, None
        if ext - self._next > 3000:  # the sender restarted: start again here
            self._pending.clear()
            self._next = ext
        self._pending[ext] = packet
        parts: list[Part] = []
        first_ts: int | None = None
        lost = 0
        while self._pending:
            pkt = self._pending.pop(self._next, None)
            if pkt is None:
                ahead = max(self._pending) - self._next
                if ahead < self.window and len(self._pending) < self.capacity:
                    break
                lost += 1  # waited long enough: it is lost
                self.counters.lost += 1
                self._next += 1
                continue
            if first_ts is None:
                first_ts = pkt.timestamp
            parts.append(Part(lost, (pkt.timestamp - first_ts) & 0xFFFFFFFF, getattr(pkt, "_data", pkt.payload)))
            lost = 0
            self._next += 1
        if not parts or first_ts is None:
            return False, None
        return False, LossFrame(parts, first_ts, self.counters)

    def remove(self, count: int) -> None:  # aiortc calls it on its own buffer only
        del count


class LossAwareOpusDecoder(Decoder):
    """Opus -> 48 kHz frames (the mono signal on both channels); lost frames before a packet from its FEC, else concealed."""

    def __init__(self) -> None:
        self.opus = OpusDecoder(RATE)
        self._end: int | None = None  # pts just after the last sample we gave

    def _frame(self, pcm: np.ndarray, pts: int) -> AudioFrame:
        # stereo, both channels the same, as aiortc's own decoder gives (its sinks and MP4
        # recorder expect that layout)
        f = AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo")
        f.sample_rate = RATE
        f.pts = pts
        f.time_base = TIME_BASE
        return f

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        parts = encoded_frame.parts if isinstance(encoded_frame, LossFrame) else [
            Part(0, 0, encoded_frame.data)]
        counters = encoded_frame.counters if isinstance(encoded_frame, LossFrame) else None
        out: list[Frame] = []
        for part in parts:
            pts = encoded_frame.timestamp + part.offset
            if part.lost_before and counters is not None and self._end is not None:
                out += self._fill(part, pts, counters)
            pcm = self.opus.decode(part.payload)
            out.append(self._frame(pcm, pts))
            self._end = pts + len(pcm)
        return out

    def _fill(self, part: Part, pts: int, counters: ReceiveCounters) -> list[Frame]:
        assert self._end is not None
        gap = pts - self._end
        if gap <= 0 or gap > 60 * RATE:
            return []
        frames = min(part.lost_before, -(-gap // FRAME))
        out: list[Frame] = []
        fec = self.opus.recover(part.payload, FRAME) if counters.fec and frames <= MAX_CONCEAL else None
        plc = min(frames - (1 if fec is not None else 0), MAX_CONCEAL)
        at = self._end
        if plc > 0:
            pcm = np.concatenate([self.opus.conceal(FRAME) for _ in range(plc)])
            out.append(self._frame(pcm, at))
            counters.concealed += plc
        if fec is not None:
            out.append(self._frame(fec, pts - FRAME))
            counters.recovered += 1
        return out


def get_decoder(codec: RTCRtpCodecParameters) -> Decoder:
    """aiortc's decoder factory, with Opus replaced by `LossAwareOpusDecoder`."""
    if codec.mimeType.lower() == "audio/opus":
        return LossAwareOpusDecoder()
    return aiortc_get_decoder(codec)


def install_receive_path(receiver: Any, counters: ReceiveCounters) -> None:
    """Give one audio `RTCRtpReceiver` our jitter buffer; Opus decodes through `get_decoder`
    (installed process-wide, idempotent)."""
    rtcrtpreceiver.get_decoder = get_decoder  # type: ignore[attr-defined]
    receiver._RTCRtpReceiver__jitter_buffer = LossBuffer(counters)


__all__ = ["LossAwareOpusDecoder", "LossBuffer", "ReceiveCounters", "install_receive_path"]
