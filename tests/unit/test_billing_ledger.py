"""jego_call/billing/ledger.py (the hub core's synchronous Ledger over Billing: SqliteLedger, and
PreparedLedger, which PostgreSQL nodes use and which is run here over SQLite) and the SQL of
jego_call/billing/store.py on a real SQLite file: a balance always equals the sum of its ledger
and never goes below zero (the database refuses), a charge is answered once and closed once,
`touch` never moves last_seen back (also past one statement's 500 ids), one currency per
account, suspensions upsert. A property test runs any sequence of top-ups, authorisations,
answers and settlements through the ledger and checks the books after each.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jego_call.billing import policy, store
from jego_call.billing.fraud import FraudConfig
from jego_call.billing.ledger import PreparedLedger, SqliteLedger, make_ledger
from jego_call.billing.money import currency
from jego_call.billing.policy import Terms
from jego_call.billing.refusal import Refusal
from jego_call.billing.service import Billing, load_rate_table
from jego_call.call.reasons import EndReason
from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.numbering import classify

T0 = 1_800_000_000.0
MOBILE = "+8613800138000"          # China Mobile: 0.15 CNY/min, 60/60 (config/rates.toml)
CNY = currency("CNY")
_ids = itertools.count()


def add_users(db: Database, *names: str) -> None:
    for n in names:
        run_sync(db.execute("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)"
                            " ON CONFLICT DO NOTHING", (n,)))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path_factory.mktemp("billing") / "jego.sqlite3")
    yield database
    run_sync(database.close())


@pytest.fixture(scope="module")
def billing(db: SqliteDatabase) -> Billing:
    return run_sync(Billing.open(db, load_rate_table(), FraudConfig(), Terms(60.0, 7200)))


def fresh_user(db: Database, credit: int = 0, billing: Billing | None = None) -> str:
    name = f"user{next(_ids)}"
    add_users(db, name)
    if credit:
        assert billing is not None
        run_sync(billing.top_up(name, credit, "test", now=T0))
    return name


def call_id() -> str:
    return f"call-{next(_ids)}"


def books(db: Database, user: str) -> tuple[int, int, int]:
    """(balance, sum of the ledger, money held), checked against each other."""
    bal, _ = run_sync(store.balance(db, user))
    total = run_sync(store.ledger_sum(db, user))
    hold, _, _ = run_sync(store.held(db, user))
    assert bal == total and bal >= 0
    return bal, total, hold


# --- SqliteLedger ---------------------------------------------------------------------------------
def test_sqlite_billing_gets_the_synchronous_ledger(billing: Billing) -> None:
    assert isinstance(make_ledger(billing), SqliteLedger)
    pg = SimpleNamespace(db=SimpleNamespace(engine="postgres"))
    assert isinstance(make_ledger(pg), PreparedLedger)  # type: ignore[arg-type]


async def test_the_sqlite_ledger_authorises_answers_and_settles_once(billing: Billing, db: SqliteDatabase) -> None:
    led = SqliteLedger(billing)
    user = fresh_user(db, 1000, billing)
    cid = call_id()
    auth = led.authorise(cid, user, MOBILE, T0)
    assert auth.ok and auth.grant is not None and auth.grant.hold > 0
    assert led.credit(user) == {"balance": 1000, "held": auth.grant.hold, "available": 1000 - auth.grant.hold,
                                "currency": "CNY"}
    timers = led.answered(cid, T0 + 2)
    assert timers == policy.timers(auth.grant, T0 + 2, billing.terms)
    assert led.answered(cid, T0 + 9) == timers               # answered once: the first moment stands
    first = await led.settle(cid, T0 + 2, T0 + 65, T0 + 66)
    assert first is not None and not first.duplicate
    assert first.billed_s == 120 and first.cost == 30          # 60/60 increments at 0.15/min
    again = await led.settle(cid, T0 + 2, T0 + 999, T0 + 1000)
    assert again is not None and again.duplicate and again.cost == 30
    assert books(db, user) == (970, 970, 0)
    assert await led.settle("never-authorised", None, T0) is None
    await led.prepare(cid, user, MOBILE, "CN", False)          # nothing to do on SQLite
    await led.release_unused(cid)


async def test_the_sqlite_ledger_refuses_without_credit_and_holds_nothing(billing: Billing,
                                                                         db: SqliteDatabase) -> None:
    led = SqliteLedger(billing)
    user = fresh_user(db)
    auth = led.authorise(call_id(), user, MOBILE, T0)
    assert not auth.ok and auth.refusal is not None and auth.refusal.reason == EndReason.INSUFFICIENT_CREDIT
    assert books(db, user) == (0, 0, 0)


# --- PreparedLedger -------------------------------------------------------------------------------
@pytest.mark.parametrize(("number", "international", "why"), [
    ("110", False, "an emergency number is never billed"),
    ("not a number", False, "no number at all"),
    ("+86138", False, "incomplete"),
    ("+14155550100", False, "international calls not allowed for this user"),
])
async def test_prepare_authorises_nothing_the_core_will_not_ask_about(billing: Billing, db: SqliteDatabase,
                                                                      number: str, international: bool,
                                                                      why: str) -> None:
    led = PreparedLedger(billing)
    user = fresh_user(db, 1000, billing)
    cid = call_id()
    await led.prepare(cid, user, number, "CN", international)
    assert led.ready == {} and books(db, user)[2] == 0, why
    with pytest.raises(LookupError):
        led.authorise(cid, user, MOBILE, T0)                     # refused by the core: never placed unpaid
    with pytest.raises(LookupError):
        led.credit(user)


async def test_prepare_then_the_core_takes_the_answer_once(billing: Billing, db: SqliteDatabase) -> None:
    led = PreparedLedger(billing)
    user = fresh_user(db, 500, billing)
    cid = call_id()
    await led.prepare(cid, user, "138 0013 8000", "CN", False)   # as typed: normalised first
    held = books(db, user)[2]
    assert held > 0 and led.credit(user)["available"] == 500 - held
    auth = led.authorise(cid, user, MOBILE, T0)
    assert auth.ok and auth.grant is not None and led.grants[cid] == auth.grant
    with pytest.raises(LookupError):
        led.authorise(cid, user, MOBILE, T0)                     # taken: a second ask is a bug, not a grant
    timers = led.answered(cid, T0 + 1)
    assert timers == policy.timers(auth.grant, T0 + 1, billing.terms)
    for task in list(led._tasks):
        await task
    charge = run_sync(store.get_charge(db, cid))
    assert charge is not None and charge.answered_at == T0 + 1  # marked in the database in the background
    done = await led.settle(cid, T0 + 1, T0 + 31, T0 + 32)
    assert done is not None and done.cost == 15 and cid not in led.grants
    assert led.answered(cid, T0 + 40) is None                   # no grant any more: nothing to time
    for task in list(led._tasks):
        await task


async def test_a_refusal_prepared_is_the_core_s_answer(billing: Billing, db: SqliteDatabase) -> None:
    led = PreparedLedger(billing)
    user = fresh_user(db)
    cid = call_id()
    await led.prepare(cid, user, MOBILE, "CN", False)
    auth = led.authorise(cid, user, MOBILE, T0)
    assert not auth.ok and auth.refusal is not None and cid not in led.grants
    assert led.answered(cid, T0) is None
    for task in list(led._tasks):
        await task


async def test_release_unused_gives_the_hold_back_once(billing: Billing, db: SqliteDatabase) -> None:
    led = PreparedLedger(billing)
    user = fresh_user(db, 300, billing)
    cid = call_id()
    await led.prepare(cid, user, MOBILE, "CN", False)
    assert books(db, user)[2] > 0
    await led.release_unused(cid)
    assert books(db, user) == (300, 300, 0)
    charge = run_sync(store.get_charge(db, cid))
    assert charge is not None and not charge.open and charge.cost == 0
    await led.release_unused(cid)                               # nothing left to release
    assert books(db, user) == (300, 300, 0)


async def test_a_failed_background_answer_is_logged_and_the_timers_still_come(
        billing: Billing, db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    led = PreparedLedger(billing)
    user = fresh_user(db, 300, billing)
    cid = call_id()
    await led.prepare(cid, user, MOBILE, "CN", False)
    auth = led.authorise(cid, user, MOBILE, T0)

    async def down(call: str, at: float) -> None:
        raise ConnectionError("database away")

    monkeypatch.setattr(billing, "answered", down)
    assert auth.grant is not None
    assert led.answered(cid, T0) == policy.timers(auth.grant, T0, billing.terms)
    for task in list(led._tasks):
        await task
    assert "could not mark the answer in the ledger" in caplog.text
    monkeypatch.undo()
    await led.settle(cid, None, T0 + 5, T0 + 5)


# --- store.py --------------------------------------------------------------------------------------
async def test_post_keeps_balance_equal_to_the_ledger(db: SqliteDatabase) -> None:
    user = fresh_user(db)
    async with db.transaction() as tx:
        assert await store.post(tx, user, "topup", 500, CNY, T0, "first") == 500
        assert await store.post(tx, user, "call", -120, CNY, T0 + 1, "call", call_id=None) == 380
    assert books(db, user) == (380, 380, 0)
    entries = run_sync(store.ledger(db, user, 10))
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in entries] == [("call", -120, 380),
                                                                                ("topup", 500, 500)]
    assert len(run_sync(store.ledger(db, user, 1))) == 1


async def test_the_database_refuses_a_negative_balance_and_nothing_is_kept(db: SqliteDatabase) -> None:
    user = fresh_user(db)
    async with db.transaction() as tx:
        await store.post(tx, user, "topup", 100, CNY, T0, "x")
    with pytest.raises(sqlite3.IntegrityError):
        async with db.transaction() as tx:
            await store.post(tx, user, "adjustment", -101, CNY, T0 + 1, "too much")
    assert books(db, user) == (100, 100, 0)                    # the whole transaction rolled back


async def test_an_account_keeps_its_currency(db: SqliteDatabase) -> None:
    user = fresh_user(db)
    async with db.transaction() as tx:
        await store.post(tx, user, "topup", 100, CNY, T0, "x")
    with pytest.raises(ValueError, match="kept in CNY"):
        async with db.transaction() as tx:
            await store.post(tx, user, "topup", 100, currency("USD"), T0, "x")
    assert run_sync(store.balance(db, user)) == (100, "CNY")
    assert run_sync(store.balance(db, "nobody-at-all")) == (0, None)


def rate() -> Any:
    table = load_rate_table()
    found = table.lookup(classify(MOBILE))
    assert found is not None
    return found


async def test_a_charge_is_answered_once_and_closed_once(db: SqliteDatabase) -> None:
    user = fresh_user(db)
    cid = call_id()
    r = rate()
    async with db.transaction() as tx:
        await store.insert_charge(tx, cid, user, MOBILE, "China Mobile", r, 60, 400, EndReason.CREDIT_EXHAUSTED, T0)
    charge = run_sync(store.get_charge(db, cid))
    assert charge is not None and charge.open and charge.cut_reason == EndReason.CREDIT_EXHAUSTED
    kept = charge.rate       # what billing needs of the rate is kept with the call (not its names)
    assert (kept.prefix, kept.per_minute, kept.increment, kept.currency, kept.connection_fee) == (
        r.prefix, r.per_minute, r.increment, r.currency, r.connection_fee)
    assert run_sync(store.held(db, user)) == (60, 1, 400)
    assert store.ids_of(run_sync(store.open_charges(db, user))) == [cid]
    async with db.transaction() as tx:
        assert await store.mark_answered(tx, cid, T0 + 3) is True
        assert await store.mark_answered(tx, cid, T0 + 9) is False
        assert await store.close_charge(tx, cid, T0 + 3, T0 + 60, 60, 15, 0, T0 + 61, "call") is True
        assert await store.close_charge(tx, cid, T0 + 3, T0 + 90, 90, 99, 0, T0 + 91, "recovery") is False
        assert await store.mark_answered(tx, cid, T0 + 100) is False
    done = run_sync(store.get_charge(db, cid))
    assert done is not None and not done.open
    assert (done.answered_at, done.billed_s, done.cost, done.settled_by) == (T0 + 3, 60, 15, "call")
    assert run_sync(store.held(db, user)) == (0, 0, 0)
    assert run_sync(store.open_charges(db, user)) == []


async def test_touch_only_moves_last_seen_forward_and_only_for_answered_open_calls(db: SqliteDatabase) -> None:
    user = fresh_user(db)
    r = rate()
    ids = [call_id() for _ in range(1203)]
    async with db.transaction() as tx:
        for cid in ids:
            await store.insert_charge(tx, cid, user, MOBILE, "", r, 1, 60, EndReason.MAX_DURATION, T0)
        for cid in ids[:-1]:
            await store.mark_answered(tx, cid, T0)
        assert await store.touch(tx, ids, T0 + 10) == 1202      # the unanswered one is not touched
        assert await store.touch(tx, ids[:5], T0 + 5) == 5      # counted, but ...
    first = run_sync(store.get_charge(db, ids[0]))
    last = run_sync(store.get_charge(db, ids[-1]))
    mid = run_sync(store.get_charge(db, ids[700]))
    assert first is not None and first.last_seen == T0 + 10    # ... not moved back
    assert mid is not None and mid.last_seen == T0 + 10        # past the first chunk of 500
    assert last is not None and last.last_seen is None


async def test_suspensions_upsert_and_lift_once(db: SqliteDatabase) -> None:
    user = fresh_user(db)
    first = Refusal(EndReason.SUSPENDED, "too many calls", "呼叫过多", "velocity")
    second = Refusal(EndReason.SUSPENDED, "too far", "太远", "destinations")
    async with db.transaction() as tx:
        assert await store.suspension(tx, user) is None
        await store.suspend(tx, user, first, T0)
        await store.suspend(tx, user, second, T0 + 5)
        assert await store.suspension(tx, user) == (second, T0 + 5)
        assert await store.unsuspend(tx, user) is True
        assert await store.unsuspend(tx, user) is False


async def test_activity_counts_the_last_hour_and_the_settled_day(db: SqliteDatabase) -> None:
    user = fresh_user(db)
    r = rate()
    now = T0 + 100_000
    async with db.transaction() as tx:
        await store.insert_charge(tx, "old-" + user, user, "+8613900000000", "", r, 1, 60, EndReason.MAX_DURATION,
                                  now - 4000)
        await store.close_charge(tx, "old-" + user, now - 4000, now - 3000, 120, 30, 0, now - 3000, "call")
        await store.insert_charge(tx, "b-" + user, user, "+8613900000002", "", r, 1, 60, EndReason.MAX_DURATION,
                                  now - 10)
        await store.insert_charge(tx, "a-" + user, user, "+8613900000001", "", r, 1, 90, EndReason.MAX_DURATION,
                                  now - 10)
        await store.fraud_event(tx, user, now - 50, "lifted", "operator", "ok")
        await store.fraud_event(tx, user, now - 20, "warning", "velocity", "fast", "b-" + user)
        act = await store.activity(tx, user, now)
    assert act.open_calls == 2 and act.reserved_s == 150 and act.used_s_24h == 120
    # within the hour, by time then in the order they were authorised (rowid)
    assert act.recent == ((now - 10, "+8613900000002"), (now - 10, "+8613900000001"))
    assert act.velocity_from == now - 50
    events = run_sync(store.fraud_events(db, user))
    assert [e["level"] for e in events] == ["warning", "lifted"] and events[0]["call_id"] == "b-" + user


# --- any sequence of operations --------------------------------------------------------------------
OPS = st.lists(st.one_of(
    st.tuples(st.just("top_up"), st.integers(-300, 1000)),
    st.tuples(st.just("call"), st.integers(0, 3)),
    st.tuples(st.just("answer"), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 3)),
    st.tuples(st.just("end_again"), st.integers(0, 3)),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(OPS, st.integers(1, 400))
def test_any_sequence_keeps_the_books(billing: Billing, db: SqliteDatabase, ops: list[tuple[str, int]],
                                      duration: int) -> None:
    """Balances equal their ledger, never go negative, holds never exceed the balance, a call is
    charged once and never more than its hold, and when every call has ended nothing is held."""
    led = SqliteLedger(billing)
    user = fresh_user(db)
    calls: list[str] = []
    answered: dict[str, float] = {}
    charged: dict[str, int] = {}
    topped = 0
    now = T0
    for op, n in ops:
        now += 1
        if op == "top_up":
            bal, _, hold = books(db, user)
            if n == 0:
                continue
            try:
                run_sync(billing.top_up(user, n, "t", now))
            except ValueError:
                assert n < 0 and bal - hold + n < 0           # refused only when it would eat held money
            else:
                assert bal - hold + n >= 0
                topped += n
        elif op == "call":
            cid = call_id()
            auth = led.authorise(cid, user, MOBILE, now)
            if auth.ok:
                calls.append(cid)
        elif calls:
            cid = calls[n % len(calls)]
            if op == "answer" and cid not in charged:
                led.answered(cid, now)
                answered.setdefault(cid, now)
            elif op in ("end", "end_again"):
                charge = run_sync(store.get_charge(db, cid))
                assert charge is not None
                s = run_sync(led.settle(cid, None, now + duration, now))
                assert s is not None
                if cid in charged:
                    assert s.duplicate and s.cost == charged[cid]
                else:
                    assert not s.duplicate and 0 <= s.cost <= charge.hold
                    assert s.cost == 0 or cid in answered
                    charged[cid] = s.cost
        bal, _, hold = books(db, user)
        assert hold <= bal
    for cid in calls:
        s = run_sync(led.settle(cid, None, now + 1, now + 1))
        assert s is not None
        charged.setdefault(cid, s.cost)
    bal, _, hold = books(db, user)
    assert hold == 0 and run_sync(store.open_charges(db, user)) == []
    assert bal == topped - sum(charged.values())
