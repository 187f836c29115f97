"""jego_call/cluster/state.py's `MemoryState`, the in-process SharedState every cluster test
stands on: heartbeats expire by their TTL (a clock the test moves), a reap is done by one node
only, the session directory, claims that decide atomically (the call id is new, nobody is busy,
a gateway has room: first claim wins, a refused claim writes nothing), the least loaded
gateway, take-over only from the dead owner, the bus in publish order, shared secrets, lockouts
and token buckets. MemoryState's coroutines never wait (except `subscribe`), so the property
tests run them with `db.run_sync`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from jego_call.cluster.state import (
    Busy,
    Claim,
    GatewayPick,
    LockoutRule,
    MemoryState,
    SessionEntry,
    StateUnavailable,
)
from jego_call.db import run_sync

T = TypeVar("T")
PROPS = settings(max_examples=150, deadline=None)
RULE = LockoutRule(after=3, window_s=60.0, base_s=10.0, max_s=45.0)


class ClockedState(MemoryState):
    """MemoryState on a clock the test sets (instead of the loop's)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 1000.0

    def _now(self) -> float:  # type: ignore[override]
        return self.clock


def snap(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": call_id, **extra}


def user(sid: str, name: str, node: str) -> SessionEntry:
    return SessionEntry(sid, name, node)


def gateway(sid: str, name: str, node: str, capacity: int) -> SessionEntry:
    return SessionEntry(sid, "gw", node, role="gateway", name=name, capacity=capacity)


@pytest.fixture
def state() -> ClockedState:
    return ClockedState()


# --- the wire forms ------------------------------------------------------------------------------
TEXT = st.text(st.characters(codec="utf-8"), max_size=20)


@PROPS
@given(TEXT, TEXT, TEXT, st.sampled_from(["user", "gateway"]), TEXT, st.integers(0, 10_000))
def test_a_session_entry_survives_its_json(sid: str, name: str, node: str, role: str, gw: str, cap: int) -> None:
    e = SessionEntry(sid, name, node, role, gw, cap)
    assert SessionEntry.from_json(sid, node, e.to_json()) == e
    assert SessionEntry.from_json(sid, node, e.to_json().encode()) == e


@PROPS
@given(st.text(st.characters(codec="utf-8", exclude_characters="|"), min_size=1),
       st.text(st.characters(codec="utf-8", exclude_characters="|"), min_size=1), st.booleans())
def test_a_busy_entry_survives_its_encoding(call_id: str, owner: str, connected: bool) -> None:
    b = Busy(call_id, owner, connected)
    assert Busy.decode(b.encode()) == b
    assert Busy.decode(b.encode().encode()) == b


def test_a_claim_is_ok_only_when_nothing_stood_in_the_way() -> None:
    assert Claim().ok and Claim(gateway=None).ok
    assert not Claim(exists=True).ok
    assert not Claim(busy={"bob": Busy("c1", "n1")}).ok


# --- nodes ----------------------------------------------------------------------------------------
async def test_a_heartbeat_lives_for_its_ttl_and_not_a_moment_longer(state: ClockedState) -> None:
    assert await state.heartbeat("a", {}, ttl_s=5.0) is True
    assert await state.heartbeat("b", {}, ttl_s=2.0) is True
    assert await state.nodes() == {"a": True, "b": True}
    state.clock += 2.0                         # b's key expires exactly at its TTL
    assert await state.nodes() == {"a": True, "b": False}
    state.clock += 2.999
    assert (await state.nodes())["a"] is True
    state.clock += 0.001
    assert await state.nodes() == {"a": False, "b": False}
    assert await state.heartbeat("a", {}, ttl_s=5.0) is True   # a late beat revives a node not reaped
    assert (await state.nodes())["a"] is True


async def test_one_node_reaps_a_dead_one_and_the_dead_one_hears_it(state: ClockedState) -> None:
    await state.heartbeat("a", {}, 5.0)
    await state.heartbeat("b", {}, 5.0)
    await state.put_sessions([user("s1", "alice", "b"), user("s2", "bob", "a")])
    state.clock += 10
    assert await state.reap("b", by="a") is True
    assert await state.reap("b", by="c") is False             # only one node does it
    assert "b" not in await state.nodes()
    assert await state.node_sessions("b") == []
    assert await state.user_sessions("alice") == {}
    assert await state.user_sessions("bob") == {"s2": "a"}    # the living node keeps its own
    assert await state.heartbeat("b", {}, 5.0) is False       # b learns it was declared dead ...
    assert await state.heartbeat("b", {}, 5.0) is True        # ... once
    assert await state.nodes() == {"a": False, "b": True}


async def test_reaping_a_node_that_is_not_a_member_does_nothing(state: ClockedState) -> None:
    assert await state.reap("ghost", by="a") is False
    assert await state.heartbeat("ghost", {}, 1.0) is True    # never reaped: nothing to hear


async def test_a_node_that_leaves_takes_its_entries_and_gateway_load_with_it(state: ClockedState) -> None:
    await state.heartbeat("a", {}, 5.0)
    await state.put_sessions([gateway("g1", "w1", "a", 2), user("s1", "alice", "a")])
    claim = await state.claim("c1", "a", ["alice"], snap("c1"), want_gateway=True)
    assert claim.gateway is not None and state.gw_load == {"g1": 1}
    await state.leave("a")
    assert await state.nodes() == {}
    assert await state.node_sessions("a") == [] and await state.gateways() == []
    assert state.gw_load == {}


# --- the directory --------------------------------------------------------------------------------
async def test_the_directory_spans_nodes_and_drops_exactly_what_it_is_told(state: ClockedState) -> None:
    await state.put_sessions([user("s1", "alice", "a"), user("s2", "alice", "b"), user("s3", "bob", "b")])
    assert await state.user_sessions("alice") == {"s1": "a", "s2": "b"}
    await state.drop_sessions([user("s2", "alice", "b")])
    assert await state.user_sessions("alice") == {"s1": "a"}
    await state.drop_sessions([user("s2", "alice", "b")])      # twice: still fine
    await state.drop_sessions([user("s1", "alice", "WRONG")])  # an entry is keyed by its node
    assert await state.user_sessions("alice") == {"s1": "a"}
    assert [e.id for e in await state.node_sessions("b")] == ["s3"]


async def test_replacing_a_nodes_sessions_leaves_exactly_the_new_ones(state: ClockedState) -> None:
    await state.put_sessions([user("s1", "alice", "a"), gateway("g1", "w1", "a", 3), user("s9", "zed", "b")])
    await state.replace_node_sessions("a", [user("s2", "bob", "a"), gateway("g2", "w2", "a", 1)])
    assert sorted(e.id for e in await state.node_sessions("a")) == ["g2", "s2"]
    assert [e.id for e in await state.node_sessions("b")] == ["s9"]
    assert state.gw_load == {"g2": 0}                          # g1's load went with it
    assert await state.gateways() == [GatewayPick("g2", "w2", 1, "a")]


async def test_putting_a_gateway_again_keeps_its_load(state: ClockedState) -> None:
    await state.put_sessions([gateway("g1", "w1", "a", 2)])
    await state.claim("c1", "a", ["alice"], snap("c1"), want_gateway=True)
    await state.put_sessions([gateway("g1", "w1", "a", 2)])   # a resync writes the same entry again
    assert state.gw_load == {"g1": 1}


# --- claims -----------------------------------------------------------------------------------------
async def test_a_claim_owns_the_call_and_marks_its_users_busy(state: ClockedState) -> None:
    claim = await state.claim("c1", "a", ["alice", "bob"], snap("c1", sdp="x"))
    assert claim.ok and claim.gateway is None
    assert await state.call_owner("c1") == "a"
    assert await state.busy_table() == {"alice": Busy("c1", "a"), "bob": Busy("c1", "a")}
    assert await state.node_calls("a") == ["c1"] and await state.node_calls("b") == []


async def test_the_same_call_id_is_claimed_once(state: ClockedState) -> None:
    assert (await state.claim("c1", "a", ["alice"], snap("c1"))).ok
    again = await state.claim("c1", "b", ["carol"], snap("c1"))
    assert again.exists and not again.ok
    assert await state.call_owner("c1") == "a"
    assert "carol" not in await state.busy_table()            # the refused claim wrote nothing


async def test_a_busy_user_refuses_the_claim_and_nothing_is_written(state: ClockedState) -> None:
    await state.put_sessions([gateway("g1", "w1", "a", 5)])
    await state.claim("c1", "a", ["alice", "bob"], snap("c1"))
    claim = await state.claim("c2", "b", ["carol", "bob"], snap("c2"), want_gateway=True)
    assert not claim.ok and claim.busy == {"bob": Busy("c1", "a")}
    assert claim.gateway is None
    assert await state.call_owner("c2") is None
    assert "carol" not in await state.busy_table()
    assert state.gw_load == {"g1": 0}                          # no capacity was taken


async def test_two_nodes_claiming_at_once_one_wins(state: ClockedState) -> None:
    """First answer wins: of concurrent claims for the same callee exactly one gets it."""
    results = await asyncio.gather(*(state.claim(f"c{i}", f"n{i}", [f"caller{i}", "bob"], snap(f"c{i}"))
                                     for i in range(8)))
    winners = [i for i, c in enumerate(results) if c.ok]
    assert len(winners) == 1
    w = winners[0]
    assert (await state.busy_table())["bob"] == Busy(f"c{w}", f"n{w}")
    assert all(results[i].busy == {"bob": Busy(f"c{w}", f"n{w}")} for i in range(8) if i != w)


async def test_the_gateway_with_the_most_free_share_is_picked(state: ClockedState) -> None:
    await state.put_sessions([gateway("g1", "big", "a", 4), gateway("g2", "small", "b", 1)])
    picks = []
    for i in range(5):
        claim = await state.claim(f"c{i}", "a", [f"u{i}"], snap(f"c{i}"), want_gateway=True)
        picks.append(claim.gateway.name if claim.gateway else None)
    # 0/4 vs 0/1: a tie, broken by name (big); then 0/1 < 1/4 (small); then small is full
    assert picks == ["big", "small", "big", "big", "big"]
    assert state.gw_load == {"g1": 4, "g2": 1}
    full = await state.claim("c9", "a", ["u9"], snap("c9"), want_gateway=True)
    assert full.ok and full.gateway is None                   # no room: the caller decides what to refuse


async def test_a_claim_without_want_gateway_takes_no_capacity(state: ClockedState) -> None:
    await state.put_sessions([gateway("g1", "w1", "a", 1)])
    assert (await state.claim("c1", "a", ["alice"], snap("c1"))).gateway is None
    assert state.gw_load == {"g1": 0}


async def test_release_frees_users_capacity_and_record_once(state: ClockedState) -> None:
    await state.put_sessions([gateway("g1", "w1", "a", 1)])
    assert (await state.claim("c1", "a", ["alice"], snap("c1"), want_gateway=True)).gateway is not None
    await state.release("c1", [])                              # users come from the record too
    assert await state.busy_table() == {} and await state.call_owner("c1") is None
    assert state.gw_load == {"g1": 0}
    await state.release("c1", ["alice"])                       # twice: nothing goes below zero
    assert state.gw_load == {"g1": 0}
    assert (await state.claim("c2", "a", ["bob"], snap("c2"), want_gateway=True)).gateway is not None


async def test_release_leaves_a_user_who_is_already_in_another_call(state: ClockedState) -> None:
    await state.claim("c1", "a", ["alice"], snap("c1"))
    await state.release("c1", ["alice"])
    await state.claim("c2", "a", ["alice"], snap("c2"))
    await state.release("c1", ["alice"])                       # a late release of the old call
    assert await state.busy_table() == {"alice": Busy("c2", "a")}


async def test_save_call_is_refused_to_a_node_that_no_longer_owns_it(state: ClockedState) -> None:
    await state.claim("c1", "a", ["alice", "bob"], snap("c1"))
    assert await state.save_call("a", snap("c1", state="connected"), ["alice", "bob"], connected=True)
    assert (await state.busy_table())["bob"] == Busy("c1", "a", connected=True)
    assert await state.save_call("b", snap("c1"), ["alice"], connected=False) is False
    assert await state.save_call("a", snap("nope"), [], connected=False) is False
    assert await state.take_over("c1", dead="a", me="b") == snap("c1", state="connected")
    assert await state.save_call("a", snap("c1"), ["alice"], connected=False) is False
    assert await state.save_call("b", snap("c1", n=2), ["alice"], connected=True) is True


async def test_save_call_does_not_move_a_user_who_is_in_another_call(state: ClockedState) -> None:
    await state.claim("c1", "a", ["alice"], snap("c1"))
    await state.claim("c2", "a", ["bob"], snap("c2"))
    await state.save_call("a", snap("c1"), ["alice", "bob"], connected=True)
    assert (await state.busy_table())["bob"] == Busy("c2", "a")


async def test_take_over_happens_once_and_only_from_the_dead_owner(state: ClockedState) -> None:
    await state.claim("c1", "a", ["alice", "bob"], snap("c1", sdp="v=0"))
    await state.save_call("a", snap("c1", sdp="v=0"), ["alice", "bob"], connected=True)
    assert await state.take_over("c1", dead="x", me="b") is None     # a is not the dead one
    got = await state.take_over("c1", dead="a", me="b")
    assert got == snap("c1", sdp="v=0")
    assert await state.take_over("c1", dead="a", me="c") is None     # b was first
    assert await state.call_owner("c1") == "b"
    assert await state.busy_table() == {"alice": Busy("c1", "b", True), "bob": Busy("c1", "b", True)}
    assert await state.take_over("gone", dead="a", me="b") is None
    got["sdp"] = "changed"                                           # a copy, not the stored one
    assert await state.take_over("c1", dead="b", me="a") == snap("c1", sdp="v=0")


async def test_restore_writes_back_what_nobody_took_and_names_what_was_taken(state: ClockedState) -> None:
    await state.claim("c1", "b", ["carol"], snap("c1"))               # taken over while a was cut off
    lost = await state.restore_calls("a", [(snap("c1"), ["alice"], True), (snap("c2"), ["dave"], False)])
    assert lost == ["c1"]
    assert await state.call_owner("c2") == "a"
    assert await state.busy_table() == {"carol": Busy("c1", "b"), "dave": Busy("c2", "a", False)}
    assert await state.restore_calls("a", [(snap("c2"), ["dave"], False)]) == []   # idempotent
    assert await state.node_calls("a") == ["c2"]


async def test_node_calls_are_sorted(state: ClockedState) -> None:
    for cid in ("c3", "c1", "c2"):
        await state.claim(cid, "a", [cid + "-u"], snap(cid))
    assert await state.node_calls("a") == ["c1", "c2", "c3"]


# --- the bus -------------------------------------------------------------------------------------
async def test_the_bus_delivers_in_publish_order_to_the_right_nodes() -> None:
    state = MemoryState()
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    ready = asyncio.Event()
    subscribed = 0

    async def listen(node: str, n: int) -> None:
        nonlocal subscribed
        it = state.subscribe(node).__aiter__()
        first = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)            # the generator has run up to its queue: it is subscribed
        subscribed += 1
        if subscribed == 2:
            ready.set()
        got[node].append(await first)
        while len(got[node]) < n:
            got[node].append(await it.__anext__())
        await it.aclose()                 # type: ignore[attr-defined]

    tasks = [asyncio.ensure_future(listen("a", 3)), asyncio.ensure_future(listen("b", 2))]
    await ready.wait()
    await state.publish([("a", b"1"), (None, b"2"), ("b", b"3"), ("a", b"4"), ("c", b"lost")])
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert got == {"a": [b"1", b"2", b"4"], "b": [b"2", b"3"]}
    assert state.queues == {"a": [], "b": []}              # unsubscribed when the iterator closed


async def test_a_subscription_raises_when_the_store_goes_down() -> None:
    state = MemoryState()
    it = state.subscribe("a").__aiter__()
    nxt = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0)
    state.down = True
    state.queues["a"][0].put_nowait(b"x")                  # anything more arrives: the loss shows
    with pytest.raises(StateUnavailable):
        await asyncio.wait_for(nxt, 5)
    assert state.queues["a"] == []


