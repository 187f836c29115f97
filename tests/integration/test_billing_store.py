"""jego_call.billing.service.Billing against real SQLite files: the ledger, reservations,
settlement exactly once, recovery after a crash (a real SIGKILL), and no overspending by
concurrent calls, also from several processes at once. Billing's coroutines are run to their
end here with `run_sync` (on SQLite they never wait); tests/integration/test_cluster_store.py
runs it on PostgreSQL."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from jego_call.billing import store
from jego_call.billing.fraud import FraudConfig
from jego_call.billing.policy import Terms
from jego_call.billing.rates import build_rate_table
from jego_call.billing.service import Billing, BillingError, load_rate_table
from jego_call.call.reasons import EndReason
from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.errors import ConfigError
from tests.helpers import one_row

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0
MOBILE = "+8613800138000"          # China Mobile: 0.15 CNY/min, 60/60 (config/rates.toml)
LANDLINE = "+861065529988"         # Beijing: 0.10 CNY/min, 30/6


def open_db(path: Path, *users: str) -> SqliteDatabase:
    db = Database.open(path)
    for u in users:
        run_sync(db.execute("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)"
                            " ON CONFLICT DO NOTHING", (u,)))
    return db


class SyncDb:
    """The SQLite database with its coroutines run to their end (`raw`: the Database)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.raw = db

    def query_one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return run_sync(self.raw.query_one(sql, params))

    def close(self) -> None:
        run_sync(self.raw.close())


class SyncBilling:
    """`Billing` with its coroutine methods run to their end synchronously (SQLite never waits)."""

    def __init__(self, b: Billing) -> None:
        self.b = b
        self.db = SyncDb(b.db)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.b, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: run_sync(attr(*a, **k))
        return attr


def make_billing(db: SqliteDatabase, fraud: FraudConfig | None = None) -> Any:
    return SyncBilling(run_sync(Billing.open(db, load_rate_table(), fraud or FraudConfig(), Terms(60.0, 7200))))


@pytest.fixture
def billing(tmp_path: Path) -> Any:
    return make_billing(open_db(tmp_path / "jego.sqlite3", "alice", "bob"))


def consistent(b: Any, user: str) -> None:
    bal, _ = run_sync(store.balance(b.db.raw, user))
    assert bal == run_sync(store.ledger_sum(b.db.raw, user)) and bal >= 0
    hold, _, _ = run_sync(store.held(b.db.raw, user))
    assert hold <= bal


def test_top_up_view_and_corrections(billing: Any) -> None:
    assert billing.top_up("alice", 1250, "card 4711", T0) == 1250
    assert billing.top_up("alice", -250, "refund of a mistake", T0 + 1) == 1000
    with pytest.raises(BillingError, match="cannot deduct 20.00 CNY: alice has 10.00 CNY available"):
        billing.top_up("alice", -2000, "too much", T0 + 2)
    with pytest.raises(BillingError, match="no user 'mallory'"):
        billing.top_up("mallory", 100, "x", T0)
    v = billing.view("alice")
    assert (v["balance"], v["available"], v["currency"], v["balance_text"]) == (1000, 1000, "CNY", "10.00 CNY")
    assert [(e["kind"], e["amount"], e["balance_after"], e["note"]) for e in v["entries"]] == [
        ("adjustment", -250, 1000, "refund of a mistake"), ("topup", 1250, 1250, "card 4711")]
    assert all(type(e["amount"]) is int for e in v["entries"])
    consistent(billing, "alice")


def test_a_call_is_authorised_held_answered_and_settled_once(billing: Any) -> None:
    billing.top_up("alice", 100, "t", T0)
    a = billing.authorise("call-1", "alice", MOBILE, T0)
    assert a.ok and a.grant is not None and (a.grant.allowed_s, a.grant.hold) == (360, 90)
    assert billing.view("alice")["available"] == 10
    row = run_sync(store.get_charge(billing.db.raw, "call-1"))      # the call record exists before any SIP
    assert row is not None and row.open and row.destination == MOBILE and row.description == "China Mobile mobile"
    t = billing.answered("call-1", T0 + 3)
    assert t is not None and (t.cut_at, t.warn_at, t.cut_reason) == (T0 + 363, T0 + 303, EndReason.CREDIT_EXHAUSTED)
    written: list[str] = []
    s = billing.settle("call-1", T0 + 3, T0 + 64, T0 + 64, also=lambda tx: written.append("record"))
    assert s is not None and (s.billed_s, s.cost, s.balance_after, s.duplicate) == (120, 30, 70, False)
    assert written == ["record"]
    again = billing.settle("call-1", T0 + 3, T0 + 500, T0 + 500, also=lambda tx: written.append("again"))
    assert again is not None and again.duplicate and (again.cost, again.balance_after) == (30, 70)
    assert written == ["record"]
    v = billing.view("alice")
    assert (v["balance"], v["held"]) == (70, 0)
    assert v["entries"][0]["call_id"] == "call-1" and v["entries"][0]["billed_s"] == 120
    assert one_row(billing.db, "SELECT COUNT(*) AS n FROM credit_ledger WHERE call_id = 'call-1'")["n"] == 1
    consistent(billing, "alice")


