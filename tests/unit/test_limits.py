"""jego_call.limits: token buckets, the growing account lockout and the login policy, in
virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jego_call.limits import KeyedBuckets, Lockout, LoginLimits, LoginPolicy, TokenBucket, WorkBudget

T0 = 1000.0


def test_token_bucket() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=T0)
    assert [b.take(T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(T0) == pytest.approx(0.5)          # nothing taken: half a second to the next token
    assert b.take(T0 + 0.5) == 0.0 and b.take(T0 + 0.5) == pytest.approx(0.5)
    assert b.take(T0 + 100) == 0.0 and b.tokens == pytest.approx(2.0)   # refills to the burst only
    b.charge(T0 + 100, 5.0)                           # debt
    assert b.wait(T0 + 100) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="greater than 0"):
        TokenBucket(0, 1, T0)


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200))
def test_a_bucket_never_gives_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    b = TokenBucket(rate=1.0, burst=5, now=T0)
    now, taken = T0, 0
    for g in gaps:
        now += g
        if b.take(now) == 0.0:
            taken += 1
    assert taken <= 5 + (now - T0) * 1.0 + 1e-9


def test_keyed_buckets_are_bounded() -> None:
    k = KeyedBuckets(rate=1.0, burst=1, max_keys=3)
    for ip in ("a", "b", "c", "d"):
        assert k.take(ip, T0) == 0.0
    assert len(k) == 3 and k.wait("a", T0) == 0.0      # "a" was forgotten (least recently used)
    assert k.take("d", T0) > 0


def test_lockout_grows_and_resets_on_success() -> None:
    lk = Lockout(after=5, window_s=900, base_s=60, max_s=200)
    t = T0
    for _ in range(4):
        assert lk.failure("bob", t) == 0.0
        t += 1
    assert lk.failure("bob", t) == 60.0 and lk.retry_after("bob", t) == 60.0
    assert lk.failure("bob", t + 10) == 0.0            # while locked nothing more is counted
    t += 61
    assert lk.retry_after("bob", t) == 0.0
    assert [lk.failure("bob", t + i) for i in range(5)] == [0, 0, 0, 0, 120.0]   # doubled
    t += 200
    assert [lk.failure("bob", t + i) for i in range(5)][-1] == 200.0              # capped at max_s
    lk.success("bob")
    assert lk.retry_after("bob", t + 5) == 0.0
    assert [lk.failure("bob", t + 300 + i) for i in range(5)][-1] == 60.0          # back to the base
    # failures spread wider than the window never lock
    slow = Lockout(after=5, window_s=900, base_s=60, max_s=3600)
    assert all(slow.failure("amy", T0 + i * 300) == 0.0 for i in range(20))


def test_login_policy_200_wrong_passwords_from_one_address() -> None:
    p = LoginPolicy(LoginLimits())
    now, hashed, denied = T0, 0, []
    for _ in range(200):
        d = p.before_login("victim", "203.0.113.9", now)
        if d is None:
            hashed += 1
            p.login_failed("victim", "203.0.113.9", now)
        else:
            denied.append(d)
        now += 0.01
    assert hashed == 5 and len(denied) == 195                     # locked after 5: no more hashing
    assert {d.rule for d in denied} == {"account"}
    assert all(55 < d.retry_after <= 60 for d in denied)
    assert "Too many failed logins for this account" in denied[0].message
    assert "wrong" not in denied[0].message.lower()
    # the right password is refused too while locked; another account from elsewhere is not
    assert p.before_login("victim", "198.51.100.7", now) is not None
    assert p.before_login("alice", "198.51.100.7", now) is None


def test_login_policy_per_source() -> None:
    p = LoginPolicy(LoginLimits(source_burst=30, source_per_s=1.0, source_failures=20, source_failures_per_s=0.1))
    now = T0
    for i in range(20):                                  # 20 accounts, one wrong password each
        assert p.before_login(f"user{i}", "10.0.0.1", now) is None
        p.login_failed(f"user{i}", "10.0.0.1", now)
    d = p.before_login("user99", "10.0.0.1", now)
    assert d is not None and d.rule == "source_failures" and d.retry_after == pytest.approx(10.0)
    assert "from your network" in d.message
    assert p.before_login("user99", "10.0.0.2", now) is None     # another address is not affected
    q = LoginPolicy(LoginLimits(source_burst=3, source_per_s=1.0))
    assert [q.before_login("a", "10.0.0.3", T0) is None for _ in range(4)] == [True, True, True, False]
    r = LoginPolicy(LoginLimits(register_burst=2, register_per_s=0.5))
    assert [r.before_register("10.0.0.4", T0) is None for _ in range(3)] == [True, True, False]
    d = r.before_register("10.0.0.4", T0)
    assert d is not None and d.rule == "register" and d.retry_after == pytest.approx(2.0)
    assert r.before_register("10.0.0.4", T0 + 2.0) is None


def test_work_budget_bounds_seconds_per_second() -> None:
    w = WorkBudget(share=0.5, burst_s=1.0, now=T0)
    now, done = T0, 0.0
    while now < T0 + 100:
        wait = w.wait_to_start(now)
        if wait > 0:
            now += wait
            continue
        w.charge(now, 0.26)          # one argon2 hash
        done += 0.26
        now += 0.26
    assert done <= 0.5 * 100 + 1.0 + 0.26
    assert done >= 0.5 * 100 - 0.26


def test_bounded_priority_queue_serves_the_least_suspect_and_evicts_the_most() -> None:
    from jego_call.limits import BoundedPriorityQueue
    q: BoundedPriorityQueue[str] = BoundedPriorityQueue(3)
    assert q.push(5, "flood-a") is None and q.push(5, "flood-b") is None and q.push(0, "alice") is None
    assert q.push(5, "flood-c") == "flood-c"          # full: the newest of the worst goes
    assert q.push(0, "bob") == "flood-b"              # a clean one pushes the newest suspect out
    assert [q.pop(), q.pop(), q.pop(), q.pop()] == ["alice", "bob", "flood-a", None]


def test_suspicion_grows_with_failures() -> None:
    p = LoginPolicy(LoginLimits())
    assert p.suspicion("alice", "10.0.0.1", T0) == 0
    for i in range(3):
        p.login_failed("mallory-target", "10.0.0.9", T0 + i)
    assert p.suspicion("mallory-target", "10.0.0.1", T0 + 3) == 3          # the account's failures
    assert p.suspicion("alice", "10.0.0.9", T0 + 3) == pytest.approx(2.7)  # the source: 3 used, 0.3 back
    assert p.suspicion("alice", "10.0.0.1", T0 + 3) == 0
    assert p.register_suspicion("10.0.0.1", T0) == 0
    p.before_register("10.0.0.1", T0)
    assert p.register_suspicion("10.0.0.1", T0) == pytest.approx(1.0)


def test_concurrent_attempts_cannot_slip_past_the_lockout() -> None:
    """Attempts whose password is still being hashed count: a burst of 200 at once gets 5 through."""
    p = LoginPolicy(LoginLimits())
    passed = [p.before_login("victim", "10.0.0.5", T0) is None for _ in range(200)]
    assert sum(passed) == 5
    d = p.before_login("victim", "10.0.0.5", T0)
    assert d is not None and d.rule == "account_busy" and d.retry_after == 1.0
    for _ in range(5):
        p.login_failed("victim", "10.0.0.5", T0 + 0.3)
    d = p.before_login("victim", "10.0.0.5", T0 + 0.4)
    assert d is not None and d.rule == "account" and d.retry_after == pytest.approx(59.9)
    q = LoginPolicy(LoginLimits())
    assert q.before_login("amy", "10.0.0.6", T0) is None
    q.login_abandoned("amy")                      # never judged: does not count
    assert all(q.before_login("amy", "10.0.0.6", T0) is None for _ in range(5))


def test_log_throttle() -> None:
    from jego_call.limits import LogThrottle
    t = LogThrottle(60.0)
    assert t.allow("source 10.0.0.1", T0) == 0
    assert [t.allow("source 10.0.0.1", T0 + i) for i in range(1, 5)] == [None] * 4
    assert t.allow("source 10.0.0.2", T0 + 5) == 0
    assert t.allow("source 10.0.0.1", T0 + 61) == 4       # the next line says how many were held back
