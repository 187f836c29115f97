"""libopus through ctypes: the loader and a decoder with in-band FEC and PLC, at any Opus rate.

    dec = OpusDecoder(48000)               # mono PCM16 at 48 kHz (8000: straight to narrowband)
    pcm = dec.decode(payload)              # np.int16[n], n = the packet's duration
    pcm = dec.recover(next_payload, 960)   # the lost frame from the next packet's FEC (LBRR), or None
    pcm = dec.conceal(960)                 # packet-loss concealment (RFC 6716 §4.4)

The library is the one bundled with the av wheel (libopus 1.6 here, with
``opus_packet_has_lbrr``), else the system's ``libopus.so.0``. The dialer's receive path
(jego_call/media/receive.py) and the bridge's lean leg (bridge/net/opus.py) both use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

import numpy as np
import numpy.typing as npt

MAX_PACKET = 1275  # RFC 6716 §3.4 R2: a frame is at most 1275 bytes

Pcm = npt.NDArray[np.int16]

__all__ = ["OpusDecoder", "OpusError", "library", "library_path", "version"]


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


def library() -> ctypes.CDLL:
    """The loaded libopus, its functions typed (loads it once per process)."""
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
    library()
    return _PATH


def version() -> str:
    """libopus's version string, e.g. "libopus 1.6.1"."""
    return str(library().opus_get_version_string().decode())


def error(what: str, code: int) -> OpusError:
    return OpusError(f"{what}: {library().opus_strerror(code).decode()} ({code})")


class OpusDecoder:
    """Opus packets (any mode, mono or stereo) -> mono PCM16 at ``rate`` (8000, 12000, 16000,
    24000 or 48000), with in-band FEC recovery and loss concealment."""

    def __init__(self, rate: int = 48000) -> None:
        if rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"Opus decodes at 8, 12, 16, 24 or 48 kHz, not {rate}")
        lib = library()
        err = ctypes.c_int(0)
        st = lib.opus_decoder_create(rate, 1, ctypes.byref(err))
        if err.value != 0 or not st:
            raise error("opus_decoder_create", err.value)
        self.rate = rate
        self.frame = rate // 50  # 20 ms
        self._step = rate // 400  # 2.5 ms: the unit libopus conceals in
        self._max = rate * 120 // 1000  # the longest Opus packet (RFC 6716 §3.2.5)
        self._st: int | None = st
        self._decode = lib.opus_decode
        self._pcm = np.zeros(self._max, dtype=np.int16)
        self._pcm_ptr = self._pcm.ctypes.data
        self.errors = 0  # packets libopus could not decode (counted, concealed)
        self._has_lbrr = getattr(lib, "opus_packet_has_lbrr", None)

    def decode(self, payload: bytes) -> Pcm:
        """One packet -> its samples (a frame per 20 ms). A corrupt packet is counted and
        concealed instead (the caller never sees an error)."""
        n = self._decode(self._st, payload, len(payload), self._pcm_ptr, self._max, 0)
        if n < 0:
            self.errors += 1
            return self.conceal(self.frame)
        return self._pcm[:n].copy()

    def recover(self, payload: bytes, samples: int) -> Pcm | None:
        """The ``samples`` just before ``payload`` (a lost frame) from the in-band FEC (LBRR,
        RFC 6716 §2.1.7) that ``payload`` carries; None when it carries none (then conceal).
        Call it instead of :meth:`conceal` for the stretch right before the packet, then decode
        the packet itself as usual."""
        if not payload or samples <= 0 or samples % self._step or samples > self._max:
            return None
        has = self._has_lbrr
        if has is None or has(payload, len(payload)) != 1:
            return None
        n = self._decode(self._st, payload, len(payload), self._pcm_ptr, samples, 1)
        if n != samples:
            return None
        return self._pcm[:n].copy()

    def conceal(self, samples: int) -> Pcm:
        """``samples`` of packet-loss concealment (libopus extrapolates from what it decoded),
        asked in 2.5 ms steps as libopus wants; at most 120 ms at a time."""
        want = min(self._max, max(0, samples))
        if want <= 0:
            return np.zeros(0, dtype=np.int16)
        ask = -(-want // self._step) * self._step
        n = self._decode(self._st, None, 0, self._pcm_ptr, ask, 0)
        if n < 0:
            return np.zeros(want, dtype=np.int16)
        return self._pcm[:want].copy()

    def close(self) -> None:
        if self._st:
            library().opus_decoder_destroy(self._st)
            self._st = None

    def __del__(self) -> None:
        self.close()
