"""RTCP packets (bridge/rtp/rtcp.py, RFC 3550 §6): build/parse round trips, App. A.2 validity
checks, NTP fixed point, RTT arithmetic and the App. A.7 interval."""

from __future__ import annotations

import pytest

from bridge.rtp.rtcp import (
    COMPENSATION,
    Bye,
    OtherRtcp,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    Sdes,
    SenderReport,
    build_compound,
    ntp_from_seconds,
    ntp_middle,
    parse_compound,
    round_trip,
    rtcp_interval,
    serialize_packet,
)


def test_compound_round_trip() -> None:
    blocks = (ReportBlock(0x11111111, 25, -3, 0x0001FFFF, 77, 0xABCD1234, 65536),
              ReportBlock(0x22222222, 255, 0x7FFFFF, 5, 0, 0, 0))
    sr = SenderReport(0xCAFEBABE, ntp_from_seconds(3_900_000_000.25), 123456, 50, 8000, blocks)
    packets: list[RtcpPacket] = [sr, Sdes.cname(0xCAFEBABE, "bridge@127.0.0.1"), Bye((0xCAFEBABE,), "call ended")]
    data = build_compound(packets)
    assert len(data) % 4 == 0 and data[1] == 200
    back = parse_compound(data)
    assert back == packets
    sr_back, sdes_back = back[0], back[1]
    assert isinstance(sdes_back, Sdes) and sdes_back.cname_of(0xCAFEBABE) == "bridge@127.0.0.1"
    assert isinstance(sr_back, SenderReport)
    assert blocks[0].fraction == 25 / 256 and sr_back.reports[0].cumulative_lost == -3
    rr = ReceiverReport(7, ())
    assert parse_compound(build_compound([rr, OtherRtcp(204, b"name1234")])) == [rr, OtherRtcp(204, b"name1234")]
    # header length field: words minus one (SR with 2 blocks: 1 + 6 + 2 * 6 = 19 words -> 18)
    assert int.from_bytes(serialize_packet(sr)[2:4], "big") == 18


@pytest.mark.parametrize("data", [
    b"",
    bytes(8),                                             # version 0
    bytes.fromhex("80ca0001") + bytes(4),                 # SDES first (must be SR/RR)
    bytes.fromhex("a0c90001") + bytes(4),                 # padding on the first packet
    bytes.fromhex("81c90001") + bytes(4),                 # RR claims a block it does not have
    bytes.fromhex("80c90005") + bytes(4),                 # length past the datagram
    bytes.fromhex("80c90001") + bytes(5),                 # not a multiple of 4
    bytes.fromhex("80c90001") + bytes(4) + bytes.fromhex("81ca0001") + b"\x00\x00\x00\x01",  # SDES chunk cut
    bytes.fromhex("80c90001") + bytes(4) + bytes.fromhex("a1cb0001") + bytes.fromhex("00000009"),  # pad 9 > size
])
def test_invalid_compounds_are_refused(data: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_compound(data)


def test_build_refuses_a_compound_without_a_report_first() -> None:
    with pytest.raises(ValueError, match="starts with an SR or RR"):
        build_compound([Sdes.cname(1, "x")])


def test_ntp_and_round_trip_arithmetic() -> None:
    ntp = ntp_from_seconds(1.5)
    assert ntp == (1 << 32) | (1 << 31) and ntp_middle(ntp) == (1 << 16) | (1 << 15)
    sent = ntp_from_seconds(1000.0)
    block = ReportBlock(1, lsr=ntp_middle(sent), dlsr=int(0.5 * 65536))
    assert round_trip(ntp_from_seconds(1000.6), block) == pytest.approx(0.1, abs=2 / 65536)
    assert round_trip(ntp_from_seconds(1000.4), block) is None  # negative: reporter's error
    assert round_trip(ntp_from_seconds(1000.6), ReportBlock(1, lsr=0)) is None
    # the 16.16 middle word wraps every 65536 s: the difference is still right
    sent = ntp_from_seconds(65535.9)
    block = ReportBlock(1, lsr=ntp_middle(sent), dlsr=0)
    assert round_trip(ntp_from_seconds(65536.2), block) == pytest.approx(0.3, abs=2 / 65536)


def test_interval_a7() -> None:
    # two members: the 5 s minimum rules (halved for the first report), times [0.5, 1.5) / (e - 3/2)
    t = rtcp_interval(members=2, senders=2, rtcp_bw=500, we_sent=True, avg_rtcp_size=100, initial=False, rand=0.5)
    assert t == pytest.approx(5.0 / COMPENSATION)
    first = rtcp_interval(members=2, senders=2, rtcp_bw=500, we_sent=True, avg_rtcp_size=100, initial=True, rand=0.0)
    assert first == pytest.approx(2.5 * 0.5 / COMPENSATION)
    # many members: bandwidth-bound (receivers share 75 % of it)
    big = rtcp_interval(members=1000, senders=10, rtcp_bw=500, we_sent=False, avg_rtcp_size=100, initial=False, rand=0.5)
    assert big == pytest.approx(100 * 990 / (500 * 0.75) / COMPENSATION)