def test_settlement_and_the_call_record_are_one_transaction(billing: Any) -> None:
    billing.top_up("alice", 100, "t", T0)
    billing.authorise("call-2", "alice", MOBILE, T0)
    billing.answered("call-2", T0)

    def broken(tx: Any) -> Any:
        return tx.execute("INSERT INTO calls(call_id) VALUES ('x')")  # NOT NULL columns: fails

    with pytest.raises(Exception, match="NOT NULL"):
        billing.settle("call-2", T0, T0 + 30, T0 + 30, also=broken)
    row = run_sync(store.get_charge(billing.db.raw, "call-2"))
    assert row is not None and row.open                     # rolled back: not charged, still open
    assert billing.view("alice")["balance"] == 100
    s = billing.settle("call-2", T0, T0 + 30, T0 + 30)
    assert s is not None and s.cost == 15
    assert billing.settle("never-authorised", None, T0) is None


def test_two_simultaneous_calls_cannot_spend_the_same_money(billing: Any) -> None:
    billing.top_up("alice", 100, "t", T0)
    first = billing.authorise("c-a", "alice", MOBILE, T0)
    assert first.grant is not None and first.grant.hold == 90
    second = billing.authorise("c-b", "alice", MOBILE, T0 + 1)
    assert second.refusal is not None and second.refusal.reason is EndReason.INSUFFICIENT_CREDIT
    assert "0.90 CNY of your balance is held by your other call" in second.refusal.en
    landline = billing.authorise("c-c", "alice", LANDLINE, T0 + 2)     # the 0.10 left buys 60 s of landline
    assert landline.grant is not None and landline.grant.hold == 10 and landline.grant.allowed_s == 60
    for cid in ("c-a", "c-c"):
        billing.answered(cid, T0 + 5)
    # both talk to the very end (cut a little late): together they cost exactly what was there
    sa = billing.settle("c-a", T0 + 5, T0 + 5 + 360.4)
    sc = billing.settle("c-c", T0 + 5, T0 + 5 + 60.7)
    assert sa is not None and sc is not None and sa.cost + sc.cost == 100
    assert billing.view("alice")["balance"] == 0
    consistent(billing, "alice")


def test_caps_and_limits(tmp_path: Path) -> None:
    b = make_billing(open_db(tmp_path / "j.sqlite3", "alice"), FraudConfig(max_concurrent_calls=2, max_calls_per_hour=3))
    b.top_up("alice", 100_000, "t", T0)
    assert b.authorise("k1", "alice", MOBILE, T0).ok and b.authorise("k2", "alice", LANDLINE, T0 + 1).ok
    third = b.authorise("k3", "alice", "+8613912345678", T0 + 2)
    assert third.refusal is not None and third.refusal.reason is EndReason.LIMIT_REACHED
    assert "2 phone calls in progress" in third.refusal.en
    b.settle("k1", None, T0 + 3)
    assert b.authorise("k4", "alice", MOBILE, T0 + 4).ok
    b.settle("k2", None, T0 + 5)
    hour = b.authorise("k5", "alice", MOBILE, T0 + 6)
    assert hour.refusal is not None and "3 phone calls in the last hour" in hour.refusal.en
    assert b.counters["refused_limit_reached"] == 2


def test_velocity_suspends_until_an_operator_lifts_it(billing: Any) -> None:
    billing.top_up("alice", 100_000, "t", T0)
    now = T0
    for i in range(4):                      # a scan through one block
        cid = f"scan{i}"
        a = billing.authorise(cid, "alice", f"+8613800138{i:03d}", now)
        assert a.ok, a.refusal
        billing.settle(cid, None, now + 1)
        now += 10
    crit = billing.authorise("scan4", "alice", "+8613800138004", now)
    assert crit.refusal is not None and crit.refusal.reason is EndReason.SUSPENDED
    assert "5 numbers in a row in the range +8613800138xxx" in crit.refusal.en
    later = billing.authorise("mum", "alice", "+861065529988", now + 3600)   # even later, anywhere
    assert later.refusal is not None and later.refusal.reason is EndReason.SUSPENDED
    assert later.refusal.en == crit.refusal.en and "暂停" in later.refusal.zh
    v = billing.view("alice")
    assert v["suspended"] is not None and v["suspended"]["rule"] == "sequential"
    events = run_sync(store.fraud_events(billing.db.raw, "alice"))
    assert [e["level"] for e in events][:3] == ["critical", "warning", "warning"]
    assert billing.unsuspend("alice", "checked with the customer", now + 3700)
    assert not billing.unsuspend("alice")
    assert billing.authorise("mum2", "alice", "+8613800138005", now + 3701).ok    # velocity starts afresh
    assert billing.counters["suspensions"] == 1 and billing.counters["sequential_warning"] == 2


