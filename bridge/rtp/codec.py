"""The codec seam of an RTP leg: 20 ms of 8 kHz PCM16 in and out, whatever goes on the wire.

:class:`~bridge.rtp.media.RtpSession` encodes and decodes through an :class:`AudioCodec`:
G.711 here (:class:`G711Codec`, pure numpy), Opus from bridge/net/opus.py (libopus through
ctypes, RTP clock 48 kHz, decoded straight to 8 kHz). Make one per leg (codecs keep state)::

    codec = codec_for("PCMU")      # or bridge.net.opus.OpusCodec(bitrate, complexity)
    payload = codec.encode(pcm)    # np.int16[160] -> payload bytes
    pcm = codec.decode(payload)    # payload -> np.int16 at 8 kHz, as long as the packet lasts
    pcm = codec.conceal(n)         # n samples for a lost stretch (G.711: silence; Opus: PLC)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from . import g711

Pcm = npt.NDArray[np.int16]

PCM_RATE = 8000  # what every codec here decodes to and encodes from


class AudioCodec(Protocol):
    """One leg's codec state. ``clock_rate`` is the RTP clock (RFC 3551 §4.5; 48000 for Opus,
    RFC 7587 §4.1), the PCM side is always 8 kHz mono."""

    name: str
    clock_rate: int

    def encode(self, pcm: Pcm) -> bytes: ...

    def decode(self, payload: bytes) -> Pcm: ...

    def conceal(self, samples: int) -> Pcm: ...


class G711Codec:
    """PCMU or PCMA (RFC 3551 §4.5.14): one byte per sample, no state, loss is silence."""

    clock_rate = PCM_RATE

    def __init__(self, name: str = "PCMU") -> None:
        self.name = name.upper()
        self.decode = g711.decoder_for(self.name)  # raises ValueError for anything else
        self.encode = g711.encoder_for(self.name)

    def conceal(self, samples: int) -> Pcm:
        return np.zeros(max(0, samples), dtype=np.int16)


def codec_for(name: str) -> G711Codec:
    """The pure codec for an SDP encoding name ("PCMU", "PCMA"); ValueError for others."""
    return G711Codec(name)


__all__ = ["PCM_RATE", "AudioCodec", "G711Codec", "codec_for"]
