"""`jego message`: send and list messages from the terminal, against a running `jego serve`.

    jego message send TO TEXT [--json]
    jego message send TO --file PATH [--json]     photo, voice message or file: told apart by content
    jego message list WITH [--json] [--limit N] [--before-seq SEQ]

TO and WITH are a username, or `group:ID` for a group (`jego group list` shows the ids).

Log in with --user/--password (or env JEGO_USER/JEGO_PASSWORD); --server URL defaults to
http://127.0.0.1:8080. Exit codes: 0 success; 1 failure the server reported (unknown user, not a
contact, wrong password, rejected media) or an unreachable server; 2 usage error (missing
file, empty text, no user). Every failure prints one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..client import JegoClient
from .signed_in import EXIT_OK, EXIT_USAGE, UsageError, add_account_options, credentials, report_errors

ERROR_TEXT = {
    "unknown_user": "no such user",
    "not_contact": "not in your contacts (add them first)",
    "auth_failed": "wrong username or password",
    "unsupported_media": "the server refused this content",
    "too_large": "too large",
    "forbidden": "not allowed (not a member of the group?)",
    "not_found": "no such group",
}
GROUP_PREFIX = "group:"


def split_target(raw: str) -> tuple[str, str | None]:
    """(username, None) or ("", group id) for `group:ID`."""
    raw = raw.strip()
    if raw.lower().startswith(GROUP_PREFIX):
        gid = raw[len(GROUP_PREFIX):].strip().lower()
        if not gid:
            raise UsageError("give the group's id after group: (see jego group list)")
        return "", gid
    return raw.lower(), None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("message", help="send and list chat messages")
    msub = p.add_subparsers(dest="message_command", metavar="ACTION")
    msub.required = True

    common = add_account_options

    s = msub.add_parser("send", help="send a text, or a photo / voice message / file with --file")
    s.add_argument("to", help="the contact's username, or group:ID")
    s.add_argument("text", nargs="?", help="the text to send")
    s.add_argument("--file", metavar="PATH", help="send this file (photo, voice message or any file)")
    common(s)
    s.set_defaults(func=send)
    ls = msub.add_parser("list", help="show the conversation with a contact, oldest first")
    ls.add_argument("with_user", metavar="WITH", help="the other user's username, or group:ID")
    ls.add_argument("--limit", type=int, help="messages per page (server default 50)")
    ls.add_argument("--before-seq", type=int, help="only messages before this sequence number")
    common(ls)
    ls.set_defaults(func=list_messages)


def _describe(m: dict[str, Any]) -> str:
    """One line for a message: `#3 12:01:02 alice -> bob [read]: text` or the media summary."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(m["ts"])))
    if "group" in m:
        head = f"#{m['seq']} {stamp} {m['from']} -> group:{m['group']}"
    else:
        head = f"#{m['seq']} {stamp} {m['from']} -> {m['to']} [{m['state']}]"
    media = m.get("media")
    if m["kind"] == "system":
        ev = m.get("event") or {}
        return f"{head}: * {ev.get('by') or 'the group'} {ev.get('action')} {' '.join(ev.get('members') or [])}".rstrip()
    if m["kind"] == "text":
        return f"{head}: {m.get('text', '')}"
    assert media is not None
    if m["kind"] == "photo":
        body = f"photo {media['width']}x{media['height']}"
    elif m["kind"] == "voice":
        body = f"voice message {media['duration_s']:.1f} s"
    else:
        body = "file"
    name = f" {media['filename']}" if media.get("filename") else ""
    return f"{head}: [{body}{name}, {media['size']} bytes, media {media['id']}]"


def _run(args: argparse.Namespace, coro_fn: Any) -> int:
    return report_errors(f"jego message {args.message_command}", args.timeout,
                         lambda: asyncio.run(coro_fn(args)), ERROR_TEXT)


def send(args: argparse.Namespace) -> int:
    try:
        split_target(args.to)        # a bad TO is a usage error before anything goes to the server
        if args.file is not None and args.text is not None:
            raise UsageError("give either TEXT or --file, not both")
        if args.file is None:
            if args.text is None or not args.text.strip():
                raise UsageError("the text is empty: give TEXT or --file PATH")
        else:
            path = Path(args.file)
            if not path.is_file():
                raise UsageError(f"no such file: {args.file}")
            if not os.access(path, os.R_OK):
                raise UsageError(f"cannot read {args.file}")
    except UsageError as exc:
        print(f"jego message send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _run(args, _send)


async def _send(args: argparse.Namespace) -> int:
    user, password = credentials(args)
    async with JegoClient(args.server, timeout=args.timeout) as client:
        await client.login(user, password)
        media_id = None
        if args.file is not None:
            media = await client.upload_media(args.file)
            media_id = media["id"]
        await client.connect()
        to, group = split_target(args.to)
        ack = await client.send_message(to, text=args.text if media_id is None else None,
                                        media_id=media_id, group=group)
    message = ack["message"]
    if args.json:
        print(json.dumps(message, ensure_ascii=False))
    else:
        print(f"sent {_describe(message)}")
    return EXIT_OK


def list_messages(args: argparse.Namespace) -> int:
    return _run(args, _list)


async def _list(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.before_seq is not None and args.before_seq < 1:
        raise UsageError("--before-seq must be at least 1")
    split_target(args.with_user)
    user, password = credentials(args)
    async with JegoClient(args.server, timeout=args.timeout) as client:
        await client.login(user, password)
        peer, group = split_target(args.with_user)
        if group is not None:
            page = await client.group_messages(group, args.before_seq, args.limit)
        else:
            page = await client.messages(peer, args.before_seq, args.limit)
    if args.json:
        print(json.dumps(page, ensure_ascii=False))
        return EXIT_OK
    if not page["messages"]:
        print(f"no messages with {page.get('with') or 'group:' + str(page.get('group'))}")
    for m in page["messages"]:
        print(_describe(m))
    if page.get("has_more"):
        first = page["messages"][0]["seq"]
        print(f"(older messages: --before-seq {first})")
    return EXIT_OK
