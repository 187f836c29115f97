"""`BridgeCall`: one phone call through the bridge, the app's WebRTC leg joined to one SIP leg.

The worker (bridge/gateway/worker.py) creates one per call and feeds it:

    call = BridgeCall(call_id, "out", leg, send, settings, ice_servers, on_done)
    await call.start_outbound(to_e164, offer_sdp)     # app -> phone: answer SDP, then INVITE
    await call.start_inbound(from_e164, username)     # phone -> app: offer SDP to the user
    await call.on_server(msg)                         # accept, ice, dtmf, call_ended, error, ...

It owns one `BridgeStateMachine` (an Enum and a transition table; an illegal move raises
InvalidTransition), one `MediaEndpoint` and one `SipLeg`, ends both exactly once, maps the
end reason across (SIP status + Q.850 cause <-> protocol end reason) and finally sends
`call_report`. Audio goes through `bridge.gateway.transcode` (one converter per direction).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from jego_call.call.machine import TableMachine
from jego_call.call.reasons import EndReason
from jego_call.errors import InvalidTransition
from jego_call.media.endpoint import MediaEndpoint, MediaError
from jego_call.media.tracks import PacedAudioTrack

from .legs import LegAnswered, LegDtmf, LegEnded, LegEvent, LegRinging, SipLeg
from .transcode import PHONE_RATE, AppToPhone, PhoneToApp

log = logging.getLogger("jego.bridge")

Send = Callable[[dict[str, Any]], Awaitable[None]]


# --- the state machine ------------------------------------------------------------------
class BridgeState(Enum):
    IDLE = "idle"              # created, nothing sent yet
    INVITING = "inviting"      # out: INVITE sent / in: the app's user is being offered the call
    RINGING = "ringing"        # out: 180 (or 183 without media) / in: the app reported ringing
    EARLY_MEDIA = "early_media"  # out: 183 with SDP, ringback/announcement flowing to the app
    CONNECTED = "connected"    # answered on both sides
    ENDED = "ended"


class BridgeEvent(Enum):
    INVITE = "invite"          # the first leg's offer went out
    RING = "ring"              # 180 / 183 without media, or the app's ringing
    EARLY_MEDIA = "early_media"  # 183 with SDP (RFC 3960 §3: early media from the callee)
    ANSWER = "answer"          # 200 OK (out) or the app's accept (in)
    APP_END = "app_end"        # the app side ended it (call_ended from the server)
    PHONE_END = "phone_end"    # the SIP leg ended it (final response >= 300, BYE, CANCEL)
    LOCAL_END = "local_end"    # the bridge ended it (max duration, media timeout, shutdown)
    FAIL = "fail"              # set-up failed here (bad SDP, capacity, trunk down)


_BS, _BE = BridgeState, BridgeEvent
_LIVE = (_BS.INVITING, _BS.RINGING, _BS.EARLY_MEDIA, _BS.CONNECTED)

# (state, event) -> next state. Anything absent is illegal.
TRANSITIONS: dict[tuple[BridgeState, BridgeEvent], BridgeState] = {
    (_BS.IDLE, _BE.INVITE): _BS.INVITING,
    (_BS.IDLE, _BE.FAIL): _BS.ENDED,
    (_BS.INVITING, _BE.RING): _BS.RINGING,
    (_BS.INVITING, _BE.EARLY_MEDIA): _BS.EARLY_MEDIA,
    (_BS.RINGING, _BE.RING): _BS.RINGING,
    (_BS.RINGING, _BE.EARLY_MEDIA): _BS.EARLY_MEDIA,
    (_BS.EARLY_MEDIA, _BE.RING): _BS.EARLY_MEDIA,        # a 180 after 183 keeps the media flowing
    (_BS.EARLY_MEDIA, _BE.EARLY_MEDIA): _BS.EARLY_MEDIA,
    **{(s, _BE.ANSWER): _BS.CONNECTED for s in (_BS.INVITING, _BS.RINGING, _BS.EARLY_MEDIA)},
    **{(s, e): _BS.ENDED for s in _LIVE for e in (_BE.APP_END, _BE.PHONE_END, _BE.LOCAL_END, _BE.FAIL)},
}


class BridgeStateMachine(TableMachine[BridgeState, BridgeEvent]):
    """One bridged call's state; `apply(event)` is the only way to change it."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("bridge call", TRANSITIONS, BridgeState.IDLE, BridgeState.ENDED)

    @property
    def answered(self) -> bool:
        return any(to is BridgeState.CONNECTED for _s, _e, to in self.history)


