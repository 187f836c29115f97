"""`jego user add NAME [--password PW] [--display-name NAME]`: create accounts from the terminal
(same database as `jego serve` with the same config). Without `--password` (or JEGO_PASSWORD)
it asks for the password twice on the terminal, without echo. `jego user unsuspend NAME` lifts
a toll-fraud suspension of that user's phone calls (jego_call/billing/fraud.py)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from ..accounts import Accounts, load_secret
from ..config import load_config
from ..db import Database
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


def _open(args: argparse.Namespace) -> Accounts:
    overrides = {"data": {"dir": args.data_dir}} if args.data_dir else None
    cfg = load_config(args.config, overrides=overrides)
    db = Database.open(cfg.data_dir / "jego.sqlite3")
    return Accounts(db, load_secret(cfg.data_dir), cfg.auth)


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
    accounts = _open(args)
    try:
        accounts.register(args.name, password, args.display_name)
    except SignallingError as exc:
        print(f"jego user add: {exc.message}", file=sys.stderr)
        return 1
    print(f"created user {args.name.strip().lower()}")
    return 0


def list_users(args: argparse.Namespace) -> int:
    accounts = _open(args)
    for row in accounts.db.query("SELECT username FROM users ORDER BY username"):
        print(row["username"])
    return 0


def unsuspend(args: argparse.Namespace) -> int:
    """Exit 0 when lifted, 1 for an unknown user or one who was not suspended."""
    from .credit import open_billing

    billing = open_billing(args)
    name = args.name.strip().lower()
    if billing.db.query_one("SELECT 1 FROM users WHERE username = ?", (name,)) is None:
        print(f"jego user unsuspend: no user {name!r}", file=sys.stderr)
        return 1
    if not billing.unsuspend(name, args.note):
        print(f"jego user unsuspend: the phone calls of {name} are not suspended", file=sys.stderr)
        return 1
    print(f"phone calls of {name} are allowed again")
    return 0
