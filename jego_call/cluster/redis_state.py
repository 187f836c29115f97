"""`SharedState` on Redis (the `redis` package's asyncio client): `RedisState(url, prefix)`.

Keys (PREFIX is `[cluster] key_prefix`, "jego" by default):

    PREFIX:nodes            SET      member node ids
    PREFIX:node:N           STRING   N's heartbeat (JSON info), expires after node_ttl_s
    PREFIX:reaped:N         STRING   N was declared dead (seen by N when it comes back)
    PREFIX:sess:N           HASH     session id -> [user, role, gateway name, capacity] of N's sockets
    PREFIX:user:U           HASH     session id -> node, for user U (the directory)
    PREFIX:gws              SET      gateway session ids;  PREFIX:gw:SID  HASH name capacity node load
    PREFIX:call:ID          HASH     owner, snap (JSON), gateway (session id it holds capacity on)
    PREFIX:calls:N          SET      ids of the calls N owns
    PREFIX:busy             HASH     user -> "call id|owner|connected"
    PREFIX:secret:NAME      STRING   a secret every node shares (hex)
    PREFIX:lock:KEY, PREFIX:bucket:KEY   login lockouts and token buckets
    channels PREFIX:bus:N (one node) and PREFIX:bus (every node)

Decisions that two nodes could race on are Lua scripts, so each runs atomically: claim (new
call id, nobody busy, then own + busy + reserve gateway capacity), save (only while still the
owner), release, take-over (only from the dead owner), reap (only while the node is still a
member and its heartbeat is gone), lockout and token buckets. Every failure to reach Redis within
the timeout becomes StateUnavailable.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .state import Busy, Claim, GatewayPick, LockoutRule, SessionEntry, StateUnavailable

T = TypeVar("T")
FAILURES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)

CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
local n = tonumber(ARGV[6])
local out = {}
for i = 1, n do
  local v = redis.call('HGET', KEYS[1], ARGV[6 + i])
  if v then out[#out + 1] = ARGV[6 + i]; out[#out + 1] = v end
end
if #out > 0 then table.insert(out, 1, 'busy'); return out end
local res = {'ok'}
local best = nil
if ARGV[4] == '1' then
  local score, bname, info = nil, nil, nil
  for _, sid in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local f = redis.call('HMGET', ARGV[5] .. ':gw:' .. sid, 'capacity', 'load', 'name', 'node')
    if f[1] then
      local cap, load = tonumber(f[1]), tonumber(f[2] or '0')
      if cap > 0 and load < cap then
        local s = load / cap
        if best == nil or s < score or (s == score and (f[3] < bname or (f[3] == bname and sid < best))) then
          best, score, bname, info = sid, s, f[3], f
        end
      end
    end
  end
  if best then
    redis.call('HINCRBY', ARGV[5] .. ':gw:' .. best, 'load', 1)
    res = {'ok', best, info[3], info[1], info[4]}
  end
end
for i = 1, n do redis.call('HSET', KEYS[1], ARGV[6 + i], ARGV[1] .. '|' .. ARGV[2] .. '|0') end
local users = {}
for i = 1, n do users[i] = ARGV[6 + i] end
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'snap', ARGV[3], 'gateway', best or '', 'users', cjson.encode(users))
redis.call('SADD', KEYS[3], ARGV[1])
return res
"""

