"""Call records: one row per call in the database (SQLite or PostgreSQL), written when the call ends.

The hub awaits `CallLog.record(...)` after its end-of-call path (its writer task, in order; for
a paid phone call inside the ledger's settlement transaction, `record(rec, tx)`); a gateway's
`call_report` (codec, packet counters) updates the row with `report(...)`, even after the end,
and `set_quality(...)` stores the call's E-model score (MOS, R-factor; jego_call/quality.py).
`history(user)` serves GET /api/calls; `all()` serves `jego cdr`. Both join the call's charge
(`call_charges`, billing): `cost` (minor units), `cost_text`, `billed_s` and `currency`, null
for calls that were free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .billing.money import currency, format_amount
from .db import Database, Executor
from .quality import word_for

# the call's charge, when it was a paid phone call that has been settled
_SELECT = ("SELECT c.*, ch.cost AS charge_cost, ch.billed_s AS charge_billed_s, ch.currency AS charge_currency"
           " FROM calls c LEFT JOIN call_charges ch ON ch.call_id = c.call_id AND ch.state = 'settled'")


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    caller: str
    callee: str
    caller_kind: str       # "user" or "phone"
    callee_kind: str
    media: str             # "audio" or "audio+video"
    started_at: float
    answered_at: float | None
    ended_at: float
    outcome: str           # answered calls that ended normally: "hangup"; else the end reason
    sip_code: int | None = None
    q850_cause: int | None = None
    codec: str | None = None


class CallLog:
    """Stores and reads call records."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, rec: CallRecord, tx: Executor | None = None) -> None:
        """Store (or replace) the record of `rec.call_id`, in `tx` when given."""
        await (tx or self.db).execute(
            "INSERT INTO calls(call_id, caller, callee, caller_kind, callee_kind, media, started_at,"
            " answered_at, ended_at, outcome, sip_code, q850_cause, codec, app_stats, phone_stats)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT(call_id) DO UPDATE SET"
            " caller = excluded.caller, callee = excluded.callee, caller_kind = excluded.caller_kind,"
            " callee_kind = excluded.callee_kind, media = excluded.media, started_at = excluded.started_at,"
            " answered_at = excluded.answered_at, ended_at = excluded.ended_at, outcome = excluded.outcome,"
            " sip_code = excluded.sip_code, q850_cause = excluded.q850_cause, codec = excluded.codec,"
            " app_stats = NULL, phone_stats = NULL",
            (rec.call_id, rec.caller, rec.callee, rec.caller_kind, rec.callee_kind, rec.media, rec.started_at,
             rec.answered_at, rec.ended_at, rec.outcome, rec.sip_code, rec.q850_cause, rec.codec),
        )

    async def report(self, call_id: str, codec: str | None, app: dict[str, int], phone: dict[str, int]) -> bool:
        """Attach a gateway's report; False if the call has no record (yet)."""
        changed = await self.db.execute(
            "UPDATE calls SET codec = COALESCE(?, codec), app_stats = ?, phone_stats = ? WHERE call_id = ?",
            (codec, json.dumps(app), json.dumps(phone), call_id),
        )
        return changed == 1

    async def set_quality(self, call_id: str, mos: float, r_factor: float) -> bool:
        """Store the call's quality score (MOS 1..4.5, R 0..100); False if it has no record."""
        changed = await self.db.execute("UPDATE calls SET mos = ?, r_factor = ? WHERE call_id = ?",
                                        (round(mos, 2), round(r_factor, 1), call_id))
        return changed == 1

    @staticmethod
    def _row(row: Any, user: str | None) -> dict[str, Any]:
        out = {
            "call_id": row["call_id"], "caller": row["caller"], "callee": row["callee"],
            "media": row["media"].split("+"), "started_at": row["started_at"], "answered_at": row["answered_at"],
            "ended_at": row["ended_at"], "outcome": row["outcome"], "sip_code": row["sip_code"],
            "q850_cause": row["q850_cause"], "codec": row["codec"],
            "duration_s": round(row["ended_at"] - row["answered_at"], 3) if row["answered_at"] else 0.0,
            "app": json.loads(row["app_stats"]) if row["app_stats"] else None,
            "phone": json.loads(row["phone_stats"]) if row["phone_stats"] else None,
            "cost": None, "cost_text": None, "billed_s": None, "currency": None,
            "mos": row["mos"], "r_factor": row["r_factor"],
            "quality": word_for(row["r_factor"]) if row["r_factor"] is not None else None,
        }
        if row["charge_cost"] is not None:
            cur = currency(row["charge_currency"])
            out.update(cost=row["charge_cost"], cost_text=format_amount(row["charge_cost"], cur),
                       billed_s=row["charge_billed_s"], currency=cur.code)
        if user is not None:
            outgoing = row["caller"] == user
            out["direction"] = "outgoing" if outgoing else "incoming"
            out["peer"] = row["callee"] if outgoing else row["caller"]
            out["peer_kind"] = row["callee_kind"] if outgoing else row["caller_kind"]
        return out

    async def history(self, user: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.db.query(
            f"{_SELECT} WHERE c.caller = ? AND c.caller_kind = 'user'"
            f" UNION ALL {_SELECT} WHERE c.callee = ? AND c.callee_kind = 'user' AND c.caller != c.callee"
            " ORDER BY started_at DESC LIMIT ?",
            (user, user, limit),
        )
        return [self._row(r, user) for r in rows]

    async def all(self, limit: int = 100, phone_only: bool = False) -> list[dict[str, Any]]:
        where = "WHERE c.caller_kind = 'phone' OR c.callee_kind = 'phone'" if phone_only else ""
        rows = await self.db.query(f"{_SELECT} {where} ORDER BY c.started_at DESC LIMIT ?", (limit,))
        return [self._row(r, None) for r in rows]
