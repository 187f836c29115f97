"""Group calls in the hub, in virtual time: the one `GroupCallMachine` table, the members' moves,
and every decision of the group-call desk (jego_call/groups/calls.py) through HubCore's inputs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from jego_call.call.reasons import EndReason
from jego_call.errors import ErrorCode, InvalidTransition, SignallingError
from jego_call.groups.calls import (
    END_REASONS,
    MAX_PARTICIPANTS,
    MAX_VIDEO,
    MEMBER_MOVES,
    TRANSITIONS,
    GroupCallEvent,
    GroupCallMachine,
    GroupCallState,
    MemberState,
    Participant,
)
from jego_call.signalling.hub_core import WriteCallRecord

from .hubkit import ANSWER, SDP, HubWorld

GID = "g0123456789abcdef"
CID = "gcall-0001"
ECHO = "+8613800138000"


def err(fn: Callable[[], object]) -> SignallingError:
    with pytest.raises(SignallingError) as info:
        fn()
    return info.value


# --- the one state machine ---------------------------------------------------------------------
def machine_in(state: GroupCallState) -> GroupCallMachine:
    sm = GroupCallMachine()
    path = {GroupCallState.OPENING: [], GroupCallState.LIVE: [GroupCallEvent.ANSWERED],
            GroupCallState.ENDED: [GroupCallEvent.EMPTY]}[state]
    for ev in path:
        sm.apply(ev)
    return sm


@pytest.mark.parametrize(("state", "event"), list(itertools.product(GroupCallState, GroupCallEvent)))
def test_whole_group_call_table(state: GroupCallState, event: GroupCallEvent) -> None:
    sm = machine_in(state)
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition):
            sm.apply(event)
        assert sm.state is state
    else:
        assert sm.apply(event) is expected
        if expected is GroupCallState.ENDED:
            assert sm.end_reason is END_REASONS[event]


@pytest.mark.parametrize(("state", "verb"), list(itertools.product(
    MemberState, ["ring", "miss", "join", "answered", "decline", "stop", "leave"])))
def test_member_moves(state: MemberState, verb: str) -> None:
    p = Participant("x", state)
    expected = MEMBER_MOVES.get((state, verb))
    if expected is None:
        with pytest.raises(InvalidTransition):
            p.move(verb)
        assert p.state is state
    else:
        p.move(verb)
        assert p.state is expected


# --- the desk through the hub ------------------------------------------------------------------
@dataclass
class Groups:
    members: dict[str, list[str]] = field(default_factory=dict)

    def group_members(self, group_id: str) -> list[str] | None:
        return self.members.get(group_id)

    def group_name(self, group_id: str) -> str:
        return "一家人"


def world(members: list[str] | None = None, online: list[str] | None = None, gateway: bool = True,
          **kw: Any) -> HubWorld:
    members = members or ["mum", "lili", "wei", "gran"]
    w = HubWorld(users=members + ["bob"], ring_timeout_s=30.0, **kw)
    w.core.set_group_directory(Groups({GID: members}))
    for u in online if online is not None else ["mum", "lili", "wei"]:
        w.attach(f"{u}1", u)
    w.attach("bob1", "bob")
    if gateway:
        w.gateway("gw1", "gw1", 16)
    w.drain()
    return w


def start(w: HubWorld, sid: str = "mum1", media: list[str] | None = None) -> None:
    w.msg(sid, type="group_call_start", call_id=CID, group=GID, media=media or ["audio"], sdp=SDP)


def answer(w: HubWorld, leg: str) -> None:
    w.msg("gw1", type="conference_answer", call_id=CID, leg=leg, sdp=ANSWER)


def join(w: HubWorld, sid: str, video: bool = False) -> None:
    w.msg(sid, type="group_call_join", call_id=CID, sdp=SDP, video=video)


def state(w: HubWorld, sid: str = "mum1") -> dict[str, Any]:
    return w.last(sid, "group_call_state")


def members(w: HubWorld, sid: str = "mum1") -> dict[str, str]:
    return {p["username"]: p["state"] for p in state(w, sid)["participants"]}


def live(w: HubWorld, *joiners: str, media: list[str] | None = None) -> None:
    """mum starts; each of `joiners` joins; the conference answers everyone."""
    start(w, media=media)
    answer(w, "mum.1")
    for u in joiners:
        join(w, f"{u}1", video=bool(media and "video" in media))
        answer(w, f"{u}.1")


def test_start_rings_the_online_members_and_opens_the_conference() -> None:
    w = world()
    start(w)
    join_msg = w.last("gw1", "conference_join")
    assert (join_msg["call_id"], join_msg["leg"], join_msg["username"], join_msg["sdp"]) == (CID, "mum.1", "mum", SDP)
    ring = w.last("lili1", "group_call_ring")
    assert (ring["group"], ring["from"], ring["name"], ring["media"]) == (GID, "mum", "一家人", ["audio"])
    assert not w.inbox("gran1") and not w.inbox("bob1")   # gran is offline, bob not a member
    st = state(w, "lili1")
    assert st["state"] == "opening" and members(w, "lili1") == {
        "mum": "joining", "lili": "ringing", "wei": "ringing", "gran": "missed"}
    assert {p["username"]: p["reason"] for p in st["participants"]}["gran"] == "unavailable"
    answer(w, "mum.1")
    assert w.last("mum1", "group_call_answer") == {"type": "group_call_answer", "call_id": CID, "sdp": ANSWER,
                                                   "video": False}
    assert state(w)["state"] == "live" and members(w)["mum"] == "joined"
    assert w.core.presence("mum") == "in_call"


def test_join_decline_ring_timeout_and_ring_again() -> None:
    w = world()
    start(w)
    answer(w, "mum.1")
    join(w, "lili1")
    assert w.last("gw1", "conference_join")["leg"] == "lili.1"
    assert members(w)["lili"] == "joining"
    answer(w, "lili.1")
    assert members(w)["lili"] == "joined"
    w.msg("wei1", type="group_call_decline", call_id=CID)
    assert members(w)["wei"] == "declined"
    assert err(lambda: w.msg("wei1", type="group_call_decline", call_id=CID)).code is ErrorCode.INVALID_STATE
    # wei is rung again by lili, and this time does not answer
    w.msg("lili1", type="group_call_ring", call_id=CID, username="wei")
    assert members(w)["wei"] == "ringing" and len(w.inbox("wei1", "group_call_ring")) == 2
    w.advance(29)
    assert members(w)["wei"] == "ringing"
    w.advance(2)
    assert members(w)["wei"] == "missed"
    assert {p["username"]: p["reason"] for p in state(w)["participants"]}["wei"] == "no_answer"
    # a late joiner joins the running call
    join(w, "wei1")
    answer(w, "wei.1")
    assert members(w) == {"mum": "joined", "lili": "joined", "wei": "joined", "gran": "missed"}
    assert err(lambda: join(w, "wei1")).code is ErrorCode.INVALID_STATE


def test_ringing_an_offline_member_marks_them_missed() -> None:
    w = world()
    live(w)
    w.msg("mum1", type="group_call_ring", call_id=CID, username="gran")
    assert members(w)["gran"] == "missed"
    assert err(lambda: w.msg("mum1", type="group_call_ring", call_id=CID, username="bob")).code is ErrorCode.NOT_FOUND
    assert err(lambda: w.msg("mum1", type="group_call_ring", call_id=CID, username="mum")).code is \
        ErrorCode.INVALID_STATE


def test_mute_goes_to_the_conference() -> None:
    w = world()
    live(w, "lili")
    w.msg("lili1", type="group_call_mute", call_id=CID, muted=True)
    assert w.last("gw1", "conference_mute") == {"type": "conference_mute", "call_id": CID, "leg": "lili.1",
                                                "muted": True}
    assert {p["username"]: p["muted"] for p in state(w)["participants"]}["lili"] is True
    assert err(lambda: w.msg("wei1", type="group_call_mute", call_id=CID, muted=True)).code is ErrorCode.NOT_PARTY


def test_leave_ends_only_that_members_leg_and_the_last_app_participant_ends_the_call() -> None:
    w = world()
    live(w, "lili")
    w.msg("lili1", type="group_call_leave", call_id=CID)
    assert w.last("gw1", "conference_leave") == {"type": "conference_leave", "call_id": CID, "leg": "lili.1"}
    assert w.last("lili1", "group_call_left")["reason"] == EndReason.LEFT
    assert members(w)["lili"] == "left" and state(w)["state"] == "live"
    assert not w.inbox("gw1", "conference_close")
    assert w.core.presence("lili") == "online"
    w.msg("mum1", type="group_call_leave", call_id=CID)
    assert w.last("gw1", "conference_close")["reason"] == EndReason.HANGUP
    assert w.last("wei1", "group_call_ended") == {"type": "group_call_ended", "call_id": CID, "group": GID,
                                                  "reason": EndReason.HANGUP}
    assert CID not in w.core.group_calls.calls
    assert err(lambda: join(w, "wei1")).code is ErrorCode.UNKNOWN_CALL
    # a new call may start in the group, but not with a used call_id
    assert err(lambda: start(w)).code is ErrorCode.CALL_EXISTS


def test_phone_added_is_routed_like_an_app_to_phone_call() -> None:
    w = world()
    live(w, "lili")
    w.msg("lili1", type="group_call_add_phone", call_id=CID, number="138 0013 8000")
    invite = w.last("gw1", "invite")
    leg = invite["call_id"]
    assert invite == {"type": "invite", "call_id": leg, "from": "lili", "to": ECHO, "media": ["audio"],
                      "conference": CID}   # normalised by numbering, no SDP: it joins the conference
    call = w.core.calls[leg]
    assert call.kind == "phone_out" and call.conference == CID
    assert state(w)["phones"] == [{"leg": leg, "number": ECHO, "state": "calling", "muted": False, "added_by": "lili",
                                   "reason": None}]
    w.msg("gw1", type="ringing", call_id=leg, sip_code=180)
    assert state(w)["phones"][0]["state"] == "ringing"
    w.msg("gw1", type="accept", call_id=leg)
    assert state(w)["phones"][0]["state"] == "joined"
    assert not w.inbox("lili1", "accept") and not w.inbox("lili1", "call_state")   # no 1:1 call for lili
    w.msg("mum1", type="group_call_mute", call_id=CID, muted=True, leg=leg)
    assert w.last("gw1", "conference_mute")["leg"] == leg
    # the last app participant leaves: the phone leg is hung up, its call record written (billing's path)
    w.msg("lili1", type="group_call_leave", call_id=CID)
    w.msg("mum1", type="group_call_leave", call_id=CID)
    ended = [m for m in w.inbox("gw1", "call_ended") if m["call_id"] == leg]
    assert ended and ended[0]["reason"] == EndReason.HANGUP
    rec = [r for r in w.records() if r.call_id == leg]
    assert rec and isinstance(rec[0], WriteCallRecord)
    assert (rec[0].caller, rec[0].callee, rec[0].callee_kind, rec[0].outcome) == ("lili", ECHO, "phone", "hangup")
    assert leg not in w.core.calls and not w.core.gateways["gw1"].calls


@pytest.mark.parametrize(("number", "reason"), [("110", EndReason.EMERGENCY), ("12", EndReason.INVALID_NUMBER),
                                                ("+4930123456", EndReason.REJECTED)])
def test_phone_refusals_need_no_sip(number: str, reason: EndReason) -> None:
    w = world()
    live(w)
    w.msg("mum1", type="group_call_add_phone", call_id=CID, number=number)
    assert not w.inbox("gw1", "invite")
    ph = state(w)["phones"][0]
    assert (ph["state"], ph["reason"]) == ("ended", reason)
    assert state(w)["state"] == "live"


def test_a_phone_that_hangs_up_leaves_the_call_running() -> None:
    w = world()
    live(w)
    w.msg("mum1", type="group_call_add_phone", call_id=CID, number=ECHO)
    leg = w.last("gw1", "invite")["call_id"]
    w.msg("gw1", type="accept", call_id=leg)
    w.msg("gw1", type="hangup", call_id=leg, sip_code=None, q850_cause=16)
    assert state(w)["phones"][0]["state"] == "ended" and state(w)["state"] == "live"
    w.msg("mum1", type="group_call_add_phone", call_id=CID, number=ECHO)
    leg2 = w.last("gw1", "invite")["call_id"]
    assert leg2 != leg
    w.msg("gw1", type="decline", call_id=leg2, reason="busy", sip_code=486, q850_cause=17)
    assert state(w)["phones"][1]["reason"] == EndReason.BUSY


def test_video_mesh_relays_between_video_members_up_to_four() -> None:
    names = ["mum", "lili", "wei", "gran", "ann"]
    w = world(members=names, online=names)
    live(w, "lili", "wei", "gran", media=["audio", "video"])
    assert sorted(p["username"] for p in state(w)["participants"] if p["video"]) == ["gran", "lili", "mum", "wei"]
    w.msg("wei1", type="mesh_offer", call_id=CID, to="lili", sdp=SDP)
    assert w.last("lili1", "mesh_offer") == {"type": "mesh_offer", "call_id": CID, "from": "wei", "sdp": SDP}
    w.msg("lili1", type="mesh_answer", call_id=CID, to="wei", sdp=ANSWER)
    assert w.last("wei1", "mesh_answer")["from"] == "lili"
    w.msg("lili1", type="mesh_ice", call_id=CID, to="wei", candidate=None)
    assert w.last("wei1", "mesh_ice") == {"type": "mesh_ice", "call_id": CID, "from": "lili", "candidate": None}
    # the fifth is in the call with audio; video is refused in plain words
    join(w, "ann1", video=True)
    notice = w.last("ann1", "group_call_notice")
    assert notice["code"] == "video_full" and notice["max_video"] == MAX_VIDEO and "4 people" in notice["detail"]
    answer(w, "ann.1")
    assert w.last("ann1", "group_call_answer")["video"] is False and members(w)["ann"] == "joined"
    assert err(lambda: w.msg("ann1", type="mesh_offer", call_id=CID, to="lili", sdp=SDP)).code is \
        ErrorCode.INVALID_STATE
    # someone leaves the mesh: a place is free again
    w.msg("gran1", type="group_call_leave", call_id=CID)
    w.msg("ann1", type="group_call_leave", call_id=CID)
    join(w, "ann1", video=True)
    assert len(w.inbox("ann1", "group_call_notice")) == 1


def test_at_most_eight_participants_phones_included() -> None:
    names = [f"m{i}xx" for i in range(MAX_PARTICIPANTS + 1)]
    w = world(members=names, online=names)
    w.msg("m0xx1", type="group_call_start", call_id=CID, group=GID, media=["audio"], sdp=SDP)
    for n in names[1:MAX_PARTICIPANTS - 1]:
        join(w, f"{n}1")
    w.msg("m0xx1", type="group_call_add_phone", call_id=CID, number=ECHO)
    assert err(lambda: join(w, f"{names[-1]}1")).code is ErrorCode.CALL_FULL
    assert err(lambda: w.msg("m0xx1", type="group_call_add_phone", call_id=CID, number=ECHO)).code is \
        ErrorCode.CALL_FULL


def test_busy_both_ways_with_one_to_one_calls() -> None:
    w = world()
    w.msg("bob1", type="invite", call_id="onetoone-1", to="wei", sdp=SDP)   # wei rings in a 1:1 call
    w.msg("wei1", type="accept", call_id="onetoone-1", sdp=ANSWER)
    live(w, "lili")
    assert members(w)["wei"] == "missed"
    assert {p["username"]: p["reason"] for p in state(w)["participants"]}["wei"] == "busy"
    assert err(lambda: join(w, "wei1")).code is ErrorCode.ALREADY_IN_CALL
    # someone in a group call is busy for a 1:1 call, and cannot place one
    w.msg("bob1", type="hangup", call_id="onetoone-1")
    w.msg("bob1", type="invite", call_id="onetoone-2", to="lili", sdp=SDP)
    assert w.last("bob1", "call_ended")["reason"] == EndReason.BUSY
    assert err(lambda: w.msg("lili1", type="invite", call_id="onetoone-3", to="bob", sdp=SDP)).code is \
        ErrorCode.ALREADY_IN_CALL


def test_connection_loss_ends_only_that_members_part_and_gateway_loss_ends_the_call() -> None:
    w = world()
    live(w, "lili")
    w.detach("lili1")
    assert members(w)["lili"] == "left"
    assert {p["username"]: p["reason"] for p in state(w)["participants"]}["lili"] == "connection_lost"
    w.detach("gw1")
    assert w.last("mum1", "group_call_ended")["reason"] == EndReason.CONNECTION_LOST
    assert not w.core.group_calls.calls and not w.core.group_calls.user_call


def test_no_gateway_ends_at_once_as_unreachable() -> None:
    w = world(gateway=False)
    start(w)
    assert w.last("mum1", "group_call_ended")["reason"] == EndReason.UNREACHABLE
    assert not w.core.group_calls.calls


def test_who_may_start() -> None:
    w = world()
    assert err(lambda: start(w, "bob1")).code is ErrorCode.FORBIDDEN
    assert err(lambda: w.msg("mum1", type="group_call_start", call_id=CID, group="gffffffffffffffff",
                             media=["audio"], sdp=SDP)).code is ErrorCode.NOT_FOUND
    start(w)
    e = err(lambda: w.msg("lili1", type="group_call_start", call_id="gcall-0002", group=GID, media=["audio"],
                          sdp=SDP))
    assert e.code is ErrorCode.CALL_EXISTS and CID in e.message
    assert err(lambda: w.msg("gw1", type="conference_answer", call_id="gcall-0009", leg="x.1",
                             sdp=ANSWER)).code is ErrorCode.UNKNOWN_CALL
    assert err(lambda: w.msg("lili1", type="conference_answer", call_id=CID, leg="mum.1",
                             sdp=ANSWER)).code is ErrorCode.NOT_PARTY


def test_removed_from_the_group_ends_their_part() -> None:
    w = world()
    live(w, "lili")
    w._take(w.core.group_member_left(GID, "lili", now=w.now, wall=w.wall))
    assert w.last("lili1", "group_call_left")["reason"] == EndReason.REMOVED
    assert "lili" not in members(w)
    w._take(w.core.group_member_left(GID, "wei", now=w.now, wall=w.wall))   # ringing: stops
    assert "wei" not in members(w)


def test_a_failed_conference_leg_and_max_duration() -> None:
    w = world(max_call_s=600)
    live(w, "lili")
    w.msg("gw1", type="conference_leg_failed", call_id=CID, leg="lili.1", detail="ICE failed")
    assert {p["username"]: p["reason"] for p in state(w)["participants"]}["lili"] == "media_failed"
    w.advance(601)
    assert w.last("mum1", "group_call_ended")["reason"] == EndReason.MAX_DURATION


def test_shutdown_ends_group_calls() -> None:
    w = world()
    live(w)
    w.shutdown()
    assert w.last("mum1", "group_call_ended")["reason"] == EndReason.SERVER_SHUTDOWN
    assert w.last("gw1", "conference_close")["reason"] == EndReason.SERVER_SHUTDOWN
