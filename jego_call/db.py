"""Storage: one async API over SQLite (the default) and PostgreSQL (`[db] url`).

    db = await open_database(cfg)            # SQLite in DATA/jego.sqlite3, or a PostgreSQL pool
    rows = await db.query("SELECT username FROM users WHERE created_at > ?", (t,))
    async with db.transaction() as tx:       # BEGIN IMMEDIATE ... COMMIT, or a pooled PG transaction
        row = await tx.query_one("UPDATE ... RETURNING id", (...))
        await tx.execute("INSERT ...", (...))
    await db.close()

The stores (accounts, calllog, messaging, billing) write their SQL once, with `?` placeholders,
in the subset both engines share: ON CONFLICT ... DO NOTHING / DO UPDATE (with the target
table's name, `t.col`, on the right of SET), RETURNING, partial indexes, CASE instead of SQLite's
scalar MAX(a, b); no INSERT OR ..., no rowid. PostgreSQL gets `$1, $2 ...` for the `?`s.

SQLite runs on the event-loop thread exactly as before: its coroutines never wait, so nothing
interleaves inside a transaction, and `run_sync(coro)` runs one to its end without a loop (the
CLI's and tests' synchronous paths, the hub core's SQLite `Directory`). PostgreSQL (asyncpg)
has a connection pool; a transaction is one pooled connection, and `tx.lock(key)` serialises
transactions that must not interleave (an advisory lock; SQLite's BEGIN IMMEDIATE already does).
A lost or unreachable server raises `StorageUnavailable` (wire code service_unavailable), never
hangs longer than `[db] connect_timeout_s` / `command_timeout_s`; the pool reconnects by itself
when the server is back.

Schema: MIGRATIONS, run by `migrate()` for both engines (append only: a migration, once
released, never changes). On PostgreSQL each statement's column types are translated
(`_postgres_ddl`: INTEGER PRIMARY KEY -> BIGINT identity, INTEGER -> BIGINT, REAL -> DOUBLE
PRECISION, TEXT -> TEXT COLLATE "C" so text compares and sorts by code point as in SQLite); a
migration that cannot be translated (an SQLite table rebuild) gives its PostgreSQL form in
POSTGRES_MIGRATIONS. Nodes starting at once migrate one at a time (an advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .errors import ConfigError, ErrorCode, SignallingError

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("jego.db")

_T = TypeVar("_T")

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
    # 8: shared secrets (jego_call/accounts.py load_shared_secret). On PostgreSQL every node signs
    # and checks tokens with the same key, so it is kept here; SQLite keeps DATA/secret.key.
    (8, """
        CREATE TABLE secrets (
            name       TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            created_at REAL NOT NULL
        );
    """),
]

# PostgreSQL forms of migrations whose SQLite script `_postgres_ddl` cannot translate (e.g. a
# table rebuild: SQLite cannot drop a constraint, PostgreSQL says ALTER TABLE ... DROP CONSTRAINT).
POSTGRES_MIGRATIONS: dict[int, str] = {
    # 6 (groups): the same end state as SQLite's rebuild, in place. The constraint names are the
    # ones PostgreSQL gave migration 2's unnamed CHECKs (table_column_check, table_check).
    6: """
        ALTER TABLE conversations ALTER COLUMN user_a DROP NOT NULL;
        ALTER TABLE conversations ALTER COLUMN user_b DROP NOT NULL;
        ALTER TABLE conversations ADD COLUMN group_id TEXT UNIQUE;
        ALTER TABLE conversations DROP CONSTRAINT conversations_check;
        ALTER TABLE conversations ADD CONSTRAINT conversations_check
            CHECK ((group_id IS NULL AND user_a IS NOT NULL AND user_b IS NOT NULL AND user_a < user_b)
                   OR (group_id IS NOT NULL AND user_a IS NULL AND user_b IS NULL));
        ALTER TABLE messages ALTER COLUMN recipient DROP NOT NULL;
        ALTER TABLE messages DROP CONSTRAINT messages_kind_check;
        ALTER TABLE messages ADD CONSTRAINT messages_kind_check
            CHECK (kind IN ('text', 'photo', 'voice', 'file', 'system'));
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
    """,
}

MIGRATION_LOCK = "jego schema migrations"


# --- errors -------------------------------------------------------------------------------------

class StorageUnavailable(SignallingError):
    """The database cannot be reached (or did not answer in time): nothing was stored. Travels
    as service_unavailable (HTTP 503); the client may retry (messages: with the same client_id)."""

    def __init__(self, message: str = "storage is unavailable: try again in a moment") -> None:
        super().__init__(ErrorCode.SERVICE_UNAVAILABLE, message)


class UniqueViolation(Exception):
    """An INSERT or UPDATE broke a UNIQUE or PRIMARY KEY constraint (either engine). Inside a
    transaction it ends the transaction: let it leave the `async with`, then read what won."""


# --- the API the stores use ---------------------------------------------------------------------

class Row(Protocol):
    """A result row: by column name or position (sqlite3.Row, asyncpg.Record), and dict(row)."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Executor(Protocol):
    """What SQL runs on: a `Database` (each statement on its own) or a transaction."""

    engine: str

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[Row]: ...

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None: ...

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every node's `listen(channel)` (PostgreSQL NOTIFY, sent at commit); SQLite: nothing
        (one process)."""


class Transaction(Executor, Protocol):
    async def lock(self, key: str) -> None:
        """Wait until no other transaction holds `key`, then hold it until this one ends."""


def run_sync(aw: Coroutine[Any, Any, _T]) -> _T:
    """Run a storage coroutine that never waits (SQLite's) to its end, on this thread, with or
    without an event loop. RuntimeError if it did wait (PostgreSQL: await it instead)."""
    try:
        aw.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    aw.close()
    raise RuntimeError("run_sync: this storage operation has to wait (PostgreSQL): await it instead")


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


_DDL = re.compile(r"^\s*(CREATE\s+TABLE|ALTER\s+TABLE)\b", re.IGNORECASE)


def _postgres_ddl(statement: str) -> str:
    """One SQLite migration statement in PostgreSQL's types (see the module doc)."""
    if not _DDL.match(statement):
        return statement
    s = re.sub(r"\bINTEGER PRIMARY KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", statement)
    s = re.sub(r"\bINTEGER\b", "BIGINT", s)
    s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s)
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', s)


