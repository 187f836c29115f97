"""`jego credit add USER AMOUNT --note TEXT` and `jego credit show USER`: prepaid credit from the
terminal, on the same database as `jego serve` with the same config (safe while it runs: each
change is one transaction, on SQLite or PostgreSQL).

AMOUNT is written as a person writes it, in the currency of config/rates.toml: `5`, `12.50`,
`12,50`, `¥12.50`, `12.50 CNY` (jego_call/billing/money.py). A negative AMOUNT (`-2.50`, or
`--note TEXT -- -2.50`: after `--` every word is positional) is a correction and may not take more than the available balance.
Exit codes: 0 done, 1 refused (unknown user, deduction too large), 2 usage (bad amount, no note).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..billing.money import MoneyError, format_amount, parse_amount
from ..billing.policy import Terms
from ..billing.service import Billing, BillingError, load_rate_table
from ..config import load_config
from ..db import open_database


def add_parser(sub: Any) -> None:
    p = sub.add_parser("credit", help="prepaid credit for phone calls")
    csub = p.add_subparsers(dest="credit_command", metavar="ACTION")
    csub.required = True
    a = csub.add_parser("add", help="add credit to an account (a negative amount corrects)")
    a.add_argument("user")
    a.add_argument("amount", help="e.g. 5, 12.50 or 12,50 (in the currency of config/rates.toml)")
    a.add_argument("--note", required=True, help="why (kept in the ledger), e.g. 'Alipay order 4711'")
    a.add_argument("--config", metavar="PATH")
    a.add_argument("--data-dir", help="override data.dir")
    a.set_defaults(func=add)
    s = csub.add_parser("show", help="balance and recent ledger entries of an account")
    s.add_argument("user")
    s.add_argument("--limit", type=int, default=None, help="how many entries (default billing.history)")
    s.add_argument("--json", action="store_true", help="print the same object as GET /api/credit")
    s.add_argument("--config", metavar="PATH")
    s.add_argument("--data-dir", help="override data.dir")
    s.set_defaults(func=show)


async def open_billing(args: argparse.Namespace) -> Billing:
    """The Billing of `jego serve`'s database for these --config / --data-dir options (close
    `billing.db` when done)."""
    overrides = {"data": {"dir": args.data_dir}} if args.data_dir else None
    cfg = load_config(args.config, overrides=overrides)
    rates = load_rate_table(cfg.billing.rates)
    db = await open_database(cfg)
    try:
        return await Billing.open(db, rates, cfg.fraud, Terms(cfg.billing.warning_s, cfg.billing.max_call_s),
                                  history=cfg.billing.history)
    except BaseException:
        await db.close()
        raise


def add(args: argparse.Namespace) -> int:
    if not args.note.strip():
        print("jego credit add: --note must say why, e.g. --note 'paid by card, order 4711'", file=sys.stderr)
        return 2
    return asyncio.run(_add(args))


async def _add(args: argparse.Namespace) -> int:
    billing = await open_billing(args)
    try:
        return await _add_to(args, billing)
    finally:
        await billing.db.close()


async def _add_to(args: argparse.Namespace, billing: Billing) -> int:
    try:
        amount = parse_amount(args.amount, billing.currency, signed=True)
    except MoneyError as exc:
        print(f"jego credit add: {exc.message}", file=sys.stderr)
        return 2
    user = args.user.strip().lower()
    try:
        after = await billing.top_up(user, amount, args.note.strip())
    except BillingError as exc:
        print(f"jego credit add: {exc}", file=sys.stderr)
        return 1
    verb = "added" if amount > 0 else "deducted"
    print(f"{verb} {format_amount(abs(amount), billing.currency)} {'to' if amount > 0 else 'from'} {user}: "
          f"balance {format_amount(after, billing.currency)}")
    return 0


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def show(args: argparse.Namespace) -> int:
    async def read() -> tuple[Billing, dict[str, Any] | None]:
        billing = await open_billing(args)
        try:
            if await billing.db.query_one("SELECT 1 FROM users WHERE username = ?", (user,)) is None:
                return billing, None
            return billing, await billing.view(user, args.limit)
        finally:
            await billing.db.close()

    user = args.user.strip().lower()
    billing, view = asyncio.run(read())
    if view is None:
        print(f"jego credit show: no user {user!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view, ensure_ascii=False, sort_keys=True))
        return 0
    cur = billing.currency
    print(f"{user}: balance {view['balance_text']}, held by calls in progress {format_amount(view['held'], cur)}, "
          f"available {view['available_text']}")
    susp = view["suspended"]
    if susp:
        print(f"phone calls SUSPENDED since {_ts(susp['since'])}: {susp['en']} (lift with: jego user unsuspend {user})")
    else:
        print("phone calls: allowed")
    if not view["entries"]:
        print("no ledger entries yet")
    for e in view["entries"]:
        amount = ("+" if e["amount"] > 0 else "") + format_amount(e["amount"], cur)
        what = e["note"]
        if e.get("call_id"):
            what = f"call {e['destination']} ({e['description']}), {e['billed_s']} s [{e['call_id']}]"
        print(f"  {_ts(e['at'])}  {e['kind']:10} {amount:>14}  balance {format_amount(e['balance_after'], cur):>14}"
              f"  {what}")
    return 0
