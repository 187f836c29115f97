"""[pure] A group call's audio conference on the bridge worker: which legs it has, what each one
is doing, and what to tell the server, as events in and commands out.

    core = ConferenceCore("call-1")
    cmds = core.handle(Join("alice.1", "alice", offer_sdp))   # -> OpenAppLeg (the shell answers it)
    cmds = core.handle(AnswerReady("alice.1", answer_sdp))    # -> ToServer conference_answer
    cmds = core.handle(PhoneInvite("call-1-p1", "+8613800138000", "alice"))   # -> DialPhone
    cmds = core.handle(PhoneEvent("call-1-p1", LegAnswered("PCMU")))          # -> ToServer accept
    core.mixing()                                  # (legs to mix, muted legs) for this 20 ms frame
    cmds = core.handle(Close("hangup"))            # -> CloseAppLeg / HangupPhone ..., Finish

App legs are the members' WebRTC audio legs (`conference_join` from the server); phone legs are
phone_out calls of the server routed here with `conference` (the gateway `invite`), each with
its own `BridgeStateMachine` and the same SIP <-> reason mapping as a bridged call
(`decline_for`). Every leg that is connected and not muted is mixed; each hears the N-1 mix
(bridge/rtp/mixer.py, run by the shell bridge/gateway/conference.py on one 20 ms clock).
Protocol: docs/signalling.md, ## Group calls, "The conference on a gateway".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from jego_call.call.reasons import EndReason

from .call_core import BridgeEvent, BridgeState, BridgeStateMachine, decline_for
from .legs import LegAnswered, LegDtmf, LegEnded, LegEvent, LegRinging

INFO, WARNING = 20, 30


class AppLegState(Enum):
    JOINING = "joining"      # the member's offer is being answered
    CONNECTED = "connected"  # answer sent; audio flows once ICE/DTLS are up
    ENDED = "ended"


# --- inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Join:
    leg: str
    username: str
    sdp: str


@dataclass(frozen=True, slots=True)
class Leave:
    leg: str


@dataclass(frozen=True, slots=True)
class Mute:
    leg: str
    muted: bool


@dataclass(frozen=True, slots=True)
class AppIce:
    leg: str
    candidate: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AnswerReady:
    """OpenAppLeg done: the conference's answer for that leg."""

    leg: str
    sdp: str


@dataclass(frozen=True, slots=True)
class AppFailed:
    """An app leg could not start, or its WebRTC connection failed."""

    leg: str
    detail: str


@dataclass(frozen=True, slots=True)
class PhoneInvite:
    leg: str          # the phone_out call's id
    number: str       # E.164
    caller: str       # the member who added it


@dataclass(frozen=True, slots=True)
class PhoneServer:
    """A server message naming a phone leg (call_ended, hangup, cancel, error)."""

    leg: str
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PhoneEvent:
    leg: str
    event: LegEvent


@dataclass(frozen=True, slots=True)
class PhoneOpFailed:
    leg: str
    op: str
    error: str


@dataclass(frozen=True, slots=True)
class Close:
    """conference_close from the server (or the worker stopping): end every leg."""

    reason: str


Event = Join | Leave | Mute | AppIce | AnswerReady | AppFailed | PhoneInvite | PhoneServer | PhoneEvent | \
    PhoneOpFailed | Close


# --- commands --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ToServer:
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OpenAppLeg:
    """Answer `sdp` with a new WebRTC leg; AnswerReady or AppFailed comes back."""

    leg: str
    sdp: str


@dataclass(frozen=True, slots=True)
class AddIce:
    leg: str
    candidate: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CloseAppLeg:
    leg: str


@dataclass(frozen=True, slots=True)
class DialPhone:
    leg: str
    number: str


@dataclass(frozen=True, slots=True)
class HangupPhone:
    leg: str
    cause: int


@dataclass(frozen=True, slots=True)
class ReportPhone:
    """The phone leg is over: send its call_report (codec, counters)."""

    leg: str


@dataclass(frozen=True, slots=True)
class Finish:
    """Every leg is gone: drop the conference."""


