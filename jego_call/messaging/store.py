"""The messaging SQL: conversations, messages with per-conversation sequence numbers, media rows.

Call `MessageStore(db)`; `send()` stores a message durably (one committed transaction) and
returns it with `duplicate=True` for a retried `client_id`; `mark()` moves messages to
delivered/read; `after()`, `undelivered()` and `page()` read them back. Every method is a
coroutine on `Database` (SQLite or PostgreSQL, the same SQL); several nodes may write to one
conversation at once (see `send`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..db import Database, Row, UniqueViolation
from ..errors import ErrorCode, SignallingError

KINDS = ("text", "photo", "voice", "file")
MEDIA_KINDS = ("photo", "voice", "file")

_MSG_COLUMNS = """
    c.user_a, c.user_b, m.conversation_id, m.seq, m.sender, m.recipient, m.client_id, m.kind,
    m.body, m.media_id, m.created_at, m.delivered_at, m.read_at,
    md.mime AS md_mime, md.size AS md_size, md.filename AS md_filename, md.width AS md_width,
    md.height AS md_height, md.duration_s AS md_duration_s, md.thumb_sha256 AS md_thumb
"""
_MSG_FROM = """
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN media md ON md.id = m.media_id
"""


@dataclass(frozen=True, slots=True)
class Media:
    """One uploaded file; `path`s are derived from `sha256` by `media.MediaFiles`."""

    id: str
    owner: str
    kind: str
    mime: str
    size: int
    sha256: str
    filename: str | None
    width: int | None
    height: int | None
    duration_s: float | None
    thumb_sha256: str | None
    created_at: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "mime": self.mime, "size": self.size,
            "filename": self.filename, "width": self.width, "height": self.height,
            "duration_s": self.duration_s, "thumbnail": self.thumb_sha256 is not None,
        }


@dataclass(frozen=True, slots=True)
class Message:
    conversation_id: int
    seq: int
    sender: str
    recipient: str
    client_id: str
    kind: str
    text: str | None
    media: dict[str, Any] | None
    created_at: float
    delivered_at: float | None
    read_at: float | None

    @property
    def state(self) -> str:
        if self.read_at is not None:
            return "read"
        if self.delivered_at is not None:
            return "delivered"
        return "sent"

    def to_wire(self) -> dict[str, Any]:
        """The message object of docs/signalling.md (## Messaging)."""
        out: dict[str, Any] = {
            "seq": self.seq, "from": self.sender, "to": self.recipient, "client_id": self.client_id,
            "kind": self.kind, "ts": round(self.created_at, 3), "state": self.state,
        }
        if self.text is not None:
            out["text"] = self.text
        if self.media is not None:
            out["media"] = self.media
        return out


def _message(row: Row) -> Message:
    media = None
    if row["media_id"] is not None:
        media = {
            "id": row["media_id"], "kind": row["kind"], "mime": row["md_mime"], "size": row["md_size"],
            "filename": row["md_filename"], "width": row["md_width"], "height": row["md_height"],
            "duration_s": row["md_duration_s"], "thumbnail": row["md_thumb"] is not None,
        }
    return Message(row["conversation_id"], row["seq"], row["sender"], row["recipient"], row["client_id"],
                   row["kind"], row["body"], media, row["created_at"], row["delivered_at"], row["read_at"])


def _media(row: Row) -> Media:
    return Media(row["id"], row["owner"], row["kind"], row["mime"], row["size"], row["sha256"], row["filename"],
                 row["width"], row["height"], row["duration_s"], row["thumb_sha256"], row["created_at"])


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class MessageStore:
    """Messages and media rows on top of `Database` (schema: migration 2)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- conversations --------------------------------------------------------------------
    async def conversation_id(self, a: str, b: str) -> int | None:
        row = await self.db.query_one("SELECT id FROM conversations WHERE user_a = ? AND user_b = ?", pair(a, b))
        return None if row is None else int(row["id"])

    # -- sending --------------------------------------------------------------------------
    async def by_client_id(self, sender: str, client_id: str) -> Message | None:
        row = await self.db.query_one(f"SELECT {_MSG_COLUMNS} {_MSG_FROM} WHERE m.sender = ? AND m.client_id = ?",
                                      (sender, client_id))
        return None if row is None else _message(row)

    async def send(self, sender: str, recipient: str, client_id: str, kind: str, text: str | None,
                   media_id: str | None, now: float | None = None) -> tuple[Message, bool]:
        """Store one message and commit; returns (message, duplicate).

        A `client_id` the sender already used returns the stored message and True, whatever
        else this call carries, also when the first try is committed by another node while this
        one runs (UNIQUE(sender, client_id) decides). The caller has checked contacts, text and
        media ownership. The conversation's row is updated first: its row lock orders concurrent
        senders (on every node), so seq numbers are gap-free in commit order.
        """
        old = await self.by_client_id(sender, client_id)
        if old is not None:
            return old, True
        now = time.time() if now is None else now
        a, b = pair(sender, recipient)
        try:
            async with self.db.transaction() as tx:
                row = await tx.query_one(
                    "INSERT INTO conversations(user_a, user_b, last_seq, created_at, updated_at) VALUES (?, ?, 1, ?, ?) "
                    "ON CONFLICT(user_a, user_b) DO UPDATE SET last_seq = conversations.last_seq + 1, "
                    "updated_at = excluded.updated_at RETURNING id, last_seq", (a, b, now, now))
                assert row is not None
                conv_id, seq = int(row[0]), int(row[1])
                await tx.execute(
                    "INSERT INTO messages(conversation_id, seq, sender, recipient, client_id, kind, body, media_id, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (conv_id, seq, sender, recipient, client_id, kind, text, media_id, now))
        except UniqueViolation:  # the same client_id, committed meanwhile (a retry on another node)
            old = await self.by_client_id(sender, client_id)
            if old is None:
                raise
            return old, True
        media = await self.media(media_id) if media_id is not None else None
        return Message(conv_id, seq, sender, recipient, client_id, kind, text,
                       media.to_wire() if media is not None else None, now, None, None), False

    async def get(self, conversation_id: int, seq: int) -> Message | None:
        row = await self.db.query_one(f"SELECT {_MSG_COLUMNS} {_MSG_FROM} WHERE m.conversation_id = ? AND m.seq = ?",
                                      (conversation_id, seq))
        return None if row is None else _message(row)

    # -- receipts -------------------------------------------------------------------------
    async def mark(self, user: str, peer: str, up_to_seq: int, state: str, now: float | None = None) -> int | None:
        """`user` has received (state "delivered") or read ("read") `peer`'s messages up to `up_to_seq`.

        Returns the new cumulative watermark to tell `peer` about, or None if nothing changed.
        """
        conv = await self.conversation_id(user, peer)
        if conv is None:
            return None
        now = time.time() if now is None else now
        if state == "read":
            sql = ("UPDATE messages SET read_at = ?, delivered_at = COALESCE(delivered_at, ?) "
                   "WHERE conversation_id = ? AND recipient = ? AND seq <= ? AND read_at IS NULL")
            params: tuple[Any, ...] = (now, now, conv, user, up_to_seq)
        else:
            sql = ("UPDATE messages SET delivered_at = ? "
                   "WHERE conversation_id = ? AND recipient = ? AND seq <= ? AND delivered_at IS NULL")
            params = (now, conv, user, up_to_seq)
        async with self.db.transaction() as tx:
            changed = await tx.execute(sql, params)
        if not changed:
            return None
        return (await self.watermarks(peer, user))[1 if state == "read" else 0]

    async def watermarks(self, sender: str, peer: str) -> tuple[int, int]:
        """(delivered_seq, read_seq): the highest seq of `sender`'s messages to `peer` in each state."""
        conv = await self.conversation_id(sender, peer)
        if conv is None:
            return 0, 0
        row = await self.db.query_one(
            "SELECT MAX(CASE WHEN delivered_at IS NOT NULL THEN seq END), MAX(CASE WHEN read_at IS NOT NULL THEN seq END) "
            "FROM messages WHERE conversation_id = ? AND sender = ?", (conv, sender))
        assert row is not None
        return int(row[0] or 0), int(row[1] or 0)

    # -- reading --------------------------------------------------------------------------
    async def undelivered(self, user: str, limit: int, exclude: set[int] | None = None) -> list[Message]:
        """Messages to `user` not yet marked delivered, by conversation then seq (skipping `exclude`d ones)."""
        skip = sorted(exclude or ())
        not_in = f"AND m.conversation_id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        rows = await self.db.query(
            f"SELECT {_MSG_COLUMNS} {_MSG_FROM} WHERE m.recipient = ? AND m.delivered_at IS NULL {not_in} "
            "ORDER BY m.conversation_id, m.seq LIMIT ?", (user, *skip, limit))
        return [_message(r) for r in rows]

    async def after(self, user: str, peer: str, after_seq: int, limit: int) -> list[Message]:
        """Messages of the conversation `user`-`peer` (both directions) with seq > after_seq, oldest first."""
        conv = await self.conversation_id(user, peer)
        if conv is None:
            return []
        rows = await self.db.query(f"SELECT {_MSG_COLUMNS} {_MSG_FROM} WHERE m.conversation_id = ? AND m.seq > ? "
                                   "ORDER BY m.seq LIMIT ?", (conv, after_seq, limit))
        return [_message(r) for r in rows]

    async def page(self, user: str, peer: str, before_seq: int | None, limit: int) -> tuple[list[Message], bool]:
        """One page of history, oldest first, ending just before `before_seq` (None: the newest)."""
        conv = await self.conversation_id(user, peer)
        if conv is None:
            return [], False
        bound = before_seq if before_seq is not None else 1 << 62
        rows = await self.db.query(f"SELECT {_MSG_COLUMNS} {_MSG_FROM} WHERE m.conversation_id = ? AND m.seq < ? "
                                   "ORDER BY m.seq DESC LIMIT ?", (conv, bound, limit + 1))
        more = len(rows) > limit
        return [_message(r) for r in reversed(rows[:limit])], more

    async def conversations(self, user: str) -> list[dict[str, Any]]:
        """Every conversation of `user`, most recent first, with unread counts and the last message."""
        rows = await self.db.query(
            "SELECT c.id, c.user_a, c.user_b, c.last_seq, c.updated_at, "
            "(SELECT COUNT(*) FROM messages u WHERE u.conversation_id = c.id AND u.recipient = ? "
            " AND u.read_at IS NULL) AS unread "
            "FROM conversations c WHERE c.user_a = ? OR c.user_b = ? ORDER BY c.updated_at DESC, c.id DESC",
            (user, user, user))
        out = []
        for r in rows:
            peer = r["user_b"] if r["user_a"] == user else r["user_a"]
            last = await self.get(int(r["id"]), int(r["last_seq"]))
            delivered, read = await self.watermarks(user, peer)
            out.append({"with": peer, "last_seq": int(r["last_seq"]), "unread": int(r["unread"]),
                        "delivered_seq": delivered, "read_seq": read,
                        "last_message": last.to_wire() if last else None})
        return out

    async def peers(self, user: str) -> list[str]:
        rows = await self.db.query("SELECT user_a, user_b FROM conversations WHERE user_a = ? OR user_b = ?",
                                   (user, user))
        return [r["user_b"] if r["user_a"] == user else r["user_a"] for r in rows]

    # -- media ----------------------------------------------------------------------------
    async def add_media(self, media: Media) -> None:
        await self.db.execute(
            "INSERT INTO media(id, owner, kind, mime, size, sha256, filename, width, height, duration_s, "
            "thumb_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (media.id, media.owner, media.kind, media.mime, media.size, media.sha256, media.filename,
             media.width, media.height, media.duration_s, media.thumb_sha256, media.created_at))

    async def media(self, media_id: str) -> Media | None:
        row = await self.db.query_one("SELECT * FROM media WHERE id = ?", (media_id,))
        return None if row is None else _media(row)

    async def can_read_media(self, user: str, media: Media) -> bool:
        """The uploader, and both members of any conversation the media was sent in."""
        if media.owner == user:
            return True
        return await self.db.query_one(
            "SELECT 1 FROM messages WHERE media_id = ? AND (sender = ? OR recipient = ?) LIMIT 1",
            (media.id, user, user)) is not None

    async def require_media(self, user: str, media_id: str) -> Media:
        """The media `user` may read; SignallingError not_found / forbidden otherwise."""
        media = await self.media(media_id)
        if media is None:
            raise SignallingError(ErrorCode.NOT_FOUND, "no such media")
        if not await self.can_read_media(user, media):
            raise SignallingError(ErrorCode.FORBIDDEN, "only members of the conversation may read this media")
        return media
