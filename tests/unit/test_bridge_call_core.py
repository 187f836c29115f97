"""BridgeCallCore in virtual time: every decision of a bridged call, without aiortc, SIP or sleeps.

The core (bridge/gateway/call_core.py) is fed what the shell would feed it (the worker's start,
server messages, SIP leg events, results of media and leg operations, audio stamps, timer
ticks at its own deadlines) and the commands it returns are checked.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from bridge.gateway.call_core import (
    TRANSITIONS,
    AnswerApplied,
    AppAudio,
    BridgeCallCore,
    BridgeEvent,
    BridgeState,
    CallSettings,
    Command,
    Event,
    Finish,
    LegAnswer,
    LegDial,
    LegHangup,
    LegOpFailed,
    LegReject,
    LegSendDtmf,
    Log,
    MediaAcceptOffer,
    MediaAddIce,
    MediaCreateOffer,
    MediaFailed,
    MediaSetAnswer,
    OfferAnswered,
    OfferCreated,
    PhoneAudio,
    ServerMessage,
    Shutdown,
    StartInbound,
    StartOutbound,
    ToServer,
    WebRtcStateChanged,
    sip_refusal,
)
from bridge.gateway.legs import LegAnswered, LegDtmf, LegEnded, LegRinging
from jego_call.call.reasons import EndReason, from_sip

CID = "bc-0001"
NUMBER = "+8613800138000"
OFFER = "v=0\r\no=app\r\n"
ANSWER = "v=0\r\no=bridge\r\n"
APP_ANSWER = "v=0\r\no=app-answer\r\n"


class Bridge:
    """One core, a virtual clock and every command it returned."""

    def __init__(self, direction: str = "out", **settings: Any) -> None:
        self.core = BridgeCallCore(CID, direction, CallSettings(**settings))
        self.now = 100.0
        self.cmds: list[Command] = []

    def do(self, *events: Event) -> list[Command]:
        out: list[Command] = []
        for ev in events:
            out += self.core.handle(ev, self.now)
        self.cmds += out
        return out

    def server(self, **msg: Any) -> list[Command]:
        return self.do(ServerMessage({"call_id": CID, **msg}))

    def advance(self, seconds: float, app_audio: bool = False, phone_audio: bool = False) -> list[Command]:
        """Move the clock, ticking at each deadline like the shell's one timer; with `app_audio` /
        `phone_audio` that side keeps sending (its stamp is `now` at every tick)."""
        target = self.now + seconds
        out: list[Command] = []
        for _ in range(10_000):
            at = self.core.next_deadline()
            if at is None or at > target:
                break
            self.now = max(self.now, at)
            if app_audio:
                out += self.core.handle(AppAudio(self.now), self.now)
            if phone_audio:
                out += self.core.handle(PhoneAudio(self.now), self.now)
            out += self.core.handle_timer(self.now)
        else:
            raise AssertionError("deadlines fire without progress")
        self.now = target
        self.cmds += out
        return out

    def to_server(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [c.msg for c in self.cmds if isinstance(c, ToServer) and (type_ is None or c.msg["type"] == type_)]

    def of(self, kind: type) -> list[Any]:
        return [c for c in self.cmds if isinstance(c, kind)]

    def logs(self) -> list[str]:
        return [str(c) for c in self.of(Log)]

    def clear(self) -> None:
        self.cmds.clear()

    @property
    def state(self) -> BridgeState:
        return self.core.state


def outbound(**settings: Any) -> Bridge:
    """App -> phone, dialled: INVITE sent, nothing back yet."""
    b = Bridge("out", **settings)
    assert b.do(StartOutbound(NUMBER, OFFER)) == [MediaAcceptOffer(OFFER)]
    cmds = b.do(OfferAnswered(ANSWER))
    assert LegDial(NUMBER) in cmds and f"[call {CID}] dialling {NUMBER}" in [str(c) for c in cmds if isinstance(c, Log)]
    assert b.state is BridgeState.INVITING
    return b


def out_connected(early: bool = False, **settings: Any) -> Bridge:
    b = outbound(**settings)
    b.do(LegRinging(183, True) if early else LegRinging(180, False), LegAnswered("PCMA"))
    assert b.state is BridgeState.CONNECTED and b.core.connected_at == b.now
    b.clear()
    return b


def inbound(**settings: Any) -> Bridge:
    """Phone -> app: our offer went to the app's user as a gateway invite."""
    b = Bridge("in", **settings)
    assert b.do(StartInbound("+8613900001111", "bob")) == [MediaCreateOffer()]
    assert b.do(OfferCreated(ANSWER)) == [ToServer({"type": "invite", "to": "bob", "from": "+8613900001111",
                                                     "media": ["audio"], "sdp": ANSWER, "call_id": CID})]
    return b


