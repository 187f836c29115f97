"""RTCP (RFC 3550 §6): SR, RR, SDES and BYE packets, compound packets, NTP time, RTT, intervals.

Build a report with :func:`build_compound` from :class:`SenderReport` / :class:`ReceiverReport`,
:class:`Sdes` and :class:`Bye`; parse one with :func:`parse_compound` (raises only
:class:`RtcpError`). Report blocks carry RFC 3550 §6.4.1 reception statistics; a block about
our SSRC plus the time it arrived gives the round-trip time (:func:`round_trip`). How often to
send: :func:`rtcp_interval` (App. A.7). ``bridge.rtp.media.RtpSession`` does all of this per leg.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .packet import RtpParseError

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
SDES_CNAME = 1
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
MAX_REPORTS = 31  # RC is 5 bits
COMPENSATION = 2.71828 - 1.5  # App. A.7: e - 3/2, compensates "timer reconsideration"

_HDR = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IIIIII")  # SSRC, NTP msw, NTP lsw, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|cumulative, ext. highest seq, jitter, LSR, DLSR


class RtcpError(RtpParseError):
    """A datagram that is not a valid RTCP compound packet (App. A.2 checks): drop and count it."""


@dataclass(slots=True, frozen=True)
class ReportBlock:
    """One reception report (§6.4.1) about ``ssrc``: what the reporter received from it.

    ``fraction_lost`` is the 8-bit fixed-point fraction (0..255 = 0..255/256) since the
    previous report; ``cumulative_lost`` is signed 24-bit; ``jitter`` is in timestamp units;
    ``lsr`` is the middle 32 bits of the NTP time of the last SR from ``ssrc`` (0: none);
    ``dlsr`` is the delay since that SR in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_seq: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def serialize(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.cumulative_lost)) & 0xFFFFFF
        return _BLOCK.pack(
            self.ssrc & 0xFFFFFFFF,
            (max(0, min(255, self.fraction_lost)) << 24) | lost,
            self.highest_seq & 0xFFFFFFFF,
            max(0, self.jitter) & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000  # two's complement, 24 bits
        return cls(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr)

    @property
    def fraction(self) -> float:
        """``fraction_lost`` as 0.0 .. 1.0."""
        return self.fraction_lost / 256.0


@dataclass(slots=True, frozen=True)
class SenderReport:
    """SR (§6.4.1): sender info (NTP time as a 64-bit fixed-point integer) and report blocks."""

    ssrc: int
    ntp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(slots=True, frozen=True)
class ReceiverReport:
    """RR (§6.4.2): report blocks from a participant that sent no RTP since its last report."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(slots=True, frozen=True)
class Sdes:
    """SDES (§6.5) with one chunk per source; only CNAME is built, every item is parsed."""

    chunks: tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...] = ()

    @classmethod
    def cname(cls, ssrc: int, cname: str) -> Sdes:
        return cls(((ssrc, ((SDES_CNAME, cname.encode()[:255]),)),))

    def cname_of(self, ssrc: int) -> str | None:
        for who, items in self.chunks:
            if who == ssrc:
                for kind, value in items:
                    if kind == SDES_CNAME:
                        return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True, frozen=True)
class Bye:
    """BYE (§6.6): the sources leave, with an optional reason."""

    ssrcs: tuple[int, ...]
    reason: str = ""


@dataclass(slots=True, frozen=True)
class OtherRtcp:
    """A packet type we do not interpret (APP, XR, feedback): kept by type, skipped."""

    packet_type: int
    body: bytes = field(default=b"", repr=False)


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | OtherRtcp


# -- NTP time ----------------------------------------------------------------------------------
def ntp_from_seconds(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point) of ``seconds`` since the NTP epoch."""
    whole = int(seconds)
    frac = int((seconds - whole) * (1 << 32)) & 0xFFFFFFFF
    return ((whole & 0xFFFFFFFF) << 32) | frac


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp (16.16): what LSR carries (§6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def round_trip(arrival_ntp: int, block: ReportBlock) -> float | None:
    """RTT in seconds from a report block about us that arrived at ``arrival_ntp`` (64-bit):
    A - LSR - DLSR in 1/65536 s (§6.4.1, Figure 2). None if the block names no SR (LSR 0)
    or the result is negative (clock or reporter error)."""
    if block.lsr == 0:
        return None
    rtt = (ntp_middle(arrival_ntp) - block.lsr - block.dlsr) & 0xFFFFFFFF
    if rtt >= 0x80000000:
        return None
    return rtt / 65536.0


# -- build -------------------------------------------------------------------------------------
def _header(count: int, packet_type: int, body_len: int, padding: bool = False) -> bytes:
    # §6.4.1: length is the packet's size in 32-bit words minus one (header included).
    return _HDR.pack(0x80 | (0x20 if padding else 0) | count, packet_type, (body_len + 4) // 4 - 1)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def serialize_packet(packet: RtcpPacket) -> bytes:
    """Wire bytes of one RTCP packet."""
    if isinstance(packet, SenderReport | ReceiverReport):
        if len(packet.reports) > MAX_REPORTS:
            raise ValueError("at most 31 report blocks per SR/RR")
        blocks = b"".join(b.serialize() for b in packet.reports)
        if isinstance(packet, SenderReport):
            info = _SR_INFO.pack(
                packet.ssrc & 0xFFFFFFFF, (packet.ntp >> 32) & 0xFFFFFFFF, packet.ntp & 0xFFFFFFFF,
                packet.rtp_timestamp & 0xFFFFFFFF, packet.packet_count & 0xFFFFFFFF,
                packet.octet_count & 0xFFFFFFFF,
            )
            body = info + blocks
            return _header(len(packet.reports), RTCP_SR, len(body)) + body
        body = struct.pack("!I", packet.ssrc & 0xFFFFFFFF) + blocks
        return _header(len(packet.reports), RTCP_RR, len(body)) + body
    if isinstance(packet, Sdes):
        parts = []
        for ssrc, items in packet.chunks:
            chunk = struct.pack("!I", ssrc & 0xFFFFFFFF)
            for kind, value in items:
                chunk += bytes([kind, len(value[:255])]) + value[:255]
            # §6.5: the item list ends with a null octet, then pads to a 32-bit boundary.
            chunk += b"\x00"
            parts.append(_pad4(chunk))
        body = b"".join(parts)
        return _header(len(packet.chunks), RTCP_SDES, len(body)) + body
    if isinstance(packet, Bye):
        body = b"".join(struct.pack("!I", s & 0xFFFFFFFF) for s in packet.ssrcs)
        if packet.reason:
            reason = packet.reason.encode()[:255]
            body = _pad4(body + bytes([len(reason)]) + reason)
        return _header(len(packet.ssrcs), RTCP_BYE, len(body)) + body
    body = _pad4(packet.body)
    return _header(0, packet.packet_type, len(body)) + body


def build_compound(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """One compound packet (§6.1): must start with an SR or RR and should carry an SDES CNAME."""
    if not packets or not isinstance(packets[0], SenderReport | ReceiverReport):
        raise ValueError("a compound RTCP packet starts with an SR or RR (RFC 3550 §6.1)")
    return b"".join(serialize_packet(p) for p in packets)


# -- parse -------------------------------------------------------------------------------------
def _blocks(data: bytes, offset: int, count: int, end: int) -> tuple[ReportBlock, ...]:
    if offset + 24 * count > end:
        raise RtcpError("RTCP report blocks run past the packet")
    return tuple(ReportBlock.parse(data, offset + 24 * i) for i in range(count))


def _parse_one(data: bytes, start: int, end: int, count: int, ptype: int) -> RtcpPacket:
    body = start + 4
    if ptype == RTCP_SR:
        if end - body < 24:
            raise RtcpError("SR shorter than its sender info")
        ssrc, msw, lsw, rtp_ts, packets, octets = _SR_INFO.unpack_from(data, body)
        return SenderReport(ssrc, (msw << 32) | lsw, rtp_ts, packets, octets, _blocks(data, body + 24, count, end))
    if ptype == RTCP_RR:
        if end - body < 4:
            raise RtcpError("RR without its SSRC")
        (ssrc,) = struct.unpack_from("!I", data, body)
        return ReceiverReport(ssrc, _blocks(data, body + 4, count, end))
    if ptype == RTCP_SDES:
        chunks = []
        pos = body
        for _ in range(count):
            if pos + 4 > end:
                raise RtcpError("SDES chunk truncated")
            (ssrc,) = struct.unpack_from("!I", data, pos)
            pos += 4
            items = []
            while True:
                if pos >= end:
                    raise RtcpError("SDES item list not terminated")
                kind = data[pos]
                if kind == 0:
                    pos += 1
                    pos += -(pos - body) % 4  # pad to the next 32-bit boundary of the chunk list
                    break
                if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                    raise RtcpError("SDES item truncated")
                length = data[pos + 1]
                items.append((kind, data[pos + 2 : pos + 2 + length]))
                pos += 2 + length
            chunks.append((ssrc, tuple(items)))
        return Sdes(tuple(chunks))
    if ptype == RTCP_BYE:
        if body + 4 * count > end:
            raise RtcpError("BYE SSRC list truncated")
        ssrcs = struct.unpack_from(f"!{count}I", data, body) if count else ()
        pos = body + 4 * count
        reason = ""
        if pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise RtcpError("BYE reason truncated")
            reason = data[pos + 1 : pos + 1 + length].decode("utf-8", "replace")
        return Bye(tuple(ssrcs), reason)
    return OtherRtcp(ptype, data[body:end])


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet with the App. A.2 validity checks: version 2 throughout,
    the first packet an SR or RR without padding, padding only in the last packet, and the
    lengths adding up to the datagram's size. Raises :class:`RtcpError`."""
    data = bytes(data)
    size = len(data)
    if size < 8 or size % 4:
        raise RtcpError(f"RTCP datagram of {size} bytes (need a multiple of 4, at least 8)")
    if (data[0] & 0xE0) != 0x80 or data[1] not in (RTCP_SR, RTCP_RR):
        raise RtcpError("RTCP compound must start with an unpadded version-2 SR or RR")
    out: list[RtcpPacket] = []
    pos = 0
    while pos < size:
        if size - pos < 4:
            raise RtcpError("RTCP header truncated")
        b0, ptype, length = _HDR.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtcpError("RTCP packet of version other than 2 inside the compound")
        end = pos + 4 * (length + 1)
        if end > size:
            raise RtcpError("RTCP packet length runs past the datagram")
        stop = end
        if b0 & 0x20:
            if end != size:
                raise RtcpError("RTCP padding before the last packet")
            pad = data[end - 1]
            if pad == 0 or pad > end - pos - 4:
                raise RtcpError("RTCP padding length is invalid")
            stop = end - pad
        out.append(_parse_one(data, pos, stop, b0 & 0x1F, ptype))
        pos = end
    return out


# -- interval ----------------------------------------------------------------------------------
def rtcp_interval(
    *,
    members: int,
    senders: int,
    rtcp_bw: float,
    we_sent: bool,
    avg_rtcp_size: float,
    initial: bool,
    rand: float,
    tmin: float = 5.0,
) -> float:
    """App. A.7 ``rtcp_interval``: seconds until the next report. ``rtcp_bw`` is the RTCP share
    of the session bandwidth in octets/s (§6.2: 5 %); ``rand`` is uniform in [0, 1) from the
    caller; ``tmin`` the minimum (5 s, halved for the first report)."""
    if initial:
        tmin /= 2
    n = max(1, members)
    bw = rtcp_bw
    # §6.2: a quarter of the RTCP bandwidth goes to the senders when they are few.
    if 0 < senders <= members * 0.25:
        if we_sent:
            bw *= 0.25
            n = senders
        else:
            bw *= 0.75
            n -= senders
    t = max(avg_rtcp_size * n / bw if bw > 0 else tmin, tmin)
    return t * (rand + 0.5) / COMPENSATION
