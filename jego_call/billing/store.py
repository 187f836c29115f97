"""SQL of the credit ledger (tables in jego_call/db.py migration 5). Every function runs inside
a transaction its caller owns (`Database.transaction()`); `service.Billing` owns them.

Money columns are INTEGER minor units; `credit_accounts.balance` always equals the sum of the
user's `credit_ledger.amount` (both change in one transaction) and never goes below zero.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..call.reasons import EndReason
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


def _charge(row: sqlite3.Row) -> Charge:
    cur = currency(row["currency"])
    rate = Rate(prefix=row["rate_prefix"], per_minute=row["per_minute"],
                increment=Increment(row["first_s"], row["next_s"]), currency=cur,
                connection_fee=row["connection_fee"])
    return Charge(row["call_id"], row["username"], row["destination"], row["description"], rate, row["hold"],
                  row["allowed_s"], EndReason.parse(row["cut_reason"]), row["authorised_at"], row["answered_at"],
                  row["last_seen"], row["state"], row["ended_at"], row["billed_s"], row["cost"],
                  row["balance_after"], row["settled_by"])


def get_charge(conn: sqlite3.Connection, call_id: str) -> Charge | None:
    row = conn.execute("SELECT * FROM call_charges WHERE call_id = ?", (call_id,)).fetchone()
    return _charge(row) if row is not None else None


def open_charges(conn: sqlite3.Connection, username: str | None = None) -> list[Charge]:
    if username is None:
        rows = conn.execute("SELECT * FROM call_charges WHERE state = 'open' ORDER BY authorised_at").fetchall()
    else:
        rows = conn.execute("SELECT * FROM call_charges WHERE state = 'open' AND username = ? ORDER BY authorised_at",
                            (username,)).fetchall()
    return [_charge(r) for r in rows]


def insert_charge(conn: sqlite3.Connection, call_id: str, username: str, destination: str, description: str,
                  rate: Rate, hold: int, allowed_s: int, cut_reason: EndReason, now: float) -> None:
    conn.execute(
        "INSERT INTO call_charges(call_id, username, destination, description, rate_prefix, per_minute, first_s,"
        " next_s, connection_fee, currency, hold, allowed_s, cut_reason, authorised_at, state)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')",
        (call_id, username, destination, description, rate.prefix, rate.per_minute, rate.increment.first_s,
         rate.increment.next_s, rate.connection_fee, rate.currency.code, hold, allowed_s, cut_reason.value, now))


def mark_answered(conn: sqlite3.Connection, call_id: str, at: float) -> bool:
    cur = conn.execute("UPDATE call_charges SET answered_at = ?, last_seen = ?"
                       " WHERE call_id = ? AND state = 'open' AND answered_at IS NULL", (at, at, call_id))
    return cur.rowcount == 1


def touch(conn: sqlite3.Connection, call_ids: list[str], now: float) -> int:
    n = 0
    for i in range(0, len(call_ids), 500):
        chunk = call_ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        cur = conn.execute(f"UPDATE call_charges SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE state = 'open'"
                           f" AND answered_at IS NOT NULL AND call_id IN ({marks})", (now, *chunk))
        n += cur.rowcount
    return n


def close_charge(conn: sqlite3.Connection, call_id: str, answered_at: float | None, ended_at: float, billed_s: int,
                 cost: int, balance_after: int, now: float, by: str) -> bool:
    cur = conn.execute(
        "UPDATE call_charges SET state = 'settled', answered_at = ?, ended_at = ?, billed_s = ?, cost = ?,"
        " balance_after = ?, settled_at = ?, settled_by = ? WHERE call_id = ? AND state = 'open'",
        (answered_at, ended_at, billed_s, cost, balance_after, now, by, call_id))
    return cur.rowcount == 1


# -- balances and the ledger ----------------------------------------------------------------


def balance(conn: sqlite3.Connection, username: str) -> tuple[int, str | None]:
    """(balance, currency) of `username`; (0, None) without an account row yet."""
    row = conn.execute("SELECT balance, currency FROM credit_accounts WHERE username = ?", (username,)).fetchone()
    return (int(row["balance"]), str(row["currency"])) if row else (0, None)


def held(conn: sqlite3.Connection, username: str) -> tuple[int, int, int]:
    """(money held, open calls, allowed seconds) of the user's open calls."""
    row = conn.execute("SELECT COALESCE(SUM(hold), 0), COUNT(*), COALESCE(SUM(allowed_s), 0) FROM call_charges"
                       " WHERE username = ? AND state = 'open'", (username,)).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def activity(conn: sqlite3.Connection, username: str, now: float,
             open_calls: tuple[int, int, int] | None = None) -> Activity:
    """The user's Activity at `now`; pass `held(...)` if you have it (one query fewer)."""
    _, n_open, reserved_s = open_calls if open_calls is not None else held(conn, username)
    recent = conn.execute("SELECT authorised_at, destination FROM call_charges WHERE username = ?"
                          " AND authorised_at > ? ORDER BY authorised_at, rowid", (username, now - 3600.0)).fetchall()
    used = conn.execute("SELECT COALESCE(SUM(billed_s), 0) FROM call_charges WHERE username = ? AND state = 'settled'"
                        " AND ended_at > ?", (username, now - 86400.0)).fetchone()[0]
    lifted = conn.execute("SELECT MAX(at) FROM fraud_events WHERE username = ? AND level = 'lifted'",
                          (username,)).fetchone()[0]
    return Activity(open_calls=n_open, recent=tuple((float(r[0]), str(r[1])) for r in recent),
                    used_s_24h=int(used), reserved_s=reserved_s,
                    velocity_from=float(lifted) if lifted is not None else float("-inf"))