def in_connected(**settings: Any) -> Bridge:
    b = inbound(**settings)
    b.server(type="ringing")
    assert b.server(type="accept", sdp=APP_ANSWER) == [MediaSetAnswer(APP_ANSWER)]
    assert b.do(AnswerApplied()) == [LegAnswer()]
    b.do(LegAnswered("PCMU"))
    assert b.state is BridgeState.CONNECTED and b.core.phone_codec == "PCMU"
    b.clear()
    return b


def finished(b: Bridge) -> bool:
    return b.core.finished and b.of(Finish) == [Finish()] and b.core.next_deadline() is None


# --- the whole table, through the core's inputs ----------------------------------------------------
S, E = BridgeState, BridgeEvent


def _ringing(b: Bridge) -> None:
    b.do(LegRinging(180, False))


def _early(b: Bridge) -> None:
    b.do(LegRinging(183, True))


def _connected(b: Bridge) -> None:
    b.do(LegAnswered("PCMU"))


def _in_ringing(b: Bridge) -> None:
    b.server(type="ringing")


SCENARIOS: dict[tuple[BridgeState, BridgeEvent], tuple[str, Callable[[Bridge], object], Callable[[Bridge], object]]] = {
    (S.IDLE, E.INVITE): ("out", lambda b: None, lambda b: b.do(StartOutbound(NUMBER, OFFER))),
    (S.IDLE, E.FAIL): ("out", lambda b: None, lambda b: b.do(Shutdown())),
    (S.INVITING, E.RING): ("out", lambda b: None, _ringing),
    (S.INVITING, E.EARLY_MEDIA): ("out", lambda b: None, _early),
    (S.RINGING, E.RING): ("out", _ringing, lambda b: b.do(LegRinging(180, False))),
    (S.RINGING, E.EARLY_MEDIA): ("out", _ringing, _early),
    (S.EARLY_MEDIA, E.RING): ("out", _early, _ringing),
    (S.EARLY_MEDIA, E.EARLY_MEDIA): ("out", _early, _early),
    (S.INVITING, E.ANSWER): ("out", lambda b: None, _connected),
    (S.RINGING, E.ANSWER): ("in", _in_ringing, lambda b: b.do(AnswerApplied())),
    (S.EARLY_MEDIA, E.ANSWER): ("out", _early, _connected),
    (S.INVITING, E.APP_END): ("out", lambda b: None, lambda b: b.server(type="cancel")),
    (S.RINGING, E.APP_END): ("in", _in_ringing, lambda b: b.server(type="call_ended", reason="declined")),
    (S.EARLY_MEDIA, E.APP_END): ("out", _early, lambda b: b.server(type="call_ended", reason="cancelled")),
    (S.CONNECTED, E.APP_END): ("out", _connected, lambda b: b.server(type="call_ended", reason="hangup")),
    (S.INVITING, E.PHONE_END): ("out", lambda b: None, lambda b: b.do(LegEnded(from_sip(404, 1), 404, 1))),
    (S.RINGING, E.PHONE_END): ("out", _ringing, lambda b: b.do(LegEnded(from_sip(486, 17), 486, 17))),
    (S.EARLY_MEDIA, E.PHONE_END): ("out", _early, lambda b: b.do(LegEnded(from_sip(480, 19), 480, 19))),
    (S.CONNECTED, E.PHONE_END): ("out", _connected, lambda b: b.do(LegEnded(EndReason.HANGUP, None, 16))),
    (S.INVITING, E.LOCAL_END): ("out", lambda b: None, lambda b: b.do(Shutdown())),
    (S.RINGING, E.LOCAL_END): ("in", _in_ringing, lambda b: b.do(Shutdown())),
    (S.EARLY_MEDIA, E.LOCAL_END): ("out", _early, lambda b: b.do(Shutdown())),
    (S.CONNECTED, E.LOCAL_END): ("out", _connected, lambda b: b.advance(7200)),
    (S.INVITING, E.FAIL): ("out", lambda b: None, lambda b: b.do(LegOpFailed("dial", "trunk down"))),
    (S.RINGING, E.FAIL): ("in", _in_ringing, lambda b: b.do(MediaFailed("set_answer", "bad answer SDP"))),
}
NOT_MADE_BY_THE_CORE = {
    (S.EARLY_MEDIA, E.FAIL): "set-up failures (bad SDP, dial refused) happen before the leg rings",
    (S.CONNECTED, E.FAIL): "an answered call ends by hangup, never as a set-up failure",
}