# --- reason mapping -----------------------------------------------------------------------
def decline_for(ended: LegEnded) -> dict[str, Any]:
    """The gateway `decline` fields for a SIP leg that ended before the answer: the leg's end
    reason (jego_call.call.reasons, from the final response and its Q.850 cause) in plain words."""
    reason = ended.reason
    if ended.sip_code is None and reason in (EndReason.TIMEOUT, EndReason.UNREACHABLE):
        reason = EndReason.UNREACHABLE  # no response at all: the phone network is unreachable
        detail = ended.detail or "the phone network did not answer"
    elif reason is EndReason.FAILED and ended.detail:
        detail = ended.detail
    else:
        detail = reason.words()
    return {"reason": reason.value, "sip_code": ended.sip_code, "q850_cause": ended.q850_cause,
            "detail": detail[:200]}


def sip_refusal(reason: EndReason) -> tuple[int, int]:
    """The SIP final response and Q.850 cause that refuse an unanswered inbound INVITE because the
    app side ended with `reason` (RFC 3398 §8.2.6.1 in reverse)."""
    code, cause = reason.sip_code, reason.q850
    if not code or code < 300:
        return 480, cause or 31
    return code, cause or 31


@dataclass(frozen=True, slots=True)
class CallSettings:
    """Per-call knobs from [bridge] (config/jego.toml)."""

    app_codec: str = "opus"          # opus (transcoded) or pcmu/pcma straight through
    opus_bitrate: int = 32000
    media_timeout_s: float = 30.0
    max_call_s: float = 7200.0
    answer_timeout_s: float = 20.0   # an inbound call whose WebRTC leg never connects ends

    @property
    def app_codecs(self) -> list[str] | None:
        return None if self.app_codec == "opus" else [self.app_codec.upper()]

    @property
    def app_rate(self) -> int:
        return 48000 if self.app_codec == "opus" else PHONE_RATE


# --- media glue: the two directions ---------------------------------------------------------
class PhoneToAppTrack(PacedAudioTrack):
    """The app leg's outgoing audio: every 20 ms (absolute clock, `PacedAudioTrack`) one frame
    through `PhoneToApp`, silence when there is none.

    A small playout buffer sits between the SIP leg's clock and ours: every slot drains what
    `SipLeg.read_audio()` has due, starts (and restarts after running dry) once `prefill`
    frames wait, and trims back to `prefill` when more than `max_frames` pile up, so thread or
    event-loop stalls cost neither gaps nor lasting latency.
    """

    def __init__(self, leg: SipLeg, rate: int, prefill: int = 2, max_frames: int = 6) -> None:
        super().__init__(rate)
        self.leg = leg
        self.conv = PhoneToApp(rate)
        self.prefill = prefill
        self.max_frames = max_frames
        self._buf: collections.deque[bytes] = collections.deque()
        self._playing = False
        self.received = 0                 # frames the SIP leg delivered
        self.underruns = 0
        self.trimmed = 0
        self.last_audio = time.monotonic()

    def _drain(self) -> None:
        for _ in range(50):  # at most a second's worth per slot
            try:
                pcm = self.leg.read_audio()
            except Exception:  # a leg that has ended may raise; it has nothing more anyway
                return
            if pcm is None:
                return
            self.received += 1
            self.last_audio = time.monotonic()
            self._buf.append(pcm)

    def _samples(self, n: int) -> Any:
        self._drain()
        if len(self._buf) > self.max_frames:
            while len(self._buf) > self.prefill:
                self._buf.popleft()
                self.trimmed += 1
        if not self._playing and len(self._buf) >= self.prefill:
            self._playing = True
        pcm = None
        if self._playing:
            if self._buf:
                pcm = self._buf.popleft()
            else:
                self._playing = False
                self.underruns += 1
        return self.conv.samples(pcm)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        return await super().recv()