# --- secrets, lockouts, buckets ------------------------------------------------------------------
async def test_the_first_proposal_becomes_the_shared_secret(state: ClockedState) -> None:
    assert await state.shared_secret("token", b"first") == b"first"
    assert await state.shared_secret("token", b"second") == b"first"
    assert await state.shared_secret("gateway", b"other") == b"other"


async def test_a_lockout_starts_after_n_failures_in_the_window_and_doubles_to_its_cap(state: ClockedState) -> None:
    t = 0.0
    assert [await state.lockout_failure("k", t + i, RULE) for i in range(3)] == [0.0, 0.0, 10.0]
    assert await state.lockout_retry_after("k", 2.0) == 10.0
    assert await state.lockout_retry_after("k", 7.0) == 5.0
    assert await state.lockout_failure("k", 5.0, RULE) == 0.0      # while locked, failures do not count
    assert await state.lockout_retry_after("k", 12.0) == 0.0
    durations = []
    t = 20.0
    for _ in range(4):
        for i in range(3):
            d = await state.lockout_failure("k", t + i, RULE)
        durations.append(d)
        t += 2 + d + 1
    assert durations == [20.0, 40.0, 45.0, 45.0]                   # 10 * 2^level, capped at max_s


async def test_failures_outside_the_window_are_forgotten(state: ClockedState) -> None:
    assert await state.lockout_failure("k", 0.0, RULE) == 0.0
    assert await state.lockout_failure("k", 30.0, RULE) == 0.0
    assert await state.lockout_failure("k", 61.0, RULE) == 0.0     # the first one fell out of 60 s
    assert await state.lockout_failure("k", 62.0, RULE) == 10.0


