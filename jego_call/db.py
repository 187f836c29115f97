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
        for version, script in sorted(MIGRATIONS):
            if version <= current:
                continue
            with self.transaction():
                for statement in _split(script):
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))

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
