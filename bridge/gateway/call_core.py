"""[pure] One bridged call's decisions: the app's WebRTC leg joined to one SIP leg, as events in
and commands out, on a clock the caller passes in.

    core = BridgeCallCore(call_id, "out", settings)
    cmds = core.handle(StartOutbound("+8613800138000", offer_sdp), now)
    cmds = core.handle(OfferAnswered(answer_sdp), now)        # the result of MediaAcceptOffer
    cmds = core.handle(LegRinging(183, early_media=True), now)
    cmds = core.handle(ServerMessage({"type": "dtmf", ...}), now)
    cmds = core.handle_timer(now)                              # at or after core.next_deadline()

Inputs (`handle`): the worker's start (`StartOutbound`, `StartInbound`), the signalling
server's messages for the call (`ServerMessage`: ringing, accept, ice, dtmf, call_ended,
hangup, cancel, error), the SIP leg's events (legs.py: LegRinging, LegAnswered, LegDtmf,
LegEnded), the results of the shell's media and leg operations (`OfferAnswered`,
`OfferCreated`, `AnswerApplied`, `MediaFailed`, `LegOpFailed`), `WebRtcStateChanged`,
`AppAudio`/`PhoneAudio` (when audio last came from either side) and `Shutdown`.

Commands, to be carried out in order: `ToServer`, `LegDial`, `LegAnswer`, `LegReject`,
`LegHangup`, `LegSendDtmf`, `MediaAcceptOffer`, `MediaCreateOffer`, `MediaSetAnswer`,
`MediaAddIce`, `Finish` (close the WebRTC leg and send call_report) and `Log`. A command that
has a result (the media ones, a leg operation that fails) is answered with the matching event.

The core owns the `BridgeStateMachine`, ends both legs exactly once, maps the end reason
across (SIP status + Q.850 cause <-> protocol end reason) and keeps its deadlines: the
maximum call length (`max_call_s`, Q.850 102), a paid call's backstop (the invite's `max_s`
plus `BACKSTOP_S`: the server cuts it at `max_s`, this only fires if the server is gone; BYE
with cause 16 and the invite's `max_reason`), audio silence from either side
(`media_timeout_s`, cause 41) and, once it has ended the SIP leg, how long it waits for the
leg's LegEnded (`leg_end_wait_s`). State is plain attributes, so the same events could drive
it anywhere. The asyncio shell is `BridgeCall` (call.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from jego_call.call.machine import TableMachine
from jego_call.call.reasons import BILLING_REASONS, EndReason
from jego_call.errors import InvalidTransition

from .legs import SAMPLE_RATE, LegAnswered, LegDtmf, LegEnded, LegEvent, LegRinging

INFO, WARNING = 20, 30  # Log levels (the logging module's numbers)
MAX_CALL_CAUSE = 102    # Q.850 102: recovery on timer expiry
MEDIA_CAUSE = 41        # Q.850 41: temporary failure
BACKSTOP_S = 1.0        # a paid call's own cut comes this long after the server's (max_s)


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
    answer_timeout_s: float = 20.0   # (reserved) an inbound call whose WebRTC leg never connects
    leg_end_wait_s: float = 35.0     # after our BYE/CANCEL/final response: wait this long for LegEnded
    #                                  (a CANCEL may wait for its 487 up to Timer B, RFC 3261 §17.1.1.2)

    @property
    def app_codecs(self) -> list[str] | None:
        return None if self.app_codec == "opus" else [self.app_codec.upper()]

    @property
    def app_rate(self) -> int:
        return 48000 if self.app_codec == "opus" else SAMPLE_RATE


# --- inputs -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StartOutbound:
    """App -> phone: answer the app's offer, then INVITE `to` (E.164). `max_s`: the server's
    invite says the call may last this long after the answer (a paid call), ended then with
    `max_reason` (credit_exhausted, limit_reached, max_duration)."""

    to: str
    offer_sdp: str
    max_s: float | None = None
    max_reason: EndReason = EndReason.CREDIT_EXHAUSTED


@dataclass(frozen=True, slots=True)
class StartInbound:
    """Phone -> app: offer audio to `username` as a gateway invite from `from_number`."""

    from_number: str
    username: str


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """A signalling message for this call (docs/signalling.md "Phone calls and gateways")."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OfferAnswered:
    """MediaAcceptOffer done: our WebRTC answer to the app's offer."""

    sdp: str


