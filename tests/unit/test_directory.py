"""jego_call/directory.py: the hub core's synchronous Directory over Accounts. `SqliteDirectory`
reads through; `CachedDirectory` (what PostgreSQL nodes use) answers from memory, here over a
real SQLite `Accounts`: a miss is counted, answered as "nobody" and loaded for next time; pinned
people stay beyond the capacity, the least recently used others go; a change heard (our own
write or another node's NOTIFY) reloads exactly who is held; a load that raced a change is
redone; after a reconnect only the pinned remain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from jego_call.accounts import Accounts
from jego_call.config import AuthConfig
from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.directory import CachedDirectory, Person, SqliteDirectory, make_directory


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path / "jego.sqlite3")
    yield database
    run_sync(database.close())


async def people(accounts: Accounts, *names: str) -> None:
    for n in names:
        await accounts.create(n, "x", display_name=n.capitalize())


@pytest.fixture
def accounts(db: SqliteDatabase) -> Accounts:
    return Accounts(db, b"k" * 32, AuthConfig())


async def settle(d: CachedDirectory) -> None:
    """Wait for the directory's background loads."""
    while d._tasks:
        await asyncio.gather(*d._tasks)


def test_sqlite_gets_the_read_through_directory(accounts: Accounts) -> None:
    assert isinstance(make_directory(accounts), SqliteDirectory)


async def test_read_through_answers_from_the_database_at_once(accounts: Accounts) -> None:
    d = SqliteDirectory(accounts)
    await people(accounts, "alice", "bob", "carol")
    await accounts.add_contact("alice", "bob")
    await accounts.block("carol", "alice")
    assert d.exists("alice") and not d.exists("nobody")
    assert d.contacts("alice") == ["bob"] and d.watchers("bob") == ["alice"]
    assert d.display_name("bob") == "Bob" and d.display_name("nobody") == "nobody"
    assert d.is_blocked("carol", "alice") and not d.is_blocked("alice", "carol")
    await d.start()
    await d.load("alice")
    d.release("alice")
    await d.ensure("bob")                             # nothing to do on SQLite, and no error


async def test_a_cold_lookup_is_a_counted_miss_then_answered(accounts: Accounts) -> None:
    d = CachedDirectory(accounts)
    await people(accounts, "alice", "bob")
    await accounts.add_contact("alice", "bob")
    assert d.exists("alice") is False and d.misses == 1        # "nobody" now ...
    assert d.contacts("alice") == [] and d.misses == 2
    await settle(d)
    assert d.exists("alice") is True and d.contacts("alice") == ["bob"]   # ... loaded for next time
    assert d.misses == 2


async def test_phone_numbers_are_never_users_and_never_misses(accounts: Accounts) -> None:
    d = CachedDirectory(accounts)
    assert d.exists("+8613800138000") is False
    assert d.display_name("+8613800138000") == "+8613800138000"
    await d.ensure("+8613800138000", "GW")
    assert d.misses == 0 and d.people == {}


async def test_load_gives_everything_about_a_person_and_their_contacts_names(accounts: Accounts) -> None:
    d = CachedDirectory(accounts)
    await people(accounts, "alice", "bob", "carol")
    await accounts.add_contact("alice", "bob")
    await accounts.add_contact("carol", "alice")
    await accounts.block("alice", "carol")
    await d.load("alice")
    assert d.contacts("alice") == ["bob"] and d.watchers("alice") == []   # carol is blocked
    assert d.display_name("bob") == "Bob"                 # came with alice's contacts
    assert d.is_blocked("alice", "carol") and not d.is_blocked("carol", "alice")
    assert d.misses == 0
    assert d.people["bob"] == Person(True, "Bob")         # name only, not full


async def test_an_unknown_person_is_remembered_as_nobody(accounts: Accounts) -> None:
    d = CachedDirectory(accounts)
    await d.ensure("ghost")
    assert d.exists("ghost") is False and d.contacts("ghost") == [] and d.misses == 0
    loads = d.loads
    await d.ensure("ghost")
    assert d.loads == loads                                # held: not fetched again


async def test_is_blocked_asks_the_full_side_it_has(accounts: Accounts) -> None:
    d = CachedDirectory(accounts)
    await people(accounts, "alice", "bob")
    await accounts.block("bob", "alice")
    await d.load("alice")                                  # only alice is full
    assert d.is_blocked("bob", "alice") is True            # alice's blocked_by knows
    assert d.is_blocked("alice", "bob") is False
    assert d.misses == 0
    d2 = CachedDirectory(accounts)
    await d2.load("bob")                                   # only bob is full
    assert d2.is_blocked("bob", "alice") is True and d2.misses == 0