def migration_statements(version: int, script: str, engine: str) -> list[str]:
    """The statements migration `version` runs on `engine` ("sqlite" or "postgresql")."""
    if engine == "postgresql":
        return [_postgres_ddl(s) for s in _split(POSTGRES_MIGRATIONS.get(version, script))]
    return _split(script)


@functools.lru_cache(maxsize=2048)
def postgres_sql(sql: str) -> str:
    """`sql` with its `?` placeholders numbered `$1, $2 ...` (not inside quoted text)."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


class Database(ABC):
    """One database, either engine. Use `open_database(cfg)` (async) in the server; the
    synchronous `Database.open(path)` opens (and migrates) an SQLite file for tools and tests."""

    engine: str = ""

    @staticmethod
    def open(path: str | Path) -> SqliteDatabase:
        return SqliteDatabase.open(path)

    @abstractmethod
    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int: ...

    @abstractmethod
    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[Row]: ...

    @abstractmethod
    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None: ...

    @abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """`async with db.transaction() as tx:` commit at the end, roll back on any exception."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def describe(self) -> str:
        """For logs: the engine and where (never a password)."""

    async def notify(self, channel: str, payload: str) -> None:  # noqa: B027 - SQLite: nobody to tell
        """See Executor.notify (outside a transaction: sent at once)."""

    async def listen(self, channel: str, on_message: Callable[[str], None],  # noqa: B027 - SQLite: nothing to hear
                     on_reconnect: Callable[[], None] | None = None) -> None:
        """Call `on_message(payload)` for every notify on `channel` from any node, this one
        included. If the listening connection was lost, `on_reconnect()` runs when it is back
        (what was notified meanwhile is lost: reload what you keep). SQLite: nothing to hear."""

    async def ping(self) -> bool:
        """Whether the database answers now (for /healthz)."""
        return True

    async def migrate(self) -> None:
        """Bring the schema up to the last of MIGRATIONS, one transaction per migration."""
        async with self.transaction() as tx:
            await tx.lock(MIGRATION_LOCK)
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for version, script in sorted(MIGRATIONS):
            async with self.transaction() as tx:
                await tx.lock(MIGRATION_LOCK)  # another node may be migrating: one at a time
                row = await tx.query_one("SELECT MAX(version) FROM schema_version")
                if version <= int((row[0] if row is not None else None) or 0):
                    continue
                for statement in migration_statements(version, script, self.engine):
                    await tx.execute(statement)
                await self._check_migration(tx, version)
                await tx.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
                log.info("database schema migrated to version %d (%s)", version, self.engine)

    async def _check_migration(self, tx: Transaction, version: int) -> None:  # noqa: B027 - PostgreSQL checks at once
        """Raise if migration `version` left the data inconsistent (before it commits)."""


