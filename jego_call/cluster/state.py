"""The shared-state seam of a cluster: one interface, `SharedState`, and its in-process
implementation `MemoryState` (jego_call/cluster/redis_state.py has the Redis one).

    state = MemoryState.named("test")          # or RedisState(url, prefix), both SharedState
    await state.connect()
    claim = await state.claim(call_id, "node-a", ["alice", "bob"], snap, want_gateway=False)
    async for batch in state.subscribe("node-a"): ...   # the node's bus (its channel + "all")

What lives here, for every node to see: node heartbeats (a key with a TTL), the session
directory (user -> node and device; gateways with their capacity and load), calls (the owning
node, a snapshot so another node can take it over, and who is busy in which call), secrets every
node must share (token signing, the gateway secret), rate limits and lockouts, and the bus (one
channel per node plus one for everyone). Writes that decide something are atomic: a claim
checks the call id, both users and the gateway's free capacity and writes them in one step; a
take-over moves a call's owner only from the node that died.

`MemoryState` keeps everything in dicts and its bus in asyncio queues, so several nodes in one
process (tests, `[cluster] redis_url = "memory://NAME"`) form a cluster without Redis. With one
node and no `[cluster] redis_url` no SharedState is used at all: the hub core's own dictionaries
are the in-memory state, exactly as before clusters existed.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class StateUnavailable(Exception):
    """The shared state (Redis) cannot be reached; `SharedState` methods raise it."""


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """One socket in the directory: a user's device, or a gateway with its capacity."""

    id: str
    username: str
    node: str
    role: str = "user"
    name: str = ""          # gateways: the worker's name
    capacity: int = 0       # gateways: calls it takes

    def to_json(self) -> str:
        return json.dumps([self.username, self.role, self.name, self.capacity], separators=(",", ":"))

    @classmethod
    def from_json(cls, sid: str, node: str, raw: str | bytes) -> SessionEntry:
        user, role, name, capacity = json.loads(raw)
        return cls(sid, str(user), node, str(role), str(name), int(capacity))


@dataclass(frozen=True, slots=True)
class GatewayPick:
    """The gateway a claim reserved capacity on."""

    session: str
    name: str
    capacity: int
    node: str


@dataclass(frozen=True, slots=True)
class Busy:
    """A user's entry in the busy table: the call, its owner, and whether it is connected."""

    call_id: str
    owner: str
    connected: bool = False

    def encode(self) -> str:
        return f"{self.call_id}|{self.owner}|{int(self.connected)}"

    @classmethod
    def decode(cls, raw: str | bytes) -> Busy:
        text = raw.decode() if isinstance(raw, bytes) else raw
        call_id, owner, connected = text.split("|")
        return cls(call_id, owner, connected == "1")


@dataclass(frozen=True, slots=True)
class Claim:
    """What `SharedState.claim` found: `exists` (the call id is taken), `busy` (user -> the
    call they are already in; nothing was written), else `ok` with the gateway reserved (phone
    calls; None: no gateway has free capacity)."""

    exists: bool = False
    busy: dict[str, Busy] = field(default_factory=dict)
    gateway: GatewayPick | None = None

    @property
    def ok(self) -> bool:
        return not self.exists and not self.busy


@dataclass(frozen=True, slots=True)
class LockoutRule:
    """The account lockout of `limits.Lockout`, applied cluster-wide."""

    after: int
    window_s: float
    base_s: float
    max_s: float