def test_recovery_bills_the_time_a_call_was_last_seen_up(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    b = make_billing(open_db(path, "alice"))
    b.top_up("alice", 1000, "t", T0)
    b.authorise("up", "alice", MOBILE, T0)
    b.answered("up", T0 + 2)
    b.authorise("ringing", "alice", LANDLINE, T0 + 1)
    for k in range(1, 41):                      # heartbeats every 2 s for 80 s
        b.heartbeat(["up", "ringing", "unknown"], T0 + 2 + 2 * k)
    b.db.close()                                 # the process dies here: nothing settled
    b2 = make_billing(open_db(path))
    rec = {s.call_id: s for s in b2.recover(T0 + 1000)}
    assert set(rec) == {"up", "ringing"}
    assert (rec["up"].billed_s, rec["up"].cost, rec["up"].by) == (120, 30, "recovery")     # 80 s up -> 2 min
    assert (rec["ringing"].billed_s, rec["ringing"].cost) == (0, 0)
    assert b2.recover(T0 + 2000) == []
    dup = b2.settle("up", T0 + 2, T0 + 900)      # the hub's late settle changes nothing
    assert dup is not None and dup.duplicate and dup.cost == 30
    assert b2.view("alice")["balance"] == 970
    consistent(b2, "alice")
    live = make_billing(open_db(path))
    live.authorise("still-up", "alice", MOBILE, T0 + 3000)
    assert live.recover(T0 + 3001, live=["still-up"]) == []


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from jego_call.billing.fraud import FraudConfig
    from jego_call.billing.policy import Terms
    from jego_call.billing.service import Billing, load_rate_table
    from jego_call.db import Database, run_sync
    b = Billing(Database.open({path!r}), load_rate_table(), FraudConfig(), Terms())
    a = run_sync(b.authorise("killed", "alice", {number!r}, time.time()))
    assert a.ok, a.refusal
    run_sync(b.answered("killed", time.time()))
    print("answered", flush=True)
    while True:
        time.sleep(0.2)   # pacing: the gateway's heartbeat
        run_sync(b.heartbeat(["killed"], time.time()))
""")


def test_kill_9_mid_call_settles_once_on_recovery(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    b = make_billing(open_db(path, "alice"))
    b.top_up("alice", 1000, "t", time.time())
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path), number=LANDLINE)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "answered"
        time.sleep(3.5)   # the call runs 3.5 s of real time, heartbeating, before kill -9
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    charge = run_sync(store.get_charge(b.db.raw, "killed"))
    assert charge is not None and charge.open and charge.answered_at is not None and charge.last_seen is not None
    up = charge.last_seen - charge.answered_at
    assert 2.5 < up < 4.0                       # it was up ~3.5 s; the last heartbeat is at most 0.2 s old
    (s,) = make_billing(open_db(path)).recover(time.time())
    assert (s.call_id, s.billed_s, s.cost) == ("killed", 30, 5)   # 30/6 landline: 30 s at 0.10/min
    assert make_billing(open_db(path)).recover(time.time()) == []
    assert one_row(b.db, "SELECT COUNT(*) AS n FROM credit_ledger WHERE call_id = 'killed'")["n"] == 1
    consistent(b, "alice")


PARALLEL = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from jego_call.billing.fraud import FraudConfig
    from jego_call.billing.policy import Terms
    from jego_call.billing.service import Billing, load_rate_table
    from jego_call.db import Database, run_sync
    b = Billing(Database.open({path!r}), load_rate_table(), FraudConfig(max_concurrent_calls=100,
                max_calls_per_hour=1000, distinct_destinations_critical=1000, distinct_destinations_warning=1000,
                sequential_warning=1000, sequential_critical=1000), Terms(max_call_s=60))
    granted = 0
    for i in range(25):
        a = run_sync(b.authorise(f"p{{sys.argv[1]}}-{{i}}", "alice", "+86138001380" + f"{{i:02d}}", time.time()))
        granted += a.ok
    print(granted)
""")