SAVE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'snap', ARGV[2])
local mine = ARGV[4] .. '|'
for i = 5, #ARGV do
  local v = redis.call('HGET', KEYS[2], ARGV[i])
  if (not v) or string.sub(v, 1, #mine) == mine then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[4] .. '|' .. ARGV[1] .. '|' .. ARGV[3])
  end
end
return 1
"""

RELEASE = """
local mine = ARGV[1] .. '|'
local f = redis.call('HMGET', KEYS[1], 'owner', 'gateway', 'users')
local users = {}
for i = 3, #ARGV do users[#users + 1] = ARGV[i] end
if f[3] then for _, u in ipairs(cjson.decode(f[3])) do users[#users + 1] = u end end
for _, u in ipairs(users) do
  local v = redis.call('HGET', KEYS[2], u)
  if v and string.sub(v, 1, #mine) == mine then redis.call('HDEL', KEYS[2], u) end
end
if f[2] and f[2] ~= '' then
  local g = ARGV[2] .. ':gw:' .. f[2]
  if redis.call('EXISTS', g) == 1 and tonumber(redis.call('HGET', g, 'load') or '0') > 0 then
    redis.call('HINCRBY', g, 'load', -1)
  end
end
if f[1] then redis.call('SREM', ARGV[2] .. ':calls:' .. f[1], ARGV[1]) end
redis.call('DEL', KEYS[1])
return 1
"""

TAKE_OVER = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[3])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
local users = redis.call('HGET', KEYS[1], 'users')
if users then
  local mine = ARGV[1] .. '|'
  for _, u in ipairs(cjson.decode(users)) do
    local v = redis.call('HGET', KEYS[4], u)
    if v and string.sub(v, 1, #mine) == mine then
      redis.call('HSET', KEYS[4], u, ARGV[1] .. '|' .. ARGV[3] .. '|' .. string.sub(v, -1))
    end
  end
end
return redis.call('HGET', KEYS[1], 'snap')
"""

RESTORE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'snap', ARGV[2])
redis.call('HSETNX', KEYS[1], 'gateway', '')
local users = {}
for i = 5, #ARGV do users[#users + 1] = ARGV[i] end
redis.call('HSETNX', KEYS[1], 'users', cjson.encode(users))
redis.call('SADD', KEYS[3], ARGV[4])
for i = 5, #ARGV do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[4] .. '|' .. ARGV[1] .. '|' .. ARGV[3]) end
return 1
"""

HEARTBEAT = """
local reaped = redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return reaped
"""

REAP = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', ARGV[2] .. ':node:' .. ARGV[1]) == 1 then return 0 end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local sid, e = all[i], cjson.decode(all[i + 1])
  redis.call('HDEL', ARGV[2] .. ':user:' .. e[1], sid)
  if e[2] == 'gateway' then
    redis.call('SREM', KEYS[4], sid)
    redis.call('DEL', ARGV[2] .. ':gw:' .. sid)
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', 3600)
return 1
"""

LOCKOUT_FAILURE = """
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'until', 'level', 'failures')
local untl = tonumber(f[1] or '-1e300')
local level = tonumber(f[2] or '0')
local fails = cjson.decode(f[3] or '[]')
if untl > now then return '0' end
if level > 0 and now - untl > 86400 then level = 0 end
local kept = {}
for _, t in ipairs(fails) do if t > now - tonumber(ARGV[3]) then kept[#kept + 1] = t end end
kept[#kept + 1] = now
local dur = 0
if #kept >= tonumber(ARGV[2]) then
  dur = math.min(tonumber(ARGV[5]), tonumber(ARGV[4]) * 2 ^ level)
  level = level + 1
  untl = now + dur
  kept = {}
end
local enc = '[]'
if #kept > 0 then enc = cjson.encode(kept) end
redis.call('HSET', KEYS[1], 'until', tostring(untl), 'level', level, 'failures', enc)
redis.call('EXPIRE', KEYS[1], 90000)
return tostring(dur)
"""

BUCKET = """
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(f[1] or ARGV[2])
local last = tonumber(f[2] or ARGV[3])
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate)
  last = now
end
local wait = 0
if ARGV[6] == 'wait' then
  if tokens < 1 then wait = (1 - tokens) / rate end
elseif ARGV[5] == '1' or tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(last))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""


def safe_url(url: str) -> str:
    """`url` without its password (for logs)."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class RedisState:
    """SharedState on one Redis server. `connect()`, then the SharedState methods; `close()`."""

    def __init__(self, url: str, prefix: str = "jego", *, timeout_s: float = 2.0) -> None:
        self.url = url
        self.p = prefix
        self.timeout_s = timeout_s
        self.r: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
            health_check_interval=0)
        self._claim = self.r.register_script(CLAIM)
        self._save = self.r.register_script(SAVE)
        self._release = self.r.register_script(RELEASE)
        self._take_over = self.r.register_script(TAKE_OVER)
        self._restore = self.r.register_script(RESTORE)
        self._heartbeat = self.r.register_script(HEARTBEAT)
        self._reap = self.r.register_script(REAP)
        self._lockout = self.r.register_script(LOCKOUT_FAILURE)
        self._bucket = self.r.register_script(BUCKET)

    def k(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    async def _do(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except FAILURES as exc:
            # Idle pooled connections from before an outage are stale too: drop them now, so
            # that the first operations after Redis comes back do not fail one by one.
            with contextlib.suppress(Exception):
                await self.r.connection_pool.disconnect(inuse_connections=False)
            raise StateUnavailable(f"Redis at {safe_url(self.url)}: {exc or type(exc).__name__}") from None

    async def connect(self) -> None:
        await self._do(lambda: self.r.ping())

    async def close(self) -> None:
        await self.r.aclose()

    # --- nodes ------------------------------------------------------------------------------
    async def heartbeat(self, node: str, info: dict[str, Any], ttl_s: float) -> bool:
        reaped = await self._do(lambda: self._heartbeat(
            keys=[self.k("node", node), self.k("nodes"), self.k("reaped", node)],
            args=[json.dumps(info), int(ttl_s * 1000), node]))
        return not int(reaped)

    async def nodes(self) -> dict[str, bool]:
        async def run() -> dict[str, bool]:
            members = sorted(_s(m) for m in await self.r.smembers(self.k("nodes")))
            if not members:
                return {}
            alive = await self.r.mget([self.k("node", n) for n in members])
            return {n: v is not None for n, v in zip(members, alive, strict=True)}
        return await self._do(run)

    async def reap(self, dead: str, by: str) -> bool:
        done = await self._do(lambda: self._reap(
            keys=[self.k("sess", dead), self.k("nodes"), self.k("reaped", dead), self.k("gws")], args=[dead, self.p]))
        return bool(int(done))

    async def leave(self, node: str) -> None:
        entries = await self.node_sessions(node)

        async def run() -> None:
            pipe = self.r.pipeline(transaction=True)
            self._drop(pipe, entries)
            pipe.delete(self.k("sess", node), self.k("node", node))
            pipe.srem(self.k("nodes"), node)
            await pipe.execute()
        await self._do(run)

    # --- directory ----------------------------------------------------------------------------
    def _put(self, pipe: Any, entries: Iterable[SessionEntry]) -> None:
        for e in entries:
            pipe.hset(self.k("sess", e.node), e.id, e.to_json())
            pipe.hset(self.k("user", e.username), e.id, e.node)
            if e.role == "gateway":
                pipe.sadd(self.k("gws"), e.id)
                pipe.hset(self.k("gw", e.id), mapping={"name": e.name, "capacity": e.capacity, "node": e.node})
                pipe.hsetnx(self.k("gw", e.id), "load", 0)

    def _drop(self, pipe: Any, entries: Iterable[SessionEntry]) -> None:
        for e in entries:
            pipe.hdel(self.k("sess", e.node), e.id)
            pipe.hdel(self.k("user", e.username), e.id)
            if e.role == "gateway":
                pipe.srem(self.k("gws"), e.id)
                pipe.delete(self.k("gw", e.id))

    async def put_sessions(self, entries: Iterable[SessionEntry]) -> None:
        items = list(entries)

        async def run() -> None:
            pipe = self.r.pipeline(transaction=False)
            self._put(pipe, items)
            await pipe.execute()
        await self._do(run)

    async def drop_sessions(self, entries: Iterable[SessionEntry]) -> None:
        items = list(entries)

        async def run() -> None:
            pipe = self.r.pipeline(transaction=False)
            self._drop(pipe, items)
            await pipe.execute()
        await self._do(run)

    async def flush(self, changes: Iterable[tuple[bool, SessionEntry]],
                    batches: list[tuple[str | None, bytes]]) -> None:
        items = list(changes)

        async def run() -> None:
            pipe = self.r.pipeline(transaction=False)  # one round trip; Redis runs it in order
            for put, e in items:
                (self._put if put else self._drop)(pipe, [e])
            for node, payload in batches:
                pipe.publish(self.channel(node), payload)
            await pipe.execute()
        await self._do(run)

    async def replace_node_sessions(self, node: str, entries: Iterable[SessionEntry]) -> None:
        old = await self.node_sessions(node)
        items = list(entries)

        async def run() -> None:
            pipe = self.r.pipeline(transaction=True)
            self._drop(pipe, old)
            pipe.delete(self.k("sess", node))
            self._put(pipe, items)
            await pipe.execute()
        await self._do(run)

    async def node_sessions(self, node: str) -> list[SessionEntry]:
        raw = await self._do(lambda: self.r.hgetall(self.k("sess", node)))
        return [SessionEntry.from_json(_s(sid), node, v) for sid, v in raw.items()]

    async def user_sessions(self, username: str) -> dict[str, str]:
        raw = await self._do(lambda: self.r.hgetall(self.k("user", username)))
        return {_s(k): _s(v) for k, v in raw.items()}

    # --- calls ------------------------------------------------------------------------------
    async def claim(self, call_id: str, owner: str, users: list[str], snap: dict[str, Any], *,
                    want_gateway: bool = False) -> Claim:
        res = await self._do(lambda: self._claim(
            keys=[self.k("busy"), self.k("call", call_id), self.k("calls", owner), self.k("gws")],
            args=[call_id, owner, json.dumps(snap), "1" if want_gateway else "0", self.p, len(users), *users]))
        head = _s(res[0])
        if head == "exists":
            return Claim(exists=True)
        if head == "busy":
            return Claim(busy={_s(res[i]): Busy.decode(res[i + 1]) for i in range(1, len(res), 2)})
        if len(res) > 1:
            return Claim(gateway=GatewayPick(_s(res[1]), _s(res[2]), int(res[3]), _s(res[4])))
        return Claim()

    async def save_call(self, owner: str, snap: dict[str, Any], users: list[str], connected: bool) -> bool:
        ok = await self._do(lambda: self._save(
            keys=[self.k("call", str(snap["id"])), self.k("busy")],
            args=[owner, json.dumps(snap), "1" if connected else "0", str(snap["id"]), *users]))
        return bool(int(ok))

    async def release(self, call_id: str, users: list[str]) -> None:
        await self._do(lambda: self._release(keys=[self.k("call", call_id), self.k("busy")],
                                             args=[call_id, self.p, *users]))

    async def take_over(self, call_id: str, dead: str, me: str) -> dict[str, Any] | None:
        raw = await self._do(lambda: self._take_over(
            keys=[self.k("call", call_id), self.k("calls", dead), self.k("calls", me), self.k("busy")],
            args=[call_id, dead, me]))
        return dict(json.loads(raw)) if raw else None

    async def node_calls(self, node: str) -> list[str]:
        raw = await self._do(lambda: self.r.smembers(self.k("calls", node)))
        return sorted(_s(x) for x in raw)

    async def call_owner(self, call_id: str) -> str | None:
        raw = await self._do(lambda: self.r.hget(self.k("call", call_id), "owner"))
        return _s(raw) if raw is not None else None

    async def busy_table(self) -> dict[str, Busy]:
        raw = await self._do(lambda: self.r.hgetall(self.k("busy")))
        return {_s(u): Busy.decode(v) for u, v in raw.items()}

    async def restore_calls(self, owner: str, calls: list[tuple[dict[str, Any], list[str], bool]]) -> list[str]:
        lost = []
        for snap, users, connected in calls:
            cid = str(snap["id"])
            keys = [self.k("call", cid), self.k("busy"), self.k("calls", owner)]
            args = [owner, json.dumps(snap), "1" if connected else "0", cid, *users]
            ok = await self._do(functools.partial(self._restore, keys=keys, args=args))
            if not int(ok):
                lost.append(cid)
        return lost

    async def gateways(self) -> list[GatewayPick]:
        async def run() -> list[GatewayPick]:
            sids = sorted(_s(s) for s in await self.r.smembers(self.k("gws")))
            out = []
            for sid in sids:
                f = await self.r.hmget(self.k("gw", sid), ["name", "capacity", "node"])
                name, cap, node = f
                if name is not None and cap is not None and node is not None:
                    out.append(GatewayPick(sid, _s(name), int(cap), _s(node)))
            return out
        return await self._do(run)

    # --- bus --------------------------------------------------------------------------------
    def channel(self, node: str | None) -> str:
        return self.k("bus", node) if node is not None else self.k("bus")

    async def publish(self, batches: list[tuple[str | None, bytes]]) -> None:
        async def run() -> None:
            pipe = self.r.pipeline(transaction=False)
            for node, payload in batches:
                pipe.publish(self.channel(node), payload)
            await pipe.execute()
        await self._do(run)

    async def subscribe(self, node: str) -> AsyncIterator[bytes]:
        ps = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            await self._do(lambda: ps.subscribe(self.channel(node), self.channel(None)))
            while True:
                msg = await self._do(lambda: ps.get_message(ignore_subscribe_messages=True, timeout=1.0))
                if msg is not None and msg.get("type") == "message":
                    data = msg["data"]
                    yield data if isinstance(data, bytes) else str(data).encode()
        finally:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await ps.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8

    # --- secrets, limits --------------------------------------------------------------------
    async def shared_secret(self, name: str, proposal: bytes) -> bytes:
        async def run() -> bytes:
            key = self.k("secret", name)
            await self.r.set(key, proposal.hex(), nx=True)
            got = await self.r.get(key)
            return bytes.fromhex(_s(got)) if got is not None else proposal
        return await self._do(run)

    async def lockout_retry_after(self, key: str, now: float) -> float:
        raw = await self._do(lambda: self.r.hget(self.k("lock", key), "until"))
        return max(0.0, float(raw) - now) if raw is not None else 0.0

    async def lockout_failure(self, key: str, now: float, rule: LockoutRule) -> float:
        raw = await self._do(lambda: self._lockout(
            keys=[self.k("lock", key)], args=[repr(now), rule.after, repr(rule.window_s), repr(rule.base_s),
                                               repr(rule.max_s)]))
        return float(raw)

    async def lockout_success(self, key: str) -> None:
        await self._do(lambda: self.r.delete(self.k("lock", key)))

    async def bucket_take(self, key: str, rate: float, burst: float, now: float, cost: float = 1.0,
                          debt: bool = False) -> float:
        raw = await self._do(lambda: self._bucket(
            keys=[self.k("bucket", key)], args=[repr(rate), repr(burst), repr(now), repr(cost), "1" if debt else "0",
                                                 "take"]))
        return float(raw)

    async def bucket_wait(self, key: str, rate: float, burst: float, now: float) -> float:
        raw = await self._do(lambda: self._bucket(
            keys=[self.k("bucket", key)], args=[repr(rate), repr(burst), repr(now), "1", "0", "wait"]))
        return float(raw)
