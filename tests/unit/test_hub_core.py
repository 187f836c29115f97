"""HubCore in virtual time: every decision of the signalling hub, without sockets, sleeps or SQLite.

Each test drives the pure core (jego_call/signalling/hub_core.py) with session ids, parsed
messages and a clock it advances, and reads the commands the core returned (tests/unit/hubkit.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jego_call.call.reasons import GATEWAY_DECLINE_REASONS, EndReason
from jego_call.call.state import TRANSITIONS, CallEvent, CallState
from jego_call.errors import ErrorCode, SignallingError
from jego_call.signalling.hub_core import GATEWAY_EVENTS, CallEnded, Send, is_phone_target

from .hubkit import ANSWER, SDP, WALL0, HubWorld

CID = "call-0001"
CID2 = "call-0002"
MOBILE = "+8613800138000"


def err(fn: Callable[[], object]) -> SignallingError:
    with pytest.raises(SignallingError) as info:
        fn()
    return info.value


def world(**kw: object) -> HubWorld:
    """alice (a1) and bob (b1, b2) online and contacts of each other; carol (c1) online."""
    w = HubWorld(contacts={"alice": ["bob"], "bob": ["alice"]}, **kw)  # type: ignore[arg-type]
    for sid, user in (("a1", "alice"), ("b1", "bob"), ("b2", "bob"), ("c1", "carol")):
        w.attach(sid, user)
    w.drain()
    return w


def invite(w: HubWorld, sid: str = "a1", to: str = "bob", call_id: str = CID, **kw: object) -> None:
    w.msg(sid, type="invite", call_id=call_id, to=to, sdp=SDP, **kw)


def connected(w: HubWorld, by: str = "b1") -> None:
    invite(w)
    w.msg(by, type="accept", call_id=CID, sdp=ANSWER)


def phone_world(**kw: object) -> HubWorld:
    w = world(**kw)
    w.gateway("gw1", "gw1", 4)
    w.drain()
    return w


def phone_call(w: HubWorld, to: str = MOBILE) -> None:
    invite(w, to=to)


# --- the whole call table, driven through the hub's inputs ------------------------------------------
S, E = CallState, CallEvent


def _ring(w: HubWorld) -> None:
    invite(w)
    w.msg("b1", type="ringing", call_id=CID)


def _phone_ring(w: HubWorld) -> None:
    phone_call(w)
    w.msg("gw1", type="ringing", call_id=CID, sip_code=180)


SCENARIOS: dict[tuple[CallState, CallEvent], tuple[Callable[[HubWorld], None], Callable[[HubWorld], object]]] = {
    (S.CALLING, E.RING): (invite, lambda w: w.msg("b1", type="ringing", call_id=CID)),
    (S.CALLING, E.ACCEPT): (invite, lambda w: w.msg("b1", type="accept", call_id=CID, sdp=ANSWER)),
    (S.RINGING, E.RING): (_ring, lambda w: w.msg("b2", type="ringing", call_id=CID)),
    (S.RINGING, E.ACCEPT): (_ring, lambda w: w.msg("b2", type="accept", call_id=CID, sdp=ANSWER)),
    (S.CALLING, E.DECLINE): (invite, lambda w: w.msg("b1", type="decline", call_id=CID)),
    (S.RINGING, E.DECLINE): (_ring, lambda w: w.msg("b2", type="hangup", call_id=CID)),  # callee hangs up: decline
    (S.CALLING, E.BUSY): (connected, lambda w: invite(w, "c1", call_id=CID2)),
    (S.RINGING, E.BUSY): (_ring, lambda w: w.msg("b1", type="decline", call_id=CID, reason="busy")),
    (S.CALLING, E.UNAVAILABLE): (lambda w: (w.detach("b1"), w.detach("b2")) and None, invite),
    (S.RINGING, E.UNAVAILABLE): (_phone_ring, lambda w: w.msg("gw1", type="decline", call_id=CID,
                                                              reason="unavailable", sip_code=480, q850_cause=20)),
    (S.CALLING, E.CANCEL): (invite, lambda w: w.msg("a1", type="cancel", call_id=CID)),
    (S.RINGING, E.CANCEL): (_ring, lambda w: w.msg("a1", type="hangup", call_id=CID)),  # caller hangs up: cancel
    (S.CALLING, E.TIMEOUT): (invite, lambda w: w.advance(45)),
    (S.RINGING, E.TIMEOUT): (_phone_ring, lambda w: w.msg("gw1", type="decline", call_id=CID, reason="no_answer",
                                                          sip_code=480, q850_cause=19)),
    (S.CALLING, E.CONNECTION_LOST): (invite, lambda w: w.detach("a1")),
    (S.RINGING, E.CONNECTION_LOST): (_ring, lambda w: (w.detach("b1"), w.detach("b2"))),
    (S.CONNECTED, E.CONNECTION_LOST): (connected, lambda w: w.detach("b1")),
    (S.CALLING, E.SHUTDOWN): (invite, lambda w: w.shutdown()),
    (S.RINGING, E.SHUTDOWN): (_ring, lambda w: w.shutdown()),
    (S.CONNECTED, E.SHUTDOWN): (connected, lambda w: w.shutdown()),
    (S.CALLING, E.FAIL): (lambda w: None, lambda w: phone_call(w, "110")),
    (S.RINGING, E.FAIL): (_phone_ring, lambda w: w.msg("gw1", type="decline", call_id=CID, reason="congestion",
                                                       sip_code=503, q850_cause=34)),
    (S.CONNECTED, E.HANGUP): (connected, lambda w: w.msg("a1", type="hangup", call_id=CID)),
    (S.CONNECTED, E.MAX_DURATION): (connected, lambda w: w.advance(14400)),
}
# Moves the table allows that the hub never makes, and why.
NOT_MADE_BY_THE_HUB = {
    (S.CALLING, E.HANGUP): "a hangup before the answer is the caller's cancel or the callee's decline",
    (S.RINGING, E.HANGUP): "a hangup before the answer is the caller's cancel or the callee's decline",
    (S.CONNECTED, E.FAIL): "an answered call ends by hangup: a gateway's decline after the answer is invalid_state",
}


def test_every_table_move_has_a_scenario() -> None:
    assert set(SCENARIOS) | set(NOT_MADE_BY_THE_HUB) == set(TRANSITIONS)
    assert not set(SCENARIOS) & set(NOT_MADE_BY_THE_HUB)


@pytest.mark.parametrize(("state", "event"), list(SCENARIOS), ids=lambda v: getattr(v, "value", str(v)))
def test_every_transition_through_the_hub(state: CallState, event: CallEvent) -> None:
    w = phone_world()
    setup, act = SCENARIOS[(state, event)]
    setup(w)
    w.drain()
    act(w)
    cid = CID2 if (state, event) == (S.CALLING, E.BUSY) else CID
    call = w.call(cid)
    assert (state, event, TRANSITIONS[(state, event)]) in call.sm.history, call.sm.history
    if TRANSITIONS[(state, event)] is S.ENDED:
        assert call.sm.ended and cid in w.ended and cid not in w.core.calls
        assert any(r.call_id == cid for r in w.records())


@pytest.mark.parametrize(("state", "event"), list(NOT_MADE_BY_THE_HUB))
def test_pre_answer_hangup_and_late_gateway_decline(state: CallState, event: CallEvent) -> None:
    if event is E.HANGUP:
        w = world()
        invite(w)
        if state is S.RINGING:
            w.msg("b1", type="ringing", call_id=CID)
        w.msg("a1", type="hangup", call_id=CID)
        assert w.ended[CID].sm.end_event is E.CANCEL
        assert w.last("b1", "call_ended")["reason"] == "cancelled"
    else:
        w = phone_world()
        phone_call(w)
        w.msg("gw1", type="accept", call_id=CID, sdp=ANSWER)
        e = err(lambda: w.msg("gw1", type="decline", call_id=CID, reason="congestion"))
        assert e.code is ErrorCode.INVALID_STATE and w.call(CID).state is S.CONNECTED


# --- a call between users ---------------------------------------------------------------------------
def test_call_between_users_end_to_end() -> None:
    w = world()
    invite(w, media=["audio", "video"])
    assert w.inbox("a1") == [{"type": "call_state", "call_id": CID, "state": "calling"}]
    for sid in ("b1", "b2"):
        assert w.inbox(sid) == [{"type": "invite", "call_id": CID, "from": "alice", "media": ["audio", "video"],
                                 "sdp": SDP, "display_name": "alice"}]
    assert w.inbox("c1") == []
    w.drain()
    w.msg("b1", type="ringing", call_id=CID)
    w.msg("b2", type="ringing", call_id=CID)  # a second device rings: the caller hears of it once
    assert w.inbox("a1") == [{"type": "ringing", "call_id": CID},
                             {"type": "call_state", "call_id": CID, "state": "ringing"}]
    w.drain()
    w.now += 5
    w.msg("b2", type="accept", call_id=CID, sdp=ANSWER)
    assert w.inbox("a1", "accept") == [{"type": "accept", "call_id": CID, "sdp": ANSWER}]
    assert w.last("a1", "call_state")["state"] == "connected"
    assert w.inbox("b2", "call_state") == [{"type": "call_state", "call_id": CID, "state": "connected"}]
    assert w.inbox("b1", "call_ended") == [{"type": "call_ended", "call_id": CID,
                                            "reason": EndReason.ANSWERED_ELSEWHERE}]
    # presence: each watcher sees the other in a call
    assert {"type": "presence", "username": "bob", "presence": "in_call", "display_name": "bob"} in w.inbox("a1")
    assert {"type": "presence", "username": "alice", "presence": "in_call", "display_name": "alice"} in w.inbox("b2")
    assert w.core.presence("bob") == "in_call" and w.core.presence("carol") == "online"
    w.drain()
    w.now += 60
    w.msg("a1", type="hangup", call_id=CID)
    ended = {"type": "call_ended", "call_id": CID, "reason": EndReason.HANGUP, "by": "alice"}
    assert w.inbox("a1", "call_ended") == [ended] and w.inbox("b2", "call_ended") == [ended]
    assert w.inbox("b1", "call_ended") == []  # no longer a party
    [rec] = w.records()
    assert (rec.caller, rec.callee, rec.caller_kind, rec.callee_kind, rec.media, rec.outcome) == \
        ("alice", "bob", "user", "user", "audio+video", "hangup")
    assert (rec.started_at, rec.answered_at, rec.ended_at) == (WALL0, WALL0 + 5, WALL0 + 65)
    assert [c.call.id for c in w.commands if isinstance(c, CallEnded)] == [CID]
    assert w.core.calls == {} and w.core.user_call == {} and CID in w.core.recent
    assert w.core.presence("alice") == "online"
    assert f"[call {CID}] ended: hangup" in w.logs()
    assert err(lambda: w.msg("a1", type="hangup", call_id=CID)).code is ErrorCode.UNKNOWN_CALL


def test_first_answer_wins_across_devices() -> None:
    w = world()
    w.attach("b3", "bob")
    invite(w)
    w.msg("a1", type="ice", call_id=CID, candidate=None)  # before the answer: every device
    assert all(w.inbox(s, "ice") for s in ("b1", "b2", "b3"))
    w.msg("b3", type="accept", call_id=CID, sdp=ANSWER)
    for s in ("b1", "b2"):
        assert w.last(s, "call_ended")["reason"] == "answered_elsewhere"
    # the winner's second accept: invalid_state; the losers are no longer parties
    assert err(lambda: w.msg("b3", type="accept", call_id=CID, sdp=ANSWER)).code is ErrorCode.INVALID_STATE
    for s in ("b1", "b2"):
        for kind, extra in (("accept", {"sdp": ANSWER}), ("hangup", {})):
            e = err(lambda s=s, kind=kind, extra=extra: w.msg(s, type=kind, call_id=CID, **extra))  # type: ignore[misc]
            assert e.code is ErrorCode.NOT_PARTY
    assert err(lambda: w.msg("b3", type="decline", call_id=CID)).code is ErrorCode.INVALID_STATE
    assert err(lambda: w.msg("b3", type="ringing", call_id=CID)).code is ErrorCode.INVALID_STATE
    assert err(lambda: w.msg("a1", type="cancel", call_id=CID)).code is ErrorCode.INVALID_STATE
    w.drain()
    w.msg("a1", type="ice", call_id=CID, candidate=None)  # after: only the answering device
    w.msg("a1", type="dtmf", call_id=CID, digits="12#")
    assert w.inbox("b3") == [{"type": "ice", "call_id": CID, "candidate": None},
                             {"type": "dtmf", "call_id": CID, "digits": "12#", "from": "alice"}]
    assert w.inbox("b1") == w.inbox("b2") == []
    w.msg("b3", type="dtmf", call_id=CID, digits="9")
    assert w.last("a1", "dtmf") == {"type": "dtmf", "call_id": CID, "digits": "9", "from": "bob"}
    assert w.call(CID).state is S.CONNECTED


def test_who_may_do_what() -> None:
    w = world()
    invite(w)
    e = err(lambda: w.msg("c1", type="accept", call_id=CID, sdp=ANSWER))
    assert e.code is ErrorCode.NOT_PARTY and e.call_id == CID
    assert err(lambda: w.msg("c1", type="ice", call_id=CID, candidate=None)).code is ErrorCode.NOT_PARTY
    assert err(lambda: w.msg("a1", type="accept", call_id=CID, sdp=ANSWER)).code is ErrorCode.NOT_PARTY
    assert err(lambda: w.msg("b1", type="cancel", call_id=CID)).code is ErrorCode.NOT_PARTY
    assert err(lambda: w.msg("a1", type="dtmf", call_id=CID, digits="1")).code is ErrorCode.INVALID_STATE
    assert err(lambda: w.msg("b1", type="accept", call_id=CID)).code is ErrorCode.INVALID_MESSAGE  # no sdp
    assert err(lambda: w.msg("b1", type="ringing", call_id=CID, sdp=ANSWER)).code is ErrorCode.INVALID_MESSAGE
    assert err(lambda: w.msg("b1", type="decline", call_id=CID, reason="congestion")).code is ErrorCode.INVALID_MESSAGE
    assert err(lambda: w.msg("a1", type="call_report", call_id=CID, app={}, phone={})).code is ErrorCode.FORBIDDEN
    assert w.call(CID).state is S.CALLING and w.reports() == []  # nothing moved


def test_invite_refusals_change_nothing() -> None:
    w = world(recent_limit=2)
    assert err(lambda: invite(w, to="Alice")).code is ErrorCode.SELF_CALL
    assert err(lambda: invite(w, to="nobody")).code is ErrorCode.UNKNOWN_USER
    assert w.core.calls == {} and w.commands == []
    invite(w)
    assert err(lambda: invite(w, "c1", to="alice")).code is ErrorCode.CALL_EXISTS  # a live id
    assert err(lambda: invite(w, to="carol", call_id=CID2)).code is ErrorCode.ALREADY_IN_CALL
    w.msg("a1", type="cancel", call_id=CID)
    assert err(lambda: invite(w, "c1", to="alice")).code is ErrorCode.CALL_EXISTS  # a recent id
    for i in range(2):  # remembered ids are bounded: the oldest goes
        invite(w, call_id=f"call-x{i:04d}")
        w.msg("a1", type="cancel", call_id=f"call-x{i:04d}")
    assert CID not in w.core.recent and len(w.core.recent) == 2
    invite(w)  # a forgotten id may be used again
    assert w.call(CID).state is S.CALLING


def test_callee_offline_busy_and_declines() -> None:
    w = world()
    w.detach("c1")
    invite(w, to="carol", call_id="call-offline")
    assert w.inbox("a1") == [{"type": "call_state", "call_id": "call-offline", "state": "calling"},
                             {"type": "call_ended", "call_id": "call-offline", "reason": EndReason.UNAVAILABLE}]
    assert w.records()[-1].outcome == "unavailable"
    w.attach("c1", "carol")
    connected(w, "b1")
    w.drain()
    invite(w, "c1", to="bob", call_id=CID2)  # bob is in a call: busy at once, his devices never ring
    assert w.last("c1", "call_ended")["reason"] == "busy"
    assert w.inbox("b1") == w.inbox("b2") == []
    w.msg("a1", type="hangup", call_id=CID)
    for reason, outcome in (("declined", "declined"), ("busy", "busy")):
        w.drain()
        cid = f"call-{reason}"
        invite(w, "c1", to="alice", call_id=cid)
        w.msg("a1", type="decline", call_id=cid, reason=reason)
        assert w.last("c1", "call_ended") == {"type": "call_ended", "call_id": cid, "reason": outcome, "by": "alice"}
        assert w.last("a1", "call_ended")["by"] == "alice"  # the decliner hears the end too


def test_too_many_sessions_and_presence_on_attach() -> None:
    w = HubWorld(contacts={"alice": ["bob", "carol"], "bob": ["alice"]}, max_sessions=2)
    w.attach("b1", "bob")
    w.drain()
    w.attach("a1", "alice", hello={"type": "auth_ok"})
    assert w.inbox("a1") == [{"type": "auth_ok"},
                             {"type": "presence", "username": "bob", "presence": "online", "display_name": "bob"},
                             {"type": "presence", "username": "carol", "presence": "offline", "display_name": "carol"}]
    assert w.inbox("b1") == [{"type": "presence", "username": "alice", "presence": "online", "display_name": "alice"}]
    w.drain()
    w.attach("a2", "alice")
    assert w.inbox("b1") == []  # alice was online already: no second push
    e = err(lambda: w.attach("a3", "alice"))
    assert e.code is ErrorCode.TOO_MANY_SESSIONS and "a3" not in w.core.sessions
    w.detach("a1")
    assert w.inbox("b1") == []
    w.detach("a2")
    assert w.inbox("b1") == [{"type": "presence", "username": "alice", "presence": "offline", "display_name": "alice"}]
    w.drain()
    w.attach("c1", "carol")
    assert w.inbox("b1") == []  # bob does not have carol as a contact
    w.attach("a1", "alice")
    w.drain()
    w.directory.contact_lists["bob"].append("carol")
    w._take(w.core.contact_added("bob", "carol"))
    assert w.inbox("b1") == [{"type": "presence", "username": "carol", "presence": "online", "display_name": "carol"}]


# --- timers -----------------------------------------------------------------------------------------
def test_ring_timeout_is_a_deadline() -> None:
    w = world()
    assert w.core.next_deadline() is None
    invite(w)
    assert w.core.next_deadline() == w.now + 45
    w.msg("b1", type="ringing", call_id=CID)  # ringing does not restart the clock
    assert w.core.next_deadline() == w.t0 + 45
    w.advance(44.999)
    assert w.inbox("a1", "call_ended") == [] and w.call(CID).state is S.RINGING
    w.advance(0.001)
    assert w.last("a1", "call_ended")["reason"] == "no_answer"
    assert w.last("b1", "call_ended")["reason"] == "no_answer" and w.last("b2", "call_ended")["reason"] == "no_answer"
    assert w.core.next_deadline() is None and w.records()[-1].outcome == "no_answer"


def test_the_answer_replaces_the_ring_timeout_with_the_maximum_length() -> None:
    w = world(ring_timeout_s=45, max_call_s=120)
    invite(w)
    w.advance(30)
    w.msg("b1", type="accept", call_id=CID, sdp=ANSWER)
    assert w.core.next_deadline() == w.now + 120
    w.advance(20)  # past the old ring deadline: nothing fires
    assert w.call(CID).state is S.CONNECTED and not w.inbox("a1", "call_ended")
    w.advance(99.9)
    assert w.call(CID).state is S.CONNECTED
    w.advance(0.1)
    for sid in ("a1", "b1"):
        assert w.last(sid, "call_ended") == {"type": "call_ended", "call_id": CID, "reason": EndReason.MAX_DURATION}
    rec = w.records()[-1]
    assert rec.outcome == "max_duration" and rec.ended_at - rec.answered_at == pytest.approx(120)  # type: ignore[operator]
    assert w.core.next_deadline() is None


def test_many_calls_keep_their_own_deadlines() -> None:
    w = HubWorld(users=[f"u{i}" for i in range(6)], ring_timeout_s=10)
    for i in range(6):
        w.attach(f"s{i}", f"u{i}")
    for n, (a, b) in enumerate(((0, 1), (2, 3), (4, 5))):
        w.msg(f"s{a}", type="invite", call_id=f"call-{n:04d}", to=f"u{b}", sdp=SDP)
        w.advance(3)
    w.msg("s5", type="accept", call_id="call-0002", sdp=ANSWER)  # the last one is answered
    w.msg("s2", type="cancel", call_id="call-0001")                # the middle one is cancelled
    w.drain()
    w.advance(4)  # t = 13: the first call's ring deadline (t = 10) has passed
    assert [m["call_id"] for m in w.inbox("s0", "call_ended")] == ["call-0000"]
    w.advance(100)
    assert w.inbox("s4", "call_ended") == [] and w.call("call-0002").state is S.CONNECTED


# --- connections lost --------------------------------------------------------------------------------
def test_caller_connection_lost() -> None:
    w = world()
    invite(w)
    w.drain()
    w.detach("a1")
    for sid in ("b1", "b2"):
        assert w.last(sid, "call_ended") == {"type": "call_ended", "call_id": CID,
                                             "reason": EndReason.CONNECTION_LOST, "by": "alice"}
    assert {"type": "presence", "username": "alice", "presence": "offline", "display_name": "alice"} in w.inbox("b1")
    assert w.core.user_call == {} and w.core.next_deadline() is None


def test_answered_device_lost_ends_the_call() -> None:
    w = world()
    connected(w, "b2")
    w.drain()
    w.detach("b1")  # another of bob's devices: the call goes on
    assert w.call(CID).state is S.CONNECTED and w.inbox("a1") == []
    w.detach("b2")
    assert w.last("a1", "call_ended")["reason"] == "connection_lost"
    assert w.last("a1", "call_ended")["by"] == "bob"


def test_ringing_device_lost_ends_the_call_only_when_none_is_left() -> None:
    w = world()
    w.attach("b3", "bob")
    invite(w)
    w.msg("b1", type="ringing", call_id=CID)
    w.drain()
    w.detach("b1")
    w.detach("b2")
    assert w.call(CID).state is S.RINGING and w.call(CID).ringing_sessions == {"b3"}
    assert w.inbox("a1") == []
    w.msg("a1", type="ice", call_id=CID, candidate=None)
    assert w.inbox("b3", "ice") and not w.inbox("b1", "ice")
    w.detach("b3")
    assert w.last("a1", "call_ended")["reason"] == "connection_lost"
    assert w.core.presence("bob") == "offline"


def test_detach_of_an_unknown_session_does_nothing() -> None:
    w = world()
    assert w.detach("nobody") == []
    w.detach("a1")
    w.drain()
    assert w.detach("a1") == []


# --- shutdown ---------------------------------------------------------------------------------------
def test_shutdown_ends_every_call_and_closes_every_session() -> None:
    w = phone_world()
    connected(w)
    invite(w, "c1", to=MOBILE, call_id=CID2)
    w.drain()
    w.shutdown()
    assert w.last("a1", "call_ended")["reason"] == "server_shutdown"
    assert w.last("b1", "call_ended")["reason"] == "server_shutdown"
    ended = w.last("c1", "call_ended")
    assert ended["reason"] == "server_shutdown" and ended["sip_code"] is None
    assert w.last("gw1", "call_ended")["call_id"] == CID2
    assert {(c.session, c.code) for c in w.closes()} == {(s, 1001) for s in ("a1", "b1", "b2", "c1", "gw1")}
    assert w.core.calls == {} and w.core.next_deadline() is None
    assert err(lambda: w.attach("a2", "alice")).code is ErrorCode.INTERNAL
    assert err(lambda: w.gateway("gw2", "gw2")).code is ErrorCode.INTERNAL


# --- phone calls: routing ---------------------------------------------------------------------------
@pytest.mark.parametrize(("to", "reason"), [
    ("110", "emergency"), ("+86 120", "emergency"), ("+86123", "invalid_number"), ("12", "invalid_number"),
    ("0086 571 1234567", "invalid_number"), ("+49 30 12345678", "rejected"),
])
def test_numbers_refused_without_a_gateway(to: str, reason: str) -> None:
    w = phone_world()
    phone_call(w, to)
    ended = w.last("a1", "call_ended")
    assert ended["reason"] == reason and ended["sip_code"] is None and ended["q850_cause"] is None
    assert ended.get("detail")
    assert w.inbox("gw1") == [] and w.core.gateways["gw1"].calls == set()
    assert w.records()[-1].callee_kind == "phone"


def test_international_allowed_by_config() -> None:
    w = phone_world(allow_international=True)
    phone_call(w, "+49 30 12345678")
    assert w.last("gw1", "invite")["to"] == "+493012345678"


def test_route_to_the_least_loaded_gateway_with_room() -> None:
    w = world()
    invite(w, to=MOBILE, call_id="call-nogw")
    assert w.last("a1", "call_ended")["reason"] == "unreachable"  # no gateway at all
    w.gateway("g1", "g1", capacity=1)
    w.gateway("g2", "g2", capacity=4)
    w.drain()
    phone_call(w, "138 0013 8000")
    inv = w.last("g1", "invite")  # both empty: the name decides
    assert inv == {"type": "invite", "call_id": CID, "from": "alice", "to": MOBILE, "media": ["audio"], "sdp": SDP}
    assert w.inbox("a1") == [{"type": "call_state", "call_id": CID, "state": "calling"}]
    invite(w, "b1", to=MOBILE, call_id=CID2)
    assert w.last("g2", "invite")["call_id"] == CID2  # g1 is full
    invite(w, "c1", to=MOBILE, call_id="call-0003")
    assert w.last("g2", "invite")["call_id"] == "call-0003"
    assert (w.core.gateways["g1"].calls, w.core.gateways["g2"].calls) == ({CID}, {CID2, "call-0003"})
    w.msg("g1", type="decline", call_id=CID, reason="busy", sip_code=486, q850_cause=17)
    assert w.core.gateways["g1"].calls == set()
    assert w.core.pick_gateway() is w.core.gateways["g1"]


def test_gateway_lost_ends_its_calls() -> None:
    w = phone_world()
    phone_call(w)
    w.msg("gw1", type="accept", call_id=CID, sdp=ANSWER)
    w.drain()
    w.detach("gw1")
    assert w.last("a1", "call_ended")["reason"] == "connection_lost"
    assert "gateway gw1 disconnected with 1 calls" in w.logs()
    assert w.core.gateways == {} and w.core.pick_gateway() is None


def test_early_media_and_the_answer_without_sdp() -> None:
    w = phone_world()
    phone_call(w)
    w.drain()
    w.msg("gw1", type="ringing", call_id=CID, sip_code=183, sdp=ANSWER)
    assert w.inbox("a1") == [
        {"type": "ringing", "call_id": CID, "sip_code": 183, "sdp": ANSWER, "early_media": True},
        {"type": "call_state", "call_id": CID, "state": "ringing"}]
    w.drain()
    w.msg("gw1", type="ringing", call_id=CID, sip_code=180)  # a later 180 keeps the early media
    assert w.inbox("a1") == []
    e = err(lambda: w.msg("gw1", type="ringing", call_id=CID, sip_code=183, sdp=ANSWER))
    assert e.code is ErrorCode.INVALID_MESSAGE  # one early-media answer only
    w.msg("gw1", type="accept", call_id=CID)
    assert w.inbox("a1", "accept") == [{"type": "accept", "call_id": CID}]
    assert w.call(CID).early_sdp_sent and w.call(CID).state is S.CONNECTED


def test_a_180_then_a_183_with_media() -> None:
    w = phone_world()
    phone_call(w)
    w.drain()
    w.msg("gw1", type="ringing", call_id=CID, sip_code=180)
    w.msg("gw1", type="ringing", call_id=CID, sip_code=183, sdp=ANSWER)
    assert w.inbox("a1") == [
        {"type": "ringing", "call_id": CID, "sip_code": 180},
        {"type": "call_state", "call_id": CID, "state": "ringing"},
        {"type": "ringing", "call_id": CID, "sip_code": 183, "sdp": ANSWER, "early_media": True}]
    e = err(lambda: w.msg("gw1", type="accept", call_id="call-9999", sdp=ANSWER))
    assert e.code is ErrorCode.UNKNOWN_CALL


def test_accept_without_sdp_needs_early_media() -> None:
    w = phone_world()
    phone_call(w)
    assert err(lambda: w.msg("gw1", type="accept", call_id=CID)).code is ErrorCode.INVALID_MESSAGE
    w.msg("gw1", type="accept", call_id=CID, sdp=ANSWER)
    assert w.last("a1", "accept")["sdp"] == ANSWER


@pytest.mark.parametrize("reason", sorted(GATEWAY_DECLINE_REASONS))
def test_every_gateway_decline_reason(reason: EndReason) -> None:
    w = phone_world()
    phone_call(w)
    w.msg("gw1", type="ringing", call_id=CID, sip_code=180)
    w.drain()
    code, cause = reason.sip_code if (reason.sip_code or 0) >= 300 else None, reason.q850
    fields = {"sip_code": code} if code else {}
    w.msg("gw1", type="decline", call_id=CID, reason=reason.value, q850_cause=cause, detail="from the carrier",
          **fields)
    ended = w.last("a1", "call_ended")
    assert ended == {"type": "call_ended", "call_id": CID, "reason": reason, "sip_code": code, "q850_cause": cause,
                     "detail": "from the carrier"}
    call = w.ended[CID]
    assert call.sm.end_event is GATEWAY_EVENTS.get(reason, CallEvent.FAIL)
    assert (call.sip_code, call.q850_cause) == (code, cause)
    rec = w.records()[-1]
    assert (rec.outcome, rec.sip_code, rec.q850_cause, rec.callee) == (reason.value, code, cause, MOBILE)


def test_phone_hangs_up_and_reports() -> None:
    w = phone_world()
    phone_call(w)
    w.msg("gw1", type="accept", call_id=CID, sdp=ANSWER)
    w.msg("a1", type="dtmf", call_id=CID, digits="0123456789*#")
    assert w.last("gw1", "dtmf") == {"type": "dtmf", "call_id": CID, "digits": "0123456789*#", "from": "alice"}
    w.msg("gw1", type="hangup", call_id=CID, q850_cause=16)
    assert w.last("a1", "call_ended") == {"type": "call_ended", "call_id": CID, "reason": EndReason.HANGUP,
                                          "by": MOBILE, "sip_code": None, "q850_cause": 16}
    w.msg("gw1", type="call_report", call_id=CID, codec="opus/PCMU", app={"packets_sent": 5},
          phone={"packets_received": 4})
    [rep] = w.reports()  # it may come after the end
    assert (rep.call_id, rep.codec, rep.app, rep.phone) == (CID, "opus/PCMU", {"packets_sent": 5},
                                                            {"packets_received": 4})
    assert w.core.presence("alice") == "online"


def test_user_hangup_and_cancel_go_to_the_gateway() -> None:
    w = phone_world()
    phone_call(w)
    w.msg("gw1", type="ringing", call_id=CID, sip_code=180)
    w.msg("a1", type="cancel", call_id=CID)
    assert w.last("gw1", "call_ended") == {"type": "call_ended", "call_id": CID, "reason": EndReason.CANCELLED,
                                           "by": "alice", "sip_code": None, "q850_cause": None}
    invite(w, to=MOBILE, call_id=CID2)
    w.msg("gw1", type="accept", call_id=CID2, sdp=ANSWER)
    w.msg("a1", type="hangup", call_id=CID2)
    assert w.last("gw1", "call_ended")["reason"] == "hangup"


# --- phone calls into the app -----------------------------------------------------------------------
def phone_in(w: HubWorld, to: str = "bob", call_id: str = CID) -> None:
    w.msg("gw1", type="invite", call_id=call_id, to=to, sdp=SDP, **{"from": MOBILE})


def test_phone_to_app_rings_every_device_and_connects() -> None:
    w = phone_world()
    phone_in(w)
    for sid in ("b1", "b2"):
        assert w.last(sid, "invite") == {"type": "invite", "call_id": CID, "from": MOBILE, "media": ["audio"],
                                         "sdp": SDP}
    assert w.last("gw1", "call_state")["state"] == "calling"
    assert w.core.gateways["gw1"].calls == {CID}
    w.msg("b1", type="ringing", call_id=CID)
    assert w.last("gw1", "ringing") == {"type": "ringing", "call_id": CID}  # no sip_code from a user
    w.msg("b2", type="accept", call_id=CID, sdp=ANSWER)
    assert w.last("gw1", "accept")["sdp"] == ANSWER
    assert w.last("b1", "call_ended")["reason"] == "answered_elsewhere"
    assert w.core.presence("bob") == "in_call"
    w.msg("gw1", type="hangup", call_id=CID, q850_cause=16)
    assert w.last("b2", "call_ended")["by"] == MOBILE
    rec = w.records()[-1]
    assert (rec.caller, rec.caller_kind, rec.callee, rec.callee_kind, rec.outcome) == \
        (MOBILE, "phone", "bob", "user", "hangup")


@pytest.mark.parametrize(("how", "reason"), [
    ("offline", "unavailable"), ("busy", "busy"), ("decline", "declined"), ("decline_busy", "busy"),
    ("ring_timeout", "no_answer"), ("devices_lost", "connection_lost")])
def test_phone_to_app_outcomes_reach_the_gateway(how: str, reason: str) -> None:
    w = phone_world()
    if how == "offline":
        w.detach("b1")
        w.detach("b2")
    if how == "busy":
        invite(w, "b1", to="carol", call_id=CID2)
        w.msg("c1", type="accept", call_id=CID2, sdp=ANSWER)
    phone_in(w)
    if how == "decline":
        w.msg("b1", type="decline", call_id=CID)
    elif how == "decline_busy":
        w.msg("b2", type="decline", call_id=CID, reason="busy")
    elif how == "ring_timeout":
        w.advance(45)
    elif how == "devices_lost":
        w.detach("b1")
        w.detach("b2")
    ended = w.last("gw1", "call_ended")
    assert ended["reason"] == reason and ended["call_id"] == CID


def test_gateway_invite_needs_a_caller_and_a_user() -> None:
    w = phone_world()
    e = err(lambda: w.msg("gw1", type="invite", call_id=CID, to="bob", sdp=SDP))
    assert e.code is ErrorCode.INVALID_MESSAGE
    assert err(lambda: phone_in(w, "nobody")).code is ErrorCode.UNKNOWN_USER
    assert w.core.calls == {} and w.core.gateways["gw1"].calls == set()


def test_a_session_unknown_to_the_core_is_refused() -> None:
    w = world()
    assert err(lambda: w.msg("zz", type="hangup", call_id=CID)).code is ErrorCode.NOT_AUTHENTICATED


def test_phone_targets() -> None:
    for to in ("+8613800138000", "138 0013 8000", "010-6552-9988", "010 (6552) 9988", "110"):
        assert is_phone_target(to)
    for to in ("bob", "b0b", "+86 bob", "(010) 65529988", "1", ""):
        assert not is_phone_target(to)


def test_commands_name_sessions_by_id_only() -> None:
    """What a cluster node would need: every Send names a session id it can route."""
    w = phone_world()
    phone_call(w)
    phone_in(w, call_id=CID2)
    assert all(isinstance(c.session, str) and c.session in {"a1", "b1", "b2", "c1", "gw1"}
               for c in w.commands if isinstance(c, Send))


def test_blocked_caller_is_told_only_not_available_and_names_travel() -> None:
    w = world()
    w.directory.names["alice"] = "王芳"
    w.directory.blocks.add(("bob", "carol"))
    w.drain()
    invite(w, "c1", to="bob", call_id="call-blocked")
    assert w.last("c1", "call_ended")["reason"] == EndReason.UNAVAILABLE  # same words as offline
    assert w.inbox("b1", "invite") == w.inbox("b2", "invite") == []       # bob's devices never ring
    invite(w, "a1", to="bob", call_id="call-named")
    assert w.last("b1", "invite")["display_name"] == "王芳" == w.last("b2", "invite")["display_name"]


# --- a cluster's view: sessions and calls of other nodes (jego_call/cluster/node.py feeds these) -----
def cluster_world() -> HubWorld:
    """This node: alice (a1). Node B: bob's devices rb1, rb2; carol's rc1."""
    w = HubWorld(contacts={"alice": ["bob"], "bob": ["alice"]})
    w.attach("a1", "alice")
    for sid, user in (("rb1", "bob"), ("rb2", "bob"), ("rc1", "carol")):
        w._take(w.core.attach_remote(sid, user, "B"))
    w.drain()
    return w


def test_remote_sessions_ring_and_count_for_presence_but_get_no_presence_pushes() -> None:
    w = HubWorld(contacts={"alice": ["bob"], "bob": ["alice"]})
    w.attach("a1", "alice")
    w.drain()
    w._take(w.core.attach_remote("rb1", "bob", "B"))
    assert w.core.presence("bob") == "online"
    assert w.last("a1", "presence") == {"type": "presence", "username": "bob", "presence": "online",
                                        "display_name": "bob"}
    w.drain()
    w._take(w.core.attach_remote("rb1", "bob", "B"))  # the same entry twice (bus + reload): nothing new
    assert w.commands == []
    w.attach("a2", "alice")  # node B pushes presence to its own sessions: none is sent to rb1 here
    assert w.inbox("rb1", "presence") == []
    invite(w, to="bob")
    assert {c.session for c in w.commands if isinstance(c, Send) and c.msg["type"] == "invite"} == {"rb1"}


def test_first_answer_wins_with_remote_devices() -> None:
    w = cluster_world()
    invite(w)
    assert w.call(CID).ringing_sessions == {"rb1", "rb2"}
    w.drain()
    w.msg("rb2", type="accept", call_id=CID, sdp=ANSWER)
    assert w.last("a1", "accept")["sdp"] == ANSWER
    assert w.last("rb1", "call_ended")["reason"] == "answered_elsewhere"
    assert err(lambda: w.msg("rb1", type="accept", call_id=CID, sdp=ANSWER)).code is ErrorCode.NOT_PARTY
    assert w.call(CID).answered_session == "rb2"


def test_a_call_another_node_owns_makes_its_users_busy_here() -> None:
    w = cluster_world()
    w._take(w.core.note_call(["bob", "carol"], "remote-1", "B", False))
    assert w.core.busy("bob") and w.core.presence("bob") == "online"  # ringing there: not yet in_call
    w._take(w.core.note_call(["bob", "carol"], "remote-1", "B", True))
    assert w.core.presence("bob") == "in_call"
    assert w.last("a1", "presence")["presence"] == "in_call"
    invite(w)
    assert w.last("a1", "call_ended")["reason"] == "busy"
    assert w.inbox("rb1", "invite") == []
    w.drain()
    w._take(w.core.clear_call(["bob"], "another-call"))  # not the call bob is in: nothing changes
    assert w.core.busy("bob")
    w._take(w.core.clear_call(["bob", "carol"], "remote-1"))
    assert not w.core.busy("bob") and w.core.presence("bob") == "online"
    assert w.core.remote_calls_of("B") == {}
    invite(w, call_id=CID2)
    assert w.inbox("rb1", "invite")


def test_a_caller_busy_on_another_node_cannot_start_a_call() -> None:
    w = cluster_world()
    w._take(w.core.note_call(["alice"], "remote-1", "B", True))
    assert err(lambda: invite(w, to="bob")).code is ErrorCode.ALREADY_IN_CALL
    assert w.core.calls == {}


def test_a_dead_nodes_sessions_end_their_calls_with_peer_lost() -> None:
    w = cluster_world()
    connected(w, by="rb1")
    w.drain()
    for sid in ("rb1", "rb2", "rc1"):
        w._take(w.core.detach(sid, now=w.now, wall=w.wall, reason=EndReason.PEER_LOST))
    end = w.last("a1", "call_ended")
    assert end["reason"] == "peer_lost" and end["call_id"] == CID
    assert [r.outcome for r in w.records()] == ["peer_lost"]
    assert w.core.presence("bob") == "offline" and not w.core.busy("alice")


def test_adopt_ends_a_call_of_a_dead_owner_once_with_one_record() -> None:
    w = cluster_world()
    snap = {"id": "remote-1", "caller": "carol", "callee": "alice", "media": ["audio"], "caller_session": "rc1",
            "created_at": WALL0, "state": "connected", "ringing": [], "answered": "a1",
            "answered_at": WALL0 + 1, "rang": True, "kind": "user", "early_sdp_sent": False}
    w._take(w.core.note_call(["carol", "alice"], "remote-1", "B", True))
    w.drain()
    w._take(w.core.adopt(snap, now=w.now, wall=w.wall))
    assert w.last("a1", "call_ended") == {"type": "call_ended", "call_id": "remote-1", "reason": "peer_lost"}
    assert w.inbox("rc1", "call_ended")  # still attached here: told as well (the shell relays it)
    (rec,) = w.records()
    assert rec.call_id == "remote-1" and rec.outcome == "peer_lost" and rec.answered_at == WALL0 + 1
    assert not w.core.busy("alice") and not w.core.busy("carol") and w.core.calls == {}
    w.drain()
    w._take(w.core.adopt(snap, now=w.now, wall=w.wall))  # ended here already: nothing twice
    assert w.records() == [] and w.inbox("a1") == []


def test_drop_call_tells_only_this_nodes_sessions_and_writes_no_record() -> None:
    w = cluster_world()
    connected(w, by="rb1")
    w.drain()
    w._take(w.core.drop_call(CID, now=w.now, wall=w.wall))
    assert w.last("a1", "call_ended")["reason"] == "peer_lost"
    assert w.inbox("rb1", "call_ended") == [] and w.records() == []
    assert w.core.calls == {} and not w.core.busy("alice")


def test_reserved_gateway_on_another_node_takes_the_phone_call() -> None:
    w = cluster_world()
    w.gateway("gw-here", "here", 4)
    w._take(w.core.attach_remote_gateway("gw-b", "there", 1, "B"))
    w.drain()
    w.core.reserve_gateway(CID, "gw-b")  # the cluster's claim picked B's worker (most free capacity)
    invite(w, to=MOBILE)
    assert w.inbox("gw-b", "invite") and w.inbox("gw-here", "invite") == []
    assert w.core.reserved == {}
    w.core.reserve_gateway(CID2, "")     # the claim found no free capacity anywhere
    w.msg("a1", type="hangup", call_id=CID)
    w.drain()
    invite(w, to=MOBILE, call_id=CID2)
    assert w.last("a1", "call_ended")["reason"] == "unreachable"