async def test_a_success_clears_the_lockout_and_its_level(state: ClockedState) -> None:
    for i in range(3):
        await state.lockout_failure("k", float(i), RULE)
    for i in range(3):
        await state.lockout_failure("k", 20.0 + i, RULE)           # level 2 now: next would be 40
    await state.lockout_success("k")
    assert await state.lockout_retry_after("k", 23.0) == 0.0
    assert [await state.lockout_failure("k", 100.0 + i, RULE) for i in range(3)] == [0.0, 0.0, 10.0]


async def test_the_lockout_level_resets_after_a_quiet_day(state: ClockedState) -> None:
    for i in range(3):
        await state.lockout_failure("k", float(i), RULE)           # locked until 12, level 1
    day = 12.0 + 24 * 3600.0 + 1
    assert [await state.lockout_failure("k", day + i, RULE) for i in range(3)] == [0.0, 0.0, 10.0]


async def test_lockouts_are_per_key(state: ClockedState) -> None:
    for i in range(3):
        await state.lockout_failure("alice", float(i), RULE)
    assert await state.lockout_retry_after("bob", 3.0) == 0.0
    assert await state.lockout_retry_after("alice", 3.0) > 0


async def test_a_bucket_grants_its_burst_then_names_the_exact_wait(state: ClockedState) -> None:
    assert [await state.bucket_take("k", 2.0, 3.0, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await state.bucket_take("k", 2.0, 3.0, 0.0) == pytest.approx(0.5)
    assert await state.bucket_wait("k", 2.0, 3.0, 0.25) == pytest.approx(0.25)
    assert await state.bucket_take("k", 2.0, 3.0, 0.5) == 0.0
    assert await state.bucket_take("k", 2.0, 3.0, 100.0, cost=3.0) == 0.0   # refilled only up to burst
    assert await state.bucket_take("k", 2.0, 3.0, 100.0) == pytest.approx(0.5)


async def test_a_debt_take_always_takes_and_the_wait_grows(state: ClockedState) -> None:
    assert await state.bucket_take("k", 1.0, 1.0, 0.0, cost=5.0, debt=True) == 0.0
    assert await state.bucket_wait("k", 1.0, 1.0, 0.0) == pytest.approx(5.0)
    assert await state.bucket_take("k", 1.0, 1.0, 4.0) == pytest.approx(1.0)
    assert await state.bucket_take("k", 1.0, 1.0, 5.0) == 0.0


async def test_a_bucket_ignores_a_clock_that_goes_back(state: ClockedState) -> None:
    assert await state.bucket_take("k", 1.0, 1.0, 10.0) == 0.0
    assert await state.bucket_take("k", 1.0, 1.0, 5.0) == pytest.approx(1.0)  # no refill from the past
    assert await state.bucket_take("k", 1.0, 1.0, 11.0) == 0.0


@PROPS
@given(st.floats(0.1, 20), st.floats(1, 10), st.lists(st.floats(0, 3, allow_nan=False), min_size=1, max_size=40))
def test_a_shared_bucket_never_grants_more_than_burst_plus_refill(rate: float, burst: float,
                                                                  steps: list[float]) -> None:
    state = ClockedState()
    now, granted = 0.0, 0
    for dt in steps:
        now += dt
        for _ in range(3):
            wait = run_sync(state.bucket_take("k", rate, burst, now))
            if wait == 0.0:
                granted += 1
            else:
                assert wait > 0
                assert run_sync(state.bucket_wait("k", rate, burst, now)) == pytest.approx(wait)
        assert granted <= burst + rate * now + 1e-6


# --- a store that cannot be reached --------------------------------------------------------------
CALLS: list[Callable[[MemoryState], Awaitable[Any]]] = [
    lambda s: s.connect(),
    lambda s: s.heartbeat("a", {}, 1.0),
    lambda s: s.nodes(),
    lambda s: s.reap("a", "b"),
    lambda s: s.leave("a"),
    lambda s: s.put_sessions([]),
    lambda s: s.drop_sessions([]),
    lambda s: s.replace_node_sessions("a", []),
    lambda s: s.node_sessions("a"),
    lambda s: s.user_sessions("alice"),
    lambda s: s.claim("c", "a", [], {}),
    lambda s: s.save_call("a", {"id": "c"}, [], False),
    lambda s: s.release("c", []),
    lambda s: s.take_over("c", "a", "b"),
    lambda s: s.node_calls("a"),
    lambda s: s.call_owner("c"),
    lambda s: s.busy_table(),
    lambda s: s.restore_calls("a", []),
    lambda s: s.gateways(),
    lambda s: s.publish([]),
    lambda s: s.shared_secret("x", b""),
    lambda s: s.lockout_retry_after("k", 0.0),
    lambda s: s.lockout_failure("k", 0.0, RULE),
    lambda s: s.lockout_success("k"),
    lambda s: s.bucket_take("k", 1.0, 1.0, 0.0),
    lambda s: s.bucket_wait("k", 1.0, 1.0, 0.0),
]


@pytest.mark.parametrize("call", CALLS)
async def test_every_operation_raises_state_unavailable_when_down(
        state: ClockedState, call: Callable[[MemoryState], Awaitable[Any]]) -> None:
    await state.claim("c0", "a", ["alice"], snap("c0"))
    before = (dict(state.calls), dict(state.busy))
    state.down = True
    with pytest.raises(StateUnavailable):
        await call(state)
    assert (state.calls, state.busy) == before                # and it changed nothing
    state.down = False
    await call(state)                                         # back: it works


def test_named_states_are_shared_until_forgotten() -> None:
    a = MemoryState.named("unit-test-x")
    assert MemoryState.named("unit-test-x") is a
    MemoryState.forget("unit-test-x")
    assert MemoryState.named("unit-test-x") is not a
    MemoryState.forget("unit-test-x")
    MemoryState.forget("never-made")                          # forgetting nothing is fine


# --- claims, releases and take-overs in any order --------------------------------------------------
USERS = ["u0", "u1", "u2", "u3", "u4", "u5"]
NODES = ["n0", "n1", "n2"]


class ClaimMachine(RuleBasedStateMachine):
    """Any sequence of claims, saves, releases and take-overs: a gateway's load is the number of
    live calls placed on it and never exceeds its capacity; a user is busy in at most one call,
    which exists; every call's users are busy in it."""

    def __init__(self) -> None:
        super().__init__()
        self.s = ClockedState()
        run_sync(self.s.put_sessions([gateway("g0", "w0", "n0", 2), gateway("g1", "w1", "n1", 1)]))
        self.next_id = 0
        self.model: dict[str, tuple[str, list[str], str | None]] = {}   # call -> owner, users, gateway

    @rule(owner=st.sampled_from(NODES), users=st.lists(st.sampled_from(USERS), min_size=1, max_size=3, unique=True),
          phone=st.booleans())
    def claim(self, owner: str, users: list[str], phone: bool) -> None:
        cid = f"c{self.next_id}"
        self.next_id += 1
        busy_now = {u for _, us, _ in self.model.values() for u in us}
        claim = run_sync(self.s.claim(cid, owner, users, snap(cid), want_gateway=phone))
        assert claim.ok == (not busy_now & set(users))
        assert set(claim.busy) == busy_now & set(users)
        if claim.ok:
            if phone:
                free = {"g0": 2, "g1": 1}
                for _, _, g in self.model.values():
                    if g is not None:
                        free[g] -= 1
                assert (claim.gateway is None) == (not any(free.values()))
            self.model[cid] = (owner, users, claim.gateway.session if claim.gateway else None)

    @rule(data=st.data())
    def claim_again(self, data: st.DataObject) -> None:
        if not self.model:
            return
        cid = data.draw(st.sampled_from(sorted(self.model)))
        assert run_sync(self.s.claim(cid, "n2", ["fresh"], snap(cid))).exists

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.model)))
        _, users, _ = self.model.pop(cid)
        run_sync(self.s.release(cid, data.draw(st.sampled_from([[], users]))))

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), me=st.sampled_from(NODES))
    def take_over(self, data: st.DataObject, me: str) -> None:
        cid = data.draw(st.sampled_from(sorted(self.model)))
        owner, users, gw = self.model[cid]
        dead = data.draw(st.sampled_from(NODES))
        got = run_sync(self.s.take_over(cid, dead, me))
        assert (got is not None) == (dead == owner)
        if got is not None:
            self.model[cid] = (me, users, gw)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), who=st.sampled_from(NODES), connected=st.booleans())
    def save(self, data: st.DataObject, who: str, connected: bool) -> None:
        cid = data.draw(st.sampled_from(sorted(self.model)))
        owner, users, _ = self.model[cid]
        assert run_sync(self.s.save_call(who, snap(cid), users, connected)) == (who == owner)

    @invariant()
    def gateways_hold_what_they_carry(self) -> None:
        for g, cap in (("g0", 2), ("g1", 1)):
            carried = sum(1 for _, _, gw in self.model.values() if gw == g)
            assert self.s.gw_load[g] == carried <= cap

    @invariant()
    def the_busy_table_is_the_calls(self) -> None:
        want = {u: (cid, owner) for cid, (owner, users, _) in self.model.items() for u in users}
        assert {u: (b.call_id, b.owner) for u, b in self.s.busy.items()} == want
        assert set(self.s.calls) == set(self.model)


