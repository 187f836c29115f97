"""`jego group`: group chats from the terminal, against a running `jego serve`.

    jego group create NAME [MEMBER ...] [--json]   prints the new group's id ({"id": ...} with --json)
    jego group add GROUP MEMBER ...                admins add members (from their contacts)
    jego group remove GROUP MEMBER ...             admins remove members
    jego group leave GROUP                         the last admin leaving makes the oldest member admin
    jego group list [--json]                       your groups: id, name, members, unread

Then `jego message send group:ID TEXT` and `jego message list group:ID`. Log in with
--user/--password (or env JEGO_USER/JEGO_PASSWORD); --server URL (or env JEGO_SERVER) defaults
to http://127.0.0.1:8080. Exit codes: 0 done; 1 refused by the server (not a contact, not an
admin, no such group, group full, wrong password) or server unreachable; 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..client import JegoClient
from .signed_in import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_account_options,
    run_signed_in,
)

ERROR_TEXT = {
    "unknown_user": "no such user",
    "not_contact": "not in your contacts (jego contact add NAME first)",
    "forbidden": "not allowed: only the group's admins may do that, or you are not a member",
    "not_found": "no such group or member",
    "group_full": "the group is full (200 members)",
    "auth_failed": "wrong username or password",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("group", help="create groups, add and remove members, leave, list")
    gsub = p.add_subparsers(dest="group_command", metavar="ACTION")
    gsub.required = True

    common = add_account_options

    c = gsub.add_parser("create", help="create a group with you as its admin; prints its id")
    c.add_argument("name", help="the group's name (any script, up to 64 characters)")
    c.add_argument("members", nargs="*", metavar="MEMBER", help="usernames from your contacts")
    common(c)
    c.set_defaults(func=lambda a: _run(a, _create))
    for action, text in (("add", "add members (admins)"), ("remove", "remove members (admins)")):
        q = gsub.add_parser(action, help=text)
        q.add_argument("group", metavar="GROUP", help="the group's id")
        q.add_argument("members", nargs="+", metavar="MEMBER", help="usernames")
        common(q)
        q.set_defaults(func=lambda a: _run(a, _change))
    lv = gsub.add_parser("leave", help="leave a group")
    lv.add_argument("group", metavar="GROUP", help="the group's id")
    common(lv)
    lv.set_defaults(func=lambda a: _run(a, _leave))
    ls = gsub.add_parser("list", help="your groups")
    common(ls)
    ls.set_defaults(func=lambda a: _run(a, _list))


def _gid(raw: str) -> str:
    gid = raw.strip().lower().removeprefix("group:")
    if not gid:
        raise UsageError("give the group's id (see jego group list)")
    return gid


def _check(args: argparse.Namespace) -> None:
    """Usage errors of the arguments alone, found before anything goes to the server."""
    if args.group_command == "create" and not args.name.strip():
        raise UsageError("the group needs a name")
    if args.group_command in ("add", "remove", "leave"):
        _gid(args.group)


def _run(args: argparse.Namespace, fn: Callable[[argparse.Namespace, JegoClient], Awaitable[int]]) -> int:
    prog = f"jego group {args.group_command}"
    try:
        _check(args)
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_signed_in(prog, args, fn, ERROR_TEXT)


def _members(group: dict[str, Any]) -> str:
    return ", ".join(f"{m['username']}{' (admin)' if m['role'] == 'admin' else ''}" for m in group["members"])


async def _create(args: argparse.Namespace, client: JegoClient) -> int:
    if not args.name.strip():
        raise UsageError("the group needs a name")
    group = await client.create_group(args.name, [m.strip().lower() for m in args.members])
    print(json.dumps({"id": group["id"]}) if args.json else group["id"])
    return EXIT_OK


async def _change(args: argparse.Namespace, client: JegoClient) -> int:
    gid = _gid(args.group)
    names = [m.strip().lower() for m in args.members]
    if args.group_command == "add":
        group = await client.add_members(gid, names)
    else:
        for name in names:
            await client.remove_member(gid, name)
        group = await client.group(gid)
    if args.json:
        print(json.dumps(group, ensure_ascii=False))
    else:
        print(f"{group['name']} ({gid}): {_members(group)}")
    return EXIT_OK


async def _leave(args: argparse.Namespace, client: JegoClient) -> int:
    await client.leave_group(_gid(args.group))
    if not args.json:
        print(f"you left {args.group}")
    return EXIT_OK


async def _list(args: argparse.Namespace, client: JegoClient) -> int:
    groups = await client.groups()
    if args.json:
        print(json.dumps(groups, ensure_ascii=False))
        return EXIT_OK
    if not groups:
        print("no groups")
    for g in groups:
        unread = f", {g['unread']} unread" if g.get("unread") else ""
        print(f"{g['id']}  {g['name']}  ({len(g['members'])} members{unread}): {_members(g)}")
    return EXIT_OK
