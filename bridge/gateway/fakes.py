"""`FakeLeg`: a scriptable `SipLeg` (legs.py) for tests and benchmarks, with no SIP and no sockets.

    leg = FakeLeg("c1", on_dial=[LegRinging(183, True), LegAnswered("PCMU")])
    call = BridgeCall("c1", "out", leg, send, settings)
    ...
    leg.feed_audio(pcm)            # the phone "speaks": BridgeCall reads it with read_audio()
    leg.sent_audio                 # what the app said, as 320-byte 8 kHz PCM16 frames
    leg.remote_hangup(16)          # the phone hangs up (LegEnded, remote=True)
    leg.calls                      # [("dial", ("+86...",)), ("send_dtmf", ("12",)), ("hangup", (16,))]

It behaves like the pyVoIP leg where the bridge can tell: events arrive on `events` in order
and end with exactly one LegEnded; `hangup` is idempotent, ends an idle or answered leg at
once (LegEnded remote=False) and, while ringing, sends a "CANCEL" that ends the leg when
`cancel_ends` is true (else the test decides: `answer_crossing_cancel()`, `end(...)`); `answer`
of an inbound leg emits LegAnswered, `reject` ends it with that final response. Set
`dial_error` / `answer_error` to make those raise.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any

from jego_call.call.reasons import EndReason, from_sip

from .legs import FRAME_BYTES, LegAnswered, LegDtmf, LegEnded, LegEvent, LegRinging, refused


class FakeLeg:
    """A SipLeg whose far end is the test. See the module doc."""

    def __init__(self, call_id: str = "fake", *, inbound: bool = False, codec: str = "PCMU",
                 on_dial: Iterable[LegEvent] = (), cancel_ends: bool = True,
                 max_audio_frames: int = 1000) -> None:
        self.call_id = call_id
        self.events: asyncio.Queue[LegEvent] = asyncio.Queue()
        self.inbound = inbound
        self.state = "offered" if inbound else "idle"  # idle calling ringing answered cancelling ended | offered
        self.on_dial = list(on_dial)
        self.cancel_ends = cancel_ends
        self.dial_error: Exception | None = None
        self.answer_error: Exception | None = None
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.sent_audio: collections.deque[bytes] = collections.deque(maxlen=max_audio_frames)
        self.frames_sent = 0
        self.frames_read = 0
        self.dtmf_sent = ""
        self.dialled: str | None = None
        self._codec = codec
        self._negotiated: str | None = None
        self._incoming: collections.deque[bytes] = collections.deque()
        self._ended = False

    # --- SipLeg ------------------------------------------------------------------------------
    @property
    def codec(self) -> str | None:
        return self._negotiated

    async def dial(self, number: str, caller_id: str | None = None) -> None:
        self.calls.append(("dial", (number,)))
        if self.dial_error is not None:
            raise self.dial_error
        if self.inbound or self.state != "idle":
            raise RuntimeError(f"dial() on a leg in state {self.state}")
        self.dialled = number
        self.state = "calling"
        for ev in self.on_dial:
            self.emit(ev)

    async def answer(self) -> None:
        self.calls.append(("answer", ()))
        if self.answer_error is not None:
            raise self.answer_error
        if not self.inbound or self.state != "offered":
            return  # e.g. the caller has cancelled: never answered
        self.state = "answered"
        self._negotiated = self._codec
        self.emit(LegAnswered(self._codec))

    async def reject(self, sip_code: int, q850_cause: int | None = None) -> None:
        self.calls.append(("reject", (sip_code, q850_cause)))
        if not self.inbound or self.state != "offered":
            return
        self.end(LegEnded(from_sip(sip_code, q850_cause), sip_code, q850_cause, remote=False))

    async def hangup(self, q850_cause: int = 16, reason: str | None = None) -> None:
        self.calls.append(("hangup", (q850_cause,) if reason is None else (q850_cause, reason)))
        if self._ended or self.state in ("cancelling", "ended"):
            return
        if self.state in ("idle", "answered"):
            self.end(LegEnded(EndReason.HANGUP, None, q850_cause, remote=False))
        elif self.state == "offered":
            await self.reject(480, q850_cause)
        else:  # calling / ringing: CANCEL (RFC 3261 §9.1)
            self.state = "cancelling"
            if self.cancel_ends:
                self.end(LegEnded(EndReason.CANCELLED, 487, q850_cause, remote=False))

    def send_audio(self, pcm: bytes) -> None:
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"send_audio needs {FRAME_BYTES} bytes, got {len(pcm)}")
        self.frames_sent += 1
        self.sent_audio.append(bytes(pcm))

    def read_audio(self) -> bytes | None:
        if not self._incoming:
            return None
        self.frames_read += 1
        return self._incoming.popleft()

    async def send_dtmf(self, digits: str) -> None:
        self.calls.append(("send_dtmf", (digits,)))
        self.dtmf_sent += digits

    def stats(self) -> dict[str, Any]:
        return {"tx_packets": self.frames_sent, "rx_packets": self.frames_read}

    # --- the far end, scripted by the test ------------------------------------------------------
    def emit(self, ev: LegEvent) -> None:
        """Deliver `ev` to the bridge (nothing after the one LegEnded)."""
        if self._ended:
            return
        if isinstance(ev, LegEnded):
            self._ended = True
            self.state = "ended"
        elif isinstance(ev, LegAnswered):
            self.state = "answered"
            self._negotiated = ev.codec
        elif isinstance(ev, LegRinging) and self.state == "calling":
            self.state = "ringing"
        self.events.put_nowait(ev)

    def ring(self, sip_code: int = 180, early_media: bool = False) -> None:
        self.emit(LegRinging(sip_code, early_media))

    def remote_answer(self, codec: str | None = None) -> None:
        self.emit(LegAnswered(codec or self._codec))

    def remote_dtmf(self, digit: str) -> None:
        self.emit(LegDtmf(digit))

    def remote_hangup(self, q850_cause: int = 16) -> None:
        """A BYE from the phone (or, for an inbound leg that rings, the caller's CANCEL)."""
        if self.state == "offered":
            self.end(LegEnded(EndReason.CANCELLED, 487, q850_cause, remote=True))
        else:
            self.end(LegEnded(from_sip(0, q850_cause), None, q850_cause, remote=True))

    def remote_reject(self, sip_code: int, q850_cause: int | None = None) -> None:
        """A final failure response to our INVITE (486, 480, 404 ...)."""
        self.end(refused(sip_code, q850_cause))

    def answer_crossing_cancel(self) -> None:
        """The 200 OK that crossed our CANCEL: the leg is up after all (LegAnswered)."""
        self.state = "answered"
        self._negotiated = self._codec
        self.events.put_nowait(LegAnswered(self._codec))

    def end(self, ev: LegEnded) -> None:
        self.emit(ev)

    def feed_audio(self, pcm: bytes) -> None:
        """One 20 ms frame from the phone, for `read_audio`."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"feed_audio needs {FRAME_BYTES} bytes, got {len(pcm)}")
        self._incoming.append(bytes(pcm))

    @property
    def ended(self) -> bool:
        return self._ended
