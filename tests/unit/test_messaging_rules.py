"""The rules around messaging that need no socket: what an upload is taken as (the declared kind
against what the bytes are, and the size and length limits: a lie is unsupported_media, too
big is too_large, undeclared and over a limit is a plain file), what is left of a filename,
signed media links (valid for one user, one item, one variant, until their second; forged,
swapped, expired or for a deleted account: not_authenticated), group names (normalised or
refused), and the hub desk's group directories over a real SQLite store (read-through, and the
cached one with misses, LRU, changes from this node and others, and reconnects).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from jego_call.accounts import Accounts
from jego_call.config import AuthConfig, MessagingConfig
from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.directory import LiveDirectory
from jego_call.errors import ErrorCode, SignallingError
from jego_call.groups.names import MAX_NAME, normalise_group_name
from jego_call.groups.service import CachedGroupDirectory, SqliteGroupDirectory, make_group_directory
from jego_call.messaging.media import FILE_MIME, MediaFiles, Sniffed
from jego_call.messaging.service import Messaging, _clean_filename, media_user, signed_media_url
from jego_call.messaging.store import MessageStore
from jego_call.signalling.hub import Hub
from jego_call.signalling.keys import ACCOUNTS

PHOTO = Sniffed("photo", "image/png", 10, 10)
VOICE = Sniffed("voice", "audio/wav", duration_s=5.0)
FILE = Sniffed("file", FILE_MIME, note="not an image")
CFG = MessagingConfig(max_photo_bytes=1000, max_voice_s=10.0)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path / "jego.sqlite3")
    yield database
    run_sync(database.close())


@pytest.fixture
def accounts(db: SqliteDatabase) -> Accounts:
    return Accounts(db, b"m" * 32, AuthConfig())


def messaging(accounts: Accounts) -> Messaging:
    return Messaging(MessageStore(accounts.db), cast(MediaFiles, None), accounts, cast(Hub, None), CFG)


# --- what an upload is ------------------------------------------------------------------------------
@pytest.mark.parametrize(("declared", "size", "sniffed", "kind"), [
    ("photo", 1000, PHOTO, "photo"), ("voice", 50, VOICE, "voice"), ("file", 50, PHOTO, "file"),
    (None, 1000, PHOTO, "photo"), (None, 1001, PHOTO, "file"), (None, 50, VOICE, "voice"),
    (None, 50, Sniffed("voice", "audio/wav", duration_s=10.5), "file"), (None, 50, FILE, "file"),
])
def test_an_upload_is_taken_as_what_it_is(accounts: Accounts, declared: str | None, size: int, sniffed: Sniffed,
                                          kind: str) -> None:
    got = messaging(accounts).decide(declared, size, sniffed)
    assert got.kind == kind
    if kind == "file":
        assert got.mime == FILE_MIME


@pytest.mark.parametrize(("declared", "size", "sniffed", "code", "words"), [
    ("photo", 10, FILE, ErrorCode.UNSUPPORTED_MEDIA, "this content is not (not an image)"),
    ("photo", 10, VOICE, ErrorCode.UNSUPPORTED_MEDIA, "a photo must be a PNG, JPEG, GIF or WebP"),
    ("photo", 1001, PHOTO, ErrorCode.TOO_LARGE, "at most 1000 bytes"),
    ("voice", 10, PHOTO, ErrorCode.UNSUPPORTED_MEDIA, "a voice message must be WAV, OGG, WebM or MP3"),
    ("voice", 10, Sniffed("voice", "audio/ogg", duration_s=10.01), ErrorCode.TOO_LARGE, "10.0 s long: at most 10 s"),
])
def test_an_upload_that_lies_or_is_too_big_is_refused(accounts: Accounts, declared: str, size: int,
                                                      sniffed: Sniffed, code: ErrorCode, words: str) -> None:
    with pytest.raises(SignallingError) as e:
        messaging(accounts).decide(declared, size, sniffed)
    assert e.value.code == code and words in e.value.message


@pytest.mark.parametrize(("raw", "clean"), [
    ("photo.png", "photo.png"), ("C:\\Users\\li\\Desktop\\照片.jpg", "照片.jpg"), ("/etc/passwd", "passwd"),
    ("../../x.txt", "x.txt"), ('say "hi".txt', "say hi.txt"), ("bad\x00\x1bname\n.txt", "badname.txt"),
    ("   spaced.txt  ", "spaced.txt"), ("dir/", None), ("", None), (None, None), ('""', None),
    ("a" * 300, "a" * 255),
])
def test_what_is_left_of_a_filename(raw: str | None, clean: str | None) -> None:
    assert _clean_filename(raw) == clean


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_a_cleaned_filename_is_one_printable_component(raw: str) -> None:
    name = _clean_filename(raw)
    if name is not None:
        assert 0 < len(name) <= 255 and "/" not in name and "\\" not in name and '"' not in name
        assert name.isprintable() and name == name.strip()


# --- signed media links -------------------------------------------------------------------------------
def link_request(accounts: Accounts, url: str) -> web.Request:
    app = web.Application()
    app[ACCOUNTS] = accounts
    return make_mocked_request("GET", url, app=app)


async def test_a_signed_link_names_its_user_until_its_second(accounts: Accounts) -> None:
    await accounts.create("alice", "x")
    url = signed_media_url(accounts, "alice", "m1", "full", 5000)
    assert url.startswith("/api/media/m1?u=alice&exp=5000&sig=")
    assert await media_user(link_request(accounts, url), "m1", "full", now=5000) == "alice"
    with pytest.raises(SignallingError) as e:
        await media_user(link_request(accounts, url), "m1", "full", now=5000.5)
    assert e.value.code == ErrorCode.NOT_AUTHENTICATED and "expired" in e.value.message
    thumb = signed_media_url(accounts, "alice", "m1", "thumbnail", 5000)
    assert thumb.startswith("/api/media/m1/thumbnail?")
    assert await media_user(link_request(accounts, thumb), "m1", "thumbnail", now=0) == "alice"


async def test_a_link_changed_in_any_part_is_refused(accounts: Accounts) -> None:
    await accounts.create("alice", "x")
    await accounts.create("mallory", "x")
    good = signed_media_url(accounts, "alice", "m1", "full", 5000)
    other_key = Accounts(accounts.db, b"z" * 32, accounts.cfg)
    cases = {
        "another user": good.replace("u=alice", "u=mallory"),
        "later expiry": good.replace("exp=5000", "exp=9999"),
        "signed elsewhere": signed_media_url(other_key, "alice", "m1", "full", 5000),
        "no exp": good.replace("exp=5000&", ""),
        "bad exp": good.replace("exp=5000", "exp=soon"),
    }
    for why, url in cases.items():
        with pytest.raises(SignallingError) as e:
            await media_user(link_request(accounts, url), "m1", "full", now=0)
        assert e.value.code == ErrorCode.NOT_AUTHENTICATED, why
    for media_id, variant in (("m2", "full"), ("m1", "thumbnail")):       # another item, another variant
        with pytest.raises(SignallingError) as e:
            await media_user(link_request(accounts, good), media_id, variant, now=0)
        assert e.value.message == "bad media link signature"


async def test_a_link_for_a_deleted_account_is_refused(accounts: Accounts, db: SqliteDatabase) -> None:
    await accounts.create("alice", "x")
    url = signed_media_url(accounts, "alice", "m1", "full", 5000)
    await db.execute("DELETE FROM users WHERE username = 'alice'")
    with pytest.raises(SignallingError) as e:
        await media_user(link_request(accounts, url), "m1", "full", now=0)
    assert e.value.message == "account no longer exists"


async def test_without_a_signature_the_bearer_token_decides(accounts: Accounts) -> None:
    with pytest.raises(SignallingError) as e:
        await media_user(link_request(accounts, "/api/media/m1?u=alice&exp=9"), "m1", "full")
    assert e.value.code == ErrorCode.NOT_AUTHENTICATED and "Bearer" in e.value.message


# --- group names ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "name"), [(" 家人  群 ", "家人 群"), ("Cafe\u0301", "Café"), ("x" * MAX_NAME, "x" * MAX_NAME)])
def test_group_names_are_normalised(raw: str, name: str) -> None:
    assert normalise_group_name(raw) == name


@pytest.mark.parametrize(("raw", "words"), [(None, "must be a string"), ("   ", "needs a name"),
                                            ("x" * (MAX_NAME + 1), "at most 64"), ("a\u202eb", "control"),
                                            ("a\x07b", "control")])
def test_bad_group_names_are_invalid_message(raw: object, words: str) -> None:
    with pytest.raises(SignallingError) as e:
        normalise_group_name(raw)
    assert e.value.code == ErrorCode.INVALID_MESSAGE and words in e.value.message


# --- the desk's group directories ---------------------------------------------------------------------
class People:
    """The people directory the cached group directory asks to have members ready."""

    def __init__(self) -> None:
        self.ensured: list[tuple[str, ...]] = []

    async def ensure(self, *usernames: str) -> None:
        self.ensured.append(usernames)


async def group_of(store: MessageStore, *names: str, title: str = "family") -> str:
    for n in names:
        await store.db.execute("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)"
                               " ON CONFLICT DO NOTHING", (n,))
    return (await store.create_group(names[0], title, list(names[1:]), now=1.0)).id


async def settle(d: CachedGroupDirectory) -> None:
    while d._tasks:
        await asyncio.gather(*d._tasks)


async def test_sqlite_reads_groups_through(db: SqliteDatabase) -> None:
    store = MessageStore(db)
    d = make_group_directory(store, cast(LiveDirectory, People()))
    assert isinstance(d, SqliteGroupDirectory)
    gid = await group_of(store, "alice", "bob")
    assert d.group_members(gid) == ["alice", "bob"] and d.group_name(gid) == "family"
    assert d.group_members("g-none") is None and d.group_name("g-none") == "g-none"


async def test_the_cached_directory_misses_once_then_answers(db: SqliteDatabase) -> None:
    store = MessageStore(db)
    people = People()
    d = CachedGroupDirectory(store, cast(LiveDirectory, people))
    gid = await group_of(store, "alice", "bob")
    assert d.group_members(gid) is None and d.misses == 1            # "no such group" for now ...
    await settle(d)
    assert d.group_members(gid) == ["alice", "bob"] and d.misses == 1   # ... loaded for next time
    await d.ensure(gid)
    assert people.ensured == [("alice", "bob")]                       # members' names made ready


async def test_a_change_here_or_heard_reloads_the_group(db: SqliteDatabase) -> None:
    store = MessageStore(db)
    d = CachedGroupDirectory(store, cast(LiveDirectory, People()))
    gid = await group_of(store, "alice", "bob", "carol")
    await d.ensure(gid)
    await store.remove_member(gid, "alice", "carol", now=2.0)
    assert d.group_members(gid) == ["alice", "bob", "carol"]          # not told yet
    await d.changed(gid)
    assert d.group_members(gid) == ["alice", "bob"]
    await store.rename_group(gid, "alice", "our family", now=3.0)     # written by another node
    d._heard(gid)
    await settle(d)
    assert d.group_name(gid) == "our family"
    d._heard("g-not-held")                                            # nothing held: nothing loaded
    assert "g-not-held" not in d.groups


async def test_the_cached_directory_keeps_the_most_recent_groups(db: SqliteDatabase) -> None:
    store = MessageStore(db)
    d = CachedGroupDirectory(store, cast(LiveDirectory, People()), capacity=2)
    gids = [await group_of(store, "alice", "bob", title=f"g{i}") for i in range(3)]
    await d.ensure(gids[0])
    await d.ensure(gids[1])
    assert d.group_name(gids[0]) == "g0"                              # g0 is now the most recent
    await d.ensure(gids[2])
    assert list(d.groups) == [gids[0], gids[2]]


async def test_after_a_reconnect_every_held_group_is_reloaded(db: SqliteDatabase) -> None:
    store = MessageStore(db)
    d = CachedGroupDirectory(store, cast(LiveDirectory, People()))
    gid = await group_of(store, "alice", "bob")
    await d.ensure(gid)
    await d.ensure("g-none")                                          # remembered as no such group
    await store.rename_group(gid, "alice", "renamed", now=3.0)
    d._reconnected()
    await settle(d)
    assert d.group_name(gid) == "renamed" and d.groups["g-none"] is None