def test_every_table_move_has_a_scenario() -> None:
    assert set(SCENARIOS) | set(NOT_MADE_BY_THE_CORE) == set(TRANSITIONS)


@pytest.mark.parametrize(("state", "event"), list(SCENARIOS), ids=lambda v: getattr(v, "value", str(v)))
def test_every_transition_through_the_core(state: BridgeState, event: BridgeEvent) -> None:
    direction, setup, act = SCENARIOS[(state, event)]
    if state is S.IDLE:
        b = Bridge(direction)
    else:
        b = outbound() if direction == "out" else inbound()
    setup(b)
    assert b.state is state
    act(b)
    assert b.core.sm.history[-1] == (state, event, TRANSITIONS[(state, event)]), b.core.sm.history


# --- app -> phone --------------------------------------------------------------------------------
def test_early_media_183_with_sdp_then_180_then_answer() -> None:
    b = outbound()
    b.do(LegRinging(183, True))
    assert b.to_server() == [{"type": "ringing", "sip_code": 183, "sdp": ANSWER, "call_id": CID}]
    assert b.state is S.EARLY_MEDIA
    b.clear()
    b.do(LegRinging(180, False))  # a later 180 keeps the media flowing, and sends no second sdp
    b.do(LegRinging(183, True))   # ... as does another 183 with media
    assert b.to_server() == [{"type": "ringing", "sip_code": 180, "call_id": CID},
                             {"type": "ringing", "sip_code": 183, "call_id": CID}]
    assert b.state is S.EARLY_MEDIA
    b.clear()
    b.do(LegAnswered("PCMU"))
    assert b.to_server() == [{"type": "accept", "call_id": CID}]  # the answer SDP went with the 183
    assert f"[call {CID}] answered (PCMU)" in b.logs() and b.core.phone_codec == "PCMU"


def test_ringing_without_media_then_answer_carries_the_sdp() -> None:
    b = outbound()
    b.do(LegRinging(180, False), LegRinging(183, False))
    assert b.to_server() == [{"type": "ringing", "sip_code": 180, "call_id": CID},
                             {"type": "ringing", "sip_code": 183, "call_id": CID}]
    assert b.state is S.RINGING
    b.do(LegAnswered("PCMA"))
    assert b.to_server("accept") == [{"type": "accept", "sdp": ANSWER, "call_id": CID}]


def test_a_provisional_after_the_answer_is_ignored() -> None:
    b = out_connected()
    assert [c for c in b.do(LegRinging(180, False)) if not isinstance(c, Log)] == []
    assert b.state is S.CONNECTED and any("ignored" in t for t in b.logs())