# --- SQLite -------------------------------------------------------------------------------------

def _unique(exc: sqlite3.IntegrityError) -> bool:
    return "UNIQUE constraint failed" in str(exc)


class SqliteDatabase(Database):
    """SQLite (WAL) on one connection, used from the event-loop thread. Its coroutines never wait."""

    engine = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._tx_lock = asyncio.Lock()  # only ever contended if a transaction's body really waits

    @classmethod
    def open(cls, path: str | Path) -> SqliteDatabase:
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
        run_sync(db.migrate())
        return db

    def _run(self, sql: str, params: Iterable[Any]) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            if _unique(exc):
                raise UniqueViolation(str(exc)) from exc
            raise

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        return self._run(sql, params).rowcount

    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        rows: list[Row] = self._run(sql, params).fetchall()
        return rows

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        row: Row | None = self._run(sql, params).fetchone()
        return row

    async def lock(self, key: str) -> None:
        """BEGIN IMMEDIATE has every write transaction to itself already."""

    async def migrate(self) -> None:
        """Foreign keys off while migrating, so a table can be rebuilt (sqlite.org/lang_altertable.html
        "Making Other Kinds Of Table Schema Changes"); each migration is checked before it commits."""
        self.conn.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: outside
        try:
            await super().migrate()
        finally:
            self.conn.execute("PRAGMA foreign_keys=ON")

    async def _check_migration(self, tx: Transaction, version: int) -> None:
        bad = self.conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise sqlite3.IntegrityError(f"migration {version} breaks foreign keys: {[tuple(r) for r in bad[:5]]}")

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        async with self._tx_lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    async def close(self) -> None:
        self.conn.close()

    def describe(self) -> str:
        return f"SQLite {self.path}"


# --- PostgreSQL ---------------------------------------------------------------------------------

def _connection_errors() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
            asyncpg.exceptions.InternalClientError)


def safe_url(url: str) -> str:
    """`url` without its password (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets (RFC 3986 §3.2.2)
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class _QuietPoolLog(logging.Filter):
    """asyncpg's pool logs every failed attempt to refill itself with a whole traceback while the
    server is away; our own "PostgreSQL is unreachable" line says it once. Keep one line of
    theirs, without the traceback, every `every_s` seconds."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last = -every_s

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            record.args = None
            record.exc_info = record.exc_text = None
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True


_POOL_LOG = logging.getLogger("asyncpg.pool")
if not any(isinstance(f, _QuietPoolLog) for f in _POOL_LOG.filters):
    _POOL_LOG.addFilter(_QuietPoolLog())


