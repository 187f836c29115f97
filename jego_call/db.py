"""SQLite storage (WAL mode). One connection per process, used from the event loop thread.

Call `Database.open(path)` once, then `migrate()`; other modules add their schema by
registering migrations in MIGRATIONS (append only: a migration, once released, never changes).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# (version, SQL script). Append new entries; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE users (
            username      TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            created_at    REAL NOT NULL
        );
        CREATE TABLE contacts (
            owner      TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            contact    TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            PRIMARY KEY (owner, contact)
        );
        CREATE INDEX contacts_by_contact ON contacts(contact);
    """),
    # 2: messaging (jego_call/messaging/store.py). One conversation per pair of users (user_a <
    # user_b); messages numbered 1, 2, 3 ... per conversation; media files live on disk under
    # DATA/media, content-addressed by sha256, and rows here point to them.
    (2, """
        CREATE TABLE conversations (
            id         INTEGER PRIMARY KEY,
            user_a     TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            user_b     TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            last_seq   INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (user_a, user_b),
            CHECK (user_a < user_b)
        );
        CREATE INDEX conversations_by_b ON conversations(user_b);
        CREATE TABLE media (
            id           TEXT PRIMARY KEY,
            owner        TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            kind         TEXT NOT NULL CHECK (kind IN ('photo', 'voice', 'file')),
            mime         TEXT NOT NULL,
            size         INTEGER NOT NULL,
            sha256       TEXT NOT NULL,
            filename     TEXT,
            width        INTEGER,
            height       INTEGER,
            duration_s   REAL,
            thumb_sha256 TEXT,
            created_at   REAL NOT NULL
        );
        CREATE INDEX media_by_sha ON media(sha256);
        CREATE TABLE messages (
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq             INTEGER NOT NULL,
            sender          TEXT NOT NULL,
            recipient       TEXT NOT NULL,
            client_id       TEXT NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN ('text', 'photo', 'voice', 'file')),
            body            TEXT,
            media_id        TEXT REFERENCES media(id),
            created_at      REAL NOT NULL,
            delivered_at    REAL,
            read_at         REAL,
            PRIMARY KEY (conversation_id, seq),
            UNIQUE (sender, client_id)
        );
        CREATE INDEX messages_undelivered ON messages(recipient, conversation_id, seq) WHERE delivered_at IS NULL;
        CREATE INDEX messages_unread ON messages(recipient, conversation_id) WHERE read_at IS NULL;
        CREATE INDEX messages_by_media ON messages(media_id) WHERE media_id IS NOT NULL;
    """),
    (3, """
        CREATE TABLE calls (
            call_id     TEXT PRIMARY KEY,
            caller      TEXT NOT NULL,
            callee      TEXT NOT NULL,
            caller_kind TEXT NOT NULL,
            callee_kind TEXT NOT NULL,
            media       TEXT NOT NULL,
            started_at  REAL NOT NULL,
            answered_at REAL,
            ended_at    REAL NOT NULL,
            outcome     TEXT NOT NULL,
            sip_code    INTEGER,
            q850_cause  INTEGER,
            codec       TEXT,
            app_stats   TEXT,
            phone_stats TEXT
        );
        CREATE INDEX calls_by_caller ON calls(caller, started_at);
        CREATE INDEX calls_by_callee ON calls(callee, started_at);
    """),
    # 4: people (jego_call/accounts.py): a display name shown beside the username (NULL: the
    # username), and blocks: `owner` has blocked `blocked` (no calls, messages or presence from them).
    (4, """
        ALTER TABLE users ADD COLUMN display_name TEXT;
        CREATE TABLE blocks (
            owner      TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            blocked    TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            PRIMARY KEY (owner, blocked)
        );
        CREATE INDEX blocks_by_blocked ON blocks(blocked);
    """),
    # 5: prepaid credit (jego_call/billing/store.py). Money is INTEGER minor units of `currency`.
    # credit_accounts.balance is the sum of the user's ledger amounts (kept in the same
    # transaction). call_charges is the billing record of one phone call, written when it is
    # authorised (before any SIP), with the money it holds while open; answered_at/last_seen let
    # recovery bill a call left open by a crash for the time it was really up. The UNIQUE call_id
    # in the ledger makes a second charge for one call impossible.
    (5, """
        CREATE TABLE credit_accounts (
            username   TEXT PRIMARY KEY REFERENCES users(username) ON DELETE CASCADE,
            balance    INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
            currency   TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE credit_ledger (
            id            INTEGER PRIMARY KEY,
            username      TEXT NOT NULL,
            at            REAL NOT NULL,
            kind          TEXT NOT NULL CHECK (kind IN ('topup', 'adjustment', 'call')),
            amount        INTEGER NOT NULL,
            balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
            currency      TEXT NOT NULL,
            call_id       TEXT UNIQUE,
            note          TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX credit_ledger_by_user ON credit_ledger(username, id);
        CREATE TABLE call_charges (
            call_id        TEXT PRIMARY KEY,
            username       TEXT NOT NULL,
            destination    TEXT NOT NULL,
            description    TEXT NOT NULL DEFAULT '',
            rate_prefix    TEXT NOT NULL,
            per_minute     INTEGER NOT NULL,
            first_s        INTEGER NOT NULL,
            next_s         INTEGER NOT NULL,
            connection_fee INTEGER NOT NULL,
            currency       TEXT NOT NULL,
            hold           INTEGER NOT NULL CHECK (hold >= 0),
            allowed_s      INTEGER NOT NULL,
            cut_reason     TEXT NOT NULL,
            authorised_at  REAL NOT NULL,
            answered_at    REAL,
            last_seen      REAL,
            state          TEXT NOT NULL CHECK (state IN ('open', 'settled')),
            ended_at       REAL,
            billed_s       INTEGER,
            cost           INTEGER,
            balance_after  INTEGER,
            settled_at     REAL,
            settled_by     TEXT
        );
        CREATE INDEX call_charges_open ON call_charges(username) WHERE state = 'open';
        CREATE INDEX call_charges_by_user ON call_charges(username, authorised_at);
        CREATE TABLE phone_suspensions (
            username TEXT PRIMARY KEY,
            at       REAL NOT NULL,
            rule     TEXT NOT NULL,
            en       TEXT NOT NULL,
            zh       TEXT NOT NULL
        );
        CREATE TABLE fraud_events (
            id       INTEGER PRIMARY KEY,
            username TEXT NOT NULL,
            at       REAL NOT NULL,
            level    TEXT NOT NULL CHECK (level IN ('warning', 'critical', 'lifted')),
            rule     TEXT NOT NULL,
            detail   TEXT NOT NULL,
            call_id  TEXT
        );
        CREATE INDEX fraud_events_by_user ON fraud_events(username, at);
    """),
    # 6: groups (jego_call/messaging/store.py, jego_call/groups/). A conversation is a pair of
    # users or a group (group_id; user_a/user_b NULL); group messages have recipient NULL and
    # may be 'system' lines (membership changes, body JSON). Members have one row per period of
    # membership, seen messages joined_seq..left_seq, with cumulative receipt watermarks.
    # conversations and messages are rebuilt (SQLite cannot drop NOT NULL/CHECK constraints):
    # Database.migrate runs migrations with foreign keys off and checks them after each one.
    (6, """
        CREATE TABLE conversations_v5 (
            id         INTEGER PRIMARY KEY,
            user_a     TEXT REFERENCES users(username) ON DELETE CASCADE,
            user_b     TEXT REFERENCES users(username) ON DELETE CASCADE,
            group_id   TEXT UNIQUE,
            last_seq   INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (user_a, user_b),
            CHECK ((group_id IS NULL AND user_a IS NOT NULL AND user_b IS NOT NULL AND user_a < user_b)
                   OR (group_id IS NOT NULL AND user_a IS NULL AND user_b IS NULL))
        );
        INSERT INTO conversations_v5(id, user_a, user_b, last_seq, created_at, updated_at)
            SELECT id, user_a, user_b, last_seq, created_at, updated_at FROM conversations;
        DROP TABLE conversations;
        ALTER TABLE conversations_v5 RENAME TO conversations;
        CREATE INDEX conversations_by_b ON conversations(user_b);
        CREATE TABLE messages_v5 (
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq             INTEGER NOT NULL,
            sender          TEXT NOT NULL,
            recipient       TEXT,
            client_id       TEXT NOT NULL,
            kind            TEXT NOT NULL CHECK (kind IN ('text', 'photo', 'voice', 'file', 'system')),
            body            TEXT,
            media_id        TEXT REFERENCES media(id),
            created_at      REAL NOT NULL,
            delivered_at    REAL,
            read_at         REAL,
            PRIMARY KEY (conversation_id, seq),
            UNIQUE (sender, client_id)
        );
        INSERT INTO messages_v5(conversation_id, seq, sender, recipient, client_id, kind, body, media_id,
                                created_at, delivered_at, read_at)
            SELECT conversation_id, seq, sender, recipient, client_id, kind, body, media_id, created_at,
                   delivered_at, read_at FROM messages;
        DROP TABLE messages;
        ALTER TABLE messages_v5 RENAME TO messages;
        CREATE INDEX messages_undelivered ON messages(recipient, conversation_id, seq) WHERE delivered_at IS NULL;
        CREATE INDEX messages_unread ON messages(recipient, conversation_id) WHERE read_at IS NULL;
        CREATE INDEX messages_by_media ON messages(media_id) WHERE media_id IS NOT NULL;
        CREATE TABLE groups (
            id              TEXT PRIMARY KEY,
            name            TEXT NOT NULL,
            created_by      TEXT NOT NULL,
            created_at      REAL NOT NULL,
            conversation_id INTEGER NOT NULL UNIQUE REFERENCES conversations(id)
        );
        CREATE TABLE group_members (
            group_id      TEXT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
            username      TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
            joined_seq    INTEGER NOT NULL,
            joined_at     REAL NOT NULL,
            left_seq      INTEGER,
            delivered_seq INTEGER NOT NULL DEFAULT 0,
            read_seq      INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (group_id, username, joined_seq)
        );
        CREATE UNIQUE INDEX group_members_current ON group_members(group_id, username) WHERE left_seq IS NULL;
        CREATE INDEX group_members_by_user ON group_members(username, group_id);
    """),
    # 7: call quality (jego_call/quality.py, the G.107 E-model): the call's MOS and R-factor, from
    # the endpoints' reports (app calls) or the bridge's call_report (phone calls); NULL: unknown.
    (7, """
        ALTER TABLE calls ADD COLUMN mos REAL;
        ALTER TABLE calls ADD COLUMN r_factor REAL;
    """),
]


class Database:
    """A thin wrapper over one sqlite3 connection: `execute`, `query`, `transaction`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> Database:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a process crash (kill -9): commits are in the WAL file the OS
        # already holds; FULL would also survive power loss at the cost of one fsync per commit.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        db = cls(conn, p)
        db.migrate()
        return db

    def migrate(self) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        pending = [(v, s) for v, s in sorted(MIGRATIONS) if v > current]
        if not pending:
            return
        # Foreign keys off while migrating, so a table can be rebuilt (sqlite.org/lang_altertable.html
        # "Making Other Kinds Of Table Schema Changes"); each migration is checked before it commits.
        self.conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for version, script in pending:
                with self.transaction():
                    for statement in _split(script):
                        self.conn.execute(statement)
                    bad = self.conn.execute("PRAGMA foreign_key_check").fetchall()
                    if bad:
                        raise sqlite3.IntegrityError(f"migration {version} breaks foreign keys: {bad[:5]}")
                    self.conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
        finally:
            self.conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(params))

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def query_one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, tuple(params)).fetchone()
        return row

    def close(self) -> None:
        self.conn.close()


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