@dataclass(frozen=True, slots=True)
class Log:
    level: int
    text: str


Command = ToServer | OpenAppLeg | AddIce | CloseAppLeg | DialPhone | HangupPhone | ReportPhone | Finish | Log


@dataclass(slots=True)
class AppLegInfo:
    leg: str
    username: str
    state: AppLegState = AppLegState.JOINING
    muted: bool = False


@dataclass(slots=True)
class PhoneLegInfo:
    leg: str
    number: str
    caller: str
    sm: BridgeStateMachine = field(default_factory=BridgeStateMachine)
    muted: bool = False
    server_done: bool = False   # the server has ended this call: tell it nothing more
    hung_up: bool = False


class ConferenceCore:
    """One conference's legs and decisions. See the module doc."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.apps: dict[str, AppLegInfo] = {}
        self.phones: dict[str, PhoneLegInfo] = {}
        self.closing = False
        self.finished = False
        self._out: list[Command] = []

    # --- queries ------------------------------------------------------------------------------
    def mixing(self) -> tuple[list[str], set[str]]:
        """(the legs whose audio is mixed and who hear the mix, the muted ones among them)."""
        legs = [a.leg for a in self.apps.values() if a.state is AppLegState.CONNECTED]
        legs += [p.leg for p in self.phones.values() if p.sm.state is BridgeState.CONNECTED]
        muted = {a.leg for a in self.apps.values() if a.muted} | {p.leg for p in self.phones.values() if p.muted}
        return legs, muted

    def owns(self, leg: str) -> bool:
        return leg in self.apps or leg in self.phones

    # --- events -------------------------------------------------------------------------------
    def handle(self, ev: Event) -> list[Command]:
        self._out = []
        if isinstance(ev, Join):
            self._join(ev)
        elif isinstance(ev, AnswerReady):
            app = self.apps.get(ev.leg)
            if app is not None and app.state is AppLegState.JOINING:
                app.state = AppLegState.CONNECTED
                self._to_server({"type": "conference_answer", "call_id": self.call_id, "leg": ev.leg, "sdp": ev.sdp})
        elif isinstance(ev, AppFailed):
            app = self.apps.get(ev.leg)
            if app is not None and app.state is not AppLegState.ENDED:
                self._log(WARNING, f"leg {ev.leg} failed: {ev.detail}")
                self._end_app(app)
                self._to_server({"type": "conference_leg_failed", "call_id": self.call_id, "leg": ev.leg,
                                 "detail": ev.detail[:200]})
        elif isinstance(ev, Leave):
            app = self.apps.get(ev.leg)
            if app is not None:
                self._end_app(app)
        elif isinstance(ev, Mute):
            target: AppLegInfo | PhoneLegInfo | None = self.apps.get(ev.leg) or self.phones.get(ev.leg)
            if target is not None:
                target.muted = ev.muted
        elif isinstance(ev, AppIce):
            if ev.leg in self.apps and self.apps[ev.leg].state is not AppLegState.ENDED:
                self._out.append(AddIce(ev.leg, ev.candidate))
        elif isinstance(ev, PhoneInvite):
            self._phone_invite(ev)
        elif isinstance(ev, PhoneServer):
            self._phone_server(ev)
        elif isinstance(ev, PhoneEvent):
            self._phone_event(ev)
        elif isinstance(ev, PhoneOpFailed):
            ph = self.phones.get(ev.leg)
            if ph is not None and not ph.sm.ended:
                self._phone_event(PhoneEvent(ev.leg, LegEnded(EndReason.FAILED, remote=False,
                                                              detail=f"{ev.op}: {ev.error}")))
        elif isinstance(ev, Close):
            self._close(ev.reason)
        self._maybe_finish()
        out, self._out = self._out, []
        return out

    # --- app legs -------------------------------------------------------------------------------
    def _join(self, ev: Join) -> None:
        if self.closing or ev.leg in self.apps:
            return
        self.apps[ev.leg] = AppLegInfo(ev.leg, ev.username)
        self._log(INFO, f"{ev.username} joins as {ev.leg}")
        self._out.append(OpenAppLeg(ev.leg, ev.sdp))

    def _end_app(self, app: AppLegInfo) -> None:
        if app.state is AppLegState.ENDED:
            return
        app.state = AppLegState.ENDED
        self._out.append(CloseAppLeg(app.leg))
        del self.apps[app.leg]

    # --- phone legs -----------------------------------------------------------------------------
    def _phone_invite(self, ev: PhoneInvite) -> None:
        if ev.leg in self.phones:
            return
        ph = PhoneLegInfo(ev.leg, ev.number, ev.caller)
        self.phones[ev.leg] = ph
        if self.closing:
            ph.sm.apply(BridgeEvent.FAIL)
            self._to_server({"type": "decline", "call_id": ev.leg, "reason": EndReason.FAILED.value,
                             "sip_code": None, "q850_cause": 41, "detail": "the group call has ended"})
            del self.phones[ev.leg]
            return
        ph.sm.apply(BridgeEvent.INVITE)
        self._log(INFO, f"{ev.caller} adds {ev.number} as {ev.leg}")
        self._out.append(DialPhone(ev.leg, ev.number))

    def _phone_server(self, ev: PhoneServer) -> None:
        ph = self.phones.get(ev.leg)
        if ph is None:
            return
        kind = ev.msg.get("type")
        if kind in ("call_ended", "hangup", "cancel", "error"):
            ph.server_done = kind != "error"
            self._hangup(ph, 16)

    def _hangup(self, ph: PhoneLegInfo, cause: int) -> None:
        if ph.hung_up or ph.sm.ended:
            return
        ph.hung_up = True
        self._out.append(HangupPhone(ph.leg, cause))

    def _phone_event(self, ev: PhoneEvent) -> None:
        ph = self.phones.get(ev.leg)
        if ph is None or ph.sm.ended:
            return
        e = ev.event
        if isinstance(e, LegRinging):
            event = BridgeEvent.EARLY_MEDIA if e.early_media else BridgeEvent.RING
            if ph.sm.can(event):
                first = ph.sm.state is BridgeState.INVITING
                ph.sm.apply(event)
                if first and not ph.server_done:
                    self._to_server({"type": "ringing", "call_id": ph.leg, "sip_code": e.sip_code})
        elif isinstance(e, LegAnswered):
            if ph.sm.can(BridgeEvent.ANSWER):
                ph.sm.apply(BridgeEvent.ANSWER)
                if ph.server_done or self.closing:
                    self._hangup(ph, 16)
                else:
                    self._to_server({"type": "accept", "call_id": ph.leg})
                    self._log(INFO, f"{ph.number} is in the call")
        elif isinstance(e, LegEnded):
            answered = ph.sm.answered
            ph.sm.apply(BridgeEvent.PHONE_END if e.remote else BridgeEvent.LOCAL_END)
            if not ph.server_done:
                if answered:
                    self._to_server({"type": "hangup", "call_id": ph.leg, "sip_code": e.sip_code,
                                     "q850_cause": e.q850_cause})
                else:
                    self._to_server({"type": "decline", "call_id": ph.leg, **decline_for(e)})
            self._out.append(ReportPhone(ph.leg))
            del self.phones[ph.leg]
        elif isinstance(e, LegDtmf):
            pass  # digits from a phone in a group call go nowhere (no IVR in the conference)

    # --- the end --------------------------------------------------------------------------------
    def _close(self, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._log(INFO, f"closing ({reason})")
        for app in list(self.apps.values()):
            self._end_app(app)
        for ph in list(self.phones.values()):
            ph.server_done = True
            self._hangup(ph, 16)

    def _maybe_finish(self) -> None:
        if self.closing and not self.apps and not self.phones and not self.finished:
            self.finished = True
            self._out.append(Finish())

    def _to_server(self, msg: dict[str, Any]) -> None:
        self._out.append(ToServer(msg))

    def _log(self, level: int, text: str) -> None:
        self._out.append(Log(level, text))