@pytest.mark.parametrize(("code", "cause", "reason"), [
    (486, 17, "busy"), (480, 19, "no_answer"), (480, 20, "switched_off"), (404, 1, "not_found"),
    (484, 28, "invalid_number"), (503, 34, "congestion"), (408, 18, "timeout"), (603, 21, "declined"),
    (403, 21, "rejected"), (486, None, "busy"), (480, None, "no_answer"), (410, 22, "number_changed"),
])
def test_phone_refusals_become_a_decline_with_sip_and_q850(code: int, cause: int | None, reason: str) -> None:
    b = outbound()
    b.do(LegRinging(183, True))
    b.clear()
    b.do(LegEnded(from_sip(code, cause), code, cause))
    assert b.to_server() == [{"type": "decline", "reason": reason, "sip_code": code, "q850_cause": cause,
                              "detail": EndReason(reason).words(), "call_id": CID}]
    assert b.of(LegHangup) == b.of(LegReject) == []  # the leg has ended already
    assert finished(b) and b.core.end_info["by"] == "phone"


def test_no_response_at_all_is_unreachable() -> None:
    b = outbound()
    b.do(LegEnded(EndReason.TIMEOUT, None, None, detail="no response to INVITE"))
    [dec] = b.to_server("decline")
    assert (dec["reason"], dec["sip_code"], dec["detail"]) == ("unreachable", None, "no response to INVITE")


def test_the_phone_hangs_up_after_the_answer() -> None:
    b = out_connected()
    b.do(LegEnded(from_sip(0, 16), None, 16))
    assert b.to_server() == [{"type": "hangup", "q850_cause": 16, "call_id": CID}]
    assert finished(b) and b.of(LegHangup) == []


def test_app_hangs_up_after_the_answer_and_the_leg_confirms() -> None:
    b = out_connected()
    b.now += 30
    assert b.server(type="call_ended", reason="hangup")[-1] == LegHangup(16)  # BYE
    assert b.to_server() == [] and b.core.leg_wait_until == b.now + 35
    assert not b.core.finished and b.core.next_deadline() == b.now + 35
    b.now += 0.05
    b.do(LegEnded(EndReason.HANGUP, None, 16, remote=False))
    assert finished(b)
    assert b.server(type="ice", candidate=None) == []  # after the end nothing happens


# --- CANCEL races ---------------------------------------------------------------------------------
def test_app_cancels_while_ringing() -> None:
    b = outbound()
    b.do(LegRinging(180, False))
    b.clear()
    b.server(type="call_ended", reason="cancelled", by="alice")
    assert b.of(LegHangup) == [LegHangup(16)]  # CANCEL (RFC 3261 §9.1)
    assert b.to_server() == [] and b.state is S.ENDED and not b.core.finished
    b.do(LegRinging(183, True))  # a late provisional: nothing goes to the server any more
    assert b.to_server() == []
    b.do(LegEnded(EndReason.CANCELLED, 487, 16, remote=False))
    assert finished(b)


def test_a_200_crossing_the_cancel_is_hung_up() -> None:
    b = outbound()
    b.do(LegRinging(180, False))
    b.server(type="cancel")
    b.clear()
    b.do(LegAnswered("PCMU"))  # the far end answered before it saw our CANCEL
    assert b.of(LegHangup) == [LegHangup(16)]  # so it gets a BYE
    assert b.to_server() == [] and b.state is S.ENDED
    b.do(LegEnded(EndReason.HANGUP, None, 16, remote=False))
    assert finished(b)


def test_a_crossing_200_the_leg_ended_itself() -> None:
    """pyVoIP's leg ACKs and BYEs a 200 that crossed the CANCEL itself and reports one LegEnded."""
    b = outbound()
    b.do(LegRinging(180, False))
    b.server(type="cancel")
    b.clear()
    b.do(LegEnded(EndReason.CANCELLED, None, 16, remote=False, detail="200 OK crossed the CANCEL"))
    assert finished(b) and b.to_server() == []


