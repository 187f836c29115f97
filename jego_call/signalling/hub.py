"""The hub: every connected session, every user's presence and every live call.

The WebSocket handler authenticates a `Session` with `hub.attach(session, username)`, passes
each parsed message to `hub.handle(session, msg)` and calls `hub.detach(session)` when the
socket ends. `handle` is synchronous: it changes state and queues outgoing messages through
`Session.send`, which never blocks. Errors a client caused come out as SignallingError.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import numbering
from ..accounts import Accounts
from ..call.reasons import USER_DECLINE_REASONS, EndReason
from ..call.state import CallEvent, CallState, CallStateMachine
from ..calllog import CallLog, CallRecord
from ..config import CallsConfig
from ..errors import ErrorCode, SignallingError
from . import messages as m

log = logging.getLogger("jego.hub")

RECENT_CALLS = 4096  # ended call ids remembered, so a late message gets unknown_call
PHONE_RE = re.compile(r"^\+?[0-9][0-9 ()\-.]{1,30}$")
EMERGENCY_TEXT = "emergency calls are not supported, use a local phone"

# How a gateway's `decline` reason ends the call (anything else: FAIL with that reason).
GATEWAY_EVENTS = {
    EndReason.DECLINED: CallEvent.DECLINE, EndReason.BUSY: CallEvent.BUSY, EndReason.NO_ANSWER: CallEvent.TIMEOUT,
    EndReason.UNAVAILABLE: CallEvent.UNAVAILABLE, EndReason.CANCELLED: CallEvent.CANCEL,
}


def is_phone_target(to: str) -> bool:
    """A call target that is a phone number rather than a username (usernames need a letter)."""
    return bool(PHONE_RE.match(to))


class Session(Protocol):
    """One authenticated connection (a browser tab, a dialer, a bridge worker)."""

    id: str
    username: str
    role: str  # "user" or "gateway"

    def send(self, msg: dict[str, Any]) -> None:
        """Queue `msg` for delivery; never blocks, never raises."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection soon; `detach` follows."""


@dataclass(eq=False)
class Call:
    id: str
    caller: str
    callee: str
    media: tuple[str, ...]
    caller_session: Session
    sm: CallStateMachine = field(default_factory=CallStateMachine)
    ringing_sessions: set[Session] = field(default_factory=set)   # callee sessions offered the call
    answered_session: Session | None = None
    created_at: float = field(default_factory=time.time)
    answered_at: float | None = None
    rang: bool = False
    timer: asyncio.TimerHandle | None = None
    kind: str = "user"              # "user", "phone_out" (app -> phone) or "phone_in" (phone -> app)
    offer: str = ""
    early_sdp_sent: bool = False    # a gateway sent the answer with ringing (early media)
    sip_code: int | None = None
    q850_cause: int | None = None

    @property
    def phone(self) -> bool:
        return self.kind != "user"

    @property
    def state(self) -> CallState:
        return self.sm.state

    def parties(self) -> set[Session]:
        out = {self.caller_session} | self.ringing_sessions
        if self.answered_session is not None:
            out.add(self.answered_session)
        return out

    def peer_of(self, session: Session) -> set[Session]:
        """Where a relay from `session` goes."""
        if session is self.caller_session:
            if self.answered_session is not None:
                return {self.answered_session}
            return set(self.ringing_sessions)
        return {self.caller_session}


CallEndedHook = Callable[[Call], None]


@dataclass(eq=False)
class Gateway:
    """A connected bridge worker and the calls it carries."""

    session: Session
    name: str
    capacity: int
    calls: set[str] = field(default_factory=set)


