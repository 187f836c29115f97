"""SQL of the credit ledger (tables in jego_call/db.py migration 5). Every function is a
coroutine that runs inside a transaction its caller owns (`async with db.transaction() as tx`,
SQLite or PostgreSQL); `service.Billing` owns them and locks the user's money first
(`lock_user`).

Money columns are INTEGER minor units; `credit_accounts.balance` always equals the sum of the
user's `credit_ledger.amount` (both change in one transaction) and never goes below zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..call.reasons import EndReason
from ..db import Executor, Row, Transaction
from .fraud import Activity
from .money import Currency, currency
from .rates import Increment, Rate
from .refusal import Refusal


@dataclass(frozen=True, slots=True)
class Charge:
    """One row of call_charges: a phone call's billing record."""

    call_id: str
    username: str
    destination: str
    description: str
    rate: Rate
    hold: int
    allowed_s: int
    cut_reason: EndReason
    authorised_at: float
    answered_at: float | None
    last_seen: float | None
    state: str
    ended_at: float | None
    billed_s: int | None
    cost: int | None
    balance_after: int | None
    settled_by: str | None

    @property
    def open(self) -> bool:
        return self.state == "open"


def _charge(row: Row) -> Charge:
    cur = currency(row["currency"])
    rate = Rate(prefix=row["rate_prefix"], per_minute=row["per_minute"],
                increment=Increment(row["first_s"], row["next_s"]), currency=cur,
                connection_fee=row["connection_fee"])
    return Charge(row["call_id"], row["username"], row["destination"], row["description"], rate, row["hold"],
                  row["allowed_s"], EndReason.parse(row["cut_reason"]), row["authorised_at"], row["answered_at"],
                  row["last_seen"], row["state"], row["ended_at"], row["billed_s"], row["cost"],
                  row["balance_after"], row["settled_by"])


async def get_charge(tx: Executor, call_id: str) -> Charge | None:
    row = await tx.query_one("SELECT * FROM call_charges WHERE call_id = ?", (call_id,))
    return _charge(row) if row is not None else None


async def open_charges(tx: Executor, username: str | None = None) -> list[Charge]:
    if username is None:
        rows = await tx.query("SELECT * FROM call_charges WHERE state = 'open' ORDER BY authorised_at")
    else:
        rows = await tx.query("SELECT * FROM call_charges WHERE state = 'open' AND username = ? ORDER BY authorised_at",
                              (username,))
    return [_charge(r) for r in rows]


async def insert_charge(tx: Executor, call_id: str, username: str, destination: str, description: str,
                        rate: Rate, hold: int, allowed_s: int, cut_reason: EndReason, now: float) -> None:
    await tx.execute(
        "INSERT INTO call_charges(call_id, username, destination, description, rate_prefix, per_minute, first_s,"
        " next_s, connection_fee, currency, hold, allowed_s, cut_reason, authorised_at, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')",
        (call_id, username, destination, description, rate.prefix, rate.per_minute, rate.increment.first_s,
         rate.increment.next_s, rate.connection_fee, rate.currency.code, hold, allowed_s, cut_reason.value, now))


async def mark_answered(tx: Executor, call_id: str, at: float) -> bool:
    n = await tx.execute("UPDATE call_charges SET answered_at = ?, last_seen = ?"
                         " WHERE call_id = ? AND state = 'open' AND answered_at IS NULL", (at, at, call_id))
    return n == 1


async def touch(tx: Executor, call_ids: list[str], now: float) -> int:
    n = 0
    for i in range(0, len(call_ids), 500):
        chunk = call_ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        n += await tx.execute(
            "UPDATE call_charges SET last_seen = CASE WHEN last_seen IS NOT NULL AND last_seen > ? THEN last_seen"
            f" ELSE ? END WHERE state = 'open' AND answered_at IS NOT NULL AND call_id IN ({marks})",
            (now, now, *chunk))
    return n


async def close_charge(tx: Executor, call_id: str, answered_at: float | None, ended_at: float, billed_s: int,
                       cost: int, balance_after: int, now: float, by: str) -> bool:
    n = await tx.execute(
        "UPDATE call_charges SET state = 'settled', answered_at = ?, ended_at = ?, billed_s = ?, cost = ?,"
        " balance_after = ?, settled_at = ?, settled_by = ? WHERE call_id = ? AND state = 'open'",
        (answered_at, ended_at, billed_s, cost, balance_after, now, by, call_id))
    return n == 1


# -- balances and the ledger ----------------------------------------------------------------


async def lock_user(tx: Transaction, username: str) -> None:
    """Hold `username`'s money until the transaction ends: authorisations, settlements and
    top-ups of one user never interleave (SQLite: BEGIN IMMEDIATE already; PostgreSQL: an
    advisory lock, as the balance row may not exist yet)."""
    await tx.lock(f"credit:{username}")


async def balance(tx: Executor, username: str) -> tuple[int, str | None]:
    """(balance, currency) of `username`; (0, None) without an account row yet."""
    row = await tx.query_one("SELECT balance, currency FROM credit_accounts WHERE username = ?", (username,))
    return (int(row["balance"]), str(row["currency"])) if row else (0, None)