TestClaimMachine = ClaimMachine.TestCase
TestClaimMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fail", "fail", "fail", "ok", "ask"]), st.sampled_from(["a", "b"]),
                          st.floats(0, 40, allow_nan=False)), min_size=1, max_size=60))
def test_the_shared_lockout_is_the_nodes_own_lockout(ops: list[tuple[str, str, float]]) -> None:
    """The cluster-wide lockout (MemoryState) answers exactly as limits.Lockout does on one node,
    for any sequence of failures, successes and questions over time."""
    from jego_call.limits import Lockout

    shared, local = ClockedState(), Lockout(RULE.after, RULE.window_s, RULE.base_s, RULE.max_s)
    now = 0.0
    for op, key, dt in ops:
        now += dt
        if op == "fail":
            assert run_sync(shared.lockout_failure(key, now, RULE)) == local.failure(key, now)
        elif op == "ok":
            run_sync(shared.lockout_success(key))
            local.success(key)
        assert run_sync(shared.lockout_retry_after(key, now)) == local.retry_after(key, now)


@settings(max_examples=150, deadline=None)
@given(st.floats(0.1, 20), st.floats(1, 10),
       st.lists(st.tuples(st.sampled_from(["take", "charge", "wait"]), st.floats(0, 3, allow_nan=False),
                          st.floats(0.5, 4)), min_size=1, max_size=50))
def test_the_shared_bucket_is_the_nodes_own_bucket(rate: float, burst: float,
                                                   ops: list[tuple[str, float, float]]) -> None:
    """bucket_take / bucket_wait (MemoryState) answer exactly as limits.TokenBucket's take, charge
    and wait, so moving a limit into the shared state changes nothing but where it is kept."""
    from jego_call.limits import TokenBucket

    shared = ClockedState()
    now = 0.0
    local = TokenBucket(rate, burst, now)
    run_sync(shared.bucket_wait("k", rate, burst, now))              # the shared bucket starts full too
    for op, dt, cost in ops:
        now += dt
        if op == "take":
            assert run_sync(shared.bucket_take("k", rate, burst, now, cost)) == pytest.approx(local.take(now, cost))
        elif op == "charge":
            assert run_sync(shared.bucket_take("k", rate, burst, now, cost, debt=True)) == 0.0
            local.charge(now, cost)
        else:
            assert run_sync(shared.bucket_wait("k", rate, burst, now)) == pytest.approx(local.wait(now))
