"""A HubCore in virtual time for unit tests: an in-memory directory, a clock you advance, and the
commands the core returned, filed per session.

    w = HubWorld(users=["alice", "bob"], contacts={"alice": ["bob"]})
    w.attach("a1", "alice"); w.attach("b1", "bob")
    w.msg("a1", type="invite", call_id=CID, to="bob", sdp=SDP)
    w.advance(45)                     # fires the ring timeout exactly as the shell's timer would
    w.inbox("a1")                     # every message the core sent to a1, in order
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jego_call.config import CallsConfig
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


class HubWorld:
    """One HubCore, a virtual clock (`now` monotonic from 1000 s, `wall` from WALL0) and a log of
    every command, as the shell would carry them out."""

    def __init__(self, users: list[str] | None = None, contacts: dict[str, list[str]] | None = None,
                 ring_timeout_s: float = 45.0, max_call_s: float = 14400.0, max_sessions: int = 8,
                 allow_international: bool = False, recent_limit: int = 4096) -> None:
        self.directory = MemoryDirectory(set(users or ["alice", "bob", "carol"]), dict(contacts or {}))
        self.cfg = CallsConfig(ring_timeout_s=ring_timeout_s, max_call_s=max_call_s)
        self.core = HubCore(self.directory, self.cfg, max_sessions, allow_international, recent_limit)
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
