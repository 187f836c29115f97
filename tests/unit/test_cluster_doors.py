"""jego_call/cluster/doors.py's `SharedDoors` over a `MemoryState` shared by two "nodes": a
lockout started by failures on one node holds on the other, failures from one source spread
over nodes add up, the attempt and registration buckets are cluster-wide, a success clears the
lockout, and when the shared state is down every door says "go on" (the node's own limits still
hold) and the warning is logged once a minute, not once a login.
"""

from __future__ import annotations

import logging

import pytest

from jego_call.cluster.doors import SharedDoors
from jego_call.cluster.state import MemoryState
from jego_call.limits import LoginLimits

LIMITS = LoginLimits(source_burst=4, source_per_s=1.0, source_failures=3, source_failures_per_s=0.1,
                     lockout_after=3, lockout_window_s=60.0, lockout_base_s=30.0, lockout_max_s=300.0,
                     register_burst=2, register_per_s=0.01)
T = 1_800_000_000.0


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


@pytest.fixture
def nodes(state: MemoryState) -> tuple[SharedDoors, SharedDoors]:
    return SharedDoors(state, LIMITS), SharedDoors(state, LIMITS)


async def test_a_lockout_started_on_one_node_holds_on_the_other(nodes: tuple[SharedDoors, SharedDoors]) -> None:
    a, b = nodes
    assert await a.login_failed("alice", "10.0.0.1", T) == 0.0
    assert await b.login_failed("alice", "10.0.0.2", T + 1) == 0.0
    assert await a.login_failed("alice", "10.0.0.3", T + 2) == 30.0      # the third, on either node
    denied = await b.before_login("alice", "10.0.0.9", T + 3)
    assert denied is not None and denied.rule == "account"
    assert denied.retry_after == pytest.approx(29.0)
    assert denied.message == "Too many failed logins for this account: try again in 29 s"
    assert await b.before_login("bob", "10.0.0.9", T + 3) is None           # another account is not locked
    assert await a.before_login("alice", "10.0.0.9", T + 32.0) is None      # and it ends on time


async def test_a_success_on_any_node_clears_the_account(nodes: tuple[SharedDoors, SharedDoors]) -> None:
    a, b = nodes
    await a.login_failed("alice", "s1", T)
    await a.login_failed("alice", "s2", T + 1)
    await b.login_ok("alice")
    assert await a.login_failed("alice", "s3", T + 2) == 0.0                # counting starts again


async def test_failures_from_one_source_add_up_across_nodes(nodes: tuple[SharedDoors, SharedDoors]) -> None:
    a, b = nodes
    for i, node in enumerate((a, b, a)):
        await node.login_failed(f"user{i}", "10.9.9.9", T)                  # three accounts, one source
    denied = await b.before_login("user9", "10.9.9.9", T)
    assert denied is not None and denied.rule == "source_failures"
    assert denied.retry_after == pytest.approx(10.0)                        # one failure token at 0.1/s
    assert "from your network" in denied.message
    assert await b.before_login("user9", "10.1.1.1", T) is None             # another source is fine
    assert await a.before_login("user9", "10.9.9.9", T + 10.0) is None


async def test_the_attempt_bucket_is_cluster_wide(nodes: tuple[SharedDoors, SharedDoors]) -> None:
    a, b = nodes
    answers = [await (a if i % 2 else b).before_login(f"u{i}", "10.2.2.2", T) for i in range(5)]
    assert answers[:4] == [None] * 4
    last = answers[4]
    assert last is not None and last.rule == "source" and last.retry_after == pytest.approx(1.0)
    assert last.message == "Too many login attempts from your network: try again in 1 s"
    assert await a.before_login("u9", "10.2.2.2", T + 1.0) is None


async def test_registrations_are_limited_per_source(nodes: tuple[SharedDoors, SharedDoors]) -> None:
    a, b = nodes
    assert await a.before_register("10.3.3.3", T) is None
    assert await b.before_register("10.3.3.3", T) is None
    denied = await a.before_register("10.3.3.3", T)
    assert denied is not None and denied.rule == "register" and denied.retry_after == pytest.approx(100.0)
    assert denied.message == "Too many new accounts from your network: try again in 100 s"
    assert await a.before_register("10.4.4.4", T) is None


async def test_a_lockout_in_progress_is_not_extended_by_more_failures(nodes: tuple[SharedDoors, SharedDoors]) -> None:
    a, _ = nodes
    for i in range(3):
        await a.login_failed("alice", f"s{i}", T + i)
    assert await a.login_failed("alice", "s9", T + 10) == 0.0
    denied = await a.before_login("alice", "s9", T + 10)
    assert denied is not None and denied.retry_after == pytest.approx(22.0)   # still ends at T + 32


async def test_with_the_shared_state_down_every_door_says_go_on(state: MemoryState,
                                                                nodes: tuple[SharedDoors, SharedDoors],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    a, _ = nodes
    for i in range(3):
        await a.login_failed("alice", "s", T + i)                           # locked while it was up
    state.down = True
    with caplog.at_level(logging.WARNING, logger="jego.cluster"):
        assert await a.before_login("alice", "s", T + 3) is None
        assert await a.login_failed("alice", "s", T + 4) == 0.0
        await a.login_ok("alice")
        assert await a.before_register("s", T + 5) is None
    warnings = [r for r in caplog.records if "shared state is unreachable" in r.getMessage()]
    assert len(warnings) == 1                                               # once a minute, not per call
    state.down = False
    denied = await a.before_login("alice", "s", T + 6)
    assert denied is not None and denied.rule == "account"                  # nothing was lost meanwhile
