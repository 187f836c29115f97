"""The messaging SQL: conversations, messages with per-conversation sequence numbers, media rows.

Call `MessageStore(db)`; `send()` stores a message durably (one committed transaction) and
returns it with `duplicate=True` for a retried `client_id`; `mark()` moves messages to
delivered/read; `after()`, `undelivered()` and `page()` read them back. Every method is a
coroutine on `Database` (SQLite or PostgreSQL, the same SQL); several nodes may write to one
conversation at once (see `send`).

Groups use the same tables (migration 6): a group's conversation has `group_id` set, its
messages have no recipient, and `group_members` holds one row per period of membership with
the member's cumulative receipt watermarks. `create_group`, `add_members`, `remove_member`,
`make_admin` change membership and write the system line in the same transaction;
`send_group`, `group_after`, `group_undelivered`, `group_page`, `mark_group` are the group
forms of the pair methods. A member sees the messages `joined_seq..left_seq` of each period.
Membership changes hold the group's lock (`tx.lock`) and read the members inside their
transaction, so two nodes changing one group at once apply one after the other.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from ..db import Database, Executor, Row, Transaction, UniqueViolation
from ..errors import ErrorCode, SignallingError

KINDS = ("text", "photo", "voice", "file")
MEDIA_KINDS = ("photo", "voice", "file")
MAX_GROUP_MEMBERS = 200

_MSG_COLUMNS = """
    c.user_a, c.user_b, c.group_id, m.conversation_id, m.seq, m.sender, m.recipient, m.client_id, m.kind,
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
    recipient: str | None       # None in a group
    client_id: str
    kind: str                   # text photo voice file, or system (groups: a membership change)
    text: str | None            # the text; for kind system the event as JSON
    media: dict[str, Any] | None
    created_at: float
    delivered_at: float | None
    read_at: float | None
    group: str | None = None

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
            "seq": self.seq, "from": self.sender, "client_id": self.client_id,
            "kind": self.kind, "ts": round(self.created_at, 3), "state": self.state,
        }
        if self.group is not None:
            out["group"] = self.group
        else:
            out["to"] = self.recipient
        if self.kind == "system":
            out["event"] = json.loads(self.text or "{}")
        elif self.text is not None:
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
                   row["kind"], row["body"], media, row["created_at"], row["delivered_at"], row["read_at"],
                   row["group_id"])


def _media(row: Row) -> Media:
    return Media(row["id"], row["owner"], row["kind"], row["mime"], row["size"], row["sha256"], row["filename"],
                 row["width"], row["height"], row["duration_s"], row["thumb_sha256"], row["created_at"])


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


