"""The hub core's `Directory` (synchronous exists / contacts / watchers / display_name /
is_blocked) over the asynchronous `Accounts`, for either engine. `make_directory(accounts)`:

- SQLite: `SqliteDirectory` reads through: every lookup is one local query on the event-loop
  thread, as the core has always had it (the query never waits: `db.run_sync`).
- PostgreSQL: `CachedDirectory` answers from memory, so the pure core never waits on the
  network. It holds the people the core can be asked about: the users of this node's sessions,
  loaded by `await load(user)` when a socket authenticates and pinned until `release(user)`,
  and those a message names, loaded before the core sees it (`await ensure(callee)` before an
  invite, `await ensure(contact)` before `contact_added`). Others stay while there is room
  (least recently used go first). It is kept fresh by `refresh(users)`, which `Accounts` awaits
  after each of this node's writes, and by the notifications every node's writes send
  (NOTIFY jego_people); after the listening connection was lost, everything is reloaded.

The shells call `load`/`release`/`ensure` on either kind (on SQLite they do nothing). A lookup
the cache cannot answer (it should not happen) is counted in `misses`, logged, answered as
"nobody" and loaded for next time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .accounts import PEOPLE_CHANNEL, USERNAME_RE, Accounts
from .db import run_sync

log = logging.getLogger("jego.directory")

CAPACITY = 50_000  # people kept beyond the pinned ones


class LiveDirectory(Protocol):
    """A `hub_core.Directory` plus what the shells call to have it ready."""

    def exists(self, username: str) -> bool: ...

    def contacts(self, owner: str) -> list[str]: ...

    def watchers(self, username: str) -> list[str]: ...

    def display_name(self, username: str) -> str: ...

    def is_blocked(self, owner: str, other: str) -> bool: ...

    async def start(self) -> None:
        """Subscribe to the other nodes' changes (before serving)."""

    async def load(self, username: str) -> None:
        """Have everything about `username` ready and keep it until `release(username)`."""

    def release(self, username: str) -> None: ...

    async def ensure(self, *usernames: str) -> None:
        """Have these people ready (a callee, a new contact) for the next core input."""

    def ready(self, username: str) -> bool:
        """Whether the core's lookups about `username` answer from memory now (else `ensure`)."""


