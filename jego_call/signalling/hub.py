"""The hub's asyncio shell: every connected session object, the clock and the one timer.

The WebSocket handler authenticates a `Session` with `hub.attach(session, username)`, passes
each parsed message to `hub.handle(session, msg)` and calls `hub.detach(session)` when the
socket ends. Every decision (who may do what, call states, presence, routing to a gateway, ring
timeout, maximum duration) is made by the pure `HubCore` (hub_core.py); this shell gives it
`now` (the loop's monotonic clock) and `wall` (Unix time), carries out the commands it returns
(`Session.send`, `Session.close`, call records, on_call_ended hooks, log lines) and keeps one
`loop.call_at` for the core's next deadline. The core's accounts lookups go to a synchronous
`Directory` (jego_call/directory.py: SQLite reads, or an in-memory cache on PostgreSQL). `handle`
is synchronous for the call types; a handler another feature registered (messaging) may be a
coroutine, which `handle` returns for the socket's reader to await. Call records are written
by one task, in order, after the core said so (`drain()` waits for them). `Session.send` never
blocks. Errors a client caused come out as SignallingError.

In a cluster (`[cluster] redis_url`), `hub.cluster` is the node's link to the others
(jego_call/cluster/node.py, a `ClusterLink`): it mirrors this node's sessions and calls into the
shared state, relays `Send`s for sessions of other nodes, forwards messages for calls another
node owns, and claims a new call (its id, who is busy, gateway capacity) before the core sees
it. Without a cluster (the default) none of that runs and everything stays in the core.

Paid phone calls: billing installs its `Ledger` with `set_ledger(billing)`; the core then
authorises and times them, and this shell settles each one with its call record, in one
transaction (`Ledger.settle(..., also=write the record)`), exactly once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..calllog import CallLog, CallRecord
from ..config import CallsConfig
from ..errors import ErrorCode, SignallingError
from ..groups.calls import GroupDirectory
from ..log import call_context
from .hub_core import (
    EMERGENCY_TEXT,
    GATEWAY_EVENTS,
    PHONE_RE,
    RECENT_CALLS,
    Call,
    CallChanged,
    CallEnded,
    Close,
    Command,
    Directory,
    Gateway,
    HubCore,
    Ledger,
    Log,
    Send,
    StoreReport,
    WriteCallRecord,
    is_phone_target,
)

__all__ = ["EMERGENCY_TEXT", "GATEWAY_EVENTS", "PHONE_RE", "RECENT_CALLS", "Call", "CallEndedHook", "Gateway",
           "Hub", "Session", "is_phone_target"]

if TYPE_CHECKING:
    from ..db import Executor

log = logging.getLogger("jego.hub")


class Session(Protocol):
    """One authenticated connection (a browser tab, a dialer, a bridge worker)."""

    id: str
    username: str
    role: str  # "user" or "gateway"

    def send(self, msg: dict[str, Any]) -> None:
        """Queue `msg` for delivery; never blocks, never raises."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection soon; `detach` follows."""


CallEndedHook = Callable[[Call], None]
Handler = Callable[[Session, Any], Awaitable[None] | None]


class ClusterLink(Protocol):
    """What the hub asks of its cluster node (jego_call/cluster/node.py `ClusterNode`)."""

    def new_session_id(self, n: int) -> str: ...

    def attached(self, session: Session, name: str = "", capacity: int = 0) -> None: ...

    def detached(self, session: Session) -> None: ...

    def relay(self, session_id: str, msg: dict[str, Any]) -> bool:
        """Deliver to a session of another node; False when nobody knows it."""

    def send_to_user(self, username: str, msg: dict[str, Any], skip: str | None) -> int:
        """Deliver to `username`'s sessions on other nodes; how many there are."""

    def intercept(self, session: Session, msg: Any, raw: dict[str, Any] | None, ref: object) -> bool:
        """Take a call message this node must not give its core yet (a new call to claim, a
        call another node owns); True when taken."""

    def call_changed(self, call: Call) -> None: ...

    def call_ended(self, call: Call) -> None: ...


