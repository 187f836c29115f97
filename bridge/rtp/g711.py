"""G.711 μ-law / A-law <-> 16-bit linear PCM with numpy lookup tables (ITU-T G.711).

Bit-exact with the classic Sun Microsystems ``g711.c`` (the version CPython's ``audioop``
carried: 14-bit μ-law with BIAS 0x84 and CLIP 8159, 13-bit A-law). ``audioop`` is gone
in Python 3.13, so we build 256-entry decode and 65 536-entry encode tables at import.

Call :func:`ulaw_decode` / :func:`alaw_decode` on an RTP payload and :func:`ulaw_encode` /
:func:`alaw_encode` on PCM16 (bytes in native little-endian order, or an ``np.int16`` array).
:func:`decoder_for` / :func:`encoder_for` pick the pair by codec name or static PT (0 / 8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

PCMU_PT: Final = 0
PCMA_PT: Final = 8
ULAW_SILENCE: Final = 0xFF
ALAW_SILENCE: Final = 0xD5

_BIAS = 0x84
_CLIP = 8159
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_decode_ref(codes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    u = ~codes & 0xFF
    t = ((u & 0x0F) << 3) + _BIAS
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - t, t - _BIAS)


def _alaw_decode_ref(codes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    a = codes ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t)


def _ulaw_encode_ref(pcm: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    v = pcm >> 2  # 14-bit range
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), _CLIP) + (_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, v, side="left")  # first seg with v <= seg_end
    quant = (v >> np.minimum(seg + 1, 8)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    return (code ^ mask) & 0xFF


def _alaw_encode_ref(pcm: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    v = pcm >> 3  # 13-bit range
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(_SEG_AEND, v, side="left")
    shift = np.where(seg < 2, 1, np.minimum(seg, 8))
    quant = (v >> shift) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    return (code ^ mask) & 0xFF


_CODES = np.arange(256, dtype=np.int32)
_LINEAR = np.arange(-32768, 32768, dtype=np.int32)
ULAW_TO_PCM: Final[Pcm] = _ulaw_decode_ref(_CODES).astype(np.int16)
ALAW_TO_PCM: Final[Pcm] = _alaw_decode_ref(_CODES).astype(np.int16)
# Encode tables are indexed by (sample as uint16), i.e. two's complement bit pattern.
PCM_TO_ULAW: Final[npt.NDArray[np.uint8]] = np.roll(_ulaw_encode_ref(_LINEAR).astype(np.uint8), -32768)
PCM_TO_ALAW: Final[npt.NDArray[np.uint8]] = np.roll(_alaw_encode_ref(_LINEAR).astype(np.uint8), -32768)
for _table in (ULAW_TO_PCM, ALAW_TO_PCM, PCM_TO_ULAW, PCM_TO_ALAW):
    _table.setflags(write=False)


def as_pcm(samples: bytes | bytearray | memoryview | npt.ArrayLike) -> Pcm:
    """PCM16 samples as an ``np.int16`` array (bytes are read as native-endian int16)."""
    if isinstance(samples, bytes | bytearray | memoryview):
        raw = bytes(samples)
        if len(raw) % 2:
            raise ValueError("PCM16 byte string has an odd length")
        return np.frombuffer(raw, dtype=np.int16)
    arr = np.asarray(samples)
    if arr.dtype != np.int16:
        arr = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    return arr


def _codes(payload: bytes | bytearray | memoryview | npt.ArrayLike) -> npt.NDArray[np.uint8]:
    if type(payload) is bytes:  # the per-packet case: no copy
        return np.frombuffer(payload, dtype=np.uint8)
    if isinstance(payload, bytes | bytearray | memoryview):
        return np.frombuffer(bytes(payload), dtype=np.uint8)
    return np.asarray(payload, dtype=np.uint8)


def ulaw_decode(payload: bytes | bytearray | memoryview | npt.ArrayLike) -> Pcm:
    """μ-law codes -> PCM16 ``np.int16`` array (one sample per byte)."""
    return ULAW_TO_PCM[_codes(payload)]


def alaw_decode(payload: bytes | bytearray | memoryview | npt.ArrayLike) -> Pcm:
    """A-law codes -> PCM16 ``np.int16`` array (one sample per byte)."""
    return ALAW_TO_PCM[_codes(payload)]


def _as_u16(samples: bytes | bytearray | memoryview | npt.ArrayLike) -> npt.NDArray[np.uint16]:
    if type(samples) is np.ndarray and samples.dtype == np.int16:  # the per-frame case
        return samples.view(np.uint16)
    return as_pcm(samples).view(np.uint16)


def ulaw_encode(samples: bytes | bytearray | memoryview | npt.ArrayLike) -> bytes:
    """PCM16 (bytes or ``np.int16``) -> μ-law payload bytes."""
    return PCM_TO_ULAW[_as_u16(samples)].tobytes()


def alaw_encode(samples: bytes | bytearray | memoryview | npt.ArrayLike) -> bytes:
    """PCM16 (bytes or ``np.int16``) -> A-law payload bytes."""
    return PCM_TO_ALAW[_as_u16(samples)].tobytes()


def ulaw_to_pcm_bytes(payload: bytes) -> bytes:
    """μ-law payload -> PCM16 bytes (native endianness), like ``audioop.ulaw2lin(x, 2)``."""
    return ulaw_decode(payload).tobytes()


def alaw_to_pcm_bytes(payload: bytes) -> bytes:
    """A-law payload -> PCM16 bytes (native endianness), like ``audioop.alaw2lin(x, 2)``."""
    return alaw_decode(payload).tobytes()


Decoder = Callable[[bytes], Pcm]
Encoder = Callable[[Pcm], bytes]

_BY_NAME: dict[str, tuple[Decoder, Encoder, int]] = {
    "PCMU": (ulaw_decode, ulaw_encode, ULAW_SILENCE),
    "PCMA": (alaw_decode, alaw_encode, ALAW_SILENCE),
}
_PT_NAME = {PCMU_PT: "PCMU", PCMA_PT: "PCMA"}


def _lookup(codec: str | int) -> tuple[Decoder, Encoder, int]:
    name = _PT_NAME.get(codec, "") if isinstance(codec, int) else codec.upper()
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unsupported G.711 codec {codec!r} (use PCMU/0 or PCMA/8)") from None


def decoder_for(codec: str | int) -> Decoder:
    """The decode function for "PCMU"/"PCMA" or static payload type 0/8."""
    return _lookup(codec)[0]


def encoder_for(codec: str | int) -> Encoder:
    """The encode function for "PCMU"/"PCMA" or static payload type 0/8."""
    return _lookup(codec)[1]


def silence_payload(codec: str | int, samples: int = 160) -> bytes:
    """A payload that decodes to digital silence (0xFF μ-law, 0xD5 A-law)."""
    return bytes([_lookup(codec)[2]]) * samples
