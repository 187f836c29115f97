"""A HubCore in virtual time for unit tests: an in-memory directory, a clock you advance, and the
commands the core returned, filed per session.

    w = HubWorld(users=["alice", "bob"], contacts={"alice": ["bob"]})
    w.attach("a1", "alice"); w.attach("b1", "bob")
    w.msg("a1", type="invite", call_id=CID, to="bob", sdp=SDP)
    w.advance(45)                     # fires the ring timeout exactly as the shell's timer would
    w.inbox("a1")                     # every message the core sent to a1, in order

`HubWorld(ledger=MemoryLedger({"alice": 500}))` bills calls to phones: the ledger decides with
the real pure billing policy (config/rates.toml, [fraud] defaults) over in-memory balances and
holds, and the world settles each phone call with its WriteCallRecord, as the shell does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jego_call.billing import policy
from jego_call.billing.fraud import Activity, FraudConfig
from jego_call.billing.policy import Grant, Terms, Timers
from jego_call.billing.rates import RateTable
from jego_call.billing.refusal import Refusal
from jego_call.billing.service import Authorisation, load_rate_table
from jego_call.config import CallsConfig
from jego_call.numbering import classify
from jego_call.signalling import messages as m
from jego_call.signalling.hub_core import (
    Call,
    CallEnded,
    Close,
    Command,
    HubCore,
    Log,
    Send,
    StoreReport,
    WriteCallRecord,
)

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
ANSWER = SDP + "a=answer\r\n"
WALL0 = 1_764_000_000.0


@dataclass
class MemoryDirectory:
    """`Directory` over dicts: users, and who has whom as a contact."""

    users: set[str] = field(default_factory=set)
    contact_lists: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    blocks: set[tuple[str, str]] = field(default_factory=set)   # (owner, blocked)

    def exists(self, username: str) -> bool:
        return username in self.users

    def contacts(self, owner: str) -> list[str]:
        return sorted(self.contact_lists.get(owner, []))

    def watchers(self, username: str) -> list[str]:
        return sorted(o for o, cs in self.contact_lists.items() if username in cs)

    def display_name(self, username: str) -> str:
        return self.names.get(username, username)

    def is_blocked(self, owner: str, other: str) -> bool:
        return (owner, other) in self.blocks


@dataclass
class Charge:
    user: str
    e164: str
    grant: Grant
    authorised_at: float
    answered_at: float | None = None
    open: bool = True
    billed_s: int = 0
    cost: int = 0


class MemoryLedger:
    """`Ledger` over dicts, deciding with the real `billing.policy` (rates from config/rates.toml
    unless given): balances in minor units, a hold per open call, suspensions. `settles` counts
    settlements per call id (exactly once is the rule); `fail_next` makes the next call raise."""

    def __init__(self, balances: dict[str, int] | None = None, rates: RateTable | None = None,
                 fraud: FraudConfig | None = None, terms: Terms | None = None) -> None:
        self.balances: dict[str, int] = dict(balances or {})
        self.rates = rates or load_rate_table()
        self.fraud = fraud or FraudConfig()
        self.terms = terms or Terms()
        self.charges: dict[str, Charge] = {}
        self.suspended: dict[str, Refusal] = {}
        self.settles: Counter[str] = Counter()
        self.fail_next: str | None = None   # "authorise", "answered", "credit" or "settle"

    def _maybe_fail(self, what: str) -> None:
        if self.fail_next == what:
            self.fail_next = None
            raise RuntimeError(f"database is locked ({what})")

    def held(self, user: str) -> int:
        return sum(c.grant.hold for c in self.charges.values() if c.user == user and c.open)

    def authorise(self, call_id: str, username: str, e164: str, now: float) -> Authorisation:
        self._maybe_fail("authorise")
        info = classify(e164)
        mine = [c for c in self.charges.values() if c.user == username]
        opened = [c for c in mine if c.open]
        account = policy.Account(self.balances.get(username, 0), self.held(username), self.suspended.get(username))
        activity = Activity(open_calls=len(opened),
                            recent=tuple((c.authorised_at, c.e164) for c in mine if c.authorised_at > now - 3600),
                            used_s_24h=sum(c.billed_s for c in mine if not c.open),
                            reserved_s=sum(c.grant.allowed_s for c in opened))
        d = policy.decide(info, account, activity, self.rates, self.fraud, self.terms, now)
        if d.suspends and d.refusal is not None:
            self.suspended[username] = d.refusal
        if d.grant is not None:
            self.charges[call_id] = Charge(username, info.e164, d.grant, now)
        return Authorisation(call_id, d.grant, d.refusal, d.signals)

    def answered(self, call_id: str, at: float) -> Timers | None:
        self._maybe_fail("answered")
        c = self.charges.get(call_id)
        if c is None or not c.open:
            return None
        c.answered_at = at
        return policy.timers(c.grant, at, self.terms)

    def credit(self, username: str) -> dict[str, Any]:
        self._maybe_fail("credit")
        bal, held = self.balances.get(username, 0), self.held(username)
        return {"balance": bal, "held": held, "available": bal - held, "currency": self.rates.currency.code}

    def settle(self, call_id: str, answered_at: float | None, ended_at: float, now: float | None = None, *,
               also: Callable[[Any], Any] | None = None, by: str = "call") -> object:
        self._maybe_fail("settle")
        c = self.charges.get(call_id)
        if also is not None:
            also(None)  # (the real ledger passes its transaction)
        if c is None:
            return None
        self.settles[call_id] += 1
        if c.open:
            a = policy.settle_amounts(c.grant.rate, c.grant.allowed_s, answered_at, ended_at)
            c.open, c.billed_s, c.cost = False, a.billed_s, a.cost
            self.balances[c.user] = self.balances.get(c.user, 0) - a.cost
        return c


class HubWorld:
    """One HubCore, a virtual clock (`now` monotonic from 1000 s, `wall` from WALL0) and a log of
    every command, as the shell would carry them out."""

    def __init__(self, users: list[str] | None = None, contacts: dict[str, list[str]] | None = None,
                 ring_timeout_s: float = 45.0, max_call_s: float = 14400.0, max_sessions: int = 8,
                 allow_international: bool = False, recent_limit: int = 4096,
                 ledger: MemoryLedger | None = None) -> None:
        self.directory = MemoryDirectory(set(users or ["alice", "bob", "carol"]), dict(contacts or {}))
        self.cfg = CallsConfig(ring_timeout_s=ring_timeout_s, max_call_s=max_call_s)
        self.ledger = ledger
        self.core = HubCore(self.directory, self.cfg, max_sessions, allow_international, recent_limit, ledger)
        self.stored: list[WriteCallRecord] = []   # records the "shell" stored (with their settlement)
        self.now = 1000.0
        self.t0 = self.now
        self.commands: list[Command] = []
        self.ended: dict[str, Call] = {}
        self.seen: dict[str, Call] = {}

    # --- inputs -------------------------------------------------------------------------------
    @property
    def wall(self) -> float:
        return WALL0 + (self.now - self.t0)

    def _take(self, cmds: list[Command]) -> list[Command]:
        self.commands += cmds
        for c in cmds:
            if isinstance(c, CallEnded):
                self.ended[c.call.id] = c.call
            elif isinstance(c, WriteCallRecord):  # as Hub._record: settle a phone call with its record
                rec = c
                if self.ledger is not None and rec.callee_kind == "phone":
                    self.ledger.settle(rec.call_id, rec.answered_at, rec.ended_at, rec.ended_at,
                                       also=lambda _tx, rec=rec: self.stored.append(rec))  # type: ignore[misc]
                else:
                    self.stored.append(rec)
        for call in self.core.calls.values():
            self.seen[call.id] = call
        return cmds

    def attach(self, sid: str, user: str, hello: dict[str, Any] | None = None) -> list[Command]:
        return self._take(self.core.attach(sid, user, hello))

    def gateway(self, sid: str = "gw1", name: str = "gw1", capacity: int = 4) -> list[Command]:
        return self._take(self.core.attach_gateway(sid, name, capacity, {"type": "auth_ok"}))

    def detach(self, sid: str) -> list[Command]:
        return self._take(self.core.detach(sid, now=self.now, wall=self.wall))

    def msg(self, sid: str, **fields: Any) -> list[Command]:
        """Parse `fields` as a wire message (messages.py), then hand it to the core."""
        parsed = m.parse_message(dict(fields))
        return self._take(self.core.handle(sid, parsed, now=self.now, wall=self.wall))

    def advance(self, seconds: float) -> list[Command]:
        """Move the clock, firing the core's deadlines the way the shell's one timer does."""
        target = self.now + seconds
        out: list[Command] = []
        while (at := self.core.next_deadline()) is not None and at <= target:
            self.now = max(self.now, at)
            out += self._take(self.core.handle_timer(now=self.now, wall=self.wall))
        self.now = target
        return out

    def shutdown(self) -> list[Command]:
        return self._take(self.core.shutdown(now=self.now, wall=self.wall))

    # --- reading the results --------------------------------------------------------------------
    def inbox(self, sid: str, type_: str | None = None) -> list[dict[str, Any]]:
        return [c.msg for c in self.commands if isinstance(c, Send) and c.session == sid
                and (type_ is None or c.msg["type"] == type_)]

    def drain(self) -> None:
        self.commands.clear()

    def last(self, sid: str, type_: str) -> dict[str, Any]:
        got = self.inbox(sid, type_)
        assert got, f"{sid} got no {type_}: {self.inbox(sid)}"
        return got[-1]

    def records(self) -> list[WriteCallRecord]:
        return [c for c in self.commands if isinstance(c, WriteCallRecord)]

    def reports(self) -> list[StoreReport]:
        return [c for c in self.commands if isinstance(c, StoreReport)]

    def closes(self) -> list[Close]:
        return [c for c in self.commands if isinstance(c, Close)]

    def logs(self) -> list[str]:
        return [str(c) for c in self.commands if isinstance(c, Log)]

    def call(self, call_id: str) -> Call:
        return self.core.calls.get(call_id) or self.ended[call_id]
