"""Property tests for the pure limiters in jego_call/limits.py, each against a small model:
a token bucket never grants more than burst + rate * elapsed and says exactly how long to wait;
keyed buckets are independent and bounded; the bounded priority queue serves lowest first
(FIFO among equals) and, when full, refuses the most suspect, newest first.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jego_call.limits import BoundedPriorityQueue, KeyedBuckets, TokenBucket, WorkBudget

PROPS = settings(max_examples=200, deadline=None)

STEPS = st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=60)


@PROPS
@given(st.floats(0.1, 50), st.floats(1, 20), STEPS)
def test_a_bucket_never_grants_more_than_burst_plus_refill(rate: float, burst: float, steps: list[float]) -> None:
    b = TokenBucket(rate, burst, 0.0)
    now, granted = 0.0, 0
    for dt in steps:
        now += dt
        for _ in range(3):   # a client that tries three times at each instant
            if b.take(now) == 0.0:
                granted += 1
        assert granted <= burst + rate * now + 1e-6
        assert b.tokens <= burst + 1e-9


@PROPS
@given(st.floats(0.1, 50), st.floats(1, 20), st.floats(0, 30))
def test_the_wait_it_names_is_exact(rate: float, burst: float, debt: float) -> None:
    b = TokenBucket(rate, burst, 0.0)
    b.charge(0.0, burst + debt)            # empty, and `debt` more: e.g. costs known afterwards
    w = b.take(0.0)
    assert w > 0 and abs(w - (1 + debt) / rate) < 1e-6
    assert b.take(w * 0.999) > 0           # not a moment early
    assert b.take(w + 1e-6) == 0.0         # and then at once


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.floats(0, 2, allow_nan=False)),
                min_size=1, max_size=50))
def test_keyed_buckets_behave_as_one_bucket_per_key(ops: list[tuple[str, float]]) -> None:
    keyed = KeyedBuckets(rate=2.0, burst=3.0)
    model: dict[str, TokenBucket] = {}
    now = 0.0
    for key, dt in ops:
        now += dt
        if key not in model:
            model[key] = TokenBucket(2.0, 3.0, now)
        assert keyed.take(key, now) == model[key].take(now)
    assert len(keyed) == len(model)


def test_keyed_buckets_forget_the_least_recent_key_beyond_their_bound() -> None:
    keyed = KeyedBuckets(rate=0.001, burst=1.0, max_keys=2)
    assert keyed.take("a", 0.0) == 0.0 and keyed.take("b", 0.0) == 0.0
    assert keyed.take("a", 0.0) > 0               # a is empty, and now the most recent
    assert keyed.take("c", 0.0) == 0.0            # b is forgotten
    assert len(keyed) == 2 and keyed.wait("b", 0.0) == 0.0 and keyed.wait("a", 0.0) > 0


@PROPS
@given(st.floats(0.05, 1), st.floats(0.1, 2), st.lists(st.floats(0, 0.5, allow_nan=False), max_size=20))
def test_work_budget_keeps_the_long_run_share(share: float, burst: float, jobs: list[float]) -> None:
    """Start each job when the budget says so: work done by `now` stays within share * now + burst
    plus the one job that may run into debt."""
    wb = WorkBudget(share, burst, 0.0)
    now = work = 0.0
    for took in jobs:
        now += wb.wait_to_start(now)
        wb.charge(now, took)
        work += took
        now += took
        assert work <= share * now + burst + took + 1e-6


@PROPS
@given(st.integers(1, 6), st.lists(st.one_of(st.tuples(st.just("push"), st.integers(0, 4)),
                                             st.tuples(st.just("pop"), st.just(0))), max_size=40))
def test_bounded_priority_queue_against_a_sorted_list(maxsize: int, ops: list[tuple[str, int]]) -> None:
    q: BoundedPriorityQueue[int] = BoundedPriorityQueue(maxsize)
    model: list[tuple[int, int]] = []     # (priority, arrival) of what is inside
    refused: list[int] = []
    for n, (op, priority) in enumerate(ops):
        if op == "push":
            out = q.push(priority, n)
            entry = (priority, n)
            if len(model) < maxsize:
                model.append(entry)
                assert out is None
            else:
                worst = max([*model, entry])          # highest priority, newest among equals
                assert out == worst[1]
                refused.append(worst[1])
                if worst != entry:
                    model.remove(worst)
                    model.append(entry)
        else:
            got = q.pop()
            if model:
                best = min(model)
                model.remove(best)
                assert got == best[1]              # lowest priority first, FIFO among equals
            else:
                assert got is None
        assert len(q) == len(model) <= maxsize


def test_discard_removes_only_that_item() -> None:
    q: BoundedPriorityQueue[object] = BoundedPriorityQueue(3)
    a, b, c = object(), object(), object()
    for p, item in ((1, a), (1, b), (0, c)):
        q.push(p, item)
    q.discard(b)
    q.discard(object())
    assert len(q) == 2 and q.pop() is c and q.pop() is a and q.pop() is None