@dataclass(frozen=True, slots=True)
class OfferCreated:
    """MediaCreateOffer done: our WebRTC offer for the app's user."""

    sdp: str


@dataclass(frozen=True, slots=True)
class AnswerApplied:
    """MediaSetAnswer done: the app's answer is applied."""


@dataclass(frozen=True, slots=True)
class MediaFailed:
    """A media command failed; `op` is accept_offer, create_offer or set_answer."""

    op: str
    error: str


@dataclass(frozen=True, slots=True)
class LegOpFailed:
    """A leg command raised; `op` is dial, answer, reject or hangup."""

    op: str
    error: str


@dataclass(frozen=True, slots=True)
class WebRtcStateChanged:
    """The app leg's connectionState: new, connecting, connected, failed, closed."""

    state: str


@dataclass(frozen=True, slots=True)
class AppAudio:
    """Audio from the app was last seen at `at` (the same clock as `now`)."""

    at: float


@dataclass(frozen=True, slots=True)
class PhoneAudio:
    """Audio from the phone was last seen at `at`."""

    at: float


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The bridge ends the call (worker stopping, server connection lost), Q.850 `cause`."""

    cause: int = MEDIA_CAUSE


Event = (StartOutbound | StartInbound | ServerMessage | OfferAnswered | OfferCreated | AnswerApplied
         | MediaFailed | LegOpFailed | WebRtcStateChanged | AppAudio | PhoneAudio | Shutdown | LegEvent)


# --- commands -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ToServer:
    """Send `msg` (it names this call) to the signalling server."""

    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LegDial:
    number: str


@dataclass(frozen=True, slots=True)
class LegAnswer:
    pass


@dataclass(frozen=True, slots=True)
class LegReject:
    sip_code: int
    q850_cause: int


@dataclass(frozen=True, slots=True)
class LegHangup:
    """BYE when answered, CANCEL while ringing (RFC 3261 §9.1); idempotent. `reason`: the text
    of the RFC 3326 Reason (e.g. `credit_exhausted`; None: Q.850's own words)."""

    q850_cause: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class LegSendDtmf:
    """RFC 4733 telephone-events, one after another (runs on its own; nothing comes back)."""

    digits: str


@dataclass(frozen=True, slots=True)
class MediaAcceptOffer:
    """Apply the app's offer; answer with OfferAnswered(sdp) or MediaFailed."""

    sdp: str


@dataclass(frozen=True, slots=True)
class MediaCreateOffer:
    """Create our audio offer; answer with OfferCreated(sdp) or MediaFailed."""


@dataclass(frozen=True, slots=True)
class MediaSetAnswer:
    """Apply the app's answer; answer with AnswerApplied() or MediaFailed."""

    sdp: str


@dataclass(frozen=True, slots=True)
class MediaAddIce:
    """Add a trickled candidate (None: end of candidates); failures are ignored."""

    candidate: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Finish:
    """Both legs are over: close the WebRTC leg, send call_report, release the call."""


@dataclass(frozen=True, slots=True)
class Log:
    """A log line for people: `text` about call `call_id`."""

    level: int
    text: str
    call_id: str | None = None

    def __str__(self) -> str:
        return f"[call {self.call_id}] {self.text}" if self.call_id else self.text


Command = (ToServer | LegDial | LegAnswer | LegReject | LegHangup | LegSendDtmf | MediaAcceptOffer
           | MediaCreateOffer | MediaSetAnswer | MediaAddIce | Finish | Log)


# --- the core -----------------------------------------------------------------------------
@dataclass(eq=False)
class BridgeCallCore:
    """One bridged call's decisions (see the module doc). Feed `handle`/`handle_timer`; carry out
    what they return; re-arm one timer at `next_deadline()` after each."""

    call_id: str
    direction: str                           # "out" (app -> phone) or "in" (phone -> app)
    settings: CallSettings = field(default_factory=CallSettings)
    sm: BridgeStateMachine = field(default_factory=BridgeStateMachine)
    number: str = ""                         # out: the E.164 number dialled
    username: str = ""                       # in: the user rung
    from_number: str = ""                    # in: the caller's number
    answer_sdp: str = ""                     # out: our WebRTC answer to the app's offer
    answer_sent: bool = False                # ... and whether it went to the server yet
    phone_codec: str | None = None
    max_s: float | None = None               # out: a paid call's length after the answer (the invite's)
    max_reason: EndReason = EndReason.CREDIT_EXHAUSTED
    connected_at: float | None = None
    app_audio_at: float | None = None
    phone_audio_at: float | None = None
    webrtc_state: str = "new"
    end_info: dict[str, Any] = field(default_factory=dict)
    leg_ended: bool = False                  # the leg's one LegEnded has come
    leg_wait_until: float | None = None      # we ended the leg: Finish by then even without LegEnded
    finished: bool = False                   # Finish was given: nothing more happens
    _out: list[Command] = field(default_factory=list, repr=False)
    _now: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.direction not in ("out", "in"):
            raise ValueError(f"direction must be 'out' or 'in', got {self.direction!r}")

    @property
    def state(self) -> BridgeState:
        return self.sm.state

    # --- inputs ---------------------------------------------------------------------------
    def handle(self, ev: Event, now: float) -> list[Command]:
        """One input at `now` (monotonic seconds); the commands to carry out, in order."""
        self._out, self._now = [], now
        if self.finished:
            return []
        try:
            self._dispatch(ev)
        except InvalidTransition as exc:  # e.g. a 180 after the answer: nothing to do
            self._log(WARNING, f"ignored {ev}: {exc}")
        return self._take()

    def handle_timer(self, now: float) -> list[Command]:
        """Fire what is due at `now`: maximum length, media silence, the wait for LegEnded."""
        self._out, self._now = [], now
        if self.finished:
            return []
        if self.sm.ended:
            if self.leg_wait_until is not None and now >= self.leg_wait_until:
                self._log(WARNING, "the SIP leg did not confirm its end: closing anyway")
                self._finish()
            return self._take()
        if self.state is not BridgeState.CONNECTED or self.connected_at is None:
            return self._take()
        s = self.settings
        backstop = self._backstop()
        if backstop is not None and now >= backstop:
            self._cut()
            return self._take()
        if now >= self.connected_at + s.max_call_s:
            reason, cause = "maximum call duration reached", MAX_CALL_CAUSE
        elif self.webrtc_state in ("failed", "closed"):
            reason, cause = f"app media {self.webrtc_state}", MEDIA_CAUSE
        elif now >= self._app_since() + s.media_timeout_s:
            reason, cause = "no audio from the app", MEDIA_CAUSE
        elif now >= self._phone_since() + s.media_timeout_s:
            reason, cause = "no audio from the phone", MEDIA_CAUSE
        else:
            return self._take()
        self._watchdog_end(reason, cause)
        return self._take()

    def next_deadline(self) -> float | None:
        """When `handle_timer` next has something to do (same clock as `now`), or None."""
        if self.finished:
            return None
        if self.sm.ended:
            return self.leg_wait_until
        if self.state is not BridgeState.CONNECTED or self.connected_at is None:
            return None
        s = self.settings
        due = [self.connected_at + s.max_call_s, self._app_since() + s.media_timeout_s,
               self._phone_since() + s.media_timeout_s]
        backstop = self._backstop()
        return min(due if backstop is None else [*due, backstop])

    # --- helpers ----------------------------------------------------------------------------
    def _take(self) -> list[Command]:
        out, self._out = self._out, []
        return out

    def _emit(self, cmd: Command) -> None:
        self._out.append(cmd)

    def _log(self, level: int, text: str) -> None:
        self._out.append(Log(level, text, self.call_id))

    def _to_server(self, msg: dict[str, Any]) -> None:
        self._out.append(ToServer({**msg, "call_id": self.call_id}))

    def _backstop(self) -> float | None:
        if self.max_s is None or self.connected_at is None:
            return None
        return self.connected_at + self.max_s + BACKSTOP_S

    def _app_since(self) -> float:
        assert self.connected_at is not None
        return max(self.connected_at, self.app_audio_at if self.app_audio_at is not None else self.connected_at)

    def _phone_since(self) -> float:
        assert self.connected_at is not None
        return max(self.connected_at,
                   self.phone_audio_at if self.phone_audio_at is not None else self.connected_at)

    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, (LegRinging, LegAnswered, LegDtmf, LegEnded)):
            self._leg_event(ev)
        elif isinstance(ev, ServerMessage):
            self._server(ev.msg)
        elif isinstance(ev, AppAudio):
            self.app_audio_at = ev.at if self.app_audio_at is None else max(self.app_audio_at, ev.at)
        elif isinstance(ev, PhoneAudio):
            self.phone_audio_at = ev.at if self.phone_audio_at is None else max(self.phone_audio_at, ev.at)
        elif isinstance(ev, WebRtcStateChanged):
            self.webrtc_state = ev.state
            if self.state is BridgeState.CONNECTED and ev.state in ("failed", "closed"):
                self._watchdog_end(f"app media {ev.state}", MEDIA_CAUSE)
        elif isinstance(ev, StartOutbound):
            self._start_outbound(ev)
        elif isinstance(ev, StartInbound):
            self._start_inbound(ev)
        elif isinstance(ev, OfferAnswered):
            if not self.sm.ended:
                self.answer_sdp = ev.sdp
                self._log(INFO, f"dialling {self.number}")
                self._emit(LegDial(self.number))
        elif isinstance(ev, OfferCreated):
            if not self.sm.ended:
                self._to_server({"type": "invite", "to": self.username, "from": self.from_number,
                                 "media": ["audio"], "sdp": ev.sdp})
        elif isinstance(ev, AnswerApplied):
            if not self.sm.ended:
                self.sm.apply(BridgeEvent.ANSWER)
                self._emit(LegAnswer())
                self._connected()
        elif isinstance(ev, MediaFailed):
            self._media_failed(ev)
        elif isinstance(ev, LegOpFailed):
            self._leg_op_failed(ev)
        elif isinstance(ev, Shutdown):
            self._end_local(BridgeEvent.LOCAL_END, app_msg={"type": "hangup", "q850_cause": ev.cause},
                            sip=(503, ev.cause), detail="bridge shutting down")

    # --- starting -------------------------------------------------------------------------
    def _start_outbound(self, ev: StartOutbound) -> None:
        if self.sm.ended:
            return
        self.sm.apply(BridgeEvent.INVITE)
        self.number = ev.to
        self.max_s, self.max_reason = ev.max_s, ev.max_reason
        self._emit(MediaAcceptOffer(ev.offer_sdp))  # the answer is kept until 183/200

    def _start_inbound(self, ev: StartInbound) -> None:
        if self.sm.ended:
            return
        self.sm.apply(BridgeEvent.INVITE)
        self.from_number, self.username = ev.from_number, ev.username
        self._emit(MediaCreateOffer())

    def _media_failed(self, ev: MediaFailed) -> None:
        if ev.op == "accept_offer":
            self._fail("failed", f"bad offer: {ev.error}", sip_code=None)
        elif ev.op == "create_offer":
            self._end_local(BridgeEvent.FAIL, app_msg=None, sip=(500, 41), detail=ev.error)
        else:  # set_answer: the app's answer is unusable (Q.850 47; SIP 488 + cause 65)
            self._end_local(BridgeEvent.FAIL, app_msg={"type": "hangup", "q850_cause": 47}, sip=(488, 65),
                            detail=ev.error)

    def _leg_op_failed(self, ev: LegOpFailed) -> None:
        if ev.op == "dial":  # the trunk is down or refused to send: nothing went out
            self._log(WARNING, f"dial failed: {ev.error}")
            self._fail("unreachable", f"the phone network is unreachable: {ev.error}", sip_code=None)
        elif ev.op == "answer":
            self._log(WARNING, f"answering the SIP leg failed: {ev.error}")
            self._end_local(BridgeEvent.LOCAL_END, app_msg={"type": "hangup", "q850_cause": 41}, sip=None,
                            detail=ev.error)
        else:  # hangup / reject: no LegEnded will come, do not wait for it
            self._log(WARNING, f"ending the SIP leg failed: {ev.error}")
            if self.sm.ended and not self.finished:
                self._finish()

    # --- the server's messages --------------------------------------------------------------
    def _server(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if self.sm.ended:
            return
        if kind == "ice":
            self._emit(MediaAddIce(msg.get("candidate")))
        elif kind == "dtmf":
            digits = str(msg.get("digits") or "")
            if digits and self.state is BridgeState.CONNECTED:
                self._log(INFO, f"DTMF {digits} -> phone")
                self._emit(LegSendDtmf(digits))
        elif kind == "ringing" and self.direction == "in":
            if self.sm.can(BridgeEvent.RING):
                self.sm.apply(BridgeEvent.RING)
        elif kind == "accept" and self.direction == "in":
            self._emit(MediaSetAnswer(str(msg.get("sdp") or "")))
        elif kind in ("call_ended", "hangup", "cancel"):
            self._app_ended(str(msg.get("reason") or ("cancelled" if kind == "cancel" else "hangup")))
        elif kind == "error" and msg.get("call_id") == self.call_id:
            code = str(msg.get("code") or "failed")
            if self.state is not BridgeState.CONNECTED:
                self._log(WARNING, f"server refused: {code} {msg.get('message', '')}")
                self._app_ended(EndReason.NOT_FOUND if code == "unknown_user" else code)

    # --- the SIP leg's events ---------------------------------------------------------------
    def _leg_event(self, ev: LegEvent) -> None:
        if isinstance(ev, LegEnded):
            self.leg_ended = True
            if self.sm.ended:  # we ended it; this is the leg confirming
                self._finish()
            else:
                self._phone_ended(ev)
            return
        if self.sm.ended:
            if isinstance(ev, LegAnswered) and not self.leg_ended:
                # a 200 OK crossed our CANCEL (RFC 3261 §9.1): the leg is up, so end it again (BYE)
                self._log(INFO, "answered after the call ended: hanging up")
                self._emit(LegHangup(16))
            return
        if isinstance(ev, LegRinging) and self.direction == "out":
            out: dict[str, Any] = {"type": "ringing", "sip_code": ev.sip_code}
            if ev.early_media:
                self.sm.apply(BridgeEvent.EARLY_MEDIA)
                if not self.answer_sent:
                    # RFC 3960 §3 (gateway model): the 183's media goes to the app before the answer
                    out["sdp"] = self.answer_sdp
                    self.answer_sent = True
            else:
                self.sm.apply(BridgeEvent.RING)  # a 180 after a 183 keeps EARLY_MEDIA (the table)
            self._log(INFO, f"{ev.sip_code}{' with early media' if 'sdp' in out else ''}")
            self._to_server(out)
        elif isinstance(ev, LegAnswered):
            self.phone_codec = ev.codec
            if self.direction == "out":
                self.sm.apply(BridgeEvent.ANSWER)
                acc: dict[str, Any] = {"type": "accept"}
                if not self.answer_sent:
                    acc["sdp"] = self.answer_sdp
                    self.answer_sent = True
                self._to_server(acc)
                self._log(INFO, f"answered ({ev.codec})")
                self._connected()
        elif isinstance(ev, LegDtmf):
            if self.state is BridgeState.CONNECTED:
                self._to_server({"type": "dtmf", "digits": ev.digit})

    def _connected(self) -> None:
        self.connected_at = self._now
        if self.webrtc_state in ("failed", "closed"):  # the app's media broke before the answer
            self._watchdog_end(f"app media {self.webrtc_state}", MEDIA_CAUSE)

    # --- endings ------------------------------------------------------------------------------
    def _watchdog_end(self, reason: str, cause: int) -> None:
        self._log(WARNING, f"ending: {reason}")
        self._end_local(BridgeEvent.LOCAL_END, app_msg={"type": "hangup", "q850_cause": cause}, sip=None,
                        detail=reason)

    def _phone_ended(self, ev: LegEnded) -> None:
        answered = self.state is BridgeState.CONNECTED
        self.sm.apply(BridgeEvent.PHONE_END)
        self.end_info = {"sip_code": ev.sip_code, "q850_cause": ev.q850_cause, "by": "phone", "reason": ev.reason}
        if self.direction == "out" and not answered:
            dec = decline_for(ev)
            self._log(INFO, f"phone side: {dec['reason']} (sip {ev.sip_code}, q850 {ev.q850_cause})")
            self._to_server({"type": "decline", **dec})
        else:
            # BYE from the phone (or CANCEL of an inbound call): the app is told
            cause = ev.q850_cause if ev.q850_cause is not None else 16
            msg: dict[str, Any] = {"type": "hangup", "q850_cause": cause}
            if ev.sip_code is not None:
                msg["sip_code"] = ev.sip_code
            self._log(INFO, f"phone hung up (q850 {cause})")
            self._to_server(msg)
        self._finish()

    def _app_ended(self, reason: str) -> None:
        self.sm.apply(BridgeEvent.APP_END)
        self.end_info = {"by": "app", "reason": reason}
        self._log(INFO, f"app side ended: {reason}")
        end = EndReason.parse(reason)
        # the server cut a paid call (credit_exhausted, limit_reached): BYE with cause 16 and
        # the reason as the Reason header's text (RFC 3326 §2)
        self._end_leg(sip_refusal(end), 16, end.value if end in BILLING_REASONS else None)

    def _cut(self) -> None:
        """The paid call's backstop: the server should have cut it by now (it may be gone)."""
        self._log(WARNING, f"ending: {self.max_reason} (max_s {self.max_s} s, no cut from the server)")
        self.sm.apply(BridgeEvent.LOCAL_END)
        self.end_info = {"by": "bridge", "reason": self.max_reason.value}
        self._to_server({"type": "hangup", "q850_cause": 16})
        self._end_leg((480, 16), 16, self.max_reason.value)

    def _fail(self, reason: str, detail: str, sip_code: int | None) -> None:
        """Set-up failed before anything reached the phone: decline to the app."""
        if self.sm.ended:
            return
        self.sm.apply(BridgeEvent.FAIL)
        self.end_info = {"by": "bridge", "reason": reason, "detail": detail}
        self._to_server({"type": "decline", "reason": reason, "sip_code": sip_code, "q850_cause": None,
                         "detail": detail[:200]})
        self._end_leg((500, 41), 41)

    def _end_local(self, event: BridgeEvent, app_msg: dict[str, Any] | None, sip: tuple[int, int] | None,
                   detail: str) -> None:
        """The bridge ends the call: tell the app (`app_msg`), end the SIP leg with the same Q.850
        cause (RFC 3326 Reason on the BYE/CANCEL), or refuse it with `sip` when it was never answered."""
        if self.sm.ended:
            return
        cause = int((app_msg or {}).get("q850_cause") or 16)
        self.sm.apply(BridgeEvent.FAIL if self.state is BridgeState.IDLE else event)
        self.end_info = {"by": "bridge", "reason": detail}
        if app_msg is not None:
            if self.direction == "out" and not self.sm.answered:
                self._to_server({"type": "decline", "reason": "failed", "sip_code": None,
                                 "q850_cause": app_msg.get("q850_cause"), "detail": detail[:200]})
            else:
                self._to_server(app_msg)
        self._end_leg(sip or (480, cause), cause)

    def _end_leg(self, reject: tuple[int, int], cause: int, text: str | None = None) -> None:
        """Hang up / cancel (or, for an unanswered inbound call, reject) the SIP leg; then wait
        for its LegEnded, at most `leg_end_wait_s`."""
        if self.leg_ended:
            self._finish()
            return
        if self.direction == "in" and not self.sm.answered:
            self._emit(LegReject(reject[0], reject[1]))
        else:  # BYE when answered, CANCEL while ringing (RFC 3261 §9.1)
            self._emit(LegHangup(cause, text) if text else LegHangup(cause))
        self.leg_wait_until = self._now + self.settings.leg_end_wait_s

    def _finish(self) -> None:
        self.leg_wait_until = None
        self.finished = True
        self._emit(Finish())