class SqliteDirectory:
    """Read-through lookups on the local SQLite database (never waits)."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def exists(self, username: str) -> bool:
        return run_sync(self.accounts.exists(username))

    def contacts(self, owner: str) -> list[str]:
        return run_sync(self.accounts.contacts(owner))

    def watchers(self, username: str) -> list[str]:
        return run_sync(self.accounts.watchers(username))

    def display_name(self, username: str) -> str:
        return run_sync(self.accounts.display_name(username))

    def is_blocked(self, owner: str, other: str) -> bool:
        return run_sync(self.accounts.is_blocked(owner, other))

    async def start(self) -> None:
        pass

    async def load(self, username: str) -> None:
        pass

    def release(self, username: str) -> None:
        pass

    async def ensure(self, *usernames: str) -> None:
        pass

    def ready(self, username: str) -> bool:
        return True


@dataclass(slots=True)
class Person:
    """What the core may ask about one username. `full` once contacts, watchers and blocks are in."""

    exists: bool
    display: str | None = None
    full: bool = False
    contacts: list[str] = field(default_factory=list)   # visible contacts: less those who blocked them
    watchers: list[str] = field(default_factory=list)
    blocks: set[str] = field(default_factory=set)       # whom they blocked
    blocked_by: set[str] = field(default_factory=set)   # who blocked them


class CachedDirectory:
    """In-memory people for the core on PostgreSQL (see the module doc)."""

    def __init__(self, accounts: Accounts, capacity: int = CAPACITY) -> None:
        self.accounts = accounts
        self.capacity = capacity
        self.people: OrderedDict[str, Person] = OrderedDict()
        self.pins: Counter[str] = Counter()
        self.misses = 0
        self.loads = 0
        self._versions: Counter[str] = Counter()   # bumped by every change: a load that raced one is redone
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the core's lookups (synchronous, from memory) ----------------------------------------------
    def _get(self, name: str, full: bool) -> Person | None:
        p = self.people.get(name)
        if p is None or (full and p.exists and not p.full):
            self.misses += 1
            log.warning("directory miss for %r (%s): loading it", name, "full" if full else "name")
            self._background(self._load(name, full))
            return None
        self.people.move_to_end(name)
        return p

    def exists(self, username: str) -> bool:
        if not USERNAME_RE.match(username):  # a phone number, a gateway: never a user
            return False
        p = self._get(username, False)
        return p is not None and p.exists

    def contacts(self, owner: str) -> list[str]:
        p = self._get(owner, True)
        return list(p.contacts) if p is not None else []

    def watchers(self, username: str) -> list[str]:
        p = self._get(username, True)
        return list(p.watchers) if p is not None else []

    def display_name(self, username: str) -> str:
        p = self._get(username, False) if USERNAME_RE.match(username) else None
        return p.display or username if p is not None else username

    def is_blocked(self, owner: str, other: str) -> bool:
        them = self.people.get(other)
        if them is not None and them.full:
            return owner in them.blocked_by
        me = self.people.get(owner)
        if me is not None and me.full:
            return other in me.blocks
        them = self._get(other, True)
        return them is not None and owner in them.blocked_by

    # -- what the shells call -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.accounts.db.listen(PEOPLE_CHANNEL, self._heard, self._reconnected)

    async def load(self, username: str) -> None:
        self.pins[username] += 1
        try:
            await self._ready(username, True)
        except BaseException:
            self.release(username)
            raise

    def release(self, username: str) -> None:
        if self.pins[username] <= 1:
            self.pins.pop(username, None)
        else:
            self.pins[username] -= 1

    async def ensure(self, *usernames: str) -> None:
        for name in usernames:
            if USERNAME_RE.match(name):
                await self._ready(name, True)

    def ready(self, username: str) -> bool:
        p = self.people.get(username)
        return p is not None and (p.full or not p.exists)

    async def refresh(self, usernames: Iterable[str]) -> None:
        """These people changed (contacts, blocks, name, a new account): reload those held."""
        for name in dict.fromkeys(usernames):
            self._versions[name] += 1
            p = self.people.get(name)
            if p is not None:
                await self._load(name, p.full or not p.exists)

    # -- loading ----------------------------------------------------------------------------------------
    async def _ready(self, name: str, full: bool) -> None:
        p = self.people.get(name)
        if p is None or (full and p.exists and not p.full):
            await self._load(name, full)
        else:
            self.people.move_to_end(name)

    async def _load(self, name: str, full: bool) -> None:
        while True:
            version = self._versions[name]
            person = await self._fetch(name, full)
            if self._versions[name] == version:  # no change came in meanwhile
                break
        self.loads += 1
        self.people[name] = person
        self.people.move_to_end(name)
        self._trim()

    async def _fetch(self, name: str, full: bool) -> Person:
        a = self.accounts
        row = await a.db.query_one("SELECT display_name FROM users WHERE username = ?", (name,))
        if row is None:
            return Person(False, full=True)
        p = Person(True, row["display_name"])
        if not full:
            return p
        p.contacts = await a.contacts(name)
        p.watchers = await a.watchers(name)
        p.blocks, p.blocked_by = await a.blocks_of(name)
        p.full = True
        # presence messages about the contacts carry their display names
        for contact, shown in (await a.display_names(c for c in p.contacts if c not in self.people)).items():
            self.people.setdefault(contact, Person(True, shown))
        return p

    def _trim(self) -> None:
        spare = len(self.people) - len(self.pins) - self.capacity
        if spare <= 0:
            return
        for name in list(self.people):
            if spare <= 0:
                break
            if name not in self.pins:
                del self.people[name]
                spare -= 1

    # -- notifications ------------------------------------------------------------------------------
    def _background(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._quietly(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except Exception as exc:  # PostgreSQL away: the next change or reconnect reloads it
            log.warning("directory reload failed: %s", exc)

    def _heard(self, payload: str) -> None:
        names = payload.split()
        for name in names:
            self._versions[name] += 1
        self._background(self.refresh(names))

    def _reconnected(self) -> None:
        """Changes may have been missed: forget who is not pinned, reload who is."""
        for name in list(self.people):
            if name not in self.pins:
                del self.people[name]
        log.info("directory: reloading %d people after the database connection came back", len(self.people))
        self._background(self.refresh(list(self.people)))


def make_directory(accounts: Accounts) -> SqliteDirectory | CachedDirectory:
    """The core's directory for the engine `accounts` runs on."""
    if accounts.db.engine == "sqlite":
        return SqliteDirectory(accounts)
    return CachedDirectory(accounts)