def test_app_cancels_before_any_provisional() -> None:
    """No 1xx yet: the CANCEL cannot go out (RFC 3261 §9.1), the leg may never confirm; the core
    waits `leg_end_wait_s` for it, then closes anyway."""
    b = outbound(leg_end_wait_s=35)
    b.server(type="cancel")
    assert b.of(LegHangup) == [LegHangup(16)] and b.core.next_deadline() == b.now + 35
    b.advance(34.9)
    assert not b.core.finished
    b.advance(0.1)
    assert finished(b) and any("did not confirm" in t for t in b.logs())


def test_app_cancels_before_the_invite_went_out() -> None:
    """The app cancels while its offer is still being answered: the INVITE is never sent."""
    b = Bridge("out")
    b.do(StartOutbound(NUMBER, OFFER))
    b.server(type="cancel")
    b.do(LegEnded(EndReason.HANGUP, remote=False))  # an idle leg ends at once
    b.do(OfferAnswered(ANSWER))
    assert b.of(LegDial) == [] and finished(b)


# --- the bridge ends the call -----------------------------------------------------------------------
def test_maximum_call_length_is_a_deadline_q850_102() -> None:
    b = out_connected(max_call_s=600, media_timeout_s=30)
    t0 = b.now
    assert b.core.next_deadline() == t0 + 30  # the media deadline comes first ...
    b.advance(599.9, app_audio=True, phone_audio=True)  # ... and moves while audio flows
    assert b.state is S.CONNECTED and b.to_server() == []
    b.advance(0.1, app_audio=True, phone_audio=True)
    assert b.to_server() == [{"type": "hangup", "q850_cause": 102, "call_id": CID}]
    assert b.of(LegHangup) == [LegHangup(102)]  # BYE with Reason: Q.850;cause=102
    assert f"[call {CID}] ending: maximum call duration reached" in b.logs()
    assert b.now - t0 == pytest.approx(600)


@pytest.mark.parametrize(("app", "phone", "silent"), [(False, True, "app"), (True, False, "phone")])
def test_media_timeout_either_direction_cause_41(app: bool, phone: bool, silent: str) -> None:
    b = out_connected(media_timeout_s=5, max_call_s=7200)
    b.advance(4.99, app_audio=app, phone_audio=phone)
    assert b.state is S.CONNECTED
    b.advance(0.01, app_audio=app, phone_audio=phone)
    assert b.to_server() == [{"type": "hangup", "q850_cause": 41, "call_id": CID}]
    assert b.of(LegHangup) == [LegHangup(41)]
    assert f"[call {CID}] ending: no audio from the {silent}" in b.logs()


def test_audio_that_stops_later_ends_the_call_one_timeout_after_it_stopped() -> None:
    b = out_connected(media_timeout_s=5)
    b.advance(60.5, app_audio=True, phone_audio=True)
    assert b.state is S.CONNECTED
    quiet_since = b.core.phone_audio_at  # the phone's last frame: the last tick
    assert quiet_since is not None and b.now - 5 < quiet_since < b.now
    b.advance(quiet_since + 5 - b.now - 0.01, app_audio=True)
    assert b.state is S.CONNECTED
    b.advance(0.02, app_audio=True)
    assert b.core.sm.ended and "no audio from the phone" in b.logs()[-1]


def test_old_audio_stamps_do_not_shorten_the_first_timeout() -> None:
    """Audio seen before the answer (early media) counts from the answer, not from then."""
    b = outbound(media_timeout_s=5)
    b.do(LegRinging(183, True), PhoneAudio(b.now - 100), AppAudio(b.now - 100))
    b.do(LegAnswered("PCMU"))
    assert b.core.next_deadline() == b.now + 5


def test_webrtc_failure_ends_a_connected_call() -> None:
    b = out_connected()
    b.do(WebRtcStateChanged("connecting"), WebRtcStateChanged("connected"))
    assert b.state is S.CONNECTED
    b.do(WebRtcStateChanged("failed"))
    assert b.to_server() == [{"type": "hangup", "q850_cause": 41, "call_id": CID}]
    assert "ending: app media failed" in b.logs()[-1]