def test_concurrent_processes_never_hold_more_than_the_balance(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    b = make_billing(open_db(path, "alice"))
    b.top_up("alice", 1000, "t", time.time())       # 10.00 CNY: 66 one-minute holds of 0.15 at most
    procs = [subprocess.Popen([sys.executable, "-c", PARALLEL.format(root=str(ROOT), path=str(path)), str(n)],
                              stdout=subprocess.PIPE, text=True) for n in range(4)]
    granted = sum(int(p.communicate(timeout=120)[0].strip()) for p in procs)
    hold, n_open, _ = run_sync(store.held(b.db.raw, "alice"))
    assert n_open == granted == 66 and hold == 990      # 100 tries from 4 processes at once
    assert b.view("alice")["available"] >= 0
    consistent(b, "alice")


def test_currency_of_balances_is_kept(tmp_path: Path) -> None:
    db = open_db(tmp_path / "j.sqlite3", "alice")
    make_billing(db).top_up("alice", 100, "t", T0)
    eur = build_rate_table({"currency": "EUR", "rate": [{"prefix": "+86", "per_minute": "0.02"}]})
    with pytest.raises(ConfigError) as err:
        run_sync(Billing.open(db, eur, FraudConfig()))
    assert err.value.key == "rates.currency" and "balances are kept in CNY" in err.value.message


class LedgerMachine(RuleBasedStateMachine):
    """Random top-ups, calls, answers, ends, crashes and recoveries on a real SQLite file; the
    books always balance, never go negative and never hold more than there is."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.now = T0
        self.open: dict[str, bool] = {}
        self.settled: set[str] = set()

    @initialize()
    def start(self) -> None:
        import tempfile
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-"))
        self.path = self.dir / "j.sqlite3"
        self.b = make_billing(open_db(self.path, "alice"), FraudConfig(
            max_concurrent_calls=3, max_calls_per_hour=10_000, distinct_destinations_warning=10_000,
            distinct_destinations_critical=10_000, sequential_warning=10_000, sequential_critical=10_000,
            max_minutes_per_day=100_000))

    @rule(amount=st.integers(1, 2000), dt=st.floats(0, 30))
    def top_up(self, amount: int, dt: float) -> None:
        self.now += dt
        self.b.top_up("alice", amount, "t", self.now)

    @rule(number=st.sampled_from([MOBILE, LANDLINE, "+8613012345678"]), dt=st.floats(0, 30))
    def authorise(self, number: str, dt: float) -> None:
        self.now += dt
        self.n += 1
        cid = f"m{self.n}"
        if self.b.authorise(cid, "alice", number, self.now).ok:
            self.open[cid] = False

    @precondition(lambda self: any(not a for a in self.open.values()))
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(c for c, a in self.open.items() if not a)))
        self.open[cid] = True
        self.b.answered(cid, self.now)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data(), talk=st.floats(0, 4000))
    def end(self, data: st.DataObject, talk: float) -> None:
        cid = data.draw(st.sampled_from(sorted(self.open)))
        charge = run_sync(store.get_charge(self.b.db.raw, cid))
        assert charge is not None
        ended = self.now + min(talk, charge.allowed_s + 0.9)    # the cut ends it by allowed_s + <1 s
        self.now = ended
        s = self.b.settle(cid, charge.answered_at, ended, ended)
        assert s is not None and not s.duplicate and 0 <= s.cost <= charge.hold
        del self.open[cid]
        self.settled.add(cid)

    @rule(dt=st.floats(0, 10))
    def heartbeat(self, dt: float) -> None:
        self.now += dt
        self.b.heartbeat(list(self.open), self.now)

    @rule()
    def crash_and_recover(self) -> None:
        self.b.db.close()
        self.b = make_billing(open_db(self.path), self.b.fraud)
        for s in self.b.recover(self.now):
            self.settled.add(s.call_id)
        self.open.clear()

    @precondition(lambda self: bool(self.settled))
    @rule(data=st.data())
    def settle_again(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.settled)))
        s = self.b.settle(cid, None, self.now)
        assert s is not None and s.duplicate

    @invariant()
    def books_balance(self) -> None:
        if hasattr(self, "b"):
            consistent(self.b, "alice")
            dup = self.b.db.query_one("SELECT COUNT(*) AS n FROM (SELECT call_id FROM credit_ledger"
                                      " WHERE call_id IS NOT NULL GROUP BY call_id HAVING COUNT(*) > 1)")
            assert dup is not None and dup["n"] == 0

    def teardown(self) -> None:
        if hasattr(self, "b"):
            self.b.db.close()


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=30, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