async def held(tx: Executor, username: str) -> tuple[int, int, int]:
    """(money held, open calls, allowed seconds) of the user's open calls."""
    row = await tx.query_one("SELECT COALESCE(SUM(hold), 0), COUNT(*), COALESCE(SUM(allowed_s), 0) FROM call_charges"
                             " WHERE username = ? AND state = 'open'", (username,))
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def activity(tx: Executor, username: str, now: float,
                   open_calls: tuple[int, int, int] | None = None) -> Activity:
    """The user's Activity at `now`; pass `held(...)` if you have it (one query fewer)."""
    _, n_open, reserved_s = open_calls if open_calls is not None else await held(tx, username)
    # in the order they were authorised (SQLite: rowid; PostgreSQL has none: call_id breaks ties)
    order = "rowid" if tx.engine == "sqlite" else "call_id"
    recent = await tx.query("SELECT authorised_at, destination FROM call_charges WHERE username = ?"
                            f" AND authorised_at > ? ORDER BY authorised_at, {order}", (username, now - 3600.0))
    used = await tx.query_one("SELECT COALESCE(SUM(billed_s), 0) FROM call_charges WHERE username = ?"
                              " AND state = 'settled' AND ended_at > ?", (username, now - 86400.0))
    lifted = await tx.query_one("SELECT MAX(at) FROM fraud_events WHERE username = ? AND level = 'lifted'",
                                (username,))
    assert used is not None and lifted is not None
    return Activity(open_calls=n_open, recent=tuple((float(r[0]), str(r[1])) for r in recent),
                    used_s_24h=int(used[0]), reserved_s=reserved_s,
                    velocity_from=float(lifted[0]) if lifted[0] is not None else float("-inf"))


async def post(tx: Executor, username: str, kind: str, amount: int, cur: Currency, now: float, note: str,
               call_id: str | None = None) -> int:
    """Add `amount` (negative: a debit) to the user's balance and write its ledger entry;
    returns the balance after. The CHECK constraints refuse a negative balance."""
    bal, code = await balance(tx, username)
    if code is not None and code != cur.code:
        raise ValueError(f"{username}'s balance is kept in {code}, not {cur.code}")
    after = bal + amount
    if code is None:
        await tx.execute("INSERT INTO credit_accounts(username, balance, currency, updated_at) VALUES (?, ?, ?, ?)",
                         (username, after, cur.code, now))
    else:
        await tx.execute("UPDATE credit_accounts SET balance = ?, updated_at = ? WHERE username = ?",
                         (after, now, username))
    await tx.execute("INSERT INTO credit_ledger(username, at, kind, amount, balance_after, currency, call_id, note)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (username, now, kind, amount, after, cur.code, call_id, note))
    return after


async def ledger(tx: Executor, username: str, limit: int) -> list[dict[str, Any]]:
    rows = await tx.query(
        "SELECT l.id, l.at, l.kind, l.amount, l.balance_after, l.currency, l.call_id, l.note,"
        " c.destination, c.description, c.billed_s, c.answered_at, c.ended_at"
        " FROM credit_ledger l LEFT JOIN call_charges c ON c.call_id = l.call_id"
        " WHERE l.username = ? ORDER BY l.id DESC LIMIT ?", (username, limit))
    out = []
    for r in rows:
        e: dict[str, Any] = {"id": r["id"], "at": r["at"], "kind": r["kind"], "amount": r["amount"],
                             "balance_after": r["balance_after"], "currency": r["currency"], "note": r["note"]}
        if r["call_id"] is not None:
            e.update(call_id=r["call_id"], destination=r["destination"], description=r["description"],
                     billed_s=r["billed_s"])
        out.append(e)
    return out


async def ledger_sum(tx: Executor, username: str) -> int:
    row = await tx.query_one("SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE username = ?", (username,))
    assert row is not None
    return int(row[0])


async def currencies(tx: Executor) -> set[str]:
    return {str(r[0]) for r in await tx.query("SELECT DISTINCT currency FROM credit_accounts")}


async def user_exists(tx: Executor, username: str) -> bool:
    return await tx.query_one("SELECT 1 FROM users WHERE username = ?", (username,)) is not None


# -- suspensions and fraud events -------------------------------------------------------------


async def suspension(tx: Executor, username: str) -> tuple[Refusal, float] | None:
    row = await tx.query_one("SELECT * FROM phone_suspensions WHERE username = ?", (username,))
    if row is None:
        return None
    return Refusal(EndReason.SUSPENDED, row["en"], row["zh"], row["rule"]), float(row["at"])


async def suspend(tx: Executor, username: str, refusal: Refusal, now: float) -> None:
    await tx.execute("INSERT INTO phone_suspensions(username, at, rule, en, zh) VALUES (?, ?, ?, ?, ?)"
                     " ON CONFLICT(username) DO UPDATE SET at = excluded.at, rule = excluded.rule, en = excluded.en,"
                     " zh = excluded.zh", (username, now, refusal.rule, refusal.en, refusal.zh))


async def unsuspend(tx: Executor, username: str) -> bool:
    return await tx.execute("DELETE FROM phone_suspensions WHERE username = ?", (username,)) == 1


async def fraud_event(tx: Executor, username: str, now: float, level: str, rule: str, detail: str,
                      call_id: str | None = None) -> None:
    await tx.execute("INSERT INTO fraud_events(username, at, level, rule, detail, call_id) VALUES (?, ?, ?, ?, ?, ?)",
                     (username, now, level, rule, detail, call_id))


async def fraud_events(tx: Executor, username: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = await tx.query("SELECT at, level, rule, detail, call_id FROM fraud_events WHERE username = ?"
                          " ORDER BY id DESC LIMIT ?", (username, limit))
    return [dict(r) for r in rows]


def ids_of(rows: Iterable[Charge]) -> list[str]:
    return [c.call_id for c in rows]
