"""[pure] The hub's decisions: sessions, presence and calls as plain data; events in, commands out.

    core = HubCore(directory, calls_cfg, max_sessions_per_user=8)
    cmds = core.attach("s1", "alice", hello={...})          # a socket authenticated as a user
    cmds = core.attach_gateway("s2", "bridge-1", 16)         # ... or as a gateway
    cmds = core.handle("s1", msg, now=mono, wall=unix)       # a parsed message (messages.py)
    cmds = core.detach("s1", now=mono, wall=unix)            # the socket ended
    cmds = core.handle_timer(now=mono, wall=unix)            # at or after core.next_deadline()

Sessions are named by their id (a string), so the same events can come from any node of a
cluster. Every input returns the commands to carry out, in order: `Send`, `Close`,
`WriteCallRecord`, `StoreReport`, `CallChanged`, `CallEnded`, `Log`; a client's mistake raises
SignallingError before anything changes.

In a cluster (jego_call/cluster/) each node runs one core. A core *owns* the calls in
`self.calls` (it decides them; their parties may be sessions of other nodes) and holds a view of
the rest of the cluster, fed by the shell: sessions of other nodes (`attach_remote`,
`attach_remote_gateway`, `detach`), who is in a call another node owns (`note_call`,
`clear_call`), the gateway the cluster reserved for the next phone call (`reserve_gateway`) and
calls taken over from a node that died (`adopt`). Presence is pushed by every node to its own
sessions only; call messages go to any session (the shell relays those of other nodes). `now` is monotonic seconds (deadlines are on that clock), `wall` Unix
seconds (only for call records). Nothing here touches a socket, a clock or the database:
accounts lookups go through `Directory` (exists, contacts, watchers), prepaid credit for calls
to phones through `Ledger` (authorise, answered, credit), both backed by SQLite in the shell
(`signalling/hub.py`), which runs the core on the event loop with one timer for
`next_deadline()` and settles each paid call with its call record (`WriteCallRecord`).
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from .. import numbering
from ..call.reasons import USER_DECLINE_REASONS, EndReason
from ..call.state import CallEvent, CallState, CallStateMachine
from ..errors import ErrorCode, SignallingError
from ..groups import protocol as gp
from ..groups.calls import GroupCallDesk, GroupDirectory
from . import messages as m

if TYPE_CHECKING:
    from ..billing.policy import Grant, Timers
    from ..billing.refusal import Refusal
    from ..config import CallsConfig

RECENT_CALLS = 4096  # ended call ids remembered, so a late message gets unknown_call
PHONE_RE = re.compile(r"^\+?[0-9][0-9 ()\-.]{1,30}$")
EMERGENCY_TEXT = "emergency calls are not supported, use a local phone"
INFO, WARNING = 20, 30  # Log levels (the logging module's numbers)

# How a gateway's `decline` reason ends the call (anything else: FAIL with that reason).
GATEWAY_EVENTS = {
    EndReason.DECLINED: CallEvent.DECLINE, EndReason.BUSY: CallEvent.BUSY, EndReason.NO_ANSWER: CallEvent.TIMEOUT,
    EndReason.UNAVAILABLE: CallEvent.UNAVAILABLE, EndReason.CANCELLED: CallEvent.CANCEL,
}


def is_phone_target(to: str) -> bool:
    """A call target that is a phone number rather than a username (usernames need a letter)."""
    return bool(PHONE_RE.match(to))


def snapshot(call: Call) -> dict[str, Any]:
    """A call as plain JSON-able data (what the cluster keeps, so another node can `adopt` it)."""
    return {"id": call.id, "caller": call.caller, "callee": call.callee, "media": list(call.media),
            "caller_session": call.caller_session, "created_at": call.created_at, "state": call.state.value,
            "ringing": sorted(call.ringing_sessions), "answered": call.answered_session,
            "answered_at": call.answered_at, "rang": call.rang, "kind": call.kind,
            "early_sdp_sent": call.early_sdp_sent}


def from_snapshot(d: dict[str, Any]) -> Call:
    """The Call a `snapshot` describes, its state machine replayed through the table."""
    call = Call(str(d["id"]), str(d["caller"]), str(d["callee"]), tuple(d.get("media") or ("audio",)),
                str(d["caller_session"]), created_at=float(d.get("created_at") or 0.0), kind=str(d.get("kind", "user")))
    call.ringing_sessions = set(d.get("ringing") or ())
    call.answered_session = d.get("answered")
    call.answered_at = d.get("answered_at")
    call.rang = bool(d.get("rang"))
    call.early_sdp_sent = bool(d.get("early_sdp_sent"))
    state = CallState(d.get("state", "calling"))
    if state is not CallState.CALLING:
        call.sm.apply(CallEvent.RING if state is CallState.RINGING else CallEvent.ACCEPT)
    return call


class Directory(Protocol):
    """The accounts lookups the core makes (`jego_call.accounts.Accounts` is one)."""

    def exists(self, username: str) -> bool: ...

    def contacts(self, owner: str) -> list[str]: ...

    def watchers(self, username: str) -> list[str]: ...

    def display_name(self, username: str) -> str: ...

    def is_blocked(self, owner: str, other: str) -> bool: ...


class Authorised(Protocol):
    """What `Ledger.authorise` answers: a `grant` (the call may go ahead for `grant.allowed_s`
    after the answer) or a `refusal` (its reason and words in en and zh)."""

    @property
    def grant(self) -> Grant | None: ...

    @property
    def refusal(self) -> Refusal | None: ...


class Ledger(Protocol):
    """Prepaid credit for calls to phone numbers (`jego_call.billing.ledger`: `Billing` seen
    synchronously, as `Directory`'s lookups are); times are Unix seconds (the core's `wall`).
    The core calls `authorise` before a gateway is picked, `answered` when the phone answers and
    `credit` for `credit_low`; the shell awaits `settle` with the call record (one transaction,
    `also(tx)` writes it), exactly once per call."""

    def authorise(self, call_id: str, username: str, e164: str, now: float) -> Authorised: ...

    def answered(self, call_id: str, at: float) -> Timers | None: ...

    def credit(self, username: str) -> dict[str, Any]: ...

    def settle(self, call_id: str, answered_at: float | None, ended_at: float, now: float | None = None, *,
               also: Callable[[Any], Any] | None = None, by: str = "call") -> Any: ...


# --- state: plain dataclasses ------------------------------------------------------------------
@dataclass(slots=True)
class SessionInfo:
    """One authenticated connection: a browser tab, a dialer, or a bridge worker (role gateway)."""

    id: str
    username: str
    role: str = "user"  # "user" or "gateway"
    node: str = ""      # "" = this node; else the cluster node whose socket it is


@dataclass(slots=True)
class Gateway:
    """A connected bridge worker and the calls it carries (the calls of this node's core)."""

    session: str
    name: str
    capacity: int
    calls: set[str] = field(default_factory=set)
    node: str = ""      # "" = connected to this node


@dataclass(frozen=True, slots=True)
class RemoteCall:
    """A user is in a call another node owns (the cluster's view: busy, and in_call presence)."""

    call_id: str
    owner: str
    connected: bool = False


class CallTimer(Enum):
    RING = "ring"                    # calls.ring_timeout_s after the invite went out
    MAX_DURATION = "max_duration"    # calls.max_call_s after the answer
    CREDIT_LOW = "credit_low"        # a paid phone call: billing.warning_s before the cut
    CUT = "cut"                      # a paid phone call: its credit (or day's minutes) ran out


@dataclass(slots=True)
class Credit:
    """A paid phone call's money clock (monotonic deadlines; `ends_at` in Unix seconds)."""

    allowed_s: int                   # after the answer, as granted (the gateway's max_s)
    cut_reason: EndReason            # credit_exhausted, limit_reached or max_duration
    warn_at: float | None = None     # when to send credit_low (None: no warning)
    cut_at: float | None = None      # when to end the call with cut_reason
    max_at: float | None = None      # calls.max_call_s after the answer
    ends_at: float | None = None
    warned: bool = False


@dataclass(eq=False)
class Call:
    """One call: its state machine, who is in it, and its one pending deadline."""

    id: str
    caller: str
    callee: str
    media: tuple[str, ...]
    caller_session: str
    created_at: float = 0.0          # Unix seconds
    sm: CallStateMachine = field(default_factory=CallStateMachine)
    ringing_sessions: set[str] = field(default_factory=set)   # callee sessions offered the call
    answered_session: str | None = None
    answered_at: float | None = None  # Unix seconds
    rang: bool = False
    kind: str = "user"              # "user", "phone_out" (app -> phone) or "phone_in" (phone -> app)
    offer: str = ""
    early_sdp_sent: bool = False    # a gateway sent the answer with ringing (early media)
    sip_code: int | None = None
    q850_cause: int | None = None
    end_reason: EndReason | None = None
    ended_by: str | None = None     # who ended it (`by` of call_ended): a party's name, None for the server
    conference: str | None = None   # phone_out legs of a group call: that call's id (groups/calls.py)
    timer: CallTimer | None = None
    deadline: float | None = None   # monotonic seconds
    timer_seq: int = 0
    credit: Credit | None = None    # a paid phone call (phone_out authorised by the Ledger)

    @property
    def phone(self) -> bool:
        return self.kind != "user"

    @property
    def state(self) -> CallState:
        return self.sm.state

    def parties(self) -> set[str]:
        out = {self.caller_session} | self.ringing_sessions
        if self.answered_session is not None:
            out.add(self.answered_session)
        return out

    def peer_of(self, session: str) -> set[str]:
        """Where a relay from `session` goes."""
        if session == self.caller_session:
            if self.answered_session is not None:
                return {self.answered_session}
            return set(self.ringing_sessions)
        return {self.caller_session}


# --- commands ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Queue `msg` to session `session` (never blocks)."""

    session: str
    msg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Close:
    """Close session `session`'s socket with WebSocket close `code`; `detach` follows."""

    session: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class WriteCallRecord:
    """Store one call record (calllog.CallRecord's fields; times in Unix seconds)."""

    call_id: str
    caller: str
    callee: str
    caller_kind: str
    callee_kind: str
    media: str
    started_at: float
    answered_at: float | None
    ended_at: float
    outcome: str
    sip_code: int | None
    q850_cause: int | None


@dataclass(frozen=True, slots=True)
class StoreReport:
    """Attach a gateway's call_report (codec, packet counters) to the call's record."""

    call_id: str
    codec: str | None
    app: dict[str, int]
    phone: dict[str, int]
    mos: float | None = None
    r_factor: float | None = None


@dataclass(frozen=True, slots=True)
class CallEnded:
    """`call` has ended (run the on_call_ended hooks)."""

    call: Call


@dataclass(frozen=True, slots=True)
class CallChanged:
    """`call` was created, rang or was answered here: a cluster shell stores its `snapshot`."""

    call: Call


@dataclass(frozen=True, slots=True)
class Log:
    """A log line for people: `text` about call `call_id` (None: not about one call)."""

    level: int
    text: str
    call_id: str | None = None

    def __str__(self) -> str:
        return f"[call {self.call_id}] {self.text}" if self.call_id else self.text


Command = Send | Close | WriteCallRecord | StoreReport | CallEnded | CallChanged | Log


# --- the core ----------------------------------------------------------------------------------
class HubCore:
    """Sessions, presence and calls for one server, decided without I/O. See the module doc."""

    def __init__(self, directory: Directory, calls_cfg: CallsConfig, max_sessions_per_user: int = 8,
                 allow_international: bool = False, recent_limit: int = RECENT_CALLS,
                 ledger: Ledger | None = None) -> None:
        self.directory = directory
        self.ledger = ledger    # None: calls to phones are free (billing disabled)
        self.cfg = calls_cfg
        self.max_sessions = max_sessions_per_user
        self.allow_international = allow_international
        self.recent_limit = recent_limit
        self.sessions: dict[str, SessionInfo] = {}           # session id -> who it is
        self.user_sessions: dict[str, set[str]] = {}         # username -> its session ids
        self.gateways: dict[str, Gateway] = {}               # session id -> gateway
        self.calls: dict[str, Call] = {}
        self.user_call: dict[str, Call] = {}                 # username -> the live call they are in
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.presence_sent: dict[str, str] = {}              # last presence pushed per user
        self.remote_calls: dict[str, RemoteCall] = {}        # username -> a call another node owns
        self.reserved: dict[str, str] = {}                   # call id -> gateway session picked for it
        self.closing = False
        self._timers: list[tuple[float, int, str]] = []      # (deadline, seq, call id), lazily pruned
        self._seq = itertools.count(1)
        self._out: list[Command] = []
        self._now = 0.0
        self._wall = 0.0
        self._handlers: dict[type, Callable[[SessionInfo, Any], None]] = {
            m.Invite: self._on_invite, m.Ringing: self._on_ringing, m.Accept: self._on_accept,
            m.Decline: self._on_decline, m.Cancel: self._on_cancel, m.Hangup: self._on_hangup,
            m.Ice: self._on_ice, m.Dtmf: self._on_dtmf, m.CallReport: self._on_call_report,
        }
        self.group_calls = GroupCallDesk(self)   # group calls (jego_call/groups/calls.py)
        for t in gp.GROUP_CALL_TYPES:
            self._handlers[t] = self.group_calls.handle

    # --- inputs ---------------------------------------------------------------------------------
    def handles(self, msg_type: type) -> bool:
        """Whether `handle` acts on messages of `msg_type` (the call types)."""
        return msg_type in self._handlers

    def attach(self, session: str, username: str, hello: dict[str, Any] | None = None) -> list[Command]:
        """A user's socket authenticated: `hello` to it, then its contacts' presence; presence
        pushed to its watchers. Raises too_many_sessions at the account's limit."""
        if self.closing:
            raise SignallingError(ErrorCode.INTERNAL, "server is shutting down")
        have = self.user_sessions.get(username, set())
        if len(have) >= self.max_sessions:
            raise SignallingError(ErrorCode.TOO_MANY_SESSIONS, f"at most {self.max_sessions} connections per account")
        self._out = []
        self.sessions[session] = SessionInfo(session, username, "user")
        self.user_sessions.setdefault(username, set()).add(session)
        if hello is not None:
            self._send(session, hello)
        for contact in self.directory.contacts(username):
            self._send(session, self._presence_msg(contact))
        self._presence_changed(username)
        return self._take()

    def attach_gateway(self, session: str, name: str, capacity: int,
                       hello: dict[str, Any] | None = None) -> list[Command]:
        """A bridge worker authenticated (docs/signalling.md, gateways)."""
        if self.closing:
            raise SignallingError(ErrorCode.INTERNAL, "server is shutting down")
        self._out = []
        self.sessions[session] = SessionInfo(session, f"gateway:{name}", "gateway")
        self.gateways[session] = Gateway(session, name, capacity)
        if hello is not None:
            self._send(session, hello)
        self._log(INFO, f"gateway {name} connected (capacity {capacity})")
        return self._take()

    def attach_remote(self, session: str, username: str, node: str) -> list[Command]:
        """A user's socket on another node (the cluster's directory): it counts for presence,
        busy and the session limit, and rings for calls this node owns. No hello is sent."""
        self._out = []
        if session in self.sessions:
            return self._take()
        self.sessions[session] = SessionInfo(session, username, "user", node)
        self.user_sessions.setdefault(username, set()).add(session)
        self._presence_changed(username)
        return self._take()

    def attach_remote_gateway(self, session: str, name: str, capacity: int, node: str) -> list[Command]:
        """A bridge worker connected to another node; calls this node owns may be routed to it."""
        self._out = []
        if session not in self.sessions:
            self.sessions[session] = SessionInfo(session, f"gateway:{name}", "gateway", node)
            self.gateways[session] = Gateway(session, name, capacity, node=node)
        return self._take()

    def detach(self, session: str, *, now: float, wall: float, reason: EndReason | None = None) -> list[Command]:
        """The session's socket ended: end its calls (connection_lost, or `reason`: peer_lost
        when its node died), update presence. Works for this node's and other nodes' sessions."""
        self._begin(now, wall)
        info = self.sessions.pop(session, None)
        if info is None:
            return self._take()
        if session in self.gateways:
            gw = self.gateways[session]
            if not gw.node or gw.calls:
                where = f" on node {gw.node}" if gw.node else ""
                self._log(WARNING, f"gateway {gw.name}{where} disconnected with {len(gw.calls)} calls")
            self.group_calls.detach(session, gateway=True)
            del self.gateways[session]
            self._end_session_calls(session, gw.name, reason)
            return self._take()
        have = self.user_sessions.get(info.username)
        if have is not None:
            have.discard(session)
            if not have:
                del self.user_sessions[info.username]
        self.group_calls.detach(session, gateway=False)
        self._end_session_calls(session, info.username, reason)
        self._presence_changed(info.username)
        return self._take()

    def note_call(self, users: Iterable[str], call_id: str, owner: str, connected: bool) -> list[Command]:
        """Users are in call `call_id`, which node `owner` owns (busy here too; in_call once
        connected). Presence goes to this node's watchers."""
        self._out = []
        for user in users:
            if call_id in self.calls:
                continue
            self.remote_calls[user] = RemoteCall(call_id, owner, connected)
            self._presence_changed(user)
        return self._take()

    def clear_call(self, users: Iterable[str], call_id: str) -> list[Command]:
        """Another node's call `call_id` has ended: its users are free again."""
        self._out = []
        for user in users:
            rc = self.remote_calls.get(user)
            if rc is not None and rc.call_id == call_id:
                del self.remote_calls[user]
                self._presence_changed(user)
        return self._take()

    def remote_calls_of(self, owner: str) -> dict[str, RemoteCall]:
        """User -> call for the calls node `owner` owns (as this node sees them)."""
        return {u: rc for u, rc in self.remote_calls.items() if rc.owner == owner}

    def reserve_gateway(self, call_id: str, gateway_session: str) -> None:
        """The cluster reserved capacity on this gateway for the phone call `call_id` (the next
        invite with that id goes there instead of to `pick_gateway()`)."""
        self.reserved[call_id] = gateway_session

    def adopt(self, snap: dict[str, Any], *, now: float, wall: float,
              reason: EndReason = EndReason.PEER_LOST) -> list[Command]:
        """Take over a call whose owner node died (the cluster wrote this node as its owner) and
        end it with `reason`: every party still connected anywhere is told, and the call record
        is written here."""
        self._begin(now, wall)
        if snap["id"] in self.calls or snap["id"] in self.recent:  # live or ended here already
            return self._take()
        call = from_snapshot(snap)
        self.calls[call.id] = call
        users = {"phone_out": (call.caller,), "phone_in": (call.callee,)}.get(call.kind, (call.caller, call.callee))
        for user in users:
            rc = self.remote_calls.get(user)
            if rc is not None and rc.call_id == call.id:
                del self.remote_calls[user]
            self.user_call.setdefault(user, call)
        self._log(WARNING, "its node died: taken over here", call)
        self._end(call, CallEvent.CONNECTION_LOST, reason=reason)
        return self._take()

    def drop_call(self, call_id: str, *, now: float, wall: float,
                  reason: EndReason = EndReason.PEER_LOST) -> list[Command]:
        """Another node took this call over while this one was cut off (it has told the parties
        and written the record): end it here for this node's sessions only, without a record."""
        self._begin(now, wall)
        call = self.calls.get(call_id)
        if call is None:
            return self._take()
        local = {s for s in call.parties() if s in self.sessions and not self.sessions[s].node}
        self._end(call, CallEvent.CONNECTION_LOST, reason=reason, _to=local, _record=False)
        return self._take()

    def handle(self, session: str, msg: Any, *, now: float, wall: float) -> list[Command]:
        """Act on one parsed call message from an attached session; SignallingError if it is wrong."""
        info = self.sessions.get(session)
        if info is None:
            raise SignallingError(ErrorCode.NOT_AUTHENTICATED, "send auth with your token first")
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise SignallingError(ErrorCode.UNKNOWN_TYPE, f"{type(msg).__name__} is not handled here")
        self._begin(now, wall)
        handler(info, msg)
        return self._take()

    def handle_timer(self, *, now: float, wall: float) -> list[Command]:
        """Fire every deadline at or before `now`: ring timeout (no_answer), maximum duration."""
        self._begin(now, wall)
        while self._timers and self._timers[0][0] <= now:
            _at, seq, call_id = heapq.heappop(self._timers)
            call = self.calls.get(call_id)
            if call is None or call.timer_seq != seq or call.timer is None:
                continue  # stale: the call ended or its timer changed
            kind = call.timer
            call.timer = call.deadline = None
            if kind is CallTimer.RING:
                self._end(call, CallEvent.TIMEOUT)
            elif kind in (CallTimer.CREDIT_LOW, CallTimer.CUT):
                self._on_credit_timer(call, kind)
            else:
                self._end(call, CallEvent.MAX_DURATION)
        self.group_calls.handle_timer(now)
        return self._take()

    def next_deadline(self) -> float | None:
        """When `handle_timer` next has something to do (monotonic seconds), or None."""
        group = self.group_calls.next_deadline()
        while self._timers:
            _at, seq, call_id = self._timers[0]
            call = self.calls.get(call_id)
            if call is not None and call.timer_seq == seq and call.timer is not None:
                at = self._timers[0][0]
                return at if group is None else min(at, group)
            heapq.heappop(self._timers)
        return group

    def set_group_directory(self, directory: GroupDirectory) -> None:
        """Where group calls read group membership (groups/service.py installs it at start-up)."""
        self.group_calls.directory = directory

    def group_member_left(self, group_id: str, username: str, *, now: float, wall: float) -> list[Command]:
        """`username` was removed from (or left) the group: their part in its call ends."""
        self._begin(now, wall)
        self.group_calls.member_left_group(group_id, username)
        return self._take()

    def contact_added(self, owner: str, contact: str) -> list[Command]:
        """Tell `owner`'s sessions the presence of a contact they just added."""
        self._out = []
        self._send_to_user(owner, self._presence_msg(contact))
        return self._take()

    def shutdown(self, *, now: float, wall: float) -> list[Command]:
        """End every call with server_shutdown and close every session (code 1001)."""
        self._begin(now, wall)
        self.closing = True
        self.group_calls.shutdown()
        for call in list(self.calls.values()):
            self._end(call, CallEvent.SHUTDOWN)
        for username in sorted(self.user_sessions):
            for s in sorted(self.user_sessions[username]):
                self._out.append(Close(s, 1001, "server shutdown"))
        for s in sorted(self.gateways):
            self._out.append(Close(s, 1001, "server shutdown"))
        return self._take()

    # --- queries --------------------------------------------------------------------------------
    def online(self, username: str) -> bool:
        return bool(self.user_sessions.get(username))

    def presence(self, username: str) -> str:
        if not self.online(username):
            return "offline"
        call = self.user_call.get(username)
        if call is not None and call.state is CallState.CONNECTED:
            return "in_call"
        if call is None and (rc := self.remote_calls.get(username)) is not None and rc.connected:
            return "in_call"
        return "in_call" if self.group_calls.in_call(username) else "online"

    def busy(self, username: str) -> bool:
        """In a call: here, in a group call, or (a cluster) in a call another node owns."""
        return username in self.user_call or username in self.remote_calls or self.group_calls.busy(username)

    def local_sessions(self, username: str) -> list[str]:
        """The ids of `username`'s sessions on this node."""
        return sorted(s for s in self.user_sessions.get(username, ()) if not self.sessions[s].node)

    def pick_gateway(self) -> Gateway | None:
        """The gateway with the fewest calls among those with free capacity."""
        free = [g for g in self.gateways.values() if len(g.calls) < g.capacity]
        return min(free, key=lambda g: (len(g.calls) / g.capacity, g.name)) if free else None

    # --- output helpers -------------------------------------------------------------------------
    def _begin(self, now: float, wall: float) -> None:
        self._out = []
        self._now, self._wall = now, wall

    def _take(self) -> list[Command]:
        out, self._out = self._out, []
        return out

    def _send(self, session: str, msg: dict[str, Any]) -> None:
        self._out.append(Send(session, msg))

    def _send_all(self, sessions: Iterable[str], msg: dict[str, Any]) -> None:
        for s in sorted(sessions):
            self._out.append(Send(s, msg))

    def _send_to_user(self, username: str, msg: dict[str, Any]) -> None:
        self._send_all(self.user_sessions.get(username, ()), msg)

    def _send_to_local_user(self, username: str, msg: dict[str, Any]) -> None:
        self._send_all(self.local_sessions(username), msg)

    def _log(self, level: int, text: str, call: Call | None = None) -> None:
        self._out.append(Log(level, text, call.id if call is not None else None))

    def _log_id(self, level: int, text: str, call_id: str | None) -> None:
        self._out.append(Log(level, text, call_id))

    def _presence_msg(self, username: str, presence: str | None = None) -> dict[str, Any]:
        return {"type": "presence", "username": username, "presence": presence or self.presence(username),
                "display_name": self.directory.display_name(username)}

    def _presence_changed(self, username: str) -> None:
        now = self.presence(username)
        if self.presence_sent.get(username, "offline") == now:
            return
        if now == "offline":
            self.presence_sent.pop(username, None)
        else:
            self.presence_sent[username] = now
        msg = self._presence_msg(username, now)
        for watcher in self.directory.watchers(username):
            self._send_to_local_user(watcher, msg)  # every node pushes to its own sessions

    def _arm(self, call: Call, kind: CallTimer, after_s: float) -> None:
        seq = next(self._seq)
        call.timer, call.deadline, call.timer_seq = kind, self._now + after_s, seq
        heapq.heappush(self._timers, (call.deadline, seq, call.id))

    @staticmethod
    def _disarm(call: Call) -> None:
        call.timer = call.deadline = None

    # --- sessions going away --------------------------------------------------------------------
    def _end_session_calls(self, session: str, username: str, reason: EndReason | None = None) -> None:
        for call in list(self.calls.values()):
            if session == call.caller_session or session == call.answered_session:
                self._end(call, CallEvent.CONNECTION_LOST, by=username, reason=reason)
            elif session in call.ringing_sessions:
                call.ringing_sessions.discard(session)
                if not call.ringing_sessions and call.answered_session is None:
                    self._end(call, CallEvent.CONNECTION_LOST, by=username, reason=reason)

    # --- authorisation --------------------------------------------------------------------------
    def _call_for(self, session: SessionInfo, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise SignallingError(ErrorCode.UNKNOWN_CALL, "no such call, or it has ended", call_id=call_id)
        if session.id not in call.parties():
            raise SignallingError(ErrorCode.NOT_PARTY, "you are not a party to this call", call_id=call_id)
        return call

    @staticmethod
    def _require(call: Call, event: CallEvent, what: str) -> None:
        if not call.sm.can(event) or (event is not CallEvent.HANGUP and call.state is CallState.CONNECTED):
            raise SignallingError(ErrorCode.INVALID_STATE, f"cannot {what} a call that is {call.state.value}",
                                  call_id=call.id)

    def _require_callee(self, call: Call, session: SessionInfo, event: CallEvent, what: str) -> None:
        if session.id == call.answered_session:
            raise SignallingError(ErrorCode.INVALID_STATE, f"cannot {what} a call that is {call.state.value}",
                                  call_id=call.id)
        if session.id not in call.ringing_sessions:
            raise SignallingError(ErrorCode.NOT_PARTY, f"only the callee may {what} the call", call_id=call.id)
        self._require(call, event, what)

    # --- call messages --------------------------------------------------------------------------
    def _on_invite(self, session: SessionInfo, msg: m.Invite) -> None:
        if msg.call_id in self.calls or msg.call_id in self.recent:
            raise SignallingError(ErrorCode.CALL_EXISTS, "call_id already used", call_id=msg.call_id)
        if session.role == "gateway":
            self._inbound_phone_call(session, msg)
            return
        caller = session.username
        if self.busy(caller):
            raise SignallingError(ErrorCode.ALREADY_IN_CALL, "hang up your current call first", call_id=msg.call_id)
        if is_phone_target(msg.to):
            self._outbound_phone_call(session, msg)
            return
        callee = msg.to.lower()
        if callee == caller:
            raise SignallingError(ErrorCode.SELF_CALL, "you cannot call yourself", call_id=msg.call_id)
        if not self.directory.exists(callee):
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {msg.to!r}", call_id=msg.call_id)
        call = Call(msg.call_id, caller, callee, msg.media, session.id, created_at=self._wall, offer=msg.sdp)
        self._ring_user(call)

    def _ring_user(self, call: Call) -> None:
        """Offer `call` to every session of its callee (a user), or end it as busy/unavailable."""
        caller, callee = call.caller, call.callee
        self.calls[call.id] = call
        if not call.phone:
            self.user_call[caller] = call
        self._log(INFO, f"{caller} -> {callee} ({'+'.join(call.media)})", call)
        self._send(call.caller_session, {"type": "call_state", "call_id": call.id, "state": "calling"})
        if not call.phone and self.directory.is_blocked(callee, caller):  # told only "not available"
            self._end(call, CallEvent.UNAVAILABLE)
            return
        if self.busy(callee):
            self._end(call, CallEvent.BUSY)
            return
        targets = self.user_sessions.get(callee)
        if not targets:
            self._end(call, CallEvent.UNAVAILABLE)
            return
        self.user_call[callee] = call
        call.ringing_sessions = set(targets)
        offer = {"type": "invite", "call_id": call.id, "from": caller, "media": list(call.media), "sdp": call.offer}
        if not call.phone:
            offer["display_name"] = self.directory.display_name(caller)
        self._send_all(call.ringing_sessions, offer)
        self._arm(call, CallTimer.RING, self.cfg.ring_timeout_s)
        self._out.append(CallChanged(call))

    def _inbound_phone_call(self, session: SessionInfo, msg: m.Invite) -> None:
        """A gateway rings a user for a call from a phone number."""
        if not msg.from_:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "a gateway's invite names the caller in 'from'",
                                  call_id=msg.call_id)
        callee = msg.to.lower()
        if not self.directory.exists(callee):
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {msg.to!r}", call_id=msg.call_id)
        call = Call(msg.call_id, msg.from_, callee, ("audio",), session.id, created_at=self._wall,
                    kind="phone_in", offer=msg.sdp)
        self.gateways[session.id].calls.add(call.id)
        self._ring_user(call)

    def _outbound_phone_call(self, session: SessionInfo, msg: m.Invite) -> None:
        """Route a user's call to a phone number: decide what needs no SIP, then pick a gateway."""
        caller = session.username
        call = Call(msg.call_id, caller, msg.to, ("audio",), session.id, created_at=self._wall,
                    kind="phone_out", offer=msg.sdp)
        self.calls[call.id] = call
        self.user_call[caller] = call
        self._send(session.id, {"type": "call_state", "call_id": call.id, "state": "calling"})
        self._route_phone(call, None)

    def _conference_phone(self, session: SessionInfo, conference: str, leg_id: str, number: str,
                          gateway: Gateway | None) -> Call:
        """A phone number added to group call `conference`: a phone_out call from `session`'s user,
        routed as every app-to-phone call is (`_route_phone`), to the conference's `gateway`."""
        call = Call(leg_id, session.username, number, ("audio",), f"conference:{conference}",
                    created_at=self._wall, kind="phone_out", conference=conference)
        self.calls[call.id] = call
        self._route_phone(call, gateway)
        return call

    def _route_phone(self, call: Call, gateway: Gateway | None) -> None:
        """The one path of app-to-phone calls: emergency, numbering, international refusals, then
        the gateway (`gateway`, or the least loaded) gets the invite; else the call ends here."""
        caller, region = call.caller, self.cfg.default_region
        if numbering.is_emergency(call.callee, region):
            self._log(WARNING, f"{caller} dialled emergency number {call.callee!r}: refused", call)
            self._end(call, CallEvent.FAIL, reason=EndReason.EMERGENCY, detail=EMERGENCY_TEXT)
            return
        try:
            e164 = numbering.normalise(call.callee, region)
        except numbering.NumberError as exc:
            self._end(call, CallEvent.FAIL, reason=EndReason.INVALID_NUMBER, detail=str(exc))
            return
        info = numbering.classify(e164)
        call.callee = e164
        if info.kind in ("invalid", "incomplete", "short"):
            self._end(call, CallEvent.FAIL, reason=EndReason.INVALID_NUMBER, detail=info.reason or "not a valid number")
            return
        if not e164.startswith("+86") and not self.allow_international:
            self._end(call, CallEvent.FAIL, reason=EndReason.REJECTED, detail="calls outside China are not allowed")
            return
        if not self._authorise(call, e164):
            return
        if call.conference is None:
            gw = self._gateway_for(call)
        else:
            gw = gateway if gateway is not None and len(gateway.calls) < gateway.capacity else None
        if gw is None:  # the call record's settlement releases the hold (nothing was answered)
            reason = EndReason.UNREACHABLE if call.conference is None else EndReason.CONGESTION
            self._end(call, CallEvent.FAIL, reason=reason, detail="no phone gateway is available")
            return
        gw.calls.add(call.id)
        call.ringing_sessions = {gw.session}
        self._log(INFO, f"{caller} -> {e164} via gateway {gw.name}", call)
        invite: dict[str, Any] = {"type": "invite", "call_id": call.id, "from": caller, "to": e164,
                                  "media": ["audio"], "sdp": call.offer}
        if call.credit is not None:  # the gateway's backstop if we are gone (docs/signalling.md)
            invite.update(max_s=call.credit.allowed_s, max_reason=call.credit.cut_reason)
        if call.conference is not None:
            del invite["sdp"]
            invite["conference"] = call.conference
        self._send(gw.session, invite)
        if call.conference is None:
            self._out.append(CallChanged(call))

    def _on_ringing(self, session: SessionInfo, msg: m.Ringing) -> None:
        call = self._call_for(session, msg.call_id)
        self._require_callee(call, session, CallEvent.RING, "report ringing for")
        gateway = session.role == "gateway"
        if msg.sdp is not None and (not gateway or call.early_sdp_sent):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "only a gateway sends one early-media sdp",
                                  call_id=call.id)
        call.sm.apply(CallEvent.RING)
        out: dict[str, Any] = {"type": "ringing", "call_id": call.id}
        if gateway and msg.sip_code is not None:
            out["sip_code"] = msg.sip_code
        if msg.sdp is not None:
            call.early_sdp_sent = True
            out.update(sdp=msg.sdp, early_media=True)
        if not call.rang or msg.sdp is not None:
            self._send(call.caller_session, out)
        if not call.rang:
            call.rang = True
            self._send(call.caller_session, {"type": "call_state", "call_id": call.id, "state": "ringing"})
            self._out.append(CallChanged(call))
        if call.conference is not None:
            self.group_calls.phone_changed(call)

    def _on_accept(self, session: SessionInfo, msg: m.Accept) -> None:
        """First answer wins: the other ringing sessions get answered_elsewhere."""
        call = self._call_for(session, msg.call_id)
        self._require_callee(call, session, CallEvent.ACCEPT, "accept")
        if msg.sdp is None and not call.early_sdp_sent and call.conference is None:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'sdp' is required", call_id=call.id)
        call.sm.apply(CallEvent.ACCEPT)
        call.answered_session = session.id
        call.answered_at = self._wall
        others = call.ringing_sessions - {session.id}
        call.ringing_sessions = set()
        self._send_all(others, {"type": "call_ended", "call_id": call.id, "reason": EndReason.ANSWERED_ELSEWHERE})
        self._arm(call, CallTimer.MAX_DURATION, self.cfg.max_call_s)
        if call.credit is not None:
            self._start_credit_clock(call)
        accept: dict[str, Any] = {"type": "accept", "call_id": call.id}
        if msg.sdp is not None:
            accept["sdp"] = msg.sdp
        self._send(call.caller_session, accept)
        for s in (call.caller_session, session.id):
            self._send(s, {"type": "call_state", "call_id": call.id, "state": "connected"})
        self._log(INFO, "connected", call)
        self._out.append(CallChanged(call))
        for user in (call.caller, call.callee):
            if user in self.user_call:
                self._presence_changed(user)
        if call.conference is not None:
            self.group_calls.phone_changed(call)

    def _on_decline(self, session: SessionInfo, msg: m.Decline) -> None:
        call = self._call_for(session, msg.call_id)
        if session.role == "gateway":
            event = GATEWAY_EVENTS.get(msg.reason, CallEvent.FAIL)
            self._require_callee(call, session, event, "decline")
            extra: dict[str, Any] = {"detail": msg.detail} if msg.detail else {}
            self._end(call, event, reason=msg.reason, sip_code=msg.sip_code, q850_cause=msg.q850_cause, **extra)
            return
        if msg.reason not in USER_DECLINE_REASONS:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'reason' must be 'declined' or 'busy'",
                                  call_id=call.id)
        event = CallEvent.BUSY if msg.reason is EndReason.BUSY else CallEvent.DECLINE
        self._require_callee(call, session, event, "decline")
        self._end(call, event, by=session.username)

    def _on_cancel(self, session: SessionInfo, msg: m.Cancel) -> None:
        call = self._call_for(session, msg.call_id)
        if session.id != call.caller_session:
            raise SignallingError(ErrorCode.NOT_PARTY, "only the caller cancels", call_id=call.id)
        self._require(call, CallEvent.CANCEL, "cancel")
        self._end(call, CallEvent.CANCEL, by=session.username)

    def _on_hangup(self, session: SessionInfo, msg: m.Hangup) -> None:
        call = self._call_for(session, msg.call_id)
        if call.state is CallState.CONNECTED:
            event = CallEvent.HANGUP
        elif session.id == call.caller_session:
            event = CallEvent.CANCEL
        else:
            event = CallEvent.DECLINE
        if session.role == "gateway":
            by = call.callee if call.kind == "phone_out" else call.caller
            self._end(call, event, by=by, sip_code=msg.sip_code, q850_cause=msg.q850_cause)
            return
        self._end(call, event, by=session.username)

    def _on_ice(self, session: SessionInfo, msg: m.Ice) -> None:
        call = self._call_for(session, msg.call_id)
        self._send_all(call.peer_of(session.id), {"type": "ice", "call_id": call.id, "candidate": msg.candidate})

    def _on_dtmf(self, session: SessionInfo, msg: m.Dtmf) -> None:
        call = self._call_for(session, msg.call_id)
        if call.state is not CallState.CONNECTED:
            raise SignallingError(ErrorCode.INVALID_STATE, "DTMF needs a connected call", call_id=call.id)
        self._send_all(call.peer_of(session.id),
                       {"type": "dtmf", "call_id": call.id, "digits": msg.digits, "from": session.username})

    def _on_call_report(self, session: SessionInfo, msg: m.CallReport) -> None:
        if session.role != "gateway":
            raise SignallingError(ErrorCode.FORBIDDEN, "only gateways report calls", call_id=msg.call_id)
        self._out.append(StoreReport(msg.call_id, msg.codec, msg.app, msg.phone, msg.mos, msg.r_factor))

    # --- prepaid credit (the Ledger) -------------------------------------------------------------
    def _authorise(self, call: Call, e164: str) -> bool:
        """Ask the ledger before any SIP: a refusal ends the call with its reason and words (en,
        zh); a grant holds the money and writes the call's billing record. True: go on."""
        if self.ledger is None:
            return True
        try:
            auth = self.ledger.authorise(call.id, call.caller, e164, self._wall)
        except Exception as exc:  # noqa: BLE001 - a locked or broken database refuses, never half-places
            self._log(WARNING, f"credit check failed: {type(exc).__name__}: {exc}", call)
            self._end(call, CallEvent.FAIL, reason=EndReason.UNREACHABLE, detail="the credit check failed")
            return False
        refusal, grant = auth.refusal, auth.grant
        if refusal is not None or grant is None:
            reason = refusal.reason if refusal is not None else EndReason.FAILED
            en = refusal.en if refusal is not None else reason.words("en")
            zh = refusal.zh if refusal is not None else reason.words("zh")
            self._log(INFO, f"refused before SIP: {reason} ({refusal.rule if refusal else '?'})", call)
            self._end(call, CallEvent.FAIL, reason=reason, detail=en, detail_zh=zh)
            return False
        call.credit = Credit(grant.allowed_s, grant.cut_reason)
        return True

    def _start_credit_clock(self, call: Call) -> None:
        """The phone answered: mark it in the ledger and arm credit_low and the cut (the call's
        one deadline is the soonest of them and calls.max_call_s, which `_arm` just set)."""
        credit = call.credit
        assert credit is not None
        credit.max_at = call.deadline
        timers = None
        try:
            timers = self.ledger.answered(call.id, self._wall) if self.ledger is not None else None
        except Exception as exc:  # noqa: BLE001 - the grant still bounds the call
            self._log(WARNING, f"could not mark the answer in the ledger: {type(exc).__name__}: {exc}", call)
        if timers is not None:
            credit.cut_at = self._now + (timers.cut_at - self._wall)
            credit.ends_at = timers.cut_at
            credit.cut_reason = timers.cut_reason
            if timers.warn_at is not None:
                credit.warn_at = self._now + max(0.0, timers.warn_at - self._wall)
        else:
            credit.cut_at = self._now + credit.allowed_s
            credit.ends_at = self._wall + credit.allowed_s
        self._arm_credit(call)

    def _arm_credit(self, call: Call) -> None:
        credit = call.credit
        assert credit is not None
        due = [(at, kind) for at, kind in ((credit.warn_at if not credit.warned else None, CallTimer.CREDIT_LOW),
                                           (credit.cut_at, CallTimer.CUT), (credit.max_at, CallTimer.MAX_DURATION))
               if at is not None]
        at, kind = min(due, key=lambda d: d[0])
        self._arm(call, kind, at - self._now)

    def _on_credit_timer(self, call: Call, kind: CallTimer) -> None:
        credit = call.credit
        if credit is None:
            return
        if kind is CallTimer.CUT:
            self._log(INFO, f"cut: {credit.cut_reason} after {credit.allowed_s} s", call)
            self._end(call, CallEvent.MAX_DURATION, reason=credit.cut_reason)
            return
        credit.warned = True
        msg: dict[str, Any] = {"type": "credit_low", "call_id": call.id,
                               "remaining_s": max(0, round((credit.cut_at or self._now) - self._now)),
                               "ends_at": credit.ends_at, "reason": credit.cut_reason}
        try:
            if self.ledger is not None:
                have = self.ledger.credit(call.caller)
                msg.update({k: have[k] for k in ("balance", "held", "available", "currency") if k in have})
        except Exception as exc:  # noqa: BLE001 - the warning goes out without the figures
            self._log(WARNING, f"could not read the balance: {type(exc).__name__}: {exc}", call)
        self._send(call.caller_session, msg)
        self._arm_credit(call)

    # --- ending ---------------------------------------------------------------------------------
    def _gateway_for(self, call: Call) -> Gateway | None:
        """The gateway the cluster reserved for this call, else the least loaded one here."""
        reserved = self.reserved.pop(call.id, None)
        if reserved is not None:
            return self.gateways.get(reserved)
        return self.pick_gateway()

    def _end(self, call: Call, event: CallEvent, by: str | None = None, reason: EndReason | None = None,
             sip_code: int | None = None, q850_cause: int | None = None, _to: set[str] | None = None,
             _record: bool = True, **extra: Any) -> None:
        """End `call` once: tell every session involved, free both users, record it, push presence."""
        if call.sm.ended:
            return
        call.sm.apply(event)
        self._disarm(call)
        end_reason = reason or call.sm.end_reason or EndReason.FAILED
        call.end_reason = end_reason
        call.ended_by = by
        msg: dict[str, Any] = {"type": "call_ended", "call_id": call.id, "reason": end_reason}
        if by is not None:
            msg["by"] = by
        if call.phone:
            call.sip_code, call.q850_cause = sip_code, q850_cause
            msg.update(sip_code=sip_code, q850_cause=q850_cause)
        msg.update(extra)
        self._send_all(call.parties() if _to is None else _to, msg)
        self.calls.pop(call.id, None)
        self.recent[call.id] = None
        while len(self.recent) > self.recent_limit:
            self.recent.popitem(last=False)
        for user in (call.caller, call.callee):
            if self.user_call.get(user) is call:
                del self.user_call[user]
        for gw in self.gateways.values():
            gw.calls.discard(call.id)
        self.reserved.pop(call.id, None)
        self._log(INFO, f"ended: {end_reason}", call)
        if _record:
            self._out.append(self._record(call, end_reason))
        self._out.append(CallEnded(call))
        if call.conference is not None:
            self.group_calls.phone_changed(call)
        for user in (call.caller, call.callee):
            if call.kind == "user" or self.directory.exists(user):
                self._presence_changed(user)

    def _record(self, call: Call, end_reason: EndReason) -> WriteCallRecord:
        return (WriteCallRecord(
            call.id, call.caller, call.callee,
            "phone" if call.kind == "phone_in" else "user", "phone" if call.kind == "phone_out" else "user",
            "+".join(call.media), call.created_at, call.answered_at, self._wall, end_reason.value,
            call.sip_code, call.q850_cause))
