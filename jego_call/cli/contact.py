"""`jego contact`: your contacts and blocks from the terminal, against a running `jego serve`.

    jego contact list [--json]              contacts (username, display name, presence) and blocked users
    jego contact add NAME                   add a contact (and lift a block on them)
    jego contact remove NAME
    jego contact block NAME                 they can no longer call or message you ("not available")
    jego contact unblock NAME

Log in with --user/--password (or env JEGO_USER/JEGO_PASSWORD); --server URL defaults to
http://127.0.0.1:8080 (or env JEGO_SERVER). Exit codes: 0 done; 1 refused by the server (no such
user, not a contact, wrong password ...) or server unreachable; 2 usage error. Every failure
prints one line on stderr. Then `jego message send NAME TEXT`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..client import JegoClient
from .signed_in import (
    EXIT_OK,
    add_account_options,
    run_signed_in,
)

ERROR_TEXT = {
    "unknown_user": "no such user",
    "not_contact": "not in your contacts",
    "not_found": "not blocked",
    "self_contact": "that is you",
    "auth_failed": "wrong username or password",
    "invalid_username": "not a valid username",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("contact", help="list, add, remove, block and unblock contacts")
    csub = p.add_subparsers(dest="contact_command", metavar="ACTION")
    csub.required = True

    common = add_account_options

    ls = csub.add_parser("list", help="your contacts with their presence, and who you blocked")
    common(ls)
    ls.set_defaults(func=lambda a: _run(a, _list))
    for action, text in (("add", "add a contact"), ("remove", "remove a contact"),
                         ("block", "block someone: no calls or messages from them"),
                         ("unblock", "lift a block")):
        q = csub.add_parser(action, help=text)
        q.add_argument("name", help="their username")
        common(q)
        q.set_defaults(func=lambda a: _run(a, _change))


def _run(args: argparse.Namespace, fn: Callable[[argparse.Namespace, JegoClient], Awaitable[int]]) -> int:
    return run_signed_in(f"jego contact {args.contact_command}", args, fn, ERROR_TEXT)


def _who(person: dict[str, Any]) -> str:
    name, shown = person["username"], person.get("display_name") or person["username"]
    return name if shown == name else f"{name} ({shown})"


async def _list(args: argparse.Namespace, client: JegoClient) -> int:
    data = await client.request("GET", "/api/contacts")
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
        return EXIT_OK
    contacts, blocked = data["contacts"], data.get("blocked", [])
    if not contacts:
        print("no contacts yet: jego contact add NAME")
    for c in contacts:
        print(f"{_who(c)}  {c['presence'].replace('_', ' ')}")
    for b in blocked:
        print(f"blocked: {_who(b)}")
    return EXIT_OK


async def _change(args: argparse.Namespace, client: JegoClient) -> int:
    action = args.contact_command
    name = args.name.strip().lower()
    out: dict[str, Any] = {"action": action, "username": name}
    if action == "add":
        person = await client.add_contact(name)
        out.update(person)
        text = f"added {_who(person)} ({person['presence'].replace('_', ' ')})"
    elif action == "remove":
        await client.remove_contact(name)
        text = f"removed {name}"
    elif action == "block":
        person = await client.block(name)
        out.update(person)
        text = f"blocked {_who(person)}: they can no longer call or message you"
    else:
        await client.unblock(name)
        text = f"unblocked {name} (add them again with: jego contact add {name})"
    print(json.dumps(out, ensure_ascii=False) if args.json else text)
    return EXIT_OK
