"""RFC 4733 telephone-event: payload codec, sender packet sequence, receiver de-duplication."""

from __future__ import annotations

import random

import pytest

from bridge.rtp.dtmf import (
    DtmfError,
    DtmfReceiver,
    TelephoneEvent,
    digit_to_event,
    dtmf_packets,
    event_name,
)
from bridge.rtp.packet import RtpPacket
from bridge.rtp.session import RtpSender

TE_PT = 101


def test_payload_wire_format() -> None:
    # Event 5, E=1, volume 10, duration 800: 05 8a 03 20 (RFC 4733 §2.3 layout).
    wire = bytes.fromhex("058a0320")
    te = TelephoneEvent.parse(wire)
    assert te == TelephoneEvent(event=5, end=True, volume=10, duration=800)
    assert te.serialize() == wire
    with pytest.raises(DtmfError):
        TelephoneEvent.parse(b"\x05\x8a\x03")


def test_event_names() -> None:
    assert [event_name(i) for i in range(16)] == list("0123456789*#ABCD")
    assert event_name(16) == "flash" and event_name(200) == "event-200"
    assert digit_to_event("#") == 11 and digit_to_event("d") == 15
    with pytest.raises(DtmfError):
        digit_to_event("X")


def test_sender_sequence_shape() -> None:
    pkts = dtmf_packets("7", duration_ms=100, volume=10)
    events = [TelephoneEvent.parse(p.payload) for p in pkts]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert [p.marker for p in pkts] == [True] + [False] * 6
    assert {e.event for e in events} == {7}


def _wire_stream(digits: str, seed_seq: int = 65530) -> list[bytes]:
    """Digits as wire datagrams: one RtpSender, the same timestamp within each event."""
    tx = RtpSender(payload_type=0, ssrc=0xCAFE, sequence_number=seed_seq, timestamp=(1 << 32) - 1000)
    out: list[bytes] = []
    for d in digits:
        start = tx.timestamp
        for p in dtmf_packets(d):
            out.append(tx.event_packet(p.payload, TE_PT, start, p.marker).serialize())
            tx.skip(160)
        for _ in range(3):  # inter-digit audio
            out.append(tx.packet(b"\xff" * 160, 160).serialize())
    return out


def _receive(datagrams: list[bytes]) -> DtmfReceiver:
    rx = DtmfReceiver()
    for d in datagrams:
        pkt = RtpPacket.parse(d)
        if pkt.payload_type == TE_PT:
            rx.receive(pkt.payload, pkt.timestamp, ssrc=pkt.ssrc, marker=pkt.marker)
    return rx


def test_round_trip_all_digits_exactly_once() -> None:
    rx = _receive(_wire_stream("0123456789*#"))
    assert "".join(rx.digits) == "0123456789*#"
    assert all(e.ended and e.duration == 800 for e in rx.events)


def test_repeated_digit_counts_twice() -> None:
    assert "".join(_receive(_wire_stream("55#")).digits) == "55#"


def test_lost_first_packets_and_reordering_and_duplicates() -> None:
    wire = _wire_stream("19")
    rnd = random.Random(1)
    # lose the marker packet of each event, duplicate everything, shuffle locally (depth 3)
    kept = [d for d in wire if not (RtpPacket.parse(d).marker and RtpPacket.parse(d).payload_type == TE_PT)]
    dup = [d for d in kept for _ in range(2)]
    for i in range(0, len(dup) - 3, 3):
        chunk = dup[i : i + 3]
        rnd.shuffle(chunk)
        dup[i : i + 3] = chunk
    assert "".join(_receive(dup).digits) == "19"


def test_event_16_flash_and_garbage_do_not_crash() -> None:
    rx = DtmfReceiver()
    ev = rx.receive(TelephoneEvent(16, False, 10, 160).serialize(), 1000)
    assert ev is not None and ev.name == "flash" and not ev.is_digit
    assert rx.receive(TelephoneEvent(255, True, 63, 0xFFFF).serialize(), 2000) is not None
    assert rx.receive(b"\x01", 3000) is None and rx.malformed == 1
    assert rx.digits == [] and len(rx.events) == 2