class MessageStore:
    """Messages and media rows on top of `Database` (schema: migrations 2 and 6)."""

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
        one runs (UNIQUE(sender, client_id) decides; there is no lookup first, the service has
        made it). The caller has checked contacts, text and media ownership. The conversation's row is updated first: its row lock orders concurrent
        senders (on every node), so seq numbers are gap-free in commit order.
        """
        now = time.time() if now is None else now
        a, b = pair(sender, recipient)
        try:
            if self.db.engine == "postgresql":
                # one statement, one round trip (its own transaction): the upsert's row lock is
                # held until the statement commits, so seqs stay gap-free in commit order, and a
                # failed insert (a client_id already used, a CHECK) rolls the seq back with it
                row = await self.db.query_one(
                    "WITH c AS (INSERT INTO conversations(user_a, user_b, last_seq, created_at, updated_at) "
                    "VALUES (?, ?, 1, ?, ?) ON CONFLICT(user_a, user_b) DO UPDATE SET "
                    "last_seq = conversations.last_seq + 1, updated_at = excluded.updated_at RETURNING id, last_seq) "
                    "INSERT INTO messages(conversation_id, seq, sender, recipient, client_id, kind, body, media_id, "
                    "created_at) SELECT c.id, c.last_seq, ?, ?, ?, ?, ?, ?, ? FROM c RETURNING conversation_id, seq",
                    (a, b, now, now, sender, recipient, client_id, kind, text, media_id, now))
                assert row is not None
                conv_id, seq = int(row[0]), int(row[1])
            else:
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
        """The uploader, both members of any conversation the media was sent in, and the members of
        a group who could see the message that carried it (not those removed before it)."""
        if media.owner == user:
            return True
        if await self.db.query_one(
                "SELECT 1 FROM messages WHERE media_id = ? AND (sender = ? OR recipient = ?) LIMIT 1",
                (media.id, user, user)) is not None:
            return True
        return await self.can_read_group_media(user, media.id)

    async def require_media(self, user: str, media_id: str) -> Media:
        """The media `user` may read; SignallingError not_found / forbidden otherwise."""
        media = await self.media(media_id)
        if media is None:
            raise SignallingError(ErrorCode.NOT_FOUND, "no such media")
        if not await self.can_read_media(user, media):
            raise SignallingError(ErrorCode.FORBIDDEN, "only members of the conversation may read this media")
        return media

    # -- groups (migration 6) --------------------------------------------------------------
    @staticmethod
    async def _insert_message(tx: Executor, conv_id: int, sender: str, recipient: str | None, client_id: str,
                              kind: str, body: str | None, media_id: str | None, now: float) -> int:
        """Take the conversation's next seq and insert one message (inside the caller's transaction;
        the conversation's row lock orders concurrent writers on every node)."""
        row = await tx.query_one("UPDATE conversations SET last_seq = last_seq + 1, updated_at = ? WHERE id = ? "
                                 "RETURNING last_seq", (now, conv_id))
        assert row is not None
        seq = int(row[0])
        await tx.execute(
            "INSERT INTO messages(conversation_id, seq, sender, recipient, client_id, kind, body, media_id, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conv_id, seq, sender, recipient, client_id, kind, body, media_id, now))
        return seq

    async def _system_line(self, tx: Executor, group: Group, actor: str, event: dict[str, Any], now: float) -> int:
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return await self._insert_message(tx, group.conversation_id, actor, None, f"sys-{secrets.token_hex(12)}",
                                          "system", body, None, now)

    async def group(self, group_id: str, ex: Executor | None = None) -> Group | None:
        """The group and its current members (read on `ex`, a transaction, when given)."""
        ex = self.db if ex is None else ex
        row = await ex.query_one(
            "SELECT g.id, g.name, g.created_by, g.created_at, g.conversation_id, c.last_seq, c.updated_at "
            "FROM groups g JOIN conversations c ON c.id = g.conversation_id WHERE g.id = ?", (group_id,))
        if row is None:
            return None
        members = [_member(r) for r in await ex.query(
            "SELECT * FROM group_members WHERE group_id = ? AND left_seq IS NULL "
            "ORDER BY joined_at, joined_seq, username", (group_id,))]
        return Group(row["id"], row["name"], row["created_by"], float(row["created_at"]), int(row["conversation_id"]),
                     int(row["last_seq"]), float(row["updated_at"]), members)

    async def _locked_group(self, tx: Transaction, group_id: str) -> Group:
        """The group, read after taking its lock: membership changes to one group run one at a time."""
        await tx.lock(f"group {group_id}")
        group = await self.group(group_id, tx)
        if group is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"no group {group_id!r}")
        return group

    async def membership(self, group_id: str, user: str) -> Member | None:
        """`user`'s latest period in the group (current when `left_seq` is None), or None."""
        row = await self.db.query_one("SELECT * FROM group_members WHERE group_id = ? AND username = ? "
                                      "ORDER BY joined_seq DESC LIMIT 1", (group_id, user))
        return None if row is None else _member(row)

    async def groups_of(self, user: str) -> list[str]:
        """The groups `user` is a member of now, most recently active first."""
        rows = await self.db.query(
            "SELECT gm.group_id FROM group_members gm JOIN groups g ON g.id = gm.group_id "
            "JOIN conversations c ON c.id = g.conversation_id WHERE gm.username = ? AND gm.left_seq IS NULL "
            "ORDER BY c.updated_at DESC, g.id", (user,))
        return [r["group_id"] for r in rows]

    async def groups_seen(self, user: str) -> list[str]:
        """Every group `user` is or was a member of (for sync: a removed member's last lines)."""
        rows = await self.db.query("SELECT DISTINCT group_id FROM group_members WHERE username = ?", (user,))
        return sorted(r["group_id"] for r in rows)

    async def create_group(self, creator: str, name: str, members: list[str], now: float | None = None) -> Group:
        """A new group: `creator` its first admin, `members` (validated by the caller) the others;
        the system line "created" is seq 1 and every first member sees from it."""
        now = time.time() if now is None else now
        gid = "g" + secrets.token_hex(8)
        everyone = [creator] + [m for m in dict.fromkeys(members) if m != creator]
        async with self.db.transaction() as tx:
            conv = await tx.query_one("INSERT INTO conversations(group_id, last_seq, created_at, updated_at) "
                                      "VALUES (?, 0, ?, ?) RETURNING id", (gid, now, now))
            assert conv is not None
            await tx.execute("INSERT INTO groups(id, name, created_by, created_at, conversation_id) "
                             "VALUES (?, ?, ?, ?, ?)", (gid, name, creator, now, int(conv[0])))
            group = Group(gid, name, creator, now, int(conv[0]), 0, now, [])
            seq = await self._system_line(tx, group, creator, {"action": "created", "by": creator, "name": name,
                                                               "members": everyone[1:]}, now)
            for i, user in enumerate(everyone):
                await tx.execute("INSERT INTO group_members(group_id, username, role, joined_seq, joined_at) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 (gid, user, "admin" if i == 0 else "member", seq, now + i * 1e-6))
        out = await self.group(gid)
        assert out is not None
        return out

    async def add_members(self, group_id: str, actor: str, users: list[str],
                          now: float | None = None) -> Message | None:
        """Add `users` (not members now; validated by the caller) with one system line; None if none is new."""
        now = time.time() if now is None else now
        async with self.db.transaction() as tx:
            group = await self._locked_group(tx, group_id)
            current = {m.username for m in group.members}
            new = [u for u in dict.fromkeys(users) if u not in current]
            if not new:
                return None
            seq = await self._system_line(tx, group, actor, {"action": "added", "by": actor, "members": new}, now)
            for i, user in enumerate(new):
                await tx.execute("INSERT INTO group_members(group_id, username, role, joined_seq, joined_at) "
                                 "VALUES (?, ?, 'member', ?, ?)", (group_id, user, seq, now + i * 1e-6))
        return await self.get(group.conversation_id, seq)

    async def remove_member(self, group_id: str, actor: str, user: str, now: float | None = None) -> list[Message]:
        """End `user`'s membership (removed by `actor`, or left when actor == user): the system line
        is the last message they see. When the last admin goes, the oldest member becomes admin
        (a second line). Returns the lines written."""
        now = time.time() if now is None else now
        action = "left" if actor == user else "removed"
        lines: list[int] = []
        async with self.db.transaction() as tx:
            group = await self._locked_group(tx, group_id)
            seq = await self._system_line(tx, group, actor, {"action": action, "by": actor, "members": [user]}, now)
            lines.append(seq)
            # one who leaves has seen their own line: delivered up to it (CASE: no scalar MAX on PostgreSQL)
            await tx.execute("UPDATE group_members SET left_seq = ?, delivered_seq = CASE WHEN ? = username "
                             "AND delivered_seq < ? THEN ? ELSE delivered_seq END "
                             "WHERE group_id = ? AND username = ? AND left_seq IS NULL",
                             (seq, actor, seq, seq, group_id, user))
            rest = [m for m in group.members if m.username != user]
            if rest and not any(m.role == "admin" for m in rest):
                oldest = rest[0].username  # members are ordered by when they joined
                await tx.execute("UPDATE group_members SET role = 'admin' WHERE group_id = ? AND username = ? "
                                 "AND left_seq IS NULL", (group_id, oldest))
                lines.append(await self._system_line(tx, group, actor, {"action": "admin", "by": None,
                                                                        "members": [oldest]}, now))
        out = [await self.get(group.conversation_id, s) for s in lines]
        return [m for m in out if m is not None]

    async def make_admin(self, group_id: str, actor: str, user: str, now: float | None = None) -> Message | None:
        """Make the member `user` an admin (one system line); None if they already are."""
        now = time.time() if now is None else now
        async with self.db.transaction() as tx:
            group = await self._locked_group(tx, group_id)
            changed = await tx.execute("UPDATE group_members SET role = 'admin' WHERE group_id = ? AND username = ? "
                                       "AND left_seq IS NULL AND role != 'admin'", (group_id, user))
            if not changed:
                return None
            seq = await self._system_line(tx, group, actor, {"action": "admin", "by": actor, "members": [user]}, now)
        return await self.get(group.conversation_id, seq)

    async def rename_group(self, group_id: str, actor: str, name: str, now: float | None = None) -> Message:
        now = time.time() if now is None else now
        async with self.db.transaction() as tx:
            group = await self._locked_group(tx, group_id)
            await tx.execute("UPDATE groups SET name = ? WHERE id = ?", (name, group_id))
            seq = await self._system_line(tx, group, actor, {"action": "renamed", "by": actor, "name": name}, now)
        msg = await self.get(group.conversation_id, seq)
        assert msg is not None
        return msg

    async def send_group(self, sender: str, group_id: str, client_id: str, kind: str, text: str | None,
                         media_id: str | None, now: float | None = None) -> tuple[Message, bool]:
        """Store one message to a group and commit; (message, duplicate) as `send`, also when the
        first try is committed by another node meanwhile. The caller has checked that `sender`
        is a member now."""
        old = await self.by_client_id(sender, client_id)
        if old is not None:
            return old, True
        now = time.time() if now is None else now
        group = await self.group(group_id)
        if group is None:
            raise SignallingError(ErrorCode.NOT_FOUND, f"no group {group_id!r}")
        try:
            async with self.db.transaction() as tx:
                seq = await self._insert_message(tx, group.conversation_id, sender, None, client_id, kind, text,
                                                 media_id, now)
                # the sender has their own message: it counts as delivered and read for them
                await tx.execute("UPDATE group_members SET delivered_seq = ?, read_seq = ? WHERE group_id = ? "
                                 "AND username = ? AND left_seq IS NULL AND read_seq = ?",
                                 (seq, seq, group_id, sender, seq - 1))
        except UniqueViolation:  # the same client_id, committed meanwhile (a retry on another node)
            old = await self.by_client_id(sender, client_id)
            if old is None:
                raise
            return old, True
        msg = await self.get(group.conversation_id, seq)
        assert msg is not None
        return msg, False

    _VISIBLE = ("EXISTS (SELECT 1 FROM group_members gm WHERE gm.group_id = c.group_id AND gm.username = ? "
                "AND m.seq >= gm.joined_seq AND (gm.left_seq IS NULL OR m.seq <= gm.left_seq))")

    async def group_after(self, user: str, group_id: str, after_seq: int, limit: int) -> list[Message]:
        """The group's messages `user` may see with seq > after_seq, oldest first."""
        rows = await self.db.query(f"SELECT {_MSG_COLUMNS} {_MSG_FROM} WHERE c.group_id = ? AND m.seq > ? AND "
                                   f"{self._VISIBLE} ORDER BY m.seq LIMIT ?", (group_id, after_seq, user, limit))
        return [_message(r) for r in rows]

    async def group_page(self, user: str, group_id: str, before_seq: int | None,
                         limit: int) -> tuple[list[Message], bool]:
        bound = before_seq if before_seq is not None else 1 << 62
        rows = await self.db.query(f"SELECT {_MSG_COLUMNS} {_MSG_FROM} WHERE c.group_id = ? AND m.seq < ? AND "
                                   f"{self._VISIBLE} ORDER BY m.seq DESC LIMIT ?", (group_id, bound, user, limit + 1))
        more = len(rows) > limit
        return [_message(r) for r in reversed(rows[:limit])], more

    async def group_undelivered(self, user: str, limit: int, exclude: set[str] | None = None) -> list[Message]:
        """Group messages to `user` past their delivered watermark, within each membership period,
        by group then seq (a removed member still gets the line of their removal)."""
        skip = sorted(exclude or ())
        not_in = f"AND gm.group_id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        rows = await self.db.query(
            f"SELECT {_MSG_COLUMNS} FROM group_members gm JOIN conversations c ON c.group_id = gm.group_id "
            "JOIN messages m ON m.conversation_id = c.id LEFT JOIN media md ON md.id = m.media_id "
            "WHERE gm.username = ? AND m.seq > gm.delivered_seq AND m.seq >= gm.joined_seq "
            f"AND (gm.left_seq IS NULL OR m.seq <= gm.left_seq) AND m.sender != ? {not_in} "
            "ORDER BY gm.group_id, m.seq LIMIT ?", (user, user, *skip, limit))
        return [_message(r) for r in rows]

    async def mark_group(self, user: str, group_id: str, up_to_seq: int, state: str) -> int | None:
        """`user` has received/read the group's messages up to `up_to_seq` (clamped to what they may
        see); returns the new watermark, or None if nothing changed. `read` implies delivered.
        Watermarks only move up, also when two nodes mark at once (the UPDATE compares)."""
        member = await self.membership(group_id, user)
        group = await self.group(group_id)
        if member is None or group is None:
            return None
        top = min(up_to_seq, member.left_seq if member.left_seq is not None else group.last_seq)
        column = "read_seq" if state == "read" else "delivered_seq"
        if top <= getattr(member, column):
            return None
        async with self.db.transaction() as tx:
            if state == "read":
                changed = await tx.execute(
                    "UPDATE group_members SET read_seq = ?, delivered_seq = CASE WHEN delivered_seq < ? THEN ? "
                    "ELSE delivered_seq END WHERE group_id = ? AND username = ? AND joined_seq = ? AND read_seq < ?",
                    (top, top, top, group_id, user, member.joined_seq, top))
            else:
                changed = await tx.execute(
                    "UPDATE group_members SET delivered_seq = ? WHERE group_id = ? AND username = ? "
                    "AND joined_seq = ? AND delivered_seq < ?", (top, group_id, user, member.joined_seq, top))
        return top if changed else None

    async def group_unread(self, user: str, group_id: str) -> int:
        member = await self.membership(group_id, user)
        if member is None:
            return 0
        last = member.left_seq if member.left_seq is not None else 1 << 62
        row = await self.db.query_one(
            "SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE c.group_id = ? "
            "AND m.seq > ? AND m.seq >= ? AND m.seq <= ? AND m.sender != ? AND m.kind != 'system'",
            (group_id, member.read_seq, member.joined_seq, last, user))
        return int(row[0]) if row else 0

    async def receipts(self, group_id: str, seq: int) -> dict[str, list[str]]:
        """Who has message `seq` of the group: {"delivered": [...], "read": [...], "waiting": [...]}
        among the members who could see it (not its sender); read implies delivered."""
        msg_row = await self.db.query_one(
            "SELECT m.sender FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.group_id = ? AND m.seq = ?", (group_id, seq))
        if msg_row is None:
            raise SignallingError(ErrorCode.NOT_FOUND, "no such message in this group")
        rows = await self.db.query(
            "SELECT username, delivered_seq, read_seq FROM group_members WHERE group_id = ? AND joined_seq <= ? "
            "AND (left_seq IS NULL OR left_seq >= ?) AND username != ? ORDER BY joined_at, username",
            (group_id, seq, seq, msg_row["sender"]))
        out: dict[str, list[str]] = {"delivered": [], "read": [], "waiting": []}
        for r in rows:
            if r["read_seq"] >= seq:
                out["read"].append(r["username"])
            if r["delivered_seq"] >= seq:
                out["delivered"].append(r["username"])
            else:
                out["waiting"].append(r["username"])
        return out

    async def can_read_group_media(self, user: str, media_id: str) -> bool:
        """A member who could see a group message carrying this media."""
        return await self.db.query_one(
            f"SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE m.media_id = ? "
            f"AND c.group_id IS NOT NULL AND {self._VISIBLE} LIMIT 1", (media_id, user)) is not None


