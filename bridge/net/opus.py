"""libopus through ctypes, at 8 kHz mono: the lean WebRTC leg's codec (bridge/net/webrtc.py).

    enc = OpusEncoder(bitrate=24000, complexity=5)   # 8 kHz mono input, application VOIP
    payload = enc.encode(pcm160)                     # np.int16[160] (20 ms) -> one Opus packet
    dec = OpusDecoder()                              # decodes straight to 8 kHz mono
    pcm = dec.decode(payload)                        # np.int16[n], n = the packet's duration
    pcm = dec.conceal(160)                           # packet-loss concealment (RFC 6716 §4.4)
    pcm = dec.recover(next_payload, 160)             # the lost frame from the next packet's FEC, or None
    codec = OpusCodec(bitrate=24000, complexity=5)   # both, as a bridge.rtp.codec.AudioCodec

libopus band-limits itself: decoding to 8 kHz and encoding from 8 kHz input need no
resampler (its decoder's own low-pass, its encoder in narrowband mode). The RTP clock stays
48 kHz (RFC 7587 §4.1), whatever the rate we decode to. Buffers are allocated once per
object and calls go straight to the C library (no wrapper per call): opuslib's wrapper costs
more than the codec at this size. The library is the one bundled with the av wheel (libopus
1.6 here: faster than Debian's 1.3.1), else the system's `libopus.so.0`.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt

from jego_call.media.libopus import OpusDecoder as _Decoder
from jego_call.media.libopus import OpusError, error, library, library_path, version

RATE = 8000
FRAME = 160                       # 20 ms at 8 kHz
MAX_FRAME = 960                   # 120 ms at 8 kHz: the longest Opus packet (RFC 6716 §3.2.5)
MAX_PACKET = 1275                 # RFC 6716 §3.4 R2: a frame is at most 1275 bytes
APPLICATION_VOIP = 2048
OPUS_SET_BITRATE = 4002
OPUS_SET_VBR = 4006
OPUS_SET_COMPLEXITY = 4010
OPUS_SET_INBAND_FEC = 4012
OPUS_SET_PACKET_LOSS_PERC = 4014
OPUS_SET_VBR_CONSTRAINT = 4020
OPUS_SET_SIGNAL = 4024
OPUS_SIGNAL_VOICE = 3001

Pcm = npt.NDArray[np.int16]

__all__ = ["FRAME", "OpusCodec", "OpusDecoder", "OpusEncoder", "OpusError", "library_path", "version"]


def _lib() -> ctypes.CDLL:
    return library()


def _error(what: str, code: int) -> OpusError:
    return error(what, code)


class OpusEncoder:
    """Mono Opus from 8 kHz PCM16, 20 ms per packet, application VOIP, signal voice.

    ``bitrate`` in bit/s (constrained VBR), ``complexity`` 0-10 (docs/benchmarks.md "Opus at
    8 kHz" for what each costs and scores). Call :meth:`encode` once per 20 ms frame."""

    def __init__(self, bitrate: int = 24000, complexity: int = 5) -> None:
        lib = _lib()
        err = ctypes.c_int(0)
        st = lib.opus_encoder_create(RATE, 1, APPLICATION_VOIP, ctypes.byref(err))
        if err.value != 0 or not st:
            raise _error("opus_encoder_create", err.value)
        self._st: int | None = st
        self._encode = lib.opus_encode
        self._in = np.zeros(FRAME, dtype=np.int16)
        self._in_ptr = self._in.ctypes.data
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        self._out_ptr = ctypes.addressof(self._out)
        self._string_at = ctypes.string_at
        for request, value in ((OPUS_SET_SIGNAL, OPUS_SIGNAL_VOICE), (OPUS_SET_VBR, 1), (OPUS_SET_VBR_CONSTRAINT, 1)):
            self._ctl(request, value)
        self.bitrate = 0
        self.complexity = -1
        self.configure(bitrate=bitrate, complexity=complexity)

    def _ctl(self, request: int, value: int) -> None:
        rc = _lib().opus_encoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(request), ctypes.c_int32(value))
        if rc != 0:
            raise _error(f"opus_encoder_ctl({request}, {value})", rc)

    def configure(self, *, bitrate: int | None = None, complexity: int | None = None,
                  loss_percent: int | None = None) -> None:
        """Change the bitrate, complexity or expected loss (in-band FEC on when > 0)."""
        if bitrate is not None and bitrate != self.bitrate:
            if not 6000 <= bitrate <= 510000:
                raise ValueError(f"Opus bitrate {bitrate} out of 6000..510000")
            self._ctl(OPUS_SET_BITRATE, bitrate)
            self.bitrate = bitrate
        if complexity is not None and complexity != self.complexity:
            if not 0 <= complexity <= 10:
                raise ValueError(f"Opus complexity {complexity} out of 0..10")
            self._ctl(OPUS_SET_COMPLEXITY, complexity)
            self.complexity = complexity
        if loss_percent is not None:
            self._ctl(OPUS_SET_PACKET_LOSS_PERC, max(0, min(100, loss_percent)))
            self._ctl(OPUS_SET_INBAND_FEC, 1 if loss_percent > 0 else 0)

    def encode(self, pcm: Pcm) -> bytes:
        """One 20 ms frame (160 samples at 8 kHz, int16) -> one Opus packet."""
        self._in[:] = pcm
        n = self._encode(self._st, self._in_ptr, FRAME, self._out_ptr, MAX_PACKET)
        if n < 0:
            raise _error("opus_encode", n)
        return self._string_at(self._out_ptr, n)

    def close(self) -> None:
        if self._st:
            _lib().opus_encoder_destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        self.close()


class OpusDecoder(_Decoder):
    """Opus packets (any mode, mono or stereo) -> 8 kHz mono PCM16, with in-band FEC recovery
    and loss concealment (jego_call/media/libopus.py at 8 kHz)."""

    def __init__(self) -> None:
        super().__init__(RATE)


class OpusCodec:
    """An encoder and a decoder as one ``bridge.rtp.codec.AudioCodec`` (RTP clock 48 kHz)."""

    name = "opus"
    clock_rate = 48000

    def __init__(self, bitrate: int = 24000, complexity: int = 5) -> None:
        self.encoder = OpusEncoder(bitrate, complexity)
        self.decoder = OpusDecoder()
        self.encode = self.encoder.encode
        self.decode = self.decoder.decode
        self.conceal = self.decoder.conceal
        self.recover = self.decoder.recover

    def close(self) -> None:
        self.encoder.close()
        self.decoder.close()

    def stats(self) -> dict[str, Any]:
        return {"decode_errors": self.decoder.errors}

    def enable_fec(self, loss_percent: int = 10) -> None:
        """Our encoder adds in-band FEC for a far end that asked (``useinbandfec=1``, RFC 7587 §6.1),
        sized for ``loss_percent`` expected loss."""
        self.encoder.configure(loss_percent=loss_percent)
