"""RFC 2198 audio redundancy ("red/48000/2", fmtp ``111/111``: Opus carried with copies of the
frames before it), sans I/O.

Receive: ``blocks = parse_red(payload)`` gives the blocks oldest first, each ``RedBlock(pt,
ts_offset, data)``; the last one is the primary (``ts_offset`` 0). A redundant block with
``ts_offset = k * frame`` is the frame of the packet ``k`` sequence numbers before (the
sender's 20 ms frames): ``bridge.rtp.session.JitterBuffer.push_redundant`` fills a lost slot
with it. Send: ``enc = RedEncoder(pt=111, distance=2)``; ``enc.wrap(payload, timestamp)`` per
frame returns the RED payload with the previous ``distance`` frames; ``enc.set_distance(n)``
changes the depth on the fly (the history is kept: a deeper next packet already carries them).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MAX_OFFSET = 0x3FFF  # 14-bit timestamp offset (RFC 2198 §3)
MAX_BLOCK = 0x3FF  # 10-bit block length
MAX_DISTANCE = 8  # frames of history kept (the deepest RED a sender here may be set to)


class RedError(ValueError):
    """A RED payload whose headers do not fit it (RFC 2198 §3)."""


@dataclass(frozen=True, slots=True)
class RedBlock:
    payload_type: int
    ts_offset: int  # how much earlier than the packet's timestamp this block's frame starts
    data: bytes


def parse_red(payload: bytes) -> list[RedBlock]:
    """RFC 2198 §3: 4-byte headers (F=1) for each redundant block, a 1-byte header (F=0) for the
    primary, then the blocks in that order. Raises RedError on a truncated or inconsistent payload."""
    heads: list[tuple[int, int, int]] = []
    at = 0
    n = len(payload)
    while True:
        if at >= n:
            raise RedError("RED payload ends inside its headers")
        b = payload[at]
        if not b & 0x80:
            heads.append((b & 0x7F, 0, -1))
            at += 1
            break
        if at + 4 > n:
            raise RedError("RED block header truncated")
        word = int.from_bytes(payload[at + 1:at + 4], "big")
        heads.append((b & 0x7F, word >> 10, word & MAX_BLOCK))
        at += 4
    out: list[RedBlock] = []
    for pt, offset, length in heads:
        if length < 0:
            length = n - at  # the primary takes the rest
        if at + length > n:
            raise RedError("RED block longer than the payload")
        out.append(RedBlock(pt, offset, payload[at:at + length]))
        at += length
    return out


def build_red(primary_pt: int, primary: bytes, redundant: list[RedBlock]) -> bytes:
    """The RED payload: ``redundant`` blocks (oldest first) then the primary."""
    head = bytearray()
    body = bytearray()
    for blk in redundant:
        if not 0 <= blk.ts_offset <= MAX_OFFSET or len(blk.data) > MAX_BLOCK:
            continue  # cannot be expressed: leave it out (RFC 2198 §3 field widths)
        head.append(0x80 | (blk.payload_type & 0x7F))
        head += ((blk.ts_offset << 10) | len(blk.data)).to_bytes(3, "big")
        body += blk.data
    head.append(primary_pt & 0x7F)
    return bytes(head + body + primary)


class RedEncoder:
    """Wraps each encoded frame with copies of the ``distance`` frames before it (as Chromium
    does for Opus, RFC 2198 with the same payload type inside)."""

    def __init__(self, payload_type: int, distance: int = 2) -> None:
        self.payload_type = payload_type
        self.distance = 0
        self.set_distance(distance)
        # the last MAX_DISTANCE frames, whatever the depth: `set_distance` deeper takes effect at once
        self._past: deque[tuple[int, bytes]] = deque(maxlen=MAX_DISTANCE)

    def set_distance(self, distance: int) -> None:
        """Carry the previous ``distance`` frames from the next `wrap` on (0: the primary alone).
        The history is kept, so going from 2 to 3 sends 3 copies in the very next packet."""
        if not 0 <= distance <= MAX_DISTANCE:
            raise ValueError(f"RED distance must be 0..{MAX_DISTANCE}")
        self.distance = distance

    def wrap(self, payload: bytes, timestamp: int) -> bytes:
        n = self.distance
        past = list(self._past)[-n:] if n else []
        blocks = [RedBlock(self.payload_type, (timestamp - ts) & 0xFFFFFFFF, data) for ts, data in past]
        out = build_red(self.payload_type, payload, blocks)
        self._past.append((timestamp, payload))
        return out

    def reset(self) -> None:
        """After a gap in sending (the old frames would be older than the timestamp says)."""
        self._past.clear()


__all__ = ["MAX_DISTANCE", "RedBlock", "RedEncoder", "RedError", "build_red", "parse_red"]