class _PgExecutor:
    """Statements on one asyncpg connection (a transaction's)."""

    engine = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        import asyncpg

        try:
            status = await self.conn.execute(postgres_sql(sql), *params)
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc
        tail = str(status).rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        import asyncpg

        try:
            rows: list[Row] = await self.conn.fetch(postgres_sql(sql), *params)
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc
        return rows

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        rows = await self.query(sql, params)
        return rows[0] if rows else None

    async def notify(self, channel: str, payload: str) -> None:
        await self.conn.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def lock(self, key: str) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool. `await PostgresDatabase.connect(url, ...)`."""

    engine = "postgresql"

    def __init__(self, pool: Any, url: str, connect_timeout_s: float, command_timeout_s: float) -> None:
        self.pool = pool
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.available = True
        self._errors = _connection_errors()
        self._channels: dict[str, list[tuple[Callable[[str], None], Callable[[], None] | None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def connect(cls, url: str, *, pool_min: int = 1, pool_max: int = 10, connect_timeout_s: float = 2.0,
                      command_timeout_s: float = 5.0) -> PostgresDatabase:
        """A pool on `url` (postgresql://user[:password]@host[:port]/dbname) and the schema
        migrated; StorageUnavailable if the server cannot be reached."""
        import asyncpg

        try:
            pool = await asyncpg.create_pool(url, min_size=pool_min, max_size=pool_max, timeout=connect_timeout_s,
                                             command_timeout=command_timeout_s,
                                             max_inactive_connection_lifetime=60.0)
        except _connection_errors() as exc:
            raise StorageUnavailable(f"cannot reach PostgreSQL at {safe_url(url)}: {exc}") from None
        db = cls(pool, url, connect_timeout_s, command_timeout_s)
        await db.migrate()
        return db

    def describe(self) -> str:
        return f"PostgreSQL {safe_url(self.url)} (pool {self.pool.get_min_size()}-{self.pool.get_max_size()})"

    def _down(self, exc: BaseException) -> StorageUnavailable:
        if self.available:
            log.error("PostgreSQL is unreachable (%s): refusing what needs it until it answers again",
                      f"{type(exc).__name__}: {exc}".rstrip(": "))
        self.available = False
        return StorageUnavailable()

    def _up(self) -> None:
        if not self.available:
            log.warning("PostgreSQL answers again")
            self.available = True

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_PgExecutor]:
        if self._closed:
            raise StorageUnavailable("the database is closed (shutting down)")
        try:
            async with self.pool.acquire(timeout=self.connect_timeout_s + self.command_timeout_s) as conn:
                yield _PgExecutor(conn)
        except self._errors as exc:
            raise self._down(exc) from exc
        self._up()

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        async with self._connection() as c:
            return await c.execute(sql, params)

    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self._connection() as c:
            return await c.query(sql, params)

    async def query_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        async with self._connection() as c:
            return await c.query_one(sql, params)

    async def notify(self, channel: str, payload: str) -> None:
        async with self._connection() as c:
            await c.notify(channel, payload)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One pooled connection's transaction (READ COMMITTED); commit at the end."""
        async with self._connection() as c, c.conn.transaction():
            yield c

    async def ping(self) -> bool:
        try:
            async with self._connection() as c:
                await c.query("SELECT 1")
        except StorageUnavailable:
            return False
        return True

    async def listen(self, channel: str, on_message: Callable[[str], None],
                     on_reconnect: Callable[[], None] | None = None) -> None:
        self._channels.setdefault(channel, []).append((on_message, on_reconnect))
        if self._listener is None:
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._listener = asyncio.get_running_loop().create_task(self._listen(ready), name="pg-listen")
            await asyncio.wait([ready, self._listener], timeout=self.connect_timeout_s + 1,
                               return_when=asyncio.FIRST_COMPLETED)

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        """One connection outside the pool that LISTENs; reconnects (with back-off) when lost."""
        import asyncpg

        backoff = 0.2
        connected_before = False
        while not self._closed:
            try:
                conn = await asyncpg.connect(self.url, timeout=self.connect_timeout_s)
            except self._errors as exc:
                log.debug("LISTEN connection failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                for channel, handlers in self._channels.items():
                    def hear(_c: Any, _pid: int, _channel: str, payload: str,
                             handlers: list[Any] = handlers) -> None:
                        for on_message, _ in handlers:
                            try:
                                on_message(payload)
                            except Exception:  # a listener's bug must not stop the others
                                log.exception("notify handler failed")
                    await conn.add_listener(channel, hear)
                if connected_before:
                    for handlers in self._channels.values():
                        for _, on_reconnect in handlers:
                            if on_reconnect is not None:
                                on_reconnect()
                connected_before = True
                if not ready.done():
                    ready.set_result(None)
                while not lost.is_set() and not self._closed:
                    try:
                        await asyncio.wait_for(lost.wait(), 2.0)
                    except TimeoutError:  # a silent network loss: ask
                        await conn.execute("SELECT 1", timeout=self.command_timeout_s)
            except self._errors:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1.0)
            if not self._closed:
                await asyncio.sleep(backoff)

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        try:
            await asyncio.wait_for(self.pool.close(), 5.0)
        except Exception:  # connections that hang or are gone: drop them
            self.pool.terminate()


# --- opening ------------------------------------------------------------------------------------

def sqlite_path(cfg: Config) -> Path:
    """Where the embedded database lives: DATA/jego.sqlite3."""
    return cfg.data_dir / "jego.sqlite3"


async def open_database(cfg: Config) -> Database:
    """The database `cfg` names: `[db] url` "" (the default) is SQLite in DATA/jego.sqlite3,
    `postgresql://...` a PostgreSQL pool; migrated either way. StorageUnavailable if PostgreSQL
    cannot be reached."""
    url = cfg.db.url
    if not url:
        return SqliteDatabase.open(sqlite_path(cfg))
    if url.startswith(("postgresql://", "postgres://")):
        t0 = time.monotonic()
        db = await PostgresDatabase.connect(url, pool_min=cfg.db.pool_min, pool_max=cfg.db.pool_max,
                                            connect_timeout_s=cfg.db.connect_timeout_s,
                                            command_timeout_s=cfg.db.command_timeout_s)
        log.info("storage: %s, ready in %.0f ms", db.describe(), (time.monotonic() - t0) * 1000)
        return db
    raise ConfigError("db.url", f"expected '' (SQLite) or postgresql://..., got {safe_url(url)!r}")
