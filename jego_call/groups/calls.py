"""[pure] Group calls in the hub: one `GroupCallMachine` per call, the members' part in it, and
the routing of their audio legs to the conference on a gateway (docs/signalling.md, ## Group calls).

    desk = GroupCallDesk(core)            # HubCore makes one; it calls these:
    desk.handle(info, msg)                # a group-call message (groups/protocol.py) from a session
    desk.detach(session_id, gateway=...)  # a socket ended
    desk.handle_timer(now)                # ring timeouts, maximum length (at desk.next_deadline())
    desk.phone_changed(leg_call)          # a phone leg (a phone_out `Call` of the core) moved
    desk.member_left_group(group, user)   # removed from the group, or left it
    desk.shutdown()

The conference runs on one gateway (the bridge worker, bridge/gateway/conference.py): each app
participant's session has one WebRTC audio leg to it (`conference_join` with the session's offer,
`conference_answer` back), and a phone number added to the call is a phone_out `Call` of the
core routed exactly like an app-to-phone call (numbering, refusals, and billing once it hooks in
there) to the same gateway, with `conference` naming the call. Video is a mesh between the
browsers (at most `calls.group_max_video`, 4), relayed here as mesh_offer/mesh_answer/mesh_ice. The call ends
when its last app participant leaves. Commands go out through the core's `_send` and `_log`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from ..call.machine import TableMachine
from ..call.reasons import EndReason
from ..call.state import CallEvent, CallState
from ..errors import ErrorCode, InvalidTransition, SignallingError
from . import protocol as gp

if TYPE_CHECKING:
    from ..signalling.hub_core import Call, Gateway, HubCore, SessionInfo

MAX_PARTICIPANTS = 8   # defaults of calls.group_max_participants / group_max_video (config/jego.toml)
MAX_VIDEO = 4
INFO, WARNING = 20, 30


def video_full_text(n: int) -> str:
    return f"video in a group call is for up to {n} people: you are in the call with audio"


# --- the call's state machine ------------------------------------------------------------------
class GroupCallState(Enum):
    OPENING = "opening"   # started: the conference has not answered anyone yet
    LIVE = "live"         # the conference carries at least one member
    ENDED = "ended"


class GroupCallEvent(Enum):
    ANSWERED = "answered"          # the conference answered a member's audio leg
    CHANGED = "changed"            # a member was rung, joined, declined, left, muted; a phone moved
    EMPTY = "empty"                # the last app participant left
    GATEWAY_LOST = "gateway_lost"  # the conference's gateway disconnected
    NO_GATEWAY = "no_gateway"      # no gateway could host the conference
    MAX_DURATION = "max_duration"
    SHUTDOWN = "shutdown"
    FAIL = "fail"


_S, _E = GroupCallState, GroupCallEvent
_OPEN = (_S.OPENING, _S.LIVE)

TRANSITIONS: dict[tuple[GroupCallState, GroupCallEvent], GroupCallState] = {
    (_S.OPENING, _E.ANSWERED): _S.LIVE,
    (_S.LIVE, _E.ANSWERED): _S.LIVE,
    (_S.OPENING, _E.CHANGED): _S.OPENING,
    (_S.LIVE, _E.CHANGED): _S.LIVE,
    **{(s, e): _S.ENDED for s in _OPEN for e in (
        _E.EMPTY, _E.GATEWAY_LOST, _E.NO_GATEWAY, _E.MAX_DURATION, _E.SHUTDOWN, _E.FAIL)},
}

END_REASONS: dict[GroupCallEvent, EndReason] = {
    _E.EMPTY: EndReason.HANGUP, _E.GATEWAY_LOST: EndReason.CONNECTION_LOST, _E.NO_GATEWAY: EndReason.UNREACHABLE,
    _E.MAX_DURATION: EndReason.MAX_DURATION, _E.SHUTDOWN: EndReason.SERVER_SHUTDOWN, _E.FAIL: EndReason.FAILED,
}


class GroupCallMachine(TableMachine[GroupCallState, GroupCallEvent]):
    """One group call's state; `apply` is the only way to change it."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("group call", TRANSITIONS, GroupCallState.OPENING, GroupCallState.ENDED)

    @property
    def end_reason(self) -> EndReason | None:
        return END_REASONS[self.end_event] if self.end_event is not None else None


