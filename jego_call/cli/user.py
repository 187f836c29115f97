"""`jego user add NAME [--password PW] [--display-name NAME]`: create accounts from the terminal
(same database as `jego serve` with the same config: SQLite in DATA, or `[db] url`). Without `--password` (or JEGO_PASSWORD)
it asks for the password twice on the terminal, without echo. `jego user unsuspend NAME` lifts
a toll-fraud suspension of that user's phone calls (jego_call/billing/fraud.py)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from typing import Any

from ..accounts import Accounts, load_shared_secret
from ..config import load_config
from ..db import open_database
from ..errors import SignallingError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("user", help="manage accounts")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION")
    usub.required = True
    a = usub.add_parser("add", help="create an account")
    a.add_argument("name")
    a.add_argument("--password", help="the password (or env JEGO_PASSWORD; asked for when neither is given)")
    a.add_argument("--display-name", help="the name people see beside the username (Unicode, 1-32 characters)")
    a.add_argument("--config", metavar="PATH")
    a.add_argument("--data-dir", help="override data.dir")
    a.set_defaults(func=add)
    ls = usub.add_parser("list", help="list accounts")
    ls.add_argument("--config", metavar="PATH")
    ls.add_argument("--data-dir", help="override data.dir")
    ls.set_defaults(func=list_users)
    un = usub.add_parser("unsuspend", help="allow a user's phone calls again after a fraud suspension")
    un.add_argument("name")
    un.add_argument("--note", default="", help="why (kept with the fraud events)")
    un.add_argument("--config", metavar="PATH")
    un.add_argument("--data-dir", help="override data.dir")
    un.set_defaults(func=unsuspend)


async def _open(args: argparse.Namespace) -> Accounts:
    overrides = {"data": {"dir": args.data_dir}} if args.data_dir else None
    cfg = load_config(args.config, overrides=overrides)
    db = await open_database(cfg)
    return Accounts(db, await load_shared_secret(db, cfg.data_dir), cfg.auth)


def ask_password() -> str | None:
    """The new password, asked twice without echo; None (with a message) when they differ or
    there is no terminal to ask on."""
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Password again: ")
    except (EOFError, KeyboardInterrupt):
        print("\njego user add: no password given", file=sys.stderr)
        return None
    if first != second:
        print("jego user add: the passwords do not match", file=sys.stderr)
        return None
    return first


def add(args: argparse.Namespace) -> int:
    password = args.password or os.environ.get("JEGO_PASSWORD")
    if not password:
        password = ask_password()
        if password is None:
            return 2
    return asyncio.run(_add(args, password))


async def _add(args: argparse.Namespace, password: str) -> int:
    accounts = await _open(args)
    try:
        await accounts.register(args.name, password, args.display_name)
    except SignallingError as exc:
        print(f"jego user add: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await accounts.db.close()
    print(f"created user {args.name.strip().lower()}")
    return 0


def list_users(args: argparse.Namespace) -> int:
    async def run() -> int:
        accounts = await _open(args)
        try:
            for row in await accounts.db.query("SELECT username FROM users ORDER BY username"):
                print(row["username"])
        finally:
            await accounts.db.close()
        return 0
    return asyncio.run(run())


def unsuspend(args: argparse.Namespace) -> int:
    """Exit 0 when lifted, 1 for an unknown user or one who was not suspended."""
    from .credit import open_billing

    async def run() -> int:
        billing = await open_billing(args)
        try:
            name = args.name.strip().lower()
            if await billing.db.query_one("SELECT 1 FROM users WHERE username = ?", (name,)) is None:
                print(f"jego user unsuspend: no user {name!r}", file=sys.stderr)
                return 1
            if not await billing.unsuspend(name, args.note):
                print(f"jego user unsuspend: the phone calls of {name} are not suspended", file=sys.stderr)
                return 1
        finally:
            await billing.db.close()
        print(f"phone calls of {name} are allowed again")
        return 0
    return asyncio.run(run())