class AppToPhoneSink:
    """The app leg's incoming audio (a MediaEndpoint sink): `AppToPhone`, then `SipLeg.send_audio`.

    The first `prefill` frames are held and sent together, so the leg's send queue starts with a
    cushion against event-loop stalls (the leg plays it out on its own 20 ms clock).
    """

    def __init__(self, leg: SipLeg, prefill: int = 3) -> None:
        self.leg = leg
        self.conv = AppToPhone()
        self.prefill = prefill
        self._held: list[bytes] = []
        self.sent = 0
        self.last_audio = time.monotonic()

    def handle(self, frame: Any) -> None:
        if not isinstance(frame, AudioFrame):
            return
        self.last_audio = time.monotonic()
        out = self.conv.push(frame)
        if self.prefill:
            self._held += out
            if len(self._held) < self.prefill:
                return
            out, self._held, self.prefill = self._held, [], 0
        for pcm in out:
            self.leg.send_audio(pcm)
            self.sent += 1

    def close(self) -> None:
        pass


# --- the call -------------------------------------------------------------------------------
class BridgeCall:
    """One bridged call. Start it with `start_outbound` or `start_inbound`, feed it the server's
    messages with `on_server`; `done` is set when both legs are closed and the report is sent."""

    def __init__(self, call_id: str, direction: str, leg: SipLeg, send: Send, settings: CallSettings,
                 ice_servers: list[dict[str, Any]] | None = None,
                 on_done: Callable[[BridgeCall], None] | None = None) -> None:
        if direction not in ("out", "in"):
            raise ValueError(f"direction must be 'out' or 'in', got {direction!r}")
        self.call_id = call_id
        self.direction = direction
        self.leg = leg
        self.send = send
        self.settings = settings
        self.sm = BridgeStateMachine()
        self.on_done = on_done
        self.track = PhoneToAppTrack(leg, settings.app_rate)
        self.sink = AppToPhoneSink(leg)
        self.ep = MediaEndpoint(source=self.track, sinks=[self.sink], ice_servers=ice_servers or [],
                                codecs=settings.app_codecs, opus_bitrate=settings.opus_bitrate,
                                name=f"bridge {call_id}")
        self.answer_sdp = ""               # our WebRTC answer to the app's offer (out)
        self.answer_sent = False           # ... and whether it went to the server yet
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.phone_codec: str | None = None
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.end_info: dict[str, Any] = {}
        self.leg_stats: dict[str, Any] = {}
        self.done = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._leg_ended = asyncio.Event()
        self._closing = False

    # --- public -------------------------------------------------------------------------
    @property
    def state(self) -> BridgeState:
        return self.sm.state

    def begin_outbound(self, to: str, offer_sdp: str) -> None:
        """Start `start_outbound` in the call's own task; then `post` the server's messages."""
        self._spawn(self._serve(self.start_outbound(to, offer_sdp)), "server")

    def begin_inbound(self, from_number: str, username: str) -> None:
        """Start `start_inbound` in the call's own task; then `post` the server's messages."""
        self._spawn(self._serve(self.start_inbound(from_number, username)), "server")

    def post(self, msg: dict[str, Any]) -> None:
        """Queue a server message for this call (handled in order by `on_server`); never blocks."""
        self._inbox.put_nowait(msg)

    async def _serve(self, first: Awaitable[None]) -> None:
        await first
        while not self._closing:
            await self.on_server(await self._inbox.get())

    async def start_outbound(self, to: str, offer_sdp: str) -> None:
        """App -> phone: answer the app's offer (kept until 183/200), then INVITE `to` (E.164)."""
        if self.sm.ended:
            return
        self.sm.apply(BridgeEvent.INVITE)
        self._spawn(self._leg_events(), "leg-events")
        try:
            self.answer_sdp = await self.ep.accept_offer(offer_sdp)
        except MediaError as exc:
            await self._fail("failed", f"bad offer: {exc}", sip_code=None)
            return
        log.info("[call %s] dialling %s", self.call_id, to)
        try:
            await self.leg.dial(to)
        except Exception as exc:  # the trunk is down or refused to send: nothing went out
            log.warning("[call %s] dial failed: %s", self.call_id, exc)
            await self._fail("unreachable", f"the phone network is unreachable: {exc}", sip_code=None)

    async def start_inbound(self, from_number: str, username: str) -> None:
        """Phone -> app: offer audio to `username` as a gateway `invite` from `from_number`."""
        if self.sm.ended:
            return
        self.sm.apply(BridgeEvent.INVITE)
        self._spawn(self._leg_events(), "leg-events")
        try:
            offer = await self.ep.create_offer(audio=True)
        except MediaError as exc:
            await self._end_local(BridgeEvent.FAIL, app_msg=None, sip=(500, 41), detail=str(exc))
            return
        await self.send({"type": "invite", "call_id": self.call_id, "to": username, "from": from_number,
                         "media": ["audio"], "sdp": offer})

    async def on_server(self, msg: dict[str, Any]) -> None:
        """A message from the signalling server for this call."""
        kind = msg.get("type")
        if self.sm.ended:
            return
        if kind == "ice":
            with contextlib.suppress(MediaError, Exception):
                await self.ep.add_ice_candidate(msg.get("candidate"))
        elif kind == "dtmf":
            digits = str(msg.get("digits") or "")
            if digits and self.sm.state is BridgeState.CONNECTED:
                log.info("[call %s] DTMF %s -> phone", self.call_id, digits)
                self._spawn(self.leg.send_dtmf(digits), "dtmf")  # RFC 4733 events, one after another
        elif kind == "ringing" and self.direction == "in":
            if self.sm.can(BridgeEvent.RING):
                self.sm.apply(BridgeEvent.RING)
        elif kind == "accept" and self.direction == "in":
            await self._inbound_accept(msg)
        elif kind in ("call_ended", "hangup", "cancel"):
            await self._app_ended(str(msg.get("reason") or ("cancelled" if kind == "cancel" else "hangup")))
        elif kind == "error" and msg.get("call_id") == self.call_id:
            code = str(msg.get("code") or "failed")
            if self.sm.state is not BridgeState.CONNECTED:
                log.warning("[call %s] server refused: %s %s", self.call_id, code, msg.get("message", ""))
                await self._app_ended(EndReason.NOT_FOUND if code == "unknown_user" else code)

    async def shutdown(self, cause: int = 41) -> None:
        """End the call from the bridge side (worker stopping, connection lost)."""
        if not self.sm.ended:
            await self._end_local(BridgeEvent.LOCAL_END, app_msg={"type": "hangup", "q850_cause": cause},
                                  sip=(503, cause), detail="bridge shutting down")
        await self.done.wait()

    # --- inbound ------------------------------------------------------------------------
    async def _inbound_accept(self, msg: dict[str, Any]) -> None:
        try:
            await self.ep.set_answer(str(msg.get("sdp") or ""))
        except MediaError as exc:
            await self._end_local(BridgeEvent.FAIL, app_msg={"type": "hangup", "q850_cause": 47},
                                  sip=(488, 65), detail=str(exc))
            return
        self.sm.apply(BridgeEvent.ANSWER)
        try:
            await self.leg.answer()
        except Exception as exc:
            log.warning("[call %s] answering the SIP leg failed: %s", self.call_id, exc)
            await self._end_local(BridgeEvent.LOCAL_END, app_msg={"type": "hangup", "q850_cause": 41},
                                  sip=None, detail=str(exc))
            return
        self._connected()

    # --- the SIP leg's events ------------------------------------------------------------------
    async def _leg_events(self) -> None:
        while True:
            ev: LegEvent = await self.leg.events.get()
            try:
                if isinstance(ev, LegEnded):
                    self._leg_ended.set()
                    await self._phone_ended(ev)
                    return
                await self._leg_event(ev)
            except InvalidTransition as exc:
                log.warning("[call %s] ignored %s: %s", self.call_id, ev, exc)

    async def _leg_event(self, ev: LegEvent) -> None:
        if self.sm.ended or self._closing:
            return
        if isinstance(ev, LegRinging) and self.direction == "out":
            out: dict[str, Any] = {"type": "ringing", "call_id": self.call_id, "sip_code": ev.sip_code}
            if ev.early_media and not self.answer_sent:
                # RFC 3960 §3 (gateway model): the 183's media goes to the app before the answer
                self.sm.apply(BridgeEvent.EARLY_MEDIA)
                out["sdp"] = self.answer_sdp
                self.answer_sent = True
            else:
                self.sm.apply(BridgeEvent.EARLY_MEDIA if self.state is BridgeState.EARLY_MEDIA else BridgeEvent.RING)
            log.info("[call %s] %d%s", self.call_id, ev.sip_code, " with early media" if "sdp" in out else "")
            await self.send(out)
        elif isinstance(ev, LegAnswered):
            self.phone_codec = ev.codec
            if self.direction == "out":
                self.sm.apply(BridgeEvent.ANSWER)
                acc: dict[str, Any] = {"type": "accept", "call_id": self.call_id}
                if not self.answer_sent:
                    acc["sdp"] = self.answer_sdp
                    self.answer_sent = True
                await self.send(acc)
                log.info("[call %s] answered (%s)", self.call_id, ev.codec)
                self._connected()
        elif isinstance(ev, LegDtmf):
            if self.sm.state is BridgeState.CONNECTED:
                await self.send({"type": "dtmf", "call_id": self.call_id, "digits": ev.digit})

    def _connected(self) -> None:
        self.connected_at = time.monotonic()
        self.track.last_audio = self.sink.last_audio = self.connected_at
        self._spawn(self._watchdog(), "watchdog")

    async def _watchdog(self) -> None:
        """Max call duration, media inactivity, a failed WebRTC leg: end both legs."""
        s = self.settings
        assert self.connected_at is not None
        while not self.sm.ended and not self._closing:
            await asyncio.sleep(0.25)
            self._snapshot_leg_stats()
            now = time.monotonic()
            if now - self.connected_at >= s.max_call_s:
                reason, cause = "maximum call duration reached", 102  # Q.850 102: recovery on timer expiry
            elif self.ep.state in ("failed", "closed"):
                reason, cause = f"app media {self.ep.state}", 41
            elif now - self.sink.last_audio >= s.media_timeout_s:
                reason, cause = "no audio from the app", 41
            elif now - self.track.last_audio >= s.media_timeout_s:
                reason, cause = "no audio from the phone", 41
            else:
                continue
            log.warning("[call %s] ending: %s", self.call_id, reason)
            await self._end_local(BridgeEvent.LOCAL_END, app_msg={"type": "hangup", "q850_cause": cause},
                                  sip=None, detail=reason, cause=cause)
            return

    # --- endings -----------------------------------------------------------------------------
    async def _phone_ended(self, ev: LegEnded) -> None:
        if self.sm.ended or self._closing:
            return  # we ended it; this is the leg confirming
        answered = self.sm.state is BridgeState.CONNECTED
        self.sm.apply(BridgeEvent.PHONE_END)
        self.end_info = {"sip_code": ev.sip_code, "q850_cause": ev.q850_cause, "by": "phone", "reason": ev.reason}
        if self.direction == "out" and not answered:
            dec = decline_for(ev)
            log.info("[call %s] phone side: %s (sip %s, q850 %s)", self.call_id, dec["reason"], ev.sip_code,
                     ev.q850_cause)
            await self.send({"type": "decline", "call_id": self.call_id, **dec})
        else:
            # BYE from the phone (or CANCEL of an inbound call): the app is told
            msg: dict[str, Any] = {"type": "hangup", "call_id": self.call_id}
            cause = ev.q850_cause if ev.q850_cause is not None else 16
            msg["q850_cause"] = cause
            if ev.sip_code is not None:
                msg["sip_code"] = ev.sip_code
            log.info("[call %s] phone hung up (q850 %s)", self.call_id, cause)
            await self.send(msg)
        await self._close()

    async def _app_ended(self, reason: str | EndReason) -> None:
        if self.sm.ended or self._closing:
            return
        self.sm.apply(BridgeEvent.APP_END)
        self.end_info = {"by": "app", "reason": reason}
        log.info("[call %s] app side ended: %s", self.call_id, reason)
        await self._end_leg(sip_refusal(EndReason.parse(reason)), 16)
        await self._close()

    async def _fail(self, reason: str, detail: str, sip_code: int | None) -> None:
        """Set-up failed before anything reached the phone: decline to the app."""
        if self.sm.ended:
            return
        self.sm.apply(BridgeEvent.FAIL)
        self.end_info = {"by": "bridge", "reason": reason, "detail": detail}
        await self.send({"type": "decline", "call_id": self.call_id, "reason": reason, "sip_code": sip_code,
                         "q850_cause": None, "detail": detail[:200]})
        await self._end_leg((500, 41), 41)
        await self._close()

    async def _end_local(self, event: BridgeEvent, app_msg: dict[str, Any] | None, sip: tuple[int, int] | None,
                         detail: str, cause: int = 16) -> None:
        """The bridge ends the call: tell the app (`app_msg`), end the SIP leg."""
        if self.sm.ended or self._closing:
            return
        self.sm.apply(BridgeEvent.FAIL if self.sm.state is BridgeState.IDLE else event)
        self.end_info = {"by": "bridge", "reason": detail}
        if app_msg is not None:
            if self.direction == "out" and not self.sm.answered:
                await self.send({"type": "decline", "call_id": self.call_id, "reason": "failed",
                                 "sip_code": None, "q850_cause": app_msg.get("q850_cause"), "detail": detail[:200]})
            else:
                await self.send({**app_msg, "call_id": self.call_id})
        await self._end_leg(sip or (480, cause), cause)
        await self._close()

    async def _end_leg(self, reject: tuple[int, int], cause: int) -> None:
        """Hang up / cancel (or, for an unanswered inbound call, reject) the SIP leg; wait for LegEnded."""
        if self._leg_ended.is_set():
            return
        try:
            if self.direction == "in" and not self.sm.answered:
                await self.leg.reject(reject[0], reject[1])
            else:
                await self.leg.hangup(cause)  # BYE when answered, CANCEL while ringing (RFC 3261 §9.1)
        except Exception as exc:
            log.warning("[call %s] ending the SIP leg failed: %s", self.call_id, exc)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._leg_ended.wait(), 35.0)  # a CANCEL may wait for 487 (Timer B)

    async def _close(self) -> None:
        """Close the WebRTC leg, send call_report, stop our tasks. Runs once."""
        if self._closing:
            return
        self._closing = True
        app: dict[str, int] = {"packets_sent": 0, "packets_received": 0, "packets_lost": 0}
        codec = self.phone_codec or self.leg.codec
        try:
            st = await self.ep.stats()
            app = {k: int(st.get(k) or 0) for k in ("packets_sent", "packets_received", "packets_lost")}
            app_codec = st.get("codec")
        except Exception:
            app_codec = None
        await self.ep.close()
        phone = {"packets_sent": self.sink.sent, "packets_received": self.track.received, "packets_lost": 0}
        self._snapshot_leg_stats()
        got = self.leg_stats
        if got:  # the leg's RTP counters, when it keeps them (pyvoip_leg: tx/rx_packets)
            log.info("[call %s] leg stats %s; app->phone frames %d; phone->app frames %d of %d, "
                     "%d underruns, %d trimmed", self.call_id, got, self.sink.sent, self.track.received,
                     self.track.conv.frames, self.track.underruns, self.track.trimmed)
            for ours, theirs in (("packets_sent", "tx_packets"), ("packets_received", "rx_packets")):
                if theirs in got or ours in got:
                    phone[ours] = int(got.get(theirs, got.get(ours, 0)))
            lost = getattr(got.get("jitter"), "lost", None)
            if isinstance(lost, int):
                phone["packets_lost"] = lost
            for key in ("rtt_ms", "jitter_ms", "remote_loss"):  # the far end's RTCP reports (RFC 3550 §6.4)
                if isinstance(got.get(key), int):
                    phone[key] = got[key]
        # "PCMU" when G.711 went straight through to the app, "opus/PCMU" when transcoded
        report_codec = f"{app_codec}/{codec}" if app_codec and codec and app_codec != codec else codec
        with contextlib.suppress(Exception):
            await self.send({"type": "call_report", "call_id": self.call_id, "codec": report_codec,
                             "app": app, "phone": phone})
        log.info("[call %s] ended (%s); app %s phone %s; frames on time %.4f (max late %.1f ms)", self.call_id,
                 self.end_info.get("reason"), app, phone, self.track.pacing.on_time_ratio,
                 self.track.pacing.max_late_ms)
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current and not t.done():
                t.cancel()
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)

    def _snapshot_leg_stats(self) -> None:
        """Keep the leg's latest counters (a leg may drop them when it ends)."""
        leg_stats = getattr(self.leg, "stats", None)
        if callable(leg_stats):
            with contextlib.suppress(Exception):
                got = leg_stats()
                if got:
                    self.leg_stats = dict(got)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"bridge-call-{self.call_id}-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("[call %s] task %s failed", self.call_id, task.get_name(), exc_info=task.exception())