@dataclass(frozen=True, slots=True)
class Member:
    """One period of membership: the member sees seq joined_seq..left_seq (None: still a member)."""

    username: str
    role: str                  # "admin" or "member"
    joined_seq: int
    joined_at: float
    left_seq: int | None
    delivered_seq: int
    read_seq: int

    def to_wire(self) -> dict[str, Any]:
        return {"username": self.username, "role": self.role, "joined_seq": self.joined_seq,
                "joined_at": round(self.joined_at, 3), "delivered_seq": self.delivered_seq,
                "read_seq": self.read_seq}


@dataclass(frozen=True, slots=True)
class Group:
    """A group and its current members, oldest member first."""

    id: str
    name: str
    created_by: str
    created_at: float
    conversation_id: int
    last_seq: int
    updated_at: float
    members: list[Member] = field(default_factory=list)

    def member(self, user: str) -> Member | None:
        return next((m for m in self.members if m.username == user), None)

    def is_admin(self, user: str) -> bool:
        m = self.member(user)
        return m is not None and m.role == "admin"

    @property
    def usernames(self) -> list[str]:
        return [m.username for m in self.members]


def _member(row: Row) -> Member:
    return Member(row["username"], row["role"], int(row["joined_seq"]), float(row["joined_at"]),
                  None if row["left_seq"] is None else int(row["left_seq"]), int(row["delivered_seq"]),
                  int(row["read_seq"]))