class SharedState(Protocol):
    """What a cluster node reads and writes in the shared state. Every method raises
    StateUnavailable when the store cannot be reached (within the operation timeout)."""

    async def connect(self) -> None:
        """Reach the store (raises StateUnavailable)."""

    async def close(self) -> None: ...

    # --- nodes ------------------------------------------------------------------------------
    async def heartbeat(self, node: str, info: dict[str, Any], ttl_s: float) -> bool:
        """Refresh `node`'s heartbeat key (TTL `ttl_s`) and membership. Returns False when the
        other nodes had declared `node` dead (reaped) since its last heartbeat."""

    async def nodes(self) -> dict[str, bool]:
        """Every member node -> whether its heartbeat key is alive."""

    async def reap(self, dead: str, by: str) -> bool:
        """Remove a dead node's directory entries and membership; True for the one node that
        did it (the others only update their own view)."""

    async def leave(self, node: str) -> None:
        """A node shutting down cleanly: its directory entries, heartbeat and membership go."""

    # --- directory ----------------------------------------------------------------------------
    async def put_sessions(self, entries: Iterable[SessionEntry]) -> None: ...

    async def drop_sessions(self, entries: Iterable[SessionEntry]) -> None: ...

    async def flush(self, changes: Iterable[tuple[bool, SessionEntry]],
                    batches: list[tuple[str | None, bytes]]) -> None:
        """Directory puts (True) and drops (False) in this order, then `publish(batches)`, in
        one round trip."""

    async def replace_node_sessions(self, node: str, entries: Iterable[SessionEntry]) -> None:
        """Make the directory hold exactly `entries` for `node` (after the store came back)."""

    async def node_sessions(self, node: str) -> list[SessionEntry]: ...

    async def user_sessions(self, username: str) -> dict[str, str]:
        """Session id -> node of `username`'s sockets, cluster-wide."""

    # --- calls ------------------------------------------------------------------------------
    async def claim(self, call_id: str, owner: str, users: list[str], snap: dict[str, Any], *,
                    want_gateway: bool = False) -> Claim:
        """Atomically: the call id is new, no user is busy; then own the call, mark the users
        busy and (phone calls) reserve one call of capacity on the gateway with the most free."""

    async def save_call(self, owner: str, snap: dict[str, Any], users: list[str], connected: bool) -> bool:
        """Store a call's snapshot, if `owner` still owns it (False: taken over)."""

    async def release(self, call_id: str, users: list[str]) -> None:
        """The call ended: free its users (these and those it claimed, if still in it), its
        gateway capacity, its record."""

    async def take_over(self, call_id: str, dead: str, me: str) -> dict[str, Any] | None:
        """Become the owner of a call `dead` owned; its snapshot, or None (someone else did)."""

    async def node_calls(self, node: str) -> list[str]: ...

    async def call_owner(self, call_id: str) -> str | None: ...

    async def busy_table(self) -> dict[str, Busy]:
        """Username -> the call they are in, cluster-wide."""

    async def restore_calls(self, owner: str, calls: list[tuple[dict[str, Any], list[str], bool]]) -> list[str]:
        """After the store came back: write `owner`'s calls again where nobody else owns them;
        returns the ids another node owns now (taken over while this node was cut off)."""

    async def gateways(self) -> list[GatewayPick]: ...

    # --- bus --------------------------------------------------------------------------------
    async def publish(self, batches: list[tuple[str | None, bytes]]) -> None:
        """Send each payload to one node's channel (None: every node), in this order."""

    def subscribe(self, node: str) -> AsyncIterator[bytes]:
        """Payloads for `node` and for everyone, in publish order; raises StateUnavailable
        when the connection is lost (subscribe again, then reload what may have been missed)."""

    # --- secrets, limits --------------------------------------------------------------------
    async def shared_secret(self, name: str, proposal: bytes) -> bytes:
        """The cluster's secret `name`; the first node's `proposal` becomes it."""

    async def lockout_retry_after(self, key: str, now: float) -> float: ...

    async def lockout_failure(self, key: str, now: float, rule: LockoutRule) -> float:
        """Count a failed login; returns the lockout it starts (seconds) or 0."""

    async def lockout_success(self, key: str) -> None: ...

    async def bucket_take(self, key: str, rate: float, burst: float, now: float, cost: float = 1.0,
                          debt: bool = False) -> float:
        """Take `cost` tokens (0 returned), or take nothing and return the seconds to wait;
        `debt=True` always takes (for failures counted afterwards) and returns 0."""

    async def bucket_wait(self, key: str, rate: float, burst: float, now: float) -> float: ...


# --- the in-process implementation -------------------------------------------------------------------
@dataclass
class _Bucket:
    tokens: float
    last: float


@dataclass
class _Lock:
    failures: list[float] = field(default_factory=list)
    until: float = -math.inf
    level: int = 0