def test_webrtc_failure_during_early_media_ends_the_call_at_the_answer() -> None:
    b = outbound()
    b.do(LegRinging(183, True), WebRtcStateChanged("failed"))
    assert b.state is S.EARLY_MEDIA  # before the answer it waits: the phone may still answer
    b.do(LegAnswered("PCMU"))
    assert b.core.sm.ended and b.to_server("hangup") == [{"type": "hangup", "q850_cause": 41, "call_id": CID}]


@pytest.mark.parametrize(("setup", "server_msg", "leg_cmd"), [
    ("ringing_out", {"type": "decline", "reason": "failed", "sip_code": None, "q850_cause": 41,
                     "detail": "bridge shutting down"}, LegHangup(41)),
    ("connected_out", {"type": "hangup", "q850_cause": 41}, LegHangup(41)),
    ("ringing_in", {"type": "hangup", "q850_cause": 41}, LegReject(503, 41)),
    ("connected_in", {"type": "hangup", "q850_cause": 41}, LegHangup(41)),
])
def test_shutdown(setup: str, server_msg: dict[str, Any], leg_cmd: Command) -> None:
    if setup == "ringing_out":
        b = outbound()
        b.do(LegRinging(180, False))
    elif setup == "connected_out":
        b = out_connected()
    elif setup == "ringing_in":
        b = inbound()
        b.server(type="ringing")
    else:
        b = in_connected()
    b.clear()
    b.do(Shutdown(41))
    assert b.to_server() == [{**server_msg, "call_id": CID}]
    assert b.of(LegHangup) + b.of(LegReject) == [leg_cmd]
    assert b.do(Shutdown(41)) == []  # twice: nothing more
    b.do(LegEnded(EndReason.HANGUP, remote=False))
    assert finished(b)


def test_shutdown_before_the_start() -> None:
    b = Bridge("out")
    b.do(Shutdown())
    assert b.state is S.ENDED and b.core.sm.end_event is E.FAIL
    assert b.of(LegHangup) == [LegHangup(41)]
    assert b.do(StartOutbound(NUMBER, OFFER)) == []  # a start that comes later does nothing


# --- set-up failures --------------------------------------------------------------------------------
def test_bad_offer_from_the_app() -> None:
    b = Bridge("out")
    b.do(StartOutbound(NUMBER, "garbage"))
    b.do(MediaFailed("accept_offer", "bad offer SDP: no m= line"))
    [dec] = b.to_server("decline")
    assert dec == {"type": "decline", "reason": "failed", "sip_code": None, "q850_cause": None,
                   "detail": "bad offer: bad offer SDP: no m= line", "call_id": CID}
    assert b.of(LegDial) == [] and b.of(LegHangup) == [LegHangup(41)]


def test_trunk_down_when_dialling() -> None:
    b = outbound()
    b.do(LegOpFailed("dial", "no route"))
    [dec] = b.to_server("decline")
    assert (dec["reason"], dec["sip_code"], dec["detail"]) == ("unreachable", None,
                                                               "the phone network is unreachable: no route")
    assert f"[call {CID}] dial failed: no route" in b.logs()


def test_a_failing_hangup_does_not_keep_the_call() -> None:
    b = out_connected()
    b.server(type="hangup")
    b.do(LegOpFailed("hangup", "socket closed"))
    assert finished(b) and f"[call {CID}] ending the SIP leg failed: socket closed" in b.logs()


# --- phone -> app -------------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", list(EndReason))
def test_inbound_call_refused_with_the_sip_code_for_each_app_reason(reason: EndReason) -> None:
    b = inbound()
    b.server(type="ringing")
    b.clear()
    b.server(type="call_ended", reason=reason.value)
    assert b.of(LegReject) == [LegReject(*sip_refusal(reason))]
    assert b.to_server() == []  # the server ended it: nothing to tell it
    b.do(LegEnded(from_sip(*sip_refusal(reason)), *sip_refusal(reason), remote=False))
    assert finished(b)


