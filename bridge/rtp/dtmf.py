"""RFC 4733 telephone-event (DTMF over RTP): payload codec, a receiver that turns the packet
stream into one digit per event, and a sender that generates an event's packet sequence.

Receive: ``rx = DtmfReceiver()``; for each telephone-event packet call
``rx.receive(packet.payload, packet.timestamp, ssrc=packet.ssrc)``; read ``rx.digits``.
Send: for each item of ``dtmf_packets("5")`` call ``RtpSender.event_packet(item.payload,
te_pt, start_ts, item.marker)`` once per packet interval, all with the same ``start_ts``.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from dataclasses import dataclass

# RFC 4733 §3.2 Table 3: events 0-15 are the DTMF digits; 16 is "flash" (hook flash).
DTMF_DIGITS = "0123456789*#ABCD"
EVENT_FLASH = 16
_PAYLOAD = struct.Struct("!BBH")
MAX_DURATION = 0xFFFF


class DtmfError(ValueError):
    """A telephone-event payload or digit that cannot be used."""


def digit_to_event(digit: str) -> int:
    """'0'-'9', '*', '#', 'A'-'D' (case-insensitive) -> event code 0-15."""
    idx = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if idx < 0:
        raise DtmfError(f"not a DTMF digit: {digit!r}")
    return idx


def event_name(event: int) -> str:
    """Event code -> digit for 0-15, 'flash' for 16, 'event-N' for anything else."""
    if 0 <= event < len(DTMF_DIGITS):
        return DTMF_DIGITS[event]
    if event == EVENT_FLASH:
        return "flash"
    return f"event-{event}"


@dataclass(slots=True, frozen=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 payload: event, E bit, volume (0..63, -dBm0), duration (ts units)."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Decode the first 4 bytes; raise :class:`DtmfError` if shorter."""
        if len(payload) < 4:
            raise DtmfError(f"telephone-event payload of {len(payload)} bytes (need 4)")
        event, flags, duration = _PAYLOAD.unpack_from(payload, 0)
        # §2.3: E is the top bit, R (reserved) the next, then a 6-bit volume.
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    def serialize(self) -> bytes:
        if not 0 <= self.event <= 255 or not 0 <= self.volume <= 63 or not 0 <= self.duration <= MAX_DURATION:
            raise DtmfError("telephone-event field out of range")
        return _PAYLOAD.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @property
    def name(self) -> str:
        return event_name(self.event)


@dataclass(slots=True)
class DtmfEvent:
    """A detected event: ``name`` is the digit (or 'flash'), ``duration`` grows as packets arrive."""

    event: int
    name: str
    timestamp: int
    ssrc: int
    duration: int
    volume: int
    ended: bool = False

    @property
    def is_digit(self) -> bool:
        return 0 <= self.event < len(DTMF_DIGITS)


class DtmfReceiver:
    """Turns telephone-event packets into exactly one :class:`DtmfEvent` per event.

    An event is identified by (SSRC, RTP timestamp, event code): all packets of one event,
    including its three end packets, share the start timestamp (RFC 4733 §2.5.1.2-§2.5.1.4),
    so repeats, retransmitted end packets and reordered stragglers are recognised and absorbed.
    The event is reported on its first packet, whether or not that packet has the marker bit.
    """

    def __init__(self, memory: int = 64) -> None:
        self.memory = memory
        self.events: list[DtmfEvent] = []
        self.malformed = 0
        self._seen: OrderedDict[tuple[int, int, int], DtmfEvent] = OrderedDict()

    def receive(
        self, payload: bytes, timestamp: int, *, ssrc: int = 0, marker: bool = False
    ) -> DtmfEvent | None:
        """Feed one packet; return the new event if this packet starts one, else None."""
        del marker  # the marker is advisory: a lost first packet must not lose the digit
        try:
            te = TelephoneEvent.parse(payload)
        except DtmfError:
            self.malformed += 1
            return None
        key = (ssrc, timestamp & 0xFFFFFFFF, te.event)
        known = self._seen.get(key)
        if known is not None:
            known.duration = max(known.duration, te.duration)
            known.ended = known.ended or te.end
            return None
        ev = DtmfEvent(
            event=te.event,
            name=te.name,
            timestamp=timestamp & 0xFFFFFFFF,
            ssrc=ssrc,
            duration=te.duration,
            volume=te.volume,
            ended=te.end,
        )
        self._seen[key] = ev
        while len(self._seen) > self.memory:
            self._seen.popitem(last=False)
        self.events.append(ev)
        return ev

    @property
    def digits(self) -> list[str]:
        """Detected DTMF digits (events 0-15) in arrival order."""
        return [e.name for e in self.events if e.is_digit]

    def reset(self) -> None:
        """Forget the events already seen (keeps ``events``)."""
        self._seen.clear()


@dataclass(slots=True, frozen=True)
class DtmfPacket:
    """One packet of an outgoing event: payload bytes, marker bit, whether it is an end packet."""

    payload: bytes
    marker: bool
    end: bool


def dtmf_packets(
    digit: str | int,
    *,
    duration_ms: int = 100,
    volume: int = 10,
    packet_ms: int = 20,
    clock_rate: int = 8000,
    end_repeats: int = 3,
) -> list[DtmfPacket]:
    """The packet sequence for one event (RFC 4733 §2.5.1): marker on the first packet, the
    duration field growing by one packet interval per packet, then ``end_repeats`` identical
    end packets carrying the final duration. Send one per packet interval, same timestamp."""
    event = digit_to_event(digit) if isinstance(digit, str) else digit
    step = clock_rate * packet_ms // 1000
    total = clock_rate * duration_ms // 1000
    if step <= 0 or total <= 0 or total > MAX_DURATION:
        raise DtmfError("duration/packet interval out of range")
    count = max(1, math.ceil(total / step))
    total = count * step if count * step <= MAX_DURATION else total
    out = [
        DtmfPacket(
            TelephoneEvent(event, False, volume, min(step * (i + 1), total)).serialize(), i == 0, False
        )
        for i in range(count - 1)
    ]
    end_payload = TelephoneEvent(event, True, volume, total).serialize()
    out += [DtmfPacket(end_payload, not out and i == 0, True) for i in range(max(1, end_repeats))]
    return out