class Hub:
    """Sessions, presence and calls. One per server; all methods run on the event loop.

    The core is given `now` = `loop.time()` (monotonic seconds, the clock of `loop.call_at`) and
    `wall` = `wall_clock()` (Unix seconds, default time.time) for call records.
    """

    def __init__(self, directory: Directory, calls_cfg: CallsConfig, max_sessions_per_user: int = 8,
                 loop: asyncio.AbstractEventLoop | None = None, call_log: CallLog | None = None,
                 allow_international: bool = False, wall_clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.call_log = call_log
        self.cfg = calls_cfg
        self.core = HubCore(directory, calls_cfg, max_sessions_per_user, allow_international)
        self._loop = loop
        self._wall_clock = wall_clock
        self.sessions: dict[str, set[Session]] = {}   # username -> its live Session objects
        self._by_id: dict[str, Session] = {}          # session id -> Session (users and gateways)
        self._user_of: dict[str, str] = {}            # session id -> username it attached as
        self._ids = itertools.count(1)
        self.on_call_ended: list[CallEndedHook] = []
        self.on_call_report: list[Callable[[StoreReport], None]] = []   # a gateway's call_report, once stored
        self.handlers: dict[type, Handler] = {}       # message types of other features (messaging)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.cluster: ClusterLink | None = None       # set by ClusterNode.bind in a cluster
        self._writes: list[tuple[Awaitable[Any], str, str]] = []  # (write, call id, what) in order
        self._writer: asyncio.Task[None] | None = None
        self.unsettled: dict[str, WriteCallRecord] = {}  # records whose settlement failed: retried

    # --- what the rest of the server reads --------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def calls(self) -> dict[str, Call]:
        return self.core.calls

    @property
    def user_call(self) -> dict[str, Call]:
        return self.core.user_call

    @property
    def gateways(self) -> dict[str, Gateway]:
        """Session id -> connected gateway."""
        return self.core.gateways

    @property
    def closing(self) -> bool:
        return self.core.closing

    @property
    def max_sessions(self) -> int:
        return self.core.max_sessions

    @property
    def allow_international(self) -> bool:
        return self.core.allow_international

    def pick_gateway(self) -> Gateway | None:
        """The gateway with the fewest calls among those with free capacity."""
        return self.core.pick_gateway()

    @property
    def ledger(self) -> Ledger | None:
        return self.core.ledger

    def set_ledger(self, ledger: Ledger | None) -> None:
        """Charge calls to phones from now on (billing's cleanup_ctx; None: they are free)."""
        self.core.ledger = ledger

    def online(self, username: str) -> bool:
        return self.core.online(username)

    def presence(self, username: str) -> str:
        return self.core.presence(username)

    def new_session_id(self) -> str:
        n = next(self._ids)
        return self.cluster.new_session_id(n) if self.cluster is not None else f"s{n}"

    def register_handler(self, msg_type: type, handler: Handler) -> None:
        """Route messages of `msg_type` (a parser registered in messages.py) to `handler(session, msg)`."""
        self.handlers[msg_type] = handler

    # --- inputs -----------------------------------------------------------------------------------
    def attach(self, session: Session, username: str, hello: dict[str, Any] | None = None) -> None:
        """Register an authenticated session, send it `hello` then its contacts' presence.

        Raises too_many_sessions when the account has the maximum number of sockets.
        """
        cmds = self.core.attach(session.id, username, hello)
        self._by_id[session.id] = session
        self._user_of[session.id] = username
        self.sessions.setdefault(username, set()).add(session)
        if self.cluster is not None:
            self.cluster.attached(session)
        self._run(cmds)

    def attach_gateway(self, session: Session, name: str, capacity: int, hello: dict[str, Any] | None = None) -> None:
        """Register a bridge worker that takes phone calls (docs/signalling.md, gateways)."""
        cmds = self.core.attach_gateway(session.id, name, capacity, hello)
        self._by_id[session.id] = session
        if self.cluster is not None:
            self.cluster.attached(session, name, capacity)
        self._run(cmds)

    def detach(self, session: Session) -> None:
        """The session's socket ended: end its calls, update presence."""
        if self._by_id.get(session.id) is not session:
            return
        self._run(self.core.detach(session.id, now=self.loop.time(), wall=self._wall_clock()))
        del self._by_id[session.id]
        if self.cluster is not None:
            self.cluster.detached(session)
        username = self._user_of.pop(session.id, "")
        have = self.sessions.get(username)
        if have is not None:
            have.discard(session)
            if not have:
                del self.sessions[username]

    def handle(self, session: Session, msg: Any, raw: dict[str, Any] | None = None,
               ref: object = None) -> Awaitable[None] | None:
        """Act on one parsed message from an authenticated session (logged with its call id and
        user; `raw`: the frame's JSON object and `ref` its id, for a cluster that forwards it to
        another node). A registered handler may return a coroutine: await it (the caller's next
        message waits for it); it runs in the same log context."""
        call_id = getattr(msg, "call_id", None)
        context = {"call_id": call_id if isinstance(call_id, str) else None, "user": session.username or None}
        with call_context(**context):
            handler = self.handlers.get(type(msg))
            if handler is not None:
                pending = handler(session, msg)
                return None if pending is None else self._in_context(pending, context)
            if not self.core.handles(type(msg)):  # a type registered by another feature but not routed here
                raise SignallingError(ErrorCode.UNKNOWN_TYPE, f"{type(msg).__name__} is not handled here")
            if self.cluster is not None and self.cluster.intercept(session, msg, raw, ref):
                return None
            self.handle_call(session.id, msg)
        return None

    @staticmethod
    async def _in_context(pending: Awaitable[None], context: dict[str, str | None]) -> None:
        with call_context(**context):
            await pending

    def handle_call(self, session_id: str, msg: Any) -> None:
        """Give a call message of session `session_id` (here or, in a cluster, on another
        node) to the core and carry out its commands. SignallingError if it is wrong."""
        self._run(self.core.handle(session_id, msg, now=self.loop.time(), wall=self._wall_clock()))

    def feed(self, step: Callable[[float, float], list[Command]]) -> None:
        """Run one core input `step(now, wall)` and carry out its commands (the cluster's
        inputs: sessions of other nodes, calls taken over)."""
        self._run(step(self.loop.time(), self._wall_clock()))

    def send_local(self, session_id: str, msg: dict[str, Any]) -> bool:
        """Queue `msg` to this node's session `session_id`; False when it is not here."""
        target = self._by_id.get(session_id)
        if target is None:
            return False
        target.send(msg)
        return True

    def send_to_user(self, username: str, msg: dict[str, Any], skip: Session | None = None) -> int:
        """Send `msg` to every session of `username` (on every node of a cluster), except
        `skip`; returns how many got it."""
        n = self.send_to_local_user(username, msg, skip.id if skip is not None else None)
        if self.cluster is not None:
            n += self.cluster.send_to_user(username, msg, skip.id if skip is not None else None)
        return n

    def send_to_local_user(self, username: str, msg: dict[str, Any], skip: str | None = None) -> int:
        """`send_to_user` on this node only."""
        targets = [s for s in self.sessions.get(username, ()) if s.id != skip]
        for s in targets:
            s.send(msg)
        return len(targets)

    def set_groups(self, directory: GroupDirectory) -> None:
        """Install group membership for group calls (a `groups.calls.GroupDirectory`)."""
        self.core.set_group_directory(directory)

    def group_call(self, group_id: str) -> dict[str, Any] | None:
        """The group's running call as `GET /api/groups/{id}` shows it, or None."""
        call = self.core.group_calls.by_group.get(group_id)
        if call is None:
            return None
        return {"call_id": call.id, "state": call.state.value, "media": list(call.media),
                "in_call": sorted(p.username for p in call.in_call())}

    def group_member_left(self, group_id: str, username: str) -> None:
        """`username` is no longer in the group: their part in its group call ends."""
        self._run(self.core.group_member_left(group_id, username, now=self.loop.time(), wall=self._wall_clock()))

    def contact_added(self, owner: str, contact: str) -> None:
        """Tell `owner`'s sessions the presence of a contact they just added."""
        self._run(self.core.contact_added(owner, contact))

    def shutdown(self) -> None:
        """End every call with server_shutdown and close every session (code 1001)."""
        self._run(self.core.shutdown(now=self.loop.time(), wall=self._wall_clock()))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    # --- carrying out the core's commands -----------------------------------------------------------
    def _run(self, cmds: list[Command]) -> None:
        cluster = self.cluster
        if cluster is not None:  # free the shared state before anyone hears the call ended
            for cmd in cmds:
                if isinstance(cmd, CallEnded):
                    cluster.call_ended(cmd.call)
        for cmd in cmds:
            if isinstance(cmd, Send):
                target = self._by_id.get(cmd.session)
                if target is not None:
                    target.send(cmd.msg)
                elif cluster is not None:
                    cluster.relay(cmd.session, cmd.msg)
            elif isinstance(cmd, CallChanged):
                if cluster is not None:
                    cluster.call_changed(cmd.call)
            elif isinstance(cmd, Close):
                target = self._by_id.get(cmd.session)
                if target is not None:
                    target.close(cmd.code, cmd.reason)
            elif isinstance(cmd, Log):
                log.log(cmd.level, "%s", cmd.text, extra={"call_id": cmd.call_id})  # the formatter shows the call
            elif isinstance(cmd, WriteCallRecord):
                self._record(cmd)
            elif isinstance(cmd, StoreReport):
                if self.call_log is not None:
                    self._write(functools.partial(self.call_log.report, cmd.call_id, cmd.codec, cmd.app, cmd.phone),
                                cmd.call_id, "could not store the call report")
                for report_hook in self.on_call_report:
                    try:
                        report_hook(cmd)
                    except Exception:  # quality bookkeeping must never break the report
                        log.exception("on_call_report hook failed", extra={"call_id": cmd.call_id})
            elif isinstance(cmd, CallEnded):
                for hook in self.on_call_ended:
                    try:
                        hook(cmd.call)
                    except Exception:  # a hook must never break call teardown
                        log.exception("on_call_ended hook failed", extra={"call_id": cmd.call.id})
        self._arm()

    def _record(self, rec: WriteCallRecord) -> None:
        """Store the call record (by the writer task, in order); a call to a phone is settled in
        the same transaction (a call the ledger never authorised just gets its record). A
        failure is kept for `retry_records`."""
        if self.core.ledger is not None and rec.callee_kind == "phone":
            self._write(functools.partial(self._store_record, rec), rec.call_id, "could not store the call record")
            return
        if self.call_log is None:
            return
        record = CallRecord(rec.call_id, rec.caller, rec.callee, rec.caller_kind, rec.callee_kind, rec.media,
                            rec.started_at, rec.answered_at, rec.ended_at, rec.outcome, rec.sip_code, rec.q850_cause)
        self._write(functools.partial(self.call_log.record, record), rec.call_id, "could not store the call record")

    async def _store_record(self, rec: WriteCallRecord) -> None:
        call_log = self.call_log
        record = CallRecord(rec.call_id, rec.caller, rec.callee, rec.caller_kind, rec.callee_kind, rec.media,
                            rec.started_at, rec.answered_at, rec.ended_at, rec.outcome, rec.sip_code, rec.q850_cause)

        async def write(tx: Executor | None = None) -> None:
            if call_log is not None:
                await call_log.record(record, tx)

        ledger = self.core.ledger
        paid = ledger is not None and rec.callee_kind == "phone"
        try:
            if ledger is not None and paid:
                await ledger.settle(rec.call_id, rec.answered_at, rec.ended_at, rec.ended_at, also=write)
            else:
                await write()
        except Exception:
            if paid:
                self.unsettled[rec.call_id] = rec
            raise
        self.unsettled.pop(rec.call_id, None)

    def retry_records(self) -> int:
        """Try again to settle and store the records that failed (billing's heartbeat calls this);
        returns how many were waiting."""
        waiting = list(self.unsettled.values())
        for rec in waiting:
            self._record(rec)
        return len(waiting)

    def queue_write(self, start: Callable[[], Any], call_id: str, what: str) -> None:
        """Store something about a call after what is already queued (its record): `start()`
        begins the write; a failure is logged with `what`, never raised."""
        self._write(start, call_id, what)

    def _write(self, start: Callable[[], Any], call_id: str, what: str) -> None:
        """Start a store write; a coroutine goes to the writer task, behind earlier ones (a
        report after its record). A failing write (a full disk, the database away) is logged:
        it never breaks call teardown."""
        try:
            pending = start()
        except Exception:
            log.exception(what, extra={"call_id": call_id})
            return
        if not inspect.isawaitable(pending):
            return
        self._writes.append((pending, call_id, what))
        if self._writer is None or self._writer.done():
            self._writer = self.loop.create_task(self._write_all())

    async def _write_all(self) -> None:
        while self._writes:
            pending, call_id, what = self._writes.pop(0)
            try:
                await pending
            except Exception:
                log.exception(what, extra={"call_id": call_id})

    async def drain(self) -> None:
        """Wait until every call record and report the core asked for is written (shutdown)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)


    def _arm(self) -> None:
        """One loop timer, at the core's next deadline (re-armed only when that changes)."""
        at = self.core.next_deadline()
        if self._timer is not None and self._timer_at != at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and at is not None:
            # a fresh context: the timer serves every call, not the one whose message armed it
            self._timer = contextvars.Context().run(self.loop.call_at, at, self._on_timer)
        self._timer_at = at

    def _on_timer(self) -> None:
        # call_at may fire a little early by the loop's clock resolution: never pass a `now`
        # before the deadline it fired for
        now = max(self._timer_at or 0.0, self.loop.time())
        self._timer = self._timer_at = None
        self._run(self.core.handle_timer(now=now, wall=self._wall_clock()))