def post(conn: sqlite3.Connection, username: str, kind: str, amount: int, cur: Currency, now: float, note: str,
         call_id: str | None = None) -> int:
    """Add `amount` (negative: a debit) to the user's balance and write its ledger entry;
    returns the balance after. The CHECK constraints refuse a negative balance."""
    bal, code = balance(conn, username)
    if code is not None and code != cur.code:
        raise ValueError(f"{username}'s balance is kept in {code}, not {cur.code}")
    after = bal + amount
    if code is None:
        conn.execute("INSERT INTO credit_accounts(username, balance, currency, updated_at) VALUES (?, ?, ?, ?)",
                     (username, after, cur.code, now))
    else:
        conn.execute("UPDATE credit_accounts SET balance = ?, updated_at = ? WHERE username = ?", (after, now, username))
    conn.execute("INSERT INTO credit_ledger(username, at, kind, amount, balance_after, currency, call_id, note)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (username, now, kind, amount, after, cur.code, call_id, note))
    return after


def ledger(conn: sqlite3.Connection, username: str, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT l.id, l.at, l.kind, l.amount, l.balance_after, l.currency, l.call_id, l.note,"
        " c.destination, c.description, c.billed_s, c.answered_at, c.ended_at"
        " FROM credit_ledger l LEFT JOIN call_charges c ON c.call_id = l.call_id"
        " WHERE l.username = ? ORDER BY l.id DESC LIMIT ?", (username, limit)).fetchall()
    out = []
    for r in rows:
        e: dict[str, Any] = {"id": r["id"], "at": r["at"], "kind": r["kind"], "amount": r["amount"],
                             "balance_after": r["balance_after"], "currency": r["currency"], "note": r["note"]}
        if r["call_id"] is not None:
            e.update(call_id=r["call_id"], destination=r["destination"], description=r["description"],
                     billed_s=r["billed_s"])
        out.append(e)
    return out


def ledger_sum(conn: sqlite3.Connection, username: str) -> int:
    return int(conn.execute("SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE username = ?",
                            (username,)).fetchone()[0])


def currencies(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT DISTINCT currency FROM credit_accounts")}


def user_exists(conn: sqlite3.Connection, username: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone() is not None


# -- suspensions and fraud events -------------------------------------------------------------


def suspension(conn: sqlite3.Connection, username: str) -> tuple[Refusal, float] | None:
    row = conn.execute("SELECT * FROM phone_suspensions WHERE username = ?", (username,)).fetchone()
    if row is None:
        return None
    return Refusal(EndReason.SUSPENDED, row["en"], row["zh"], row["rule"]), float(row["at"])


def suspend(conn: sqlite3.Connection, username: str, refusal: Refusal, now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO phone_suspensions(username, at, rule, en, zh) VALUES (?, ?, ?, ?, ?)",
                 (username, now, refusal.rule, refusal.en, refusal.zh))


def unsuspend(conn: sqlite3.Connection, username: str) -> bool:
    return conn.execute("DELETE FROM phone_suspensions WHERE username = ?", (username,)).rowcount == 1


def fraud_event(conn: sqlite3.Connection, username: str, now: float, level: str, rule: str, detail: str,
                call_id: str | None = None) -> None:
    conn.execute("INSERT INTO fraud_events(username, at, level, rule, detail, call_id) VALUES (?, ?, ?, ?, ?, ?)",
                 (username, now, level, rule, detail, call_id))


def fraud_events(conn: sqlite3.Connection, username: str, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT at, level, rule, detail, call_id FROM fraud_events WHERE username = ?"
                        " ORDER BY id DESC LIMIT ?", (username, limit)).fetchall()
    return [dict(r) for r in rows]


def ids_of(rows: Iterable[Charge]) -> list[str]:
    return [c.call_id for c in rows]