class Hub:
    """Sessions, presence and calls. One per server; all methods run on the event loop."""

    def __init__(self, accounts: Accounts, calls_cfg: CallsConfig, max_sessions_per_user: int = 8,
                 loop: asyncio.AbstractEventLoop | None = None, call_log: CallLog | None = None,
                 allow_international: bool = False) -> None:
        self.accounts = accounts
        self.call_log = call_log
        self.allow_international = allow_international
        self.gateways: dict[Session, Gateway] = {}
        self.cfg = calls_cfg
        self.max_sessions = max_sessions_per_user
        self._loop = loop
        self.sessions: dict[str, set[Session]] = {}
        self.calls: dict[str, Call] = {}
        self.user_call: dict[str, Call] = {}          # username -> the live call they are in
        self.recent: OrderedDict[str, None] = OrderedDict()
        self._presence: dict[str, str] = {}
        self._ids = itertools.count(1)
        self.on_call_ended: list[CallEndedHook] = []
        self.closing = False
        self.handlers: dict[type, Callable[[Session, Any], None]] = {
            m.Invite: self.on_invite, m.Ringing: self.on_ringing, m.Accept: self.on_accept,
            m.Decline: self.on_decline, m.Cancel: self.on_cancel, m.Hangup: self.on_hangup,
            m.Ice: self.on_ice, m.Dtmf: self.on_dtmf, m.CallReport: self.on_call_report,
        }

    def register_handler(self, msg_type: type, handler: Callable[[Session, Any], None]) -> None:
        """Route messages of `msg_type` (a parser registered in messages.py) to `handler(session, msg)`."""
        self.handlers[msg_type] = handler

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def new_session_id(self) -> str:
        return f"s{next(self._ids)}"

    # -- sessions and presence ------------------------------------------------------------
    def attach(self, session: Session, username: str, hello: dict[str, Any] | None = None) -> None:
        """Register an authenticated session, send it `hello` then its contacts' presence.

        Raises too_many_sessions when the account has the maximum number of sockets.
        """
        if self.closing:
            raise SignallingError(ErrorCode.INTERNAL, "server is shutting down")
        have = self.sessions.setdefault(username, set())
        if len(have) >= self.max_sessions:
            raise SignallingError(ErrorCode.TOO_MANY_SESSIONS,
                                  f"at most {self.max_sessions} connections per account")
        have.add(session)
        if hello is not None:
            session.send(hello)
        for contact in self.accounts.contacts(username):
            session.send({"type": "presence", "username": contact, "presence": self.presence(contact),
                          "display_name": self.accounts.display_name(contact)})
        self._presence_changed(username)

    def attach_gateway(self, session: Session, name: str, capacity: int, hello: dict[str, Any] | None = None) -> None:
        """Register a bridge worker that takes phone calls (docs/signalling.md, gateways)."""
        if self.closing:
            raise SignallingError(ErrorCode.INTERNAL, "server is shutting down")
        self.gateways[session] = Gateway(session, name, capacity)
        if hello is not None:
            session.send(hello)
        log.info("gateway %s connected (capacity %d)", name, capacity)

    def pick_gateway(self) -> Gateway | None:
        """The gateway with the fewest calls among those with free capacity."""
        free = [g for g in self.gateways.values() if len(g.calls) < g.capacity]
        return min(free, key=lambda g: (len(g.calls) / g.capacity, g.name)) if free else None

    def detach(self, session: Session) -> None:
        """The session's socket ended: end its calls, update presence."""
        if session in self.gateways:
            gw = self.gateways.pop(session)
            log.warning("gateway %s disconnected with %d calls", gw.name, len(gw.calls))
            self._end_session_calls(session, gw.name)
            return
        username = getattr(session, "username", None)
        if not username:
            return
        have = self.sessions.get(username)
        if not have or session not in have:
            return
        have.discard(session)
        if not have:
            del self.sessions[username]
        self._end_session_calls(session, username)
        self._presence_changed(username)

    def _end_session_calls(self, session: Session, username: str) -> None:
        for call in list(self.calls.values()):
            if session is call.caller_session or session is call.answered_session:
                self._end(call, CallEvent.CONNECTION_LOST, by=username)
            elif session in call.ringing_sessions:
                call.ringing_sessions.discard(session)
                if not call.ringing_sessions and call.answered_session is None:
                    self._end(call, CallEvent.CONNECTION_LOST, by=username)

    def online(self, username: str) -> bool:
        return bool(self.sessions.get(username))

    def presence(self, username: str) -> str:
        if not self.online(username):
            return "offline"
        call = self.user_call.get(username)
        return "in_call" if call is not None and call.state is CallState.CONNECTED else "online"

    def _presence_changed(self, username: str) -> None:
        now = self.presence(username)
        if self._presence.get(username, "offline") == now:
            return
        if now == "offline":
            self._presence.pop(username, None)
        else:
            self._presence[username] = now
        msg = {"type": "presence", "username": username, "presence": now,
               "display_name": self.accounts.display_name(username)}
        for watcher in self.accounts.watchers(username):
            self.send_to_user(watcher, msg)

    def send_to_user(self, username: str, msg: dict[str, Any]) -> int:
        """Send `msg` to every session of `username`; returns how many got it."""
        targets = list(self.sessions.get(username, ()))
        for s in targets:
            s.send(msg)
        return len(targets)

    def contact_added(self, owner: str, contact: str) -> None:
        """Tell `owner`'s sessions the presence of a contact they just added."""
        self.send_to_user(owner, {"type": "presence", "username": contact, "presence": self.presence(contact),
                                  "display_name": self.accounts.display_name(contact)})

    # -- messages -------------------------------------------------------------------------
    def handle(self, session: Session, msg: Any) -> None:
        """Act on one parsed message from an authenticated session."""
        handler = self.handlers.get(type(msg))
        if handler is None:  # a type registered by another feature but not routed here
            raise SignallingError(ErrorCode.UNKNOWN_TYPE, f"{type(msg).__name__} is not handled here")
        handler(session, msg)

    def _call_for(self, session: Session, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise SignallingError(ErrorCode.UNKNOWN_CALL, "no such call, or it has ended", call_id=call_id)
        if session not in call.parties():
            raise SignallingError(ErrorCode.NOT_PARTY, "you are not a party to this call", call_id=call_id)
        return call

    def _require(self, call: Call, event: CallEvent, what: str) -> None:
        if not call.sm.can(event) or (event is not CallEvent.HANGUP and call.state is CallState.CONNECTED):
            raise SignallingError(ErrorCode.INVALID_STATE, f"cannot {what} a call that is {call.state.value}",
                                  call_id=call.id)

    def _require_callee(self, call: Call, session: Session, event: CallEvent, what: str) -> None:
        if session is call.answered_session:
            raise SignallingError(ErrorCode.INVALID_STATE, f"cannot {what} a call that is {call.state.value}",
                                  call_id=call.id)
        if session not in call.ringing_sessions:
            raise SignallingError(ErrorCode.NOT_PARTY, f"only the callee may {what} the call", call_id=call.id)
        self._require(call, event, what)

    def on_invite(self, session: Session, msg: m.Invite) -> None:
        if msg.call_id in self.calls or msg.call_id in self.recent:
            raise SignallingError(ErrorCode.CALL_EXISTS, "call_id already used", call_id=msg.call_id)
        if session.role == "gateway":
            self._inbound_phone_call(session, msg)
            return
        caller = session.username
        if caller in self.user_call:
            raise SignallingError(ErrorCode.ALREADY_IN_CALL, "hang up your current call first", call_id=msg.call_id)
        if is_phone_target(msg.to):
            self._outbound_phone_call(session, msg)
            return
        callee = msg.to.lower()
        if callee == caller:
            raise SignallingError(ErrorCode.SELF_CALL, "you cannot call yourself", call_id=msg.call_id)
        if not self.accounts.exists(callee):
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {msg.to!r}", call_id=msg.call_id)
        call = Call(msg.call_id, caller, callee, msg.media, session, offer=msg.sdp)
        self._ring_user(call, session)

    def _ring_user(self, call: Call, session: Session) -> None:
        """Offer `call` to every session of its callee (a user), or end it as busy/unavailable."""
        caller, callee = call.caller, call.callee
        self.calls[call.id] = call
        if not call.phone:
            self.user_call[caller] = call
        log.info("[call %s] %s -> %s (%s)", call.id, caller, callee, "+".join(call.media))
        session.send({"type": "call_state", "call_id": call.id, "state": "calling"})
        if not call.phone and self.accounts.is_blocked(callee, caller):  # told only "not available"
            self._end(call, CallEvent.UNAVAILABLE)
            return
        if callee in self.user_call:
            self._end(call, CallEvent.BUSY)
            return
        targets = self.sessions.get(callee)
        if not targets:
            self._end(call, CallEvent.UNAVAILABLE)
            return
        self.user_call[callee] = call
        call.ringing_sessions = set(targets)
        offer = {"type": "invite", "call_id": call.id, "from": caller, "media": list(call.media), "sdp": call.offer}
        if not call.phone:
            offer["display_name"] = self.accounts.display_name(caller)
        for s in targets:
            s.send(offer)
        call.timer = self.loop.call_later(self.cfg.ring_timeout_s, self._timeout, call)

    def _inbound_phone_call(self, session: Session, msg: m.Invite) -> None:
        """A gateway rings a user for a call from a phone number."""
        if not msg.from_:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "a gateway's invite names the caller in 'from'",
                                  call_id=msg.call_id)
        callee = msg.to.lower()
        if not self.accounts.exists(callee):
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {msg.to!r}", call_id=msg.call_id)
        call = Call(msg.call_id, msg.from_, callee, ("audio",), session, kind="phone_in", offer=msg.sdp)
        self.gateways[session].calls.add(call.id)
        self._ring_user(call, session)

    def _outbound_phone_call(self, session: Session, msg: m.Invite) -> None:
        """Route a user's call to a phone number: decide what needs no SIP, then pick a gateway."""
        caller = session.username
        region = self.cfg.default_region
        call = Call(msg.call_id, caller, msg.to, ("audio",), session, kind="phone_out", offer=msg.sdp)
        self.calls[call.id] = call
        self.user_call[caller] = call
        session.send({"type": "call_state", "call_id": call.id, "state": "calling"})
        if numbering.is_emergency(msg.to, region):
            log.warning("[call %s] %s dialled emergency number %r: refused", call.id, caller, msg.to)
            self._end(call, CallEvent.FAIL, reason=EndReason.EMERGENCY, detail=EMERGENCY_TEXT)
            return
        try:
            e164 = numbering.normalise(msg.to, region)
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
        gw = self.pick_gateway()
        if gw is None:
            self._end(call, CallEvent.FAIL, reason=EndReason.UNREACHABLE, detail="no phone gateway is available")
            return
        gw.calls.add(call.id)
        call.ringing_sessions = {gw.session}
        log.info("[call %s] %s -> %s via gateway %s", call.id, caller, e164, gw.name)
        gw.session.send({"type": "invite", "call_id": call.id, "from": caller, "to": e164, "media": ["audio"],
                         "sdp": msg.sdp})

    def on_ringing(self, session: Session, msg: m.Ringing) -> None:
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
            call.caller_session.send(out)
        if not call.rang:
            call.rang = True
            call.caller_session.send({"type": "call_state", "call_id": call.id, "state": "ringing"})

    def on_accept(self, session: Session, msg: m.Accept) -> None:
        call = self._call_for(session, msg.call_id)
        self._require_callee(call, session, CallEvent.ACCEPT, "accept")
        if msg.sdp is None and not call.early_sdp_sent:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'sdp' is required", call_id=call.id)
        call.sm.apply(CallEvent.ACCEPT)
        call.answered_session = session
        call.answered_at = time.time()
        others = call.ringing_sessions - {session}
        call.ringing_sessions = set()
        for s in others:
            s.send({"type": "call_ended", "call_id": call.id, "reason": EndReason.ANSWERED_ELSEWHERE})
        self._cancel_timer(call)
        call.timer = self.loop.call_later(self.cfg.max_call_s, self._max_duration, call)
        accept: dict[str, Any] = {"type": "accept", "call_id": call.id}
        if msg.sdp is not None:
            accept["sdp"] = msg.sdp
        call.caller_session.send(accept)
        for s in (call.caller_session, session):
            s.send({"type": "call_state", "call_id": call.id, "state": "connected"})
        log.info("[call %s] connected", call.id)
        for user in (call.caller, call.callee):
            if user in self.user_call:
                self._presence_changed(user)

    def on_decline(self, session: Session, msg: m.Decline) -> None:
        call = self._call_for(session, msg.call_id)
        if session.role == "gateway":
            event = GATEWAY_EVENTS.get(msg.reason, CallEvent.FAIL)
            self._require_callee(call, session, event, "decline")
            extra = {"detail": msg.detail} if msg.detail else {}
            self._end(call, event, reason=msg.reason, sip_code=msg.sip_code, q850_cause=msg.q850_cause, **extra)
            return
        if msg.reason not in USER_DECLINE_REASONS:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'reason' must be 'declined' or 'busy'",
                                  call_id=call.id)
        event = CallEvent.BUSY if msg.reason is EndReason.BUSY else CallEvent.DECLINE
        self._require_callee(call, session, event, "decline")
        self._end(call, event, by=session.username)

    def on_cancel(self, session: Session, msg: m.Cancel) -> None:
        call = self._call_for(session, msg.call_id)
        if session is not call.caller_session:
            raise SignallingError(ErrorCode.NOT_PARTY, "only the caller cancels", call_id=call.id)
        self._require(call, CallEvent.CANCEL, "cancel")
        self._end(call, CallEvent.CANCEL, by=session.username)

    def on_hangup(self, session: Session, msg: m.Hangup) -> None:
        call = self._call_for(session, msg.call_id)
        if call.state is CallState.CONNECTED:
            event = CallEvent.HANGUP
        elif session is call.caller_session:
            event = CallEvent.CANCEL
        else:
            event = CallEvent.DECLINE
        by = session.username
        if session.role == "gateway":
            by = call.callee if call.kind == "phone_out" else call.caller
            self._end(call, event, by=by, sip_code=msg.sip_code, q850_cause=msg.q850_cause)
            return
        self._end(call, event, by=by)

    def on_ice(self, session: Session, msg: m.Ice) -> None:
        call = self._call_for(session, msg.call_id)
        for s in call.peer_of(session):
            s.send({"type": "ice", "call_id": call.id, "candidate": msg.candidate})

    def on_dtmf(self, session: Session, msg: m.Dtmf) -> None:
        call = self._call_for(session, msg.call_id)
        if call.state is not CallState.CONNECTED:
            raise SignallingError(ErrorCode.INVALID_STATE, "DTMF needs a connected call", call_id=call.id)
        for s in call.peer_of(session):
            s.send({"type": "dtmf", "call_id": call.id, "digits": msg.digits, "from": session.username})

    def on_call_report(self, session: Session, msg: m.CallReport) -> None:
        if session.role != "gateway":
            raise SignallingError(ErrorCode.FORBIDDEN, "only gateways report calls", call_id=msg.call_id)
        if self.call_log is not None:
            self.call_log.report(msg.call_id, msg.codec, msg.app, msg.phone)

    # -- ending ---------------------------------------------------------------------------
    def _cancel_timer(self, call: Call) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None

    def _timeout(self, call: Call) -> None:
        if not call.sm.ended:
            self._end(call, CallEvent.TIMEOUT)

    def _max_duration(self, call: Call) -> None:
        if not call.sm.ended:
            self._end(call, CallEvent.MAX_DURATION)

    def _end(self, call: Call, event: CallEvent, by: str | None = None, reason: EndReason | None = None,
             sip_code: int | None = None, q850_cause: int | None = None, **extra: Any) -> None:
        """End `call` once: tell every session involved, free both users, push presence."""
        if call.sm.ended:
            return
        call.sm.apply(event)
        self._cancel_timer(call)
        end_reason = reason or call.sm.end_reason or EndReason.FAILED
        msg: dict[str, Any] = {"type": "call_ended", "call_id": call.id, "reason": end_reason}
        if by is not None:
            msg["by"] = by
        if call.phone:
            call.sip_code, call.q850_cause = sip_code, q850_cause
            msg.update(sip_code=sip_code, q850_cause=q850_cause)
        msg.update(extra)
        for s in call.parties():
            s.send(msg)
        self.calls.pop(call.id, None)
        self.recent[call.id] = None
        while len(self.recent) > RECENT_CALLS:
            self.recent.popitem(last=False)
        for user in (call.caller, call.callee):
            if self.user_call.get(user) is call:
                del self.user_call[user]
        for gw in self.gateways.values():
            gw.calls.discard(call.id)
        log.info("[call %s] ended: %s", call.id, end_reason)
        if self.call_log is not None:
            self._log_call(call, end_reason)
        for hook in self.on_call_ended:
            try:
                hook(call)
            except Exception:  # a hook must never break call teardown
                log.exception("[call %s] on_call_ended hook failed", call.id)
        for user in (call.caller, call.callee):
            if call.kind == "user" or self.accounts.exists(user):
                self._presence_changed(user)

    def _log_call(self, call: Call, outcome: str) -> None:
        assert self.call_log is not None
        try:
            self.call_log.record(CallRecord(
                call.id, call.caller, call.callee,
                "phone" if call.kind == "phone_in" else "user", "phone" if call.kind == "phone_out" else "user",
                "+".join(call.media), call.created_at, call.answered_at, time.time(), outcome,
                call.sip_code, call.q850_cause))
        except Exception:  # a full disk must not break call teardown
            log.exception("[call %s] could not store the call record", call.id)

    def shutdown(self) -> None:
        """End every call with server_shutdown and close every session (code 1001)."""
        self.closing = True
        for call in list(self.calls.values()):
            self._end(call, CallEvent.SHUTDOWN)
        for sessions in list(self.sessions.values()):
            for s in list(sessions):
                s.close(1001, "server shutdown")
        for gw_session in list(self.gateways):
            gw_session.close(1001, "server shutdown")
