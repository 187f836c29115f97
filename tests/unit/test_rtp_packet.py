"""RtpPacket parse/serialise on real wire bytes (RFC 3550 §5.1) and RTCP demux (RFC 5761)."""

from __future__ import annotations

import struct

import pytest

from bridge.rtp.packet import (
    PacketKind,
    RtcpPacketError,
    RtpHeaderExtension,
    RtpPacket,
    RtpParseError,
    classify,
    is_rtcp,
    seq_delta,
    ts_delta,
)

# A PCMU packet as sent by sipp/pjsip: V=2, M=1, PT=0, seq 0x1234, ts 0x00000a0, ssrc 0xdeadbeef.
PCMU_WIRE = bytes.fromhex("80801234000000a0deadbeef") + b"\xff" * 160


def test_parse_plain_pcmu() -> None:
    pkt = RtpPacket.parse(PCMU_WIRE)
    assert (pkt.payload_type, pkt.marker, pkt.sequence_number) == (0, True, 0x1234)
    assert (pkt.timestamp, pkt.ssrc) == (0xA0, 0xDEADBEEF)
    assert pkt.payload == b"\xff" * 160 and pkt.csrc == [] and pkt.extension is None
    assert pkt.serialize() == PCMU_WIRE


def test_csrc_extension_padding_round_trip() -> None:
    # V=2 P=1 X=1 CC=2, PT 8, two CSRCs, one-word extension (profile 0xBEDE), 3 padding bytes.
    wire = (
        bytes([0x80 | 0x20 | 0x10 | 2, 8])
        + struct.pack("!HII", 7, 1234, 99)
        + struct.pack("!II", 11, 22)
        + struct.pack("!HH", 0xBEDE, 1)
        + b"\x10\xaa\x00\x00"
        + b"\xd5" * 4
        + b"\x00\x00\x03"
    )
    pkt = RtpPacket.parse(wire)
    assert pkt.csrc == [11, 22]
    assert pkt.extension == RtpHeaderExtension(0xBEDE, b"\x10\xaa\x00\x00")
    assert pkt.payload == b"\xd5" * 4 and pkt.padding_size == 3
    assert pkt.serialize() == wire


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"", "empty"),
        (b"\x80", "1 byte"),
        (PCMU_WIRE[:11], "11 bytes"),
        (bytes([0x40]) + PCMU_WIRE[1:], "version 1"),
        (bytes([0x00]) + PCMU_WIRE[1:], "version 0"),
        (bytes([0x8F]) + PCMU_WIRE[1:12] + b"\x00" * 20, "CC=15 truncated"),
        (bytes([0x90]) + PCMU_WIRE[1:12] + b"\xbe\xde", "extension header truncated"),
        (bytes([0x90]) + PCMU_WIRE[1:12] + b"\xbe\xde\x00\x05" + b"\x00" * 8, "extension data truncated"),
        (bytes([0xA0]) + PCMU_WIRE[1:12] + b"\x01\x02\x09", "padding > payload"),
        (bytes([0xA0]) + PCMU_WIRE[1:12] + b"\x01\x02\x00", "padding 0"),
    ],
)
def test_malformed_raise_parse_error_only(wire: bytes, why: str) -> None:
    with pytest.raises(RtpParseError):
        RtpPacket.parse(wire)


def test_rtcp_on_rtp_port_is_distinguished() -> None:
    # An RTCP receiver report (PT 201) with one report block header, as on a muxed port.
    rr = bytes.fromhex("81c90007deadbeef") + b"\x00" * 24
    assert is_rtcp(rr) and classify(rr) is PacketKind.RTCP
    with pytest.raises(RtcpPacketError):
        RtpPacket.parse(rr)
    for pt in (200, 201, 202, 203, 204):
        assert is_rtcp(bytes([0x80, pt]) + b"\x00" * 10)
    assert not is_rtcp(PCMU_WIRE)
    assert classify(PCMU_WIRE) is PacketKind.RTP
    assert classify(b"\x00\x01\x00\x00") is PacketKind.STUN
    assert classify(b"") is PacketKind.UNKNOWN


def test_fuzz_never_raises_anything_else() -> None:
    import random

    rnd = random.Random(4733)
    for _ in range(5000):
        data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 40)))
        try:
            RtpPacket.parse(data)
        except RtpParseError:
            pass


def test_serialise_masks_seq_and_ts() -> None:
    pkt = RtpPacket(payload_type=0, sequence_number=65536 + 5, timestamp=(1 << 32) + 7, ssrc=1)
    back = RtpPacket.parse(pkt.serialize())
    assert back.sequence_number == 5 and back.timestamp == 7


def test_wrap_arithmetic() -> None:
    assert seq_delta(0, 65535) == 1
    assert seq_delta(65535, 0) == -1
    assert ts_delta(10, 0xFFFFFFF0) == 26