async def test_pinned_people_stay_beyond_capacity_and_the_least_recent_go(accounts: Accounts) -> None:
    d = CachedDirectory(accounts, capacity=2)
    await people(accounts, "pinned", "user1", "user2", "user3")
    await d.load("pinned")
    await d.ensure("user1")
    await d.ensure("user2")
    assert set(d.people) == {"pinned", "user1", "user2"}
    assert d.exists("user1")                                  # u1 is now more recent than u2
    await d.ensure("user3")
    assert set(d.people) == {"pinned", "user1", "user3"}
    d.release("pinned")
    await d.ensure("user2")
    assert "pinned" not in d.people and len(d.people) == 2


async def test_pins_count_and_a_failed_load_takes_its_pin_back(accounts: Accounts,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    d = CachedDirectory(accounts)
    await people(accounts, "alice")
    await d.load("alice")
    await d.load("alice")
    d.release("alice")
    assert d.pins["alice"] == 1
    d.release("alice")
    assert "alice" not in d.pins
    d.release("alice")                                     # more releases than loads: harmless
    assert "alice" not in d.pins

    async def down(name: str, full: bool) -> Person:
        raise ConnectionError("database away")

    monkeypatch.setattr(d, "_fetch", down)
    with pytest.raises(ConnectionError):
        await d.load("bob")
    assert "bob" not in d.pins


async def test_our_own_writes_refresh_who_is_held(db: SqliteDatabase) -> None:
    holder: list[CachedDirectory] = []

    async def on_change(users: tuple[str, ...]) -> None:
        await holder[0].refresh(users)

    accounts = Accounts(db, b"k" * 32, AuthConfig(), on_change=on_change)
    d = CachedDirectory(accounts)
    holder.append(d)
    await people(accounts, "alice", "bob")
    await d.load("alice")
    await d.load("bob")
    await accounts.add_contact("alice", "bob")
    assert d.contacts("alice") == ["bob"] and d.watchers("bob") == ["alice"]
    await accounts.set_display_name("bob", "Robert")
    assert d.display_name("bob") == "Robert"
    await accounts.block("bob", "alice")
    assert d.contacts("alice") == [] and d.is_blocked("bob", "alice")
    await d.ensure("carol")                                # nobody yet
    await accounts.create("carol", "x")                    # a new account: refreshed as "exists" now
    assert d.exists("carol")


async def test_a_change_heard_from_another_node_reloads_in_the_background(accounts: Accounts) -> None:
    d = CachedDirectory(accounts)
    await people(accounts, "alice", "bob")
    await d.load("alice")
    await accounts.add_contact("alice", "bob")             # written by "another node": we were not told
    assert d.contacts("alice") == []
    d._heard("alice bob")
    await settle(d)
    assert d.contacts("alice") == ["bob"]
    assert "bob" in d.people                                # came as alice's contact's name


async def test_a_load_that_raced_a_change_is_redone(accounts: Accounts, monkeypatch: pytest.MonkeyPatch) -> None:
    d = CachedDirectory(accounts)
    await people(accounts, "alice", "bob")
    real = d._fetch
    calls = 0

    async def racing(name: str, full: bool) -> Person:
        nonlocal calls
        calls += 1
        p = await real(name, full)
        if calls == 1:                                     # a change lands while the first read runs
            await accounts.add_contact("alice", "bob")
            d._versions["alice"] += 1
        return p

    monkeypatch.setattr(d, "_fetch", racing)
    await d.load("alice")
    assert calls == 2 and d.contacts("alice") == ["bob"]


async def test_after_a_reconnect_only_the_pinned_remain_and_are_reloaded(accounts: Accounts) -> None:
    d = CachedDirectory(accounts)
    await people(accounts, "alice", "bob", "carol")
    await d.load("alice")
    await d.ensure("carol")
    await accounts.add_contact("alice", "bob")
    d._reconnected()
    assert set(d.people) == {"alice"}
    await settle(d)
    assert d.contacts("alice") == ["bob"]


async def test_a_background_reload_that_fails_is_logged_not_raised(accounts: Accounts,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    d = CachedDirectory(accounts)

    async def down(name: str, full: bool) -> Person:
        raise ConnectionError("database away")

    monkeypatch.setattr(d, "_fetch", down)
    assert d.exists("alice") is False
    await settle(d)
    assert "directory reload failed: database away" in caplog.text
    assert d.people == {}