class MemoryState:
    """SharedState in one process. `MemoryState.named(name)` gives every caller in the process
    the same instance, so two apps built with `redis_url = "memory://x"` share it."""

    _named: ClassVar[dict[str, MemoryState]] = {}

    def __init__(self) -> None:
        self.alive: dict[str, float] = {}                  # node -> heartbeat expiry (loop time)
        self.members: set[str] = set()
        self.reaped: set[str] = set()
        self.sessions: dict[str, dict[str, SessionEntry]] = {}   # node -> sid -> entry
        self.calls: dict[str, dict[str, Any]] = {}          # call id -> {"owner", "snap", "gateway"}
        self.busy: dict[str, Busy] = {}
        self.gw_load: dict[str, int] = {}
        self.secrets: dict[str, bytes] = {}
        self.locks: dict[str, _Lock] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.queues: dict[str, list[asyncio.Queue[bytes]]] = {}
        self.down = False                                   # tests: pretend the store is unreachable

    @classmethod
    def named(cls, name: str) -> MemoryState:
        if name not in cls._named:
            cls._named[name] = cls()
        return cls._named[name]

    @classmethod
    def forget(cls, name: str) -> None:
        cls._named.pop(name, None)

    def _check(self) -> None:
        if self.down:
            raise StateUnavailable("the shared state is down")

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def connect(self) -> None:
        self._check()

    async def close(self) -> None:
        return None

    # nodes
    async def heartbeat(self, node: str, info: dict[str, Any], ttl_s: float) -> bool:
        self._check()
        was_reaped = node in self.reaped
        self.reaped.discard(node)
        self.alive[node] = self._now() + ttl_s
        self.members.add(node)
        return not was_reaped

    async def nodes(self) -> dict[str, bool]:
        self._check()
        now = self._now()
        return {n: self.alive.get(n, 0.0) > now for n in self.members}

    async def reap(self, dead: str, by: str) -> bool:
        self._check()
        if dead not in self.members:
            return False
        self.members.discard(dead)
        self.sessions.pop(dead, None)
        self.reaped.add(dead)
        return True

    async def leave(self, node: str) -> None:
        self._check()
        self.members.discard(node)
        self.alive.pop(node, None)
        for sid in self.sessions.pop(node, {}):
            self.gw_load.pop(sid, None)

    # directory
    async def put_sessions(self, entries: Iterable[SessionEntry]) -> None:
        self._check()
        for e in entries:
            self.sessions.setdefault(e.node, {})[e.id] = e
            if e.role == "gateway":
                self.gw_load.setdefault(e.id, 0)

    async def drop_sessions(self, entries: Iterable[SessionEntry]) -> None:
        self._check()
        for e in entries:
            self.sessions.get(e.node, {}).pop(e.id, None)
            self.gw_load.pop(e.id, None)

    async def flush(self, changes: Iterable[tuple[bool, SessionEntry]],
                    batches: list[tuple[str | None, bytes]]) -> None:
        self._check()
        for put, e in changes:
            await (self.put_sessions if put else self.drop_sessions)([e])
        await self.publish(batches)

    async def replace_node_sessions(self, node: str, entries: Iterable[SessionEntry]) -> None:
        self._check()
        for sid in self.sessions.pop(node, {}):
            self.gw_load.pop(sid, None)
        await self.put_sessions(entries)

    async def node_sessions(self, node: str) -> list[SessionEntry]:
        self._check()
        return list(self.sessions.get(node, {}).values())

    async def user_sessions(self, username: str) -> dict[str, str]:
        self._check()
        return {e.id: e.node for have in self.sessions.values() for e in have.values() if e.username == username}

    # calls
    def _gateway_entries(self) -> list[SessionEntry]:
        return [e for have in self.sessions.values() for e in have.values() if e.role == "gateway"]

    async def gateways(self) -> list[GatewayPick]:
        self._check()
        return [GatewayPick(e.id, e.name, e.capacity, e.node) for e in self._gateway_entries()]

    async def claim(self, call_id: str, owner: str, users: list[str], snap: dict[str, Any], *,
                    want_gateway: bool = False) -> Claim:
        self._check()
        if call_id in self.calls:
            return Claim(exists=True)
        busy = {u: b for u in users if (b := self.busy.get(u)) is not None}
        if busy:
            return Claim(busy=busy)
        pick: GatewayPick | None = None
        if want_gateway:
            free = [e for e in self._gateway_entries() if self.gw_load.get(e.id, 0) < e.capacity]
            if free:
                best = min(free, key=lambda e: (self.gw_load.get(e.id, 0) / e.capacity, e.name, e.id))
                self.gw_load[best.id] = self.gw_load.get(best.id, 0) + 1
                pick = GatewayPick(best.id, best.name, best.capacity, best.node)
        for u in users:
            self.busy[u] = Busy(call_id, owner)
        self.calls[call_id] = {"owner": owner, "snap": dict(snap), "gateway": pick.session if pick else None,
                               "users": list(users)}
        return Claim(gateway=pick)

    async def save_call(self, owner: str, snap: dict[str, Any], users: list[str], connected: bool) -> bool:
        self._check()
        rec = self.calls.get(str(snap["id"]))
        if rec is None or rec["owner"] != owner:
            return False
        rec["snap"] = dict(snap)
        for u in users:
            b = self.busy.get(u)
            if b is None or b.call_id == snap["id"]:
                self.busy[u] = Busy(str(snap["id"]), owner, connected)
        return True

    async def release(self, call_id: str, users: list[str]) -> None:
        self._check()
        rec = self.calls.get(call_id)
        for u in set(users) | set(rec["users"] if rec is not None else ()):
            b = self.busy.get(u)
            if b is not None and b.call_id == call_id:
                del self.busy[u]
        rec = self.calls.pop(call_id, None)
        if rec is not None and rec["gateway"] in self.gw_load:
            self.gw_load[rec["gateway"]] = max(0, self.gw_load[rec["gateway"]] - 1)

    async def take_over(self, call_id: str, dead: str, me: str) -> dict[str, Any] | None:
        self._check()
        rec = self.calls.get(call_id)
        if rec is None or rec["owner"] != dead:
            return None
        rec["owner"] = me
        for b in list(self.busy.items()):
            if b[1].call_id == call_id:
                self.busy[b[0]] = Busy(call_id, me, b[1].connected)
        return dict(rec["snap"])

    async def node_calls(self, node: str) -> list[str]:
        self._check()
        return sorted(cid for cid, rec in self.calls.items() if rec["owner"] == node)

    async def call_owner(self, call_id: str) -> str | None:
        self._check()
        rec = self.calls.get(call_id)
        return str(rec["owner"]) if rec is not None else None

    async def busy_table(self) -> dict[str, Busy]:
        self._check()
        return dict(self.busy)

    async def restore_calls(self, owner: str, calls: list[tuple[dict[str, Any], list[str], bool]]) -> list[str]:
        self._check()
        lost = []
        for snap, users, connected in calls:
            rec = self.calls.get(str(snap["id"]))
            if rec is not None and rec["owner"] != owner:
                lost.append(str(snap["id"]))
                continue
            if rec is None:
                self.calls[str(snap["id"])] = {"owner": owner, "snap": dict(snap), "gateway": None, "users": users}
            for u in users:
                self.busy.setdefault(u, Busy(str(snap["id"]), owner, connected))
        return lost

    # bus
    async def publish(self, batches: list[tuple[str | None, bytes]]) -> None:
        self._check()
        for node, payload in batches:
            targets = [q for n, qs in self.queues.items() for q in qs] if node is None else self.queues.get(node, [])
            for q in targets:
                q.put_nowait(payload)

    async def subscribe(self, node: str) -> AsyncIterator[bytes]:
        self._check()
        q: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues.setdefault(node, []).append(q)
        try:
            while True:
                payload = await q.get()
                self._check()
                yield payload
        finally:
            self.queues[node].remove(q)

    # secrets, limits
    async def shared_secret(self, name: str, proposal: bytes) -> bytes:
        self._check()
        return self.secrets.setdefault(name, proposal)

    async def lockout_retry_after(self, key: str, now: float) -> float:
        self._check()
        lock = self.locks.get(key)
        return max(0.0, lock.until - now) if lock is not None else 0.0

    async def lockout_failure(self, key: str, now: float, rule: LockoutRule) -> float:
        self._check()
        lock = self.locks.setdefault(key, _Lock())
        if lock.until > now:
            return 0.0
        if lock.level and now - lock.until > 24 * 3600.0:
            lock.level = 0
        lock.failures = [t for t in lock.failures if t > now - rule.window_s] + [now]
        if len(lock.failures) < rule.after:
            return 0.0
        duration = min(rule.max_s, rule.base_s * 2.0 ** lock.level)
        lock.level += 1
        lock.until = now + duration
        lock.failures = []
        return duration

    async def lockout_success(self, key: str) -> None:
        self._check()
        self.locks.pop(key, None)

    def _bucket(self, key: str, rate: float, burst: float, now: float) -> _Bucket:
        b = self.buckets.setdefault(key, _Bucket(burst, now))
        if now > b.last:
            b.tokens = min(burst, b.tokens + (now - b.last) * rate)
            b.last = now
        return b

    async def bucket_take(self, key: str, rate: float, burst: float, now: float, cost: float = 1.0,
                          debt: bool = False) -> float:
        self._check()
        b = self._bucket(key, rate, burst, now)
        if debt or b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / rate

    async def bucket_wait(self, key: str, rate: float, burst: float, now: float) -> float:
        self._check()
        b = self._bucket(key, rate, burst, now)
        return 0.0 if b.tokens >= 1.0 else (1.0 - b.tokens) / rate
