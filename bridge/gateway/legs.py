"""[pure] The seams of a bridged call: its SIP side (the `SipLeg` and `SipTrunk` protocols and the
leg's events LegRinging, LegAnswered, LegDtmf, LegEnded, which the pure call core call_core.py
takes as input) and its app side (`AppLeg`: the WebRTC leg, bridge/net/webrtc.py, which trades
8 kHz PCM frames with the `AudioPort` it was made with). Definitions only: nothing here runs I/O.

`BridgeCall` (bridge/gateway/call.py) talks only to these. The implementation is
`bridge/gateway/pyvoip/`, the one module that imports pyVoIP; a replacement leg would plug in
here without touching `BridgeCall`.

Audio crosses this seam as 16-bit signed little-endian PCM, mono, 8 kHz, in 20 ms frames
(160 samples, 320 bytes). Never 8-bit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bridge.sip.causes import cause_for_sip
from jego_call.call.reasons import EndReason, from_sip

if TYPE_CHECKING:
    import asyncio

FRAME_SAMPLES = 160
FRAME_BYTES = 2 * FRAME_SAMPLES
SAMPLE_RATE = 8000


@dataclass(frozen=True, slots=True)
class LegRinging:
    """180 or 183 arrived; `early_media` is true when RTP from the far end has started (183 + SDP)."""

    sip_code: int
    early_media: bool


@dataclass(frozen=True, slots=True)
class LegAnswered:
    """200 OK arrived and was ACKed (outbound), or we answered (inbound)."""

    codec: str  # "PCMU" or "PCMA"


@dataclass(frozen=True, slots=True)
class LegEnded:
    """The leg is over. `sip_code`/`q850_cause` come from the final response or the BYE's Reason."""

    reason: EndReason         # from_sip(code, cause) for the far end's endings; ours say why
    sip_code: int | None = None
    q850_cause: int | None = None
    remote: bool = True       # the far end ended it (False: we hung up or cancelled)
    detail: str = ""


def refused(sip_code: int, cause: int | None, *, detail: str = "") -> LegEnded:
    """The LegEnded of a final failure response to our INVITE, one rule for every SipLeg: the
    verdict is `from_sip(code, cause)` with the cause its Reason header (RFC 3326) carried, and by
    the code alone when none came (a bare 480 is no_answer, never switched_off: only 480 + cause
    20 says that). The cause recorded is the header's, else the code's RFC 3398 §7.2.4.1 default."""
    return LegEnded(from_sip(sip_code, cause), sip_code, cause if cause is not None else cause_for_sip(sip_code),
                    remote=True, detail=detail)


@dataclass(frozen=True, slots=True)
class LegDtmf:
    """An RFC 4733 digit received from the far end."""

    digit: str


LegEvent = LegRinging | LegAnswered | LegEnded | LegDtmf


class SipLeg(Protocol):
    """One SIP call. Events arrive on `events`, in order, ending with exactly one LegEnded."""

    call_id: str
    events: asyncio.Queue[LegEvent]

    @property
    def codec(self) -> str | None:
        """The negotiated G.711 codec once known ("PCMU"/"PCMA")."""

    async def dial(self, number: str, caller_id: str | None = None) -> None:
        """Send the INVITE to E.164 `number` (digest auth handled inside); returns once sent."""

    async def answer(self) -> None:
        """Answer an inbound call (200 OK); LegAnswered follows."""

    async def reject(self, sip_code: int, q850_cause: int | None = None) -> None:
        """Refuse an inbound call with a final response (e.g. 480, 486); LegEnded follows."""

    async def hangup(self, q850_cause: int = 16, reason: str | None = None) -> None:
        """BYE when answered, CANCEL while ringing; idempotent; LegEnded(remote=False) follows.
        `reason` is the text of the Reason header (RFC 3326), e.g. "credit_exhausted"."""

    def send_audio(self, pcm: bytes) -> None:
        """Queue one 20 ms frame (320 bytes) to send; never blocks, the queue is bounded (oldest dropped)."""

    def read_audio(self) -> bytes | None:
        """The next 20 ms frame received (320 bytes), or None when nothing is due; never blocks."""

    async def send_dtmf(self, digits: str) -> None:
        """Send `digits` as RFC 4733 telephone-events, one after the other."""


InboundHandler = Callable[[SipLeg, str, str], Awaitable[None]]
"""Called for a new inbound call with (leg, from_number, to_number), both E.164 where possible."""


class SipTrunk(Protocol):
    """The bridge worker's SIP user agent on the carrier trunk: registration and call legs."""

    async def start(self) -> None:
        """Bind, register (unless in trunk mode) and start receiving; raises if registration fails."""

    async def stop(self) -> None:
        """Hang up every leg, unregister, release sockets and threads."""

    def new_leg(self, call_id: str) -> SipLeg:
        """A fresh outbound leg; call `dial` on it."""

    def set_inbound_handler(self, handler: InboundHandler) -> None:
        """Where inbound INVITEs go; without one they get 480."""

    @property
    def registered(self) -> bool:
        """True once the trunk accepted our REGISTER (always True in trunk mode)."""


class AppLeg(Protocol):
    """The app's media leg (WebRTC). It was made with an `AudioPort` (bridge/rtp/media.py) that it
    asks once per 20 ms slot: the app's audio in, the phone's out, both 8 kHz PCM16 frames. It
    reports aiortc's connectionState (new, connecting, connected, failed, closed) to the callback
    it was made with."""

    async def accept_offer(self, sdp: str) -> str:
        """Apply the app's offer; returns the answer SDP."""

    async def create_offer(self) -> str:
        """Our offer SDP (phone -> app calls); then `set_answer`."""

    async def set_answer(self, sdp: str) -> None:
        """Apply the app's answer."""

    async def add_ice_candidate(self, candidate: dict[str, Any] | None) -> None:
        """A trickled candidate from the app (None or "": end of candidates)."""

    def stats(self) -> dict[str, Any]:
        """codec, packets_sent/received/lost, frames_on_time, max_late_ms, jitter_ms, rtt_ms ..."""

    async def close(self) -> None:
        """End the leg (RTCP BYE, DTLS and ICE closed); idempotent."""