# --- a member's part (plain data; its moves are checked against MEMBER_MOVES) --------------------
class MemberState(Enum):
    IDLE = "idle"            # in the group, not rung
    RINGING = "ringing"
    JOINING = "joining"      # offered their audio leg; waiting for the conference's answer
    JOINED = "joined"
    DECLINED = "declined"
    MISSED = "missed"        # offline, busy or no answer when rung
    LEFT = "left"            # was in the call, is not now (left, connection lost, removed)


_M = MemberState
_AWAY = (_M.IDLE, _M.DECLINED, _M.MISSED, _M.LEFT)
MEMBER_MOVES: dict[tuple[MemberState, str], MemberState] = {
    **{(s, "ring"): _M.RINGING for s in _AWAY},
    **{(s, "miss"): _M.MISSED for s in (*_AWAY, _M.RINGING)},
    **{(s, "join"): _M.JOINING for s in (*_AWAY, _M.RINGING)},
    (_M.JOINING, "answered"): _M.JOINED,
    (_M.RINGING, "decline"): _M.DECLINED,
    (_M.RINGING, "stop"): _M.IDLE,
    (_M.JOINING, "leave"): _M.LEFT,
    (_M.JOINED, "leave"): _M.LEFT,
}


class GroupDirectory(Protocol):
    """Group membership as the desk reads it (`jego_call.groups.service.GroupDirectory`)."""

    def group_members(self, group_id: str) -> list[str] | None: ...

    def group_name(self, group_id: str) -> str: ...


@dataclass(slots=True)
class Participant:
    username: str
    state: MemberState = MemberState.IDLE
    session: str | None = None       # the session whose audio leg is in the conference
    leg: str | None = None           # that leg's id on the conference
    muted: bool = False
    video: bool = False
    reason: EndReason | None = None  # why they are not in the call (declined, no_answer, left, ...)
    ring_seq: int = 0                # the ring timeout that counts (0: none)
    legs: int = 0

    def move(self, verb: str) -> None:
        nxt = MEMBER_MOVES.get((self.state, verb))
        if nxt is None:
            raise InvalidTransition("group call member", self.state, verb)
        self.state = nxt

    @property
    def in_call(self) -> bool:
        return self.state in (MemberState.JOINING, MemberState.JOINED)


@dataclass(slots=True)
class PhoneMember:
    leg: str           # the phone_out Call's id, also its leg id on the conference
    number: str
    added_by: str
    state: str = "calling"   # calling, ringing, joined, ended
    muted: bool = False
    reason: EndReason | None = None


@dataclass(eq=False)
class GroupCall:
    id: str
    group: str
    name: str
    started_by: str
    media: tuple[str, ...]
    gateway: str                       # the hosting gateway's session id ("" if none)
    created_at: float                  # Unix seconds
    sm: GroupCallMachine = field(default_factory=GroupCallMachine)
    participants: dict[str, Participant] = field(default_factory=dict)
    phones: dict[str, PhoneMember] = field(default_factory=dict)
    max_seq: int = 0
    phone_count: int = 0

    @property
    def state(self) -> GroupCallState:
        return self.sm.state

    def in_call(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.in_call]

    def live_phones(self) -> list[PhoneMember]:
        return [ph for ph in self.phones.values() if ph.state != "ended"]

    def by_leg(self, leg: str) -> Participant | None:
        return next((p for p in self.participants.values() if p.leg == leg and p.in_call), None)

    def video_members(self) -> list[str]:
        return sorted(p.username for p in self.in_call() if p.video)


