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
import ctypes.util
import glob
import os
from typing import Any

import numpy as np
import numpy.typing as npt

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


class OpusError(RuntimeError):
    """libopus refused: it could not be loaded, or a create/encode/decode call failed."""


def _candidates() -> list[str]:
    paths: list[str] = []
    try:
        import av  # the wheel's own libopus (bundled under av.libs)

        base = os.path.join(os.path.dirname(av.__file__), "..", "av.libs")
        paths += sorted(glob.glob(os.path.join(base, "libopus*.so*")))
    except ImportError:  # pragma: no cover - av is a dependency
        pass
    found = ctypes.util.find_library("opus")
    paths += [p for p in (found, "libopus.so.0") if p]
    return paths


def _load() -> tuple[ctypes.CDLL, str]:
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.opus_encoder_create  # noqa: B018 - the symbol must be there
        except (OSError, AttributeError) as exc:
            errors.append(f"{path}: {exc}")
            continue
        return lib, path
    raise OpusError("libopus not found (" + "; ".join(errors or ["no candidate"]) + ")")


_LIB: ctypes.CDLL | None = None
_PATH = ""


def _lib() -> ctypes.CDLL:
    global _LIB, _PATH
    if _LIB is None:
        lib, _PATH = _load()
        vp, i32, cp = ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p
        lib.opus_get_version_string.restype = cp
        lib.opus_encoder_create.restype = vp
        lib.opus_encoder_create.argtypes = [i32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_create.restype = vp
        lib.opus_decoder_create.argtypes = [i32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode.restype = i32
        lib.opus_encode.argtypes = [vp, vp, ctypes.c_int, vp, i32]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [vp, cp, i32, vp, ctypes.c_int, ctypes.c_int]
        lib.opus_encoder_destroy.argtypes = [vp]
        lib.opus_decoder_destroy.argtypes = [vp]
        lib.opus_encoder_ctl.restype = ctypes.c_int
        lib.opus_strerror.restype = cp
        lib.opus_strerror.argtypes = [ctypes.c_int]
        if hasattr(lib, "opus_packet_has_lbrr"):  # libopus >= 1.5
            lib.opus_packet_has_lbrr.restype = ctypes.c_int
            lib.opus_packet_has_lbrr.argtypes = [cp, i32]
        _LIB = lib
    return _LIB


def library_path() -> str:
    """The libopus file in use (loads it)."""
    _lib()
    return _PATH


def version() -> str:
    """libopus's version string, e.g. "libopus 1.6.1"."""
    return str(_lib().opus_get_version_string().decode())


def _error(what: str, code: int) -> OpusError:
    return OpusError(f"{what}: {_lib().opus_strerror(code).decode()} ({code})")


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


class OpusDecoder:
    """Opus packets (any mode, mono or stereo) -> 8 kHz mono PCM16, with loss concealment."""

    def __init__(self) -> None:
        lib = _lib()
        err = ctypes.c_int(0)
        st = lib.opus_decoder_create(RATE, 1, ctypes.byref(err))
        if err.value != 0 or not st:
            raise _error("opus_decoder_create", err.value)
        self._st: int | None = st
        self._decode = lib.opus_decode
        self._pcm = np.zeros(MAX_FRAME, dtype=np.int16)
        self._pcm_ptr = self._pcm.ctypes.data
        self.errors = 0  # packets libopus could not decode (counted, concealed)
        lib_ = _lib()
        self._has_lbrr = getattr(lib_, "opus_packet_has_lbrr", None)

    def decode(self, payload: bytes) -> Pcm:
        """One packet -> its samples at 8 kHz (160 for 20 ms). A corrupt packet is counted and
        concealed instead (the caller never sees an error)."""
        n = self._decode(self._st, payload, len(payload), self._pcm_ptr, MAX_FRAME, 0)
        if n < 0:
            self.errors += 1
            return self.conceal(FRAME)
        return self._pcm[:n].copy()

    def recover(self, payload: bytes, samples: int) -> Pcm | None:
        """The ``samples`` just before ``payload`` (a lost frame) from the in-band FEC (LBRR,
        RFC 6716 §2.1.7) that ``payload`` carries; None when it carries none (then conceal).
        Call it instead of :meth:`conceal` for the stretch right before the packet, then decode
        the packet itself as usual."""
        if not payload or samples <= 0 or samples % 20 or samples > MAX_FRAME:
            return None
        has = self._has_lbrr
        if has is None or has(payload, len(payload)) != 1:
            return None
        n = self._decode(self._st, payload, len(payload), self._pcm_ptr, samples, 1)
        if n != samples:
            return None
        return self._pcm[:n].copy()

    def conceal(self, samples: int) -> Pcm:
        """``samples`` of packet-loss concealment (libopus extrapolates from what it decoded).
        Asked in 2.5 ms steps (20 samples) as libopus wants; at most 120 ms at a time."""
        want = min(MAX_FRAME, max(0, samples))
        if want <= 0:
            return np.zeros(0, dtype=np.int16)
        ask = -(-want // 20) * 20
        n = self._decode(self._st, None, 0, self._pcm_ptr, ask, 0)
        if n < 0:
            return np.zeros(want, dtype=np.int16)
        return self._pcm[:want].copy()

    def close(self) -> None:
        if self._st:
            _lib().opus_decoder_destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        self.close()


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