@pytest.mark.parametrize(("reason", "sip"), [
    ("busy", (486, 17)), ("declined", (603, 21)), ("no_answer", (480, 19)), ("unavailable", (480, 20)),
    ("connection_lost", (480, 41)), ("server_shutdown", (503, 41)), ("cancelled", (487, 16))])
def test_inbound_refusals_people_meet(reason: str, sip: tuple[int, int]) -> None:
    b = inbound()
    b.server(type="call_ended", reason=reason)
    assert b.of(LegReject) == [LegReject(*sip)]


def test_inbound_to_an_unknown_user_is_404() -> None:
    b = inbound()
    b.server(type="error", code="unknown_user", message="no user 'bob'")
    assert b.of(LegReject) == [LegReject(404, 1)]
    assert any("server refused: unknown_user" in t for t in b.logs())


def test_errors_for_other_calls_or_after_the_answer_are_ignored() -> None:
    b = inbound()
    b.do(ServerMessage({"type": "error", "code": "invalid_state", "call_id": "other-call"}))
    assert b.state is S.INVITING
    b = in_connected()
    b.server(type="error", code="invalid_state")
    assert b.state is S.CONNECTED and b.cmds == []


def test_inbound_answered_then_app_hangs_up_is_a_bye() -> None:
    b = in_connected()
    b.server(type="call_ended", reason="hangup", by="bob")
    assert b.of(LegHangup) == [LegHangup(16)] and b.of(LegReject) == []


def test_inbound_caller_cancels_while_the_app_rings() -> None:
    b = inbound()
    b.server(type="ringing")
    b.clear()
    b.do(LegEnded(EndReason.CANCELLED, 487, 16, remote=True))
    assert b.to_server() == [{"type": "hangup", "q850_cause": 16, "sip_code": 487, "call_id": CID}]
    assert finished(b) and b.of(LegReject) == []


def test_inbound_bad_answer_from_the_app() -> None:
    b = inbound()
    b.server(type="accept", sdp="garbage")
    b.do(MediaFailed("set_answer", "bad answer SDP"))
    assert b.to_server("hangup") == [{"type": "hangup", "q850_cause": 47, "call_id": CID}]
    assert b.of(LegReject) == [LegReject(488, 65)] and b.of(LegAnswer) == []


def test_inbound_offer_cannot_be_made() -> None:
    b = Bridge("in")
    b.do(StartInbound("+8613900001111", "bob"), MediaFailed("create_offer", "no codec"))
    assert b.to_server() == [] and b.of(LegReject) == [LegReject(500, 41)]


def test_inbound_answering_the_leg_fails() -> None:
    b = inbound()
    b.server(type="accept", sdp=APP_ANSWER)
    b.do(AnswerApplied(), LegOpFailed("answer", "transport closed"))
    assert b.to_server("hangup") == [{"type": "hangup", "q850_cause": 41, "call_id": CID}]
    assert b.of(LegHangup) == [LegHangup(41)]


def test_ringing_and_accept_from_the_server_mean_nothing_on_an_outbound_call() -> None:
    b = outbound()
    assert b.server(type="ringing") == [] and b.server(type="accept", sdp=APP_ANSWER) == []
    assert b.state is S.INVITING


# --- DTMF and ICE -------------------------------------------------------------------------------------
def test_dtmf_both_ways_only_when_connected() -> None:
    b = outbound()
    assert b.server(type="dtmf", digits="1") == []
    b.do(LegDtmf("5"))
    assert b.to_server() == []
    b.do(LegAnswered("PCMU"))
    b.clear()
    assert b.server(type="dtmf", digits="123#")[-1] == LegSendDtmf("123#")
    assert b.server(type="dtmf", digits="") == []
    b.do(LegDtmf("5"), LegDtmf("#"))
    assert b.to_server() == [{"type": "dtmf", "digits": "5", "call_id": CID},
                             {"type": "dtmf", "digits": "#", "call_id": CID}]