class GroupCallDesk:
    """Every group call of one hub. See the module doc."""

    def __init__(self, core: HubCore) -> None:
        self.core = core
        self.directory: GroupDirectory | None = None
        self.calls: dict[str, GroupCall] = {}
        self.by_group: dict[str, GroupCall] = {}
        self.user_call: dict[str, GroupCall] = {}       # user -> the call they are joining or in
        self._timers: list[tuple[float, int, str, str]] = []   # (deadline, seq, call id, user or "")
        self._seq = itertools.count(1)
        self.handlers: dict[type, Callable[[SessionInfo, Any], None]] = {
            gp.GroupCallStart: self._on_start, gp.GroupCallJoin: self._on_join,
            gp.GroupCallDecline: self._on_decline, gp.GroupCallLeave: self._on_leave,
            gp.GroupCallMute: self._on_mute, gp.GroupCallRing: self._on_ring,
            gp.GroupCallAddPhone: self._on_add_phone, gp.GroupCallDropPhone: self._on_drop_phone,
            gp.GroupCallIce: self._on_ice, gp.MeshOffer: self._on_mesh, gp.MeshAnswer: self._on_mesh,
            gp.MeshIce: self._on_mesh, gp.ConferenceAnswer: self._on_conference_answer,
            gp.ConferenceLegFailed: self._on_conference_failed,
        }

    # --- inputs (called by HubCore, which collects the commands) ---------------------------------
    def handle(self, info: SessionInfo, msg: Any) -> None:
        self.handlers[type(msg)](info, msg)

    def busy(self, user: str) -> bool:
        return user in self.user_call

    def in_call(self, user: str) -> bool:
        call = self.user_call.get(user)
        p = call.participants.get(user) if call is not None else None
        return p is not None and p.state is MemberState.JOINED

    def detach(self, session: str, *, gateway: bool) -> None:
        for call in list(self.calls.values()):
            if gateway and call.gateway == session:
                self._end(call, GroupCallEvent.GATEWAY_LOST)
                continue
            for p in list(call.participants.values()):
                if p.in_call and p.session == session:
                    self._leave(call, p, EndReason.CONNECTION_LOST, tell=False)

    def member_left_group(self, group_id: str, user: str) -> None:
        call = self.by_group.get(group_id)
        p = call.participants.get(user) if call is not None else None
        if call is None or p is None:
            return
        if p.in_call:
            self._leave(call, p, EndReason.REMOVED)
        elif p.state is MemberState.RINGING:
            p.move("stop")
            p.ring_seq = 0
        if not call.sm.ended:
            call.participants.pop(user, None)
            self._changed(call)

    def shutdown(self) -> None:
        for call in list(self.calls.values()):
            self._end(call, GroupCallEvent.SHUTDOWN)

    def next_deadline(self) -> float | None:
        while self._timers:
            at, seq, call_id, user = self._timers[0]
            if self._live_timer(seq, call_id, user):
                return at
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _at, seq, call_id, user = heapq.heappop(self._timers)
            if not self._live_timer(seq, call_id, user):
                continue
            call = self.calls[call_id]
            if not user:
                self._end(call, GroupCallEvent.MAX_DURATION)
                continue
            p = call.participants[user]
            p.ring_seq = 0
            p.move("miss")
            p.reason = EndReason.NO_ANSWER
            self._changed(call)

    def phone_changed(self, leg_call: Call) -> None:
        """A phone leg of a group call moved (ringing, answered, ended): show it to the members."""
        call = self.calls.get(leg_call.conference or "")
        ph = call.phones.get(leg_call.id) if call is not None else None
        if call is None or ph is None:
            return
        st = leg_call.state
        ph.state = {CallState.CALLING: "calling", CallState.RINGING: "ringing", CallState.CONNECTED: "joined",
                    CallState.ENDED: "ended"}[st]
        if st is CallState.ENDED:
            ph.reason = leg_call.end_reason
        if not call.sm.ended:
            self._changed(call)

    # --- helpers -----------------------------------------------------------------------------
    def _live_timer(self, seq: int, call_id: str, user: str) -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        if not user:
            return call.max_seq == seq
        p = call.participants.get(user)
        return p is not None and p.ring_seq == seq and p.state is MemberState.RINGING

    def _arm(self, call: GroupCall, user: str, after_s: float) -> int:
        seq = next(self._seq)
        heapq.heappush(self._timers, (self.core._now + after_s, seq, call.id, user))
        return seq

    def _members(self, group_id: str) -> list[str] | None:
        return self.directory.group_members(group_id) if self.directory is not None else None

    def _call(self, call_id: str) -> GroupCall:
        call = self.calls.get(call_id)
        if call is None:
            raise SignallingError(ErrorCode.UNKNOWN_CALL, "no such group call, or it has ended", call_id=call_id)
        return call

    def _user_only(self, info: SessionInfo, call_id: str) -> None:
        if info.role != "user":
            raise SignallingError(ErrorCode.FORBIDDEN, "only users take part in group calls", call_id=call_id)

    def _participant(self, info: SessionInfo, call: GroupCall, *, joined: bool = True) -> Participant:
        """The sender's part in `call`; with `joined`, only from the session that is in the call."""
        self._user_only(info, call.id)
        p = call.participants.get(info.username)
        if p is None:
            raise SignallingError(ErrorCode.NOT_PARTY, "you are not a member of this group", call_id=call.id)
        if joined and not (p.in_call and p.session == info.id):
            raise SignallingError(ErrorCode.NOT_PARTY, "join the call first", call_id=call.id)
        return p

    def _gateway(self, call: GroupCall) -> Gateway | None:
        return self.core.gateways.get(call.gateway)

    def _to_gateway(self, call: GroupCall, msg: dict[str, Any]) -> None:
        if call.gateway in self.core.gateways:
            self.core._send(call.gateway, msg)

    def _busy_elsewhere(self, user: str, call: GroupCall | None = None) -> bool:
        other = self.user_call.get(user)
        return user in self.core.user_call or (other is not None and other is not call)

    @property
    def max_participants(self) -> int:
        return self.core.cfg.group_max_participants

    @property
    def max_video(self) -> int:
        return self.core.cfg.group_max_video

    def _capacity_left(self, call: GroupCall) -> int:
        return self.max_participants - len(call.in_call()) - len(call.live_phones())

    def _ring(self, call: GroupCall, p: Participant) -> None:
        """Ring every session of `p` (or mark them missed: offline or busy)."""
        sessions = self.core.user_sessions.get(p.username)
        if not sessions:
            p.move("miss")
            p.reason = EndReason.UNAVAILABLE
            return
        if self._busy_elsewhere(p.username, call):
            p.move("miss")
            p.reason = EndReason.BUSY
            return
        p.move("ring")
        p.reason = None
        p.ring_seq = self._arm(call, p.username, self.core.cfg.ring_timeout_s)
        self.core._send_all(sessions, {
            "type": "group_call_ring", "call_id": call.id, "group": call.group, "name": call.name,
            "from": call.started_by, "display_name": self.core.directory.display_name(call.started_by),
            "media": list(call.media)})

    def _join_leg(self, call: GroupCall, p: Participant, info: SessionInfo, sdp: str) -> None:
        p.move("join")
        p.legs += 1
        p.session, p.leg, p.reason, p.muted, p.ring_seq = info.id, f"{p.username}.{p.legs}", None, False, 0
        self.user_call[p.username] = call
        self._to_gateway(call, {"type": "conference_join", "call_id": call.id, "group": call.group, "leg": p.leg,
                                "username": p.username, "sdp": sdp})

    def state_msg(self, call: GroupCall) -> dict[str, Any]:
        """`group_call_state`: the whole call as the members see it."""
        name = self.core.directory.display_name
        return {
            "type": "group_call_state", "call_id": call.id, "group": call.group, "name": call.name,
            "state": call.state.value, "media": list(call.media), "started_by": call.started_by,
            "participants": [{"username": p.username, "display_name": name(p.username), "state": p.state.value,
                              "muted": p.muted, "video": p.video,
                              "reason": p.reason.value if p.reason is not None else None}
                             for p in sorted(call.participants.values(), key=lambda q: q.username)],
            "phones": [{"leg": ph.leg, "number": ph.number, "state": ph.state, "muted": ph.muted,
                        "added_by": ph.added_by, "reason": ph.reason.value if ph.reason is not None else None}
                       for ph in call.phones.values()],
            "max_participants": self.max_participants, "max_video": self.max_video,
        }

    def _audience(self, call: GroupCall) -> set[str]:
        """Every session of the group's members and of the call's participants."""
        users = set(self._members(call.group) or ()) | set(call.participants)
        out: set[str] = set()
        for u in users:
            out |= self.core.user_sessions.get(u, set())
        return out

    def _changed(self, call: GroupCall, event: GroupCallEvent = GroupCallEvent.CHANGED) -> None:
        call.sm.apply(event)
        self.core._send_all(self._audience(call), self.state_msg(call))

    def _leave(self, call: GroupCall, p: Participant, reason: EndReason, *, tell: bool = True) -> None:
        """`p`'s legs end (only theirs); the call ends with its last app participant."""
        session, leg = p.session, p.leg
        p.move("leave")
        p.reason, p.session, p.video, p.muted = reason, None, False, False
        if self.user_call.get(p.username) is call:
            del self.user_call[p.username]
        self._to_gateway(call, {"type": "conference_leave", "call_id": call.id, "leg": leg})
        if tell and session is not None:
            self.core._send(session, {"type": "group_call_left", "call_id": call.id, "reason": reason})
        self.core._log_id(INFO, f"{p.username} left ({reason})", call.id)
        self.core._presence_changed(p.username)
        if not call.in_call():
            self._end(call, GroupCallEvent.EMPTY)
        else:
            self._changed(call)

    def _end(self, call: GroupCall, event: GroupCallEvent) -> None:
        """End the call once: every phone leg hung up, the conference closed, everyone told."""
        if call.sm.ended:
            return
        audience = self._audience(call)
        call.sm.apply(event)
        reason = call.sm.end_reason or EndReason.FAILED
        for ph in call.live_phones():
            leg_call = self.core.calls.get(ph.leg)
            if leg_call is not None:
                self.core._end(leg_call, CallEvent.HANGUP, reason=EndReason.HANGUP)
            ph.state, ph.reason = "ended", ph.reason or EndReason.HANGUP
        self._to_gateway(call, {"type": "conference_close", "call_id": call.id, "reason": reason})
        gw = self._gateway(call)
        if gw is not None:
            gw.calls.discard(call.id)
        self.calls.pop(call.id, None)
        if self.by_group.get(call.group) is call:
            del self.by_group[call.group]
        self.core.recent[call.id] = None
        users = [u for u, c in self.user_call.items() if c is call]
        for u in users:
            del self.user_call[u]
        self.core._send_all(audience, {"type": "group_call_ended", "call_id": call.id, "group": call.group,
                                       "reason": reason})
        self.core._log_id(INFO, f"group call ended: {reason}", call.id)
        for u in users:
            self.core._presence_changed(u)

    # --- messages from users -----------------------------------------------------------------
    def _on_start(self, info: SessionInfo, msg: gp.GroupCallStart) -> None:
        self._user_only(info, msg.call_id)
        if msg.call_id in self.calls or msg.call_id in self.core.calls or msg.call_id in self.core.recent:
            raise SignallingError(ErrorCode.CALL_EXISTS, "call_id already used", call_id=msg.call_id)
        members = self._members(msg.group)
        if members is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"no group {msg.group!r}", call_id=msg.call_id)
        user = info.username
        if user not in members:
            raise SignallingError(ErrorCode.FORBIDDEN, "you are not a member of this group", call_id=msg.call_id)
        if self._busy_elsewhere(user):
            raise SignallingError(ErrorCode.ALREADY_IN_CALL, "hang up your current call first", call_id=msg.call_id)
        live = self.by_group.get(msg.group)
        if live is not None:
            raise SignallingError(ErrorCode.CALL_EXISTS, f"this group already has a call: join {live.id}",
                                  call_id=msg.call_id)
        assert self.directory is not None
        gw = self.core.pick_gateway()
        call = GroupCall(msg.call_id, msg.group, self.directory.group_name(msg.group), user, msg.media,
                         gw.session if gw is not None else "", self.core._wall)
        call.participants = {u: Participant(u) for u in members}
        self.calls[call.id] = call
        self.by_group[call.group] = call
        self.core._log_id(INFO, f"{user} starts a group call in {call.group} ({'+'.join(call.media)})", call.id)
        if gw is None:
            self._end(call, GroupCallEvent.NO_GATEWAY)
            return
        gw.calls.add(call.id)
        me = call.participants[user]
        me.video = "video" in call.media and self.max_video > 0
        self._join_leg(call, me, info, msg.sdp)
        for p in call.participants.values():
            if p is not me:
                self._ring(call, p)
        call.max_seq = self._arm(call, "", self.core.cfg.max_call_s)
        self._changed(call)
        self.core._presence_changed(user)

    def _on_join(self, info: SessionInfo, msg: gp.GroupCallJoin) -> None:
        call = self._call(msg.call_id)
        p = self._participant(info, call, joined=False)
        if p.in_call:
            raise SignallingError(ErrorCode.INVALID_STATE, "you are already in this call", call_id=call.id)
        if self._busy_elsewhere(p.username, call):
            raise SignallingError(ErrorCode.ALREADY_IN_CALL, "hang up your current call first", call_id=call.id)
        if self._capacity_left(call) <= 0:
            raise SignallingError(ErrorCode.CALL_FULL, f"a group call has at most {self.max_participants} "
                                  "participants", call_id=call.id)
        want_video = msg.video and "video" in call.media
        p.video = want_video and len(call.video_members()) < self.max_video
        self._join_leg(call, p, info, msg.sdp)
        if want_video and not p.video:
            self.core._send(info.id, {"type": "group_call_notice", "call_id": call.id, "code": "video_full",
                                      "max_video": self.max_video, "detail": video_full_text(self.max_video)})
        self._changed(call)

    def _on_decline(self, info: SessionInfo, msg: gp.GroupCallDecline) -> None:
        call = self._call(msg.call_id)
        p = self._participant(info, call, joined=False)
        if p.state is not MemberState.RINGING:
            raise SignallingError(ErrorCode.INVALID_STATE, "the call is not ringing for you", call_id=call.id)
        p.move("decline")
        p.reason, p.ring_seq = EndReason.DECLINED, 0
        self._changed(call)

    def _on_leave(self, info: SessionInfo, msg: gp.GroupCallLeave) -> None:
        call = self._call(msg.call_id)
        p = self._participant(info, call)
        self._leave(call, p, EndReason.LEFT)

    def _on_mute(self, info: SessionInfo, msg: gp.GroupCallMute) -> None:
        call = self._call(msg.call_id)
        p = self._participant(info, call)
        if msg.leg is None:
            p.muted = msg.muted
            leg = p.leg
        else:
            ph = call.phones.get(msg.leg)
            if ph is None or ph.state == "ended":
                raise SignallingError(ErrorCode.NOT_FOUND, "no such phone in this call", call_id=call.id)
            ph.muted = msg.muted
            leg = ph.leg
        self._to_gateway(call, {"type": "conference_mute", "call_id": call.id, "leg": leg, "muted": msg.muted})
        self._changed(call)

    def _on_ring(self, info: SessionInfo, msg: gp.GroupCallRing) -> None:
        call = self._call(msg.call_id)
        self._participant(info, call)
        target = call.participants.get(msg.username)
        if target is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"{msg.username!r} is not a member of this group",
                                  call_id=call.id)
        if target.state not in _AWAY:
            raise SignallingError(ErrorCode.INVALID_STATE, f"{msg.username!r} is {target.state.value}",
                                  call_id=call.id)
        self._ring(call, target)
        self._changed(call)

    def next_phone_leg(self, call_id: str) -> str | None:
        """The leg id the next group_call_add_phone of `call_id` gets (None: no such call); the
        socket shell authorises its credit first on PostgreSQL (billing/ledger.py)."""
        call = self.calls.get(call_id)
        return None if call is None else f"{call.id[:48]}-p{call.phone_count + 1}"

    def _on_add_phone(self, info: SessionInfo, msg: gp.GroupCallAddPhone) -> None:
        call = self._call(msg.call_id)
        self._participant(info, call)
        if self._capacity_left(call) <= 0:
            raise SignallingError(ErrorCode.CALL_FULL, f"a group call has at most {self.max_participants} "
                                  "participants", call_id=call.id)
        gw = self._gateway(call)
        leg_id = self.next_phone_leg(call.id)
        assert leg_id is not None
        call.phone_count += 1
        ph = PhoneMember(leg_id, msg.number, info.username)
        call.phones[leg_id] = ph
        leg_call = self.core._conference_phone(info, call.id, leg_id, msg.number, gw)
        ph.number = leg_call.callee
        if leg_call.state is CallState.ENDED:
            ph.state, ph.reason = "ended", leg_call.end_reason
        self._changed(call)

    def _on_drop_phone(self, info: SessionInfo, msg: gp.GroupCallDropPhone) -> None:
        call = self._call(msg.call_id)
        self._participant(info, call)
        ph = call.phones.get(msg.leg)
        leg_call = self.core.calls.get(msg.leg)
        if ph is None or leg_call is None:
            raise SignallingError(ErrorCode.NOT_FOUND, "no such phone in this call", call_id=call.id)
        self.core._end(leg_call, CallEvent.HANGUP, by=info.username)

    def _on_ice(self, info: SessionInfo, msg: gp.GroupCallIce) -> None:
        call = self._call(msg.call_id)
        p = self._participant(info, call)
        self._to_gateway(call, {"type": "conference_ice", "call_id": call.id, "leg": p.leg,
                                "candidate": msg.candidate})

    def _on_mesh(self, info: SessionInfo, msg: gp.MeshOffer | gp.MeshAnswer | gp.MeshIce) -> None:
        """Relay the video mesh between two members who are both in it."""
        call = self._call(msg.call_id)
        p = self._participant(info, call)
        peer = call.participants.get(msg.to)
        if not p.video or peer is None or not peer.in_call or not peer.video or peer.session is None:
            raise SignallingError(ErrorCode.INVALID_STATE, "video goes only between members in the video mesh",
                                  call_id=call.id)
        kind = {gp.MeshOffer: "mesh_offer", gp.MeshAnswer: "mesh_answer", gp.MeshIce: "mesh_ice"}[type(msg)]
        out: dict[str, Any] = {"type": kind, "call_id": call.id, "from": p.username}
        if isinstance(msg, gp.MeshIce):
            out["candidate"] = msg.candidate
        else:
            out["sdp"] = msg.sdp
        self.core._send(peer.session, out)

    # --- messages from the conference's gateway --------------------------------------------------
    def _gateway_call(self, info: SessionInfo, call_id: str) -> GroupCall:
        call = self._call(call_id)
        if info.role != "gateway" or info.id != call.gateway:
            raise SignallingError(ErrorCode.NOT_PARTY, "only the conference's gateway sends this", call_id=call_id)
        return call

    def _on_conference_answer(self, info: SessionInfo, msg: gp.ConferenceAnswer) -> None:
        call = self._gateway_call(info, msg.call_id)
        p = call.by_leg(msg.leg)
        if p is None or p.state is not MemberState.JOINING or p.session is None:
            return  # the member left meanwhile: the conference_leave is on its way
        p.move("answered")
        self.core._send(p.session, {"type": "group_call_answer", "call_id": call.id, "sdp": msg.sdp,
                                    "video": p.video})
        self.core._log_id(INFO, f"{p.username} joined", call.id)
        self._changed(call, GroupCallEvent.ANSWERED)
        self.core._presence_changed(p.username)

    def _on_conference_failed(self, info: SessionInfo, msg: gp.ConferenceLegFailed) -> None:
        call = self._gateway_call(info, msg.call_id)
        p = call.by_leg(msg.leg)
        if p is not None:
            self.core._log_id(WARNING, f"{p.username}'s leg failed: {msg.detail}", call.id)
            self._leave(call, p, EndReason.MEDIA_FAILED)
