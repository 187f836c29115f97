"""jego_call/cluster/redis_state.py against a real redis-server (one per module, tests/servers.py,
stopped by PID): the same operations on `RedisState` and on `MemoryState` (the in-process
SharedState test_cluster_state.py pins down) give the same answers, op by op, for sequences
hypothesis draws: claims (first wins, a refused claim writes nothing), saves by the owner only,
releases, take-over, the session directory and the least-loaded gateway, lockouts and token
buckets on a `now` the test gives. Also: the shared secret is the first proposal, a key prefix
isolates two clusters on one server, `safe_url` hides the password, and an unreachable server
is StateUnavailable.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jego_call.cluster.redis_state import RedisState, safe_url
from jego_call.cluster.state import Busy, LockoutRule, MemoryState, SessionEntry, StateUnavailable
from tests.servers import RedisServer, redis_server

RULE = LockoutRule(after=3, window_s=60.0, base_s=10.0, max_s=45.0)
USERS = ["ann", "bob", "cat", "dan"]
NODES = ["n1", "n2"]
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def state(redis: RedisServer) -> AsyncIterator[RedisState]:
    s = RedisState(redis.url, f"t{uuid.uuid4().hex[:10]}")
    await s.connect()
    yield s
    await s.close()


def snap(call_id: str, **more: Any) -> dict[str, Any]:
    return {"id": call_id, "state": "ringing", **more}


# --- differential: Redis answers as MemoryState does --------------------------------------------------

claim_op = st.tuples(st.just("claim"), st.sampled_from(["c1", "c2", "c3"]), st.sampled_from(NODES),
                     st.lists(st.sampled_from(USERS), min_size=1, max_size=2, unique=True), st.booleans())
save_op = st.tuples(st.just("save"), st.sampled_from(["c1", "c2", "c3"]), st.sampled_from(NODES),
                    st.lists(st.sampled_from(USERS), min_size=1, max_size=2, unique=True), st.booleans())
release_op = st.tuples(st.just("release"), st.sampled_from(["c1", "c2", "c3"]),
                       st.lists(st.sampled_from(USERS), min_size=1, max_size=2, unique=True))
take_op = st.tuples(st.just("take"), st.sampled_from(["c1", "c2", "c3"]), st.sampled_from(NODES),
                    st.sampled_from(NODES))
gw_op = st.tuples(st.just("gw"), st.sampled_from(["g1", "g2"]), st.sampled_from(NODES), st.integers(1, 3))
drop_gw_op = st.tuples(st.just("dropgw"), st.sampled_from(["g1", "g2"]), st.sampled_from(NODES))
ops = st.lists(st.one_of(claim_op, save_op, release_op, take_op, gw_op, drop_gw_op), min_size=1, max_size=14)


async def apply(s: Any, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind == "claim":
        _, cid, owner, users, phone = op
        c = await s.claim(cid, owner, users, snap(cid), want_gateway=phone)
        return ("claim", c.exists, dict(c.busy), c.gateway)
    if kind == "save":
        _, cid, owner, users, connected = op
        return ("save", await s.save_call(owner, snap(cid, state="connected"), users, connected))
    if kind == "release":
        _, cid, users = op
        await s.release(cid, users)
        return ("release",)
    if kind == "take":
        _, cid, dead, me = op
        if dead == me:
            return ("take", "same")
        return ("take", await s.take_over(cid, dead, me))
    sid = f"{op[2]}.{op[1]}"  # session ids are unique across the cluster (a node's own prefix)
    entry = SessionEntry(sid, f"gateway:{op[1]}", op[2], role="gateway", name=op[1],
                         capacity=op[3] if kind == "gw" else 0)
    if kind == "gw":
        await s.put_sessions([entry])
    else:
        await s.drop_sessions([entry])
    return (kind,)


async def observe(s: Any) -> Any:
    return (await s.busy_table(), {n: await s.node_calls(n) for n in NODES},
            {c: await s.call_owner(c) for c in ("c1", "c2", "c3")}, sorted(await s.gateways(), key=lambda g: g.session))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_redis_decides_calls_and_gateways_as_memory_does(redis: RedisServer, seq: list[tuple[Any, ...]]) -> None:
    async def main() -> None:
        r = RedisState(redis.url, f"p{next(_prefixes)}x{uuid.uuid4().hex[:6]}")
        await r.connect()
        m = MemoryState()
        try:
            for op in seq:
                got_r, got_m = await apply(r, op), await apply(m, op)
                assert got_r == got_m, (op, got_r, got_m)
                assert await observe(r) == await observe(m), op
        finally:
            await r.close()
    asyncio.run(main())


lock_op = st.tuples(st.sampled_from(["fail", "ok", "ask"]), st.sampled_from(["k1", "k2"]), st.floats(0, 30))
bucket_op = st.tuples(st.just("take"), st.sampled_from(["b1", "b2"]), st.floats(0, 5),
                      st.sampled_from([1.0, 2.0]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=st.lists(st.one_of(lock_op, bucket_op), min_size=1, max_size=20))
def test_redis_lockouts_and_buckets_answer_as_memory_does(redis: RedisServer,
                                                           seq: list[tuple[Any, ...]]) -> None:
    async def main() -> None:
        r = RedisState(redis.url, f"l{next(_prefixes)}x{uuid.uuid4().hex[:6]}")
        await r.connect()
        m = MemoryState()
        now = 1000.0
        a: float | bool | None
        b: float | bool | None
        try:
            for kind, key, step, *rest in seq:
                now += step
                if kind == "fail":
                    a, b = await r.lockout_failure(key, now, RULE), await m.lockout_failure(key, now, RULE)
                elif kind == "ok":
                    await r.lockout_success(key)
                    await m.lockout_success(key)
                    a = b = None
                elif kind == "ask":
                    a, b = await r.lockout_retry_after(key, now), await m.lockout_retry_after(key, now)
                else:
                    cost = rest[0]
                    a = await r.bucket_take(key, 2.0, 4.0, now, cost)
                    b = await m.bucket_take(key, 2.0, 4.0, now, cost)
                if isinstance(a, float) and isinstance(b, float):
                    assert a == pytest.approx(b, abs=1e-3), (kind, key, now, a, b)
                else:
                    assert a == b, (kind, key, now, a, b)
        finally:
            await r.close()
    asyncio.run(main())


# --- plain cases ---------------------------------------------------------------------------------------

async def test_the_first_claim_wins_and_a_refused_one_writes_nothing(state: RedisState) -> None:
    first = await state.claim("c1", "n1", ["ann", "bob"], snap("c1"))
    assert first.ok and first.gateway is None
    again = await state.claim("c1", "n2", ["cat"], snap("c1"))
    assert again.exists and not again.ok
    busy = await state.claim("c2", "n2", ["bob", "cat"], snap("c2"))
    assert not busy.ok and set(busy.busy) == {"bob"} and busy.busy["bob"].call_id == "c1"
    assert set(await state.busy_table()) == {"ann", "bob"}  # cat was not marked busy
    assert await state.call_owner("c2") is None and await state.node_calls("n2") == []


async def test_only_the_owner_saves_and_release_frees_the_users(state: RedisState) -> None:
    await state.claim("c1", "n1", ["ann"], snap("c1"))
    assert not await state.save_call("n2", snap("c1"), ["ann"], True)
    assert await state.save_call("n1", snap("c1"), ["ann"], True)
    assert (await state.busy_table())["ann"].connected
    await state.release("c1", ["ann"])
    assert await state.busy_table() == {} and await state.call_owner("c1") is None
    await state.release("c1", ["ann"])  # twice: nothing to do, no error


async def test_a_phone_claim_reserves_the_least_loaded_gateway(state: RedisState) -> None:
    await state.put_sessions([SessionEntry("g1", "gateway:a", "n1", role="gateway", name="a", capacity=1),
                              SessionEntry("g2", "gateway:b", "n2", role="gateway", name="b", capacity=2)])
    picks = [await state.claim(f"c{i}", "n1", [f"u{i}"], snap(f"c{i}"), want_gateway=True) for i in range(4)]
    names = [p.gateway.name if p.gateway else None for p in picks]
    assert names[:3].count("a") == 1 and names[:3].count("b") == 2 and names[3] is None
    assert all(p.ok for p in picks)


async def test_take_over_moves_the_call_only_from_its_owner(state: RedisState) -> None:
    await state.claim("c1", "n1", ["ann"], snap("c1", x=1))
    assert await state.take_over("c1", "n2", "n3") is None  # n2 never owned it
    took = await state.take_over("c1", "n1", "n2")
    assert took is not None and took["id"] == "c1" and took["x"] == 1
    assert await state.call_owner("c1") == "n2"
    assert await state.node_calls("n1") == [] and await state.node_calls("n2") == ["c1"]
    # the busy table names the new owner too (it kept naming the dead one: fixed in TAKE_OVER)
    assert (await state.busy_table())["ann"] == Busy("c1", "n2", False)
    assert await state.take_over("c1", "n1", "n3") is None  # the second node to try gets nothing


async def test_take_over_keeps_connected_and_leaves_other_calls_alone(state: RedisState) -> None:
    await state.claim("c1", "n1", ["ann"], snap("c1"))
    await state.save_call("n1", snap("c1"), ["ann"], True)
    await state.claim("c2", "n1", ["bob"], snap("c2"))
    await state.take_over("c1", "n1", "n2")
    assert await state.busy_table() == {"ann": Busy("c1", "n2", True), "bob": Busy("c2", "n1", False)}


async def test_the_shared_secret_is_the_first_proposal(state: RedisState) -> None:
    assert await state.shared_secret("token", b"first") == b"first"
    assert await state.shared_secret("token", b"second") == b"first"
    assert await state.shared_secret("other", b"x") == b"x"


async def test_a_prefix_is_a_cluster_of_its_own(redis: RedisServer, state: RedisState) -> None:
    other = RedisState(redis.url, f"o{uuid.uuid4().hex[:10]}")
    await other.connect()
    try:
        assert (await state.claim("c1", "n1", ["ann"], snap("c1"))).ok
        assert (await other.claim("c1", "n1", ["ann"], snap("c1"))).ok  # no clash across prefixes
        assert await other.shared_secret("token", b"mine") == b"mine"
    finally:
        await other.close()


async def test_sessions_are_found_by_user_and_by_node(state: RedisState) -> None:
    a = SessionEntry("s1", "ann", "n1")
    b = SessionEntry("s2", "ann", "n2")
    await state.put_sessions([a, b])
    assert await state.user_sessions("ann") == {"s1": "n1", "s2": "n2"}
    assert await state.node_sessions("n1") == [a]
    await state.replace_node_sessions("n1", [SessionEntry("s3", "bob", "n1")])
    assert await state.user_sessions("ann") == {"s2": "n2"} and await state.user_sessions("bob") == {"s3": "n1"}
    await state.drop_sessions([b])
    assert await state.user_sessions("ann") == {}


def test_safe_url_hides_the_password() -> None:
    assert safe_url("redis://user:secret@127.0.0.1:6379/0") == "redis://user:***@127.0.0.1:6379/0"
    assert "secret" not in safe_url("rediss://:secret@127.0.0.1/1")
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_an_unreachable_server_is_state_unavailable(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    r = RedisState(f"redis://127.0.0.1:{port}/0", "x", timeout_s=0.5)
    with pytest.raises(StateUnavailable):
        await r.connect()
    with pytest.raises(StateUnavailable):
        await r.busy_table()
    with pytest.raises(StateUnavailable):
        await r.claim("c1", "n1", ["ann"], snap("c1"))
    await r.close()