def test_ice_goes_to_the_media_leg_while_the_call_lives() -> None:
    cand = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    b = outbound()
    assert b.server(type="ice", candidate=cand) == [MediaAddIce(cand)]
    assert b.server(type="ice", candidate=None) == [MediaAddIce(None)]
    b.server(type="cancel")
    assert b.server(type="ice", candidate=cand) == []


# --- the clock ---------------------------------------------------------------------------------------
def test_deadlines_always_make_progress_with_awkward_floats() -> None:
    """A tick at exactly `next_deadline()` must fire it (no float slip that re-arms forever)."""
    rng = random.Random(7)
    for _ in range(300):
        max_call = rng.uniform(0.1, 10_000)
        b = outbound(max_call_s=max_call, media_timeout_s=max_call * 10)
        b.now = rng.uniform(0, 1e6) + 0.1 + 0.2
        b.do(LegAnswered("PCMU"))
        at = b.core.next_deadline()
        assert at is not None
        b.now = at
        b.cmds += b.core.handle_timer(at)
        assert b.state is S.ENDED, (max_call, at)


def test_nothing_is_due_before_the_answer() -> None:
    b = outbound()
    b.do(LegRinging(180, False))
    assert b.core.next_deadline() is None and b.core.handle_timer(b.now + 1e6) == []


def test_direction_is_checked() -> None:
    with pytest.raises(ValueError, match="direction"):
        BridgeCallCore(CID, "sideways")


# --- a paid call: the server's cut, and the bridge's own backstop (the invite's max_s) ----------------
def paid_call(max_s: float, reason: EndReason = EndReason.CREDIT_EXHAUSTED, **settings: Any) -> Bridge:
    b = Bridge("out", **settings)
    assert b.do(StartOutbound(NUMBER, OFFER, max_s, reason)) == [MediaAcceptOffer(OFFER)]
    b.do(OfferAnswered(ANSWER), LegRinging(180, False), LegAnswered("PCMU"))
    assert b.state is S.CONNECTED
    b.clear()
    return b


@pytest.mark.parametrize("reason", [EndReason.CREDIT_EXHAUSTED, EndReason.LIMIT_REACHED])
def test_the_servers_cut_is_a_bye_with_cause_16_and_the_reason(reason: EndReason) -> None:
    b = paid_call(8)
    b.advance(8, app_audio=True, phone_audio=True)
    b.server(type="call_ended", reason=reason.value)
    assert b.of(LegHangup) == [LegHangup(16, reason.value)]  # Reason: Q.850;cause=16;text="credit_exhausted"
    assert b.to_server() == []  # the server ended it: nothing to tell it
    b.do(LegEnded(EndReason.HANGUP, None, 16, remote=False))
    assert b.of(Finish) == [Finish()]


def test_an_ordinary_end_keeps_the_plain_bye() -> None:
    b = paid_call(8)
    b.server(type="call_ended", reason="hangup")
    assert b.of(LegHangup) == [LegHangup(16)]


def test_the_backstop_ends_a_paid_call_one_second_after_max_s_when_the_server_is_silent() -> None:
    b = paid_call(8, EndReason.LIMIT_REACHED, media_timeout_s=30, max_call_s=7200)
    t0 = b.now
    assert b.core.next_deadline() == t0 + 9
    b.advance(8.99, app_audio=True, phone_audio=True)
    assert b.state is S.CONNECTED and b.of(LegHangup) == []
    b.advance(0.01, app_audio=True, phone_audio=True)
    assert b.now - t0 == pytest.approx(9)
    assert b.of(LegHangup) == [LegHangup(16, "limit_reached")]
    assert b.to_server() == [{"type": "hangup", "q850_cause": 16, "call_id": CID}]
    assert any("limit_reached (max_s 8" in line for line in b.logs())


def test_a_free_call_has_no_backstop() -> None:
    b = out_connected(media_timeout_s=30, max_call_s=600)
    b.advance(500, app_audio=True, phone_audio=True)
    assert b.state is S.CONNECTED
