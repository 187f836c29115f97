"""RTP packet parse/serialise (RFC 3550 §5.1) and RTP/RTCP/STUN demultiplexing (RFC 5761, RFC 7983).

Call :func:`classify` (or :func:`is_rtcp`) on a datagram first, then :meth:`RtpPacket.parse`;
parse never raises anything but :class:`RtpParseError`. Build outgoing packets with
:class:`RtpPacket` (or ``bridge.rtp.session.RtpSender``) and call :meth:`RtpPacket.serialize`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
RTP_SEQ_MOD = 1 << 16
RTP_TS_MOD = 1 << 32
MAX_CSRC = 15

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")


class RtpParseError(ValueError):
    """The datagram is not a valid RTP packet: drop it and count it."""


class RtcpPacketError(RtpParseError):
    """The datagram is RTCP multiplexed on the RTP port (RFC 5761 §4): drop or route to RTCP."""


class PacketKind(Enum):
    """What a datagram on a media port is (RFC 7983 §7 first-byte ranges, RFC 5761 §4)."""

    RTP = "rtp"
    RTCP = "rtcp"
    STUN = "stun"
    DTLS = "dtls"
    UNKNOWN = "unknown"


def is_rtcp(data: bytes) -> bool:
    """True when a version-2 datagram carries an RTCP packet type.

    RFC 5761 §4: RTCP packet types 192–223 (SR 200, RR 201, SDES 202, BYE 203, APP 204,
    and the feedback/XR types 205–207) sit where RTP would have marker=1 and PT 64–95,
    which RTP must therefore not use.
    """
    return len(data) >= 2 and (data[0] >> 6) == RTP_VERSION and 192 <= data[1] <= 223


def classify(data: bytes) -> PacketKind:
    """Demultiplex a datagram by its first byte (RFC 7983 §7) and second byte (RFC 5761 §4)."""
    if not data:
        return PacketKind.UNKNOWN
    first = data[0]
    if first <= 3:
        return PacketKind.STUN
    if 20 <= first <= 63:
        return PacketKind.DTLS
    if 128 <= first <= 191:
        return PacketKind.RTCP if is_rtcp(data) else PacketKind.RTP
    return PacketKind.UNKNOWN


@dataclass(slots=True)
class RtpHeaderExtension:
    """The single RFC 3550 §5.3.1 header extension: 16-bit profile + data (a multiple of 4 bytes)."""

    profile: int
    data: bytes = b""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1). ``parse`` from wire bytes, ``serialize`` to wire bytes.

    Sequence numbers and timestamps are kept masked to 16 and 32 bits.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension: RtpHeaderExtension | None = None
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse wire bytes; raise :class:`RtpParseError` (or its RTCP subclass) on anything invalid."""
        try:
            return cls._parse(bytes(data))
        except RtpParseError:
            raise
        except Exception as exc:  # defensive: a parser bug must still look like a bad packet
            raise RtpParseError(f"malformed RTP packet: {exc!r}") from exc

    @classmethod
    def _parse(cls, data: bytes) -> RtpPacket:
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise RtpParseError(f"RTP packet of {size} bytes is shorter than the 12-byte header")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpParseError(f"RTP version {version} is not 2")
        if 192 <= b1 <= 223:
            raise RtcpPacketError(f"RTCP packet type {b1} on the RTP port (RFC 5761)")
        has_padding = bool(b0 & 0x20)
        has_extension = bool(b0 & 0x10)
        cc = b0 & 0x0F
        pos = RTP_HEADER_SIZE
        # §5.1: CSRC list of CC 32-bit items follows the fixed header.
        if size < pos + 4 * cc:
            raise RtpParseError(f"RTP packet truncated inside its CSRC list (CC={cc})")
        csrc = list(struct.unpack_from(f"!{cc}I", data, pos)) if cc else []
        pos += 4 * cc
        extension = None
        if has_extension:
            # §5.3.1: 16-bit profile, 16-bit length in 32-bit words, then the data.
            if size < pos + 4:
                raise RtpParseError("RTP packet truncated inside its extension header")
            profile, words = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            if size < pos + 4 * words:
                raise RtpParseError("RTP packet truncated inside its extension data")
            extension = RtpHeaderExtension(profile, data[pos : pos + 4 * words])
            pos += 4 * words
        end = size
        padding_size = 0
        if has_padding:
            # §5.1 P bit: the last octet counts the padding octets, itself included.
            padding_size = data[-1]
            if padding_size == 0 or padding_size > size - pos:
                raise RtpParseError(f"RTP padding length {padding_size} is invalid")
            end = size - padding_size
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=data[pos:end],
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension=extension,
            padding_size=padding_size,
        )

    def serialize(self) -> bytes:
        """Wire bytes for this packet (padding octets are zero, the last one counts them)."""
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} out of range 0..127")
        if len(self.csrc) > MAX_CSRC:
            raise ValueError("at most 15 CSRCs")
        if not 0 <= self.padding_size <= 255:
            raise ValueError("padding size out of range 0..255")
        b0 = (
            (RTP_VERSION << 6)
            | (0x20 if self.padding_size else 0)
            | (0x10 if self.extension is not None else 0)
            | len(self.csrc)
        )
        b1 = (0x80 if self.marker else 0) | self.payload_type
        parts = [
            _HEADER.pack(
                b0,
                b1,
                self.sequence_number & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc & 0xFFFFFFFF,
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *(c & 0xFFFFFFFF for c in self.csrc)))
        if self.extension is not None:
            ext = self.extension.data
            if len(ext) % 4:
                raise ValueError("extension data must be a multiple of 4 bytes")
            parts.append(_EXT_HEADER.pack(self.extension.profile & 0xFFFF, len(ext) // 4))
            parts.append(ext)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)


def seq_delta(a: int, b: int) -> int:
    """Signed distance a - b between two 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_delta(a: int, b: int) -> int:
    """Signed distance a - b between two 32-bit RTP timestamps, in [-2^31, 2^31 - 1]."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000
