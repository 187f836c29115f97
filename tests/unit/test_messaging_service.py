"""jego_call/messaging/service.py's `Messaging` on a real SQLite store with a stand-in hub and
sessions: what may be sent to whom (not yourself, an existing contact who has not blocked you:
told only "not available"), the text limit and media ownership, each refusal storing nothing; a
retry with the same client id acknowledged again and pushed to nobody; where a message goes
(the recipient, and the sender's other devices, not the one that sent it); receipts as
cumulative watermarks to the peer; and sync (what the client has not seen, what was not
delivered, the receipts, and `more` when the answer is cut).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from jego_call.accounts import Accounts
from jego_call.config import AuthConfig, MessagingConfig
from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.errors import ErrorCode, SignallingError
from jego_call.messaging import protocol as p
from jego_call.messaging import service as svc
from jego_call.messaging.media import MediaFiles
from jego_call.messaging.service import Messaging
from jego_call.messaging.store import Media, MessageStore
from jego_call.signalling.hub import Hub, Session


@dataclass
class FakeSession:
    username: str
    id: str
    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


@dataclass
class FakeHub:
    """Users' sessions; `send_to_user` delivers to each but `skip`."""

    sessions: dict[str, list[FakeSession]] = field(default_factory=dict)

    def send_to_user(self, user: str, msg: dict[str, Any], skip: object = None) -> bool:
        targets = [s for s in self.sessions.get(user, []) if s is not skip]
        for s in targets:
            s.send(msg)
        return bool(targets)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path / "jego.sqlite3")
    yield database
    run_sync(database.close())


@dataclass
class World:
    m: Messaging
    hub: FakeHub
    a1: FakeSession
    a2: FakeSession
    b1: FakeSession


@pytest.fixture
async def w(db: SqliteDatabase) -> World:
    accounts = Accounts(db, b"m" * 32, AuthConfig())
    for name in ("alice", "bob", "carol", "mallory"):
        await accounts.create(name, "x")
    await accounts.add_contact("alice", "bob")
    await accounts.add_contact("bob", "alice")
    await accounts.add_contact("alice", "mallory")
    hub = FakeHub()
    a1, a2, b1 = FakeSession("alice", "a1"), FakeSession("alice", "a2"), FakeSession("bob", "b1")
    hub.sessions = {"alice": [a1, a2], "bob": [b1]}
    m = Messaging(MessageStore(db), cast(MediaFiles, None), accounts, cast(Hub, hub),
                  MessagingConfig(max_text_chars=10))
    return World(m, hub, a1, a2, b1)


def text(to: str, body: str | None, cid: str = "c1", media: str | None = None) -> p.SendMessage:
    return p.SendMessage(cid, to, body, media)


async def refused(coro: Any) -> SignallingError:
    with pytest.raises(SignallingError) as e:
        await coro
    return e.value


# --- sending ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("to", "code", "words"), [
    ("alice", ErrorCode.NOT_CONTACT, "yourself"), ("nobody", ErrorCode.UNKNOWN_USER, "no user 'nobody'"),
    ("carol", ErrorCode.NOT_CONTACT, "add them first"),
])
async def test_who_may_be_sent_to(w: World, to: str, code: ErrorCode, words: str) -> None:
    e = await refused(w.m.send("alice", text(to, "hi")))
    assert e.code == code and words in e.message
    assert await w.m.store.peers("alice") == []


async def test_one_who_blocked_you_is_only_not_available(w: World) -> None:
    await w.m.accounts.block("mallory", "alice")
    e = await refused(w.m.send("alice", text("mallory", "hi")))
    assert (e.code, e.message) == (ErrorCode.UNAVAILABLE, "not available")


async def test_the_text_limit_is_counted_in_characters(w: World) -> None:
    assert (await w.m.send("alice", text("bob", "你" * 10)))[0].seq == 1
    e = await refused(w.m.send("alice", text("bob", "你" * 11, cid="c2")))
    assert e.code == ErrorCode.TOO_LARGE and "11 characters: at most 10" in e.message
    assert len(await w.m.store.after("alice", "bob", 0, 10)) == 1


async def test_only_your_own_uploaded_media_can_be_sent(w: World) -> None:
    media = Media("m-bob", "bob", "photo", "image/png", 10, "ab" * 32, None, 1, 1, None, None, 0.0)
    await w.m.store.add_media(media)
    assert (await refused(w.m.send("alice", text("bob", None, media="m-none")))).code == ErrorCode.NOT_FOUND
    assert (await refused(w.m.send("alice", text("bob", None, media="m-bob")))).code == ErrorCode.FORBIDDEN
    msg, _ = await w.m.send("bob", text("alice", None, media="m-bob"))
    assert msg.kind == "photo" and msg.media is not None and msg.media["id"] == "m-bob"


async def test_a_retry_is_acknowledged_again_even_if_it_would_now_be_refused(w: World) -> None:
    first, dup = await w.m.send("alice", text("bob", "hi", cid="same"))
    await w.m.accounts.block("bob", "alice")
    again, dup = await w.m.send("alice", text("bob", "hi", cid="same"))
    assert dup and again.seq == first.seq


async def test_a_message_goes_to_the_recipient_and_the_senders_other_devices(w: World) -> None:
    await w.m.on_send(cast(Session, w.a1), text("bob", "hello", cid="k1"))
    ack = w.a1.sent[-1]
    assert ack["type"] == "message_ack" and ack["client_id"] == "k1" and ack["duplicate"] is False
    assert [m["type"] for m in w.a1.sent] == ["message_ack"]               # not pushed back to itself
    assert w.b1.sent == [{"type": "message", "message": ack["message"]}]
    assert w.a2.sent == [{"type": "message", "message": ack["message"]}]
    assert w.m.counts["stored:text"] == 1 and w.m.counts["delivered:live"] == 1
    await w.m.on_send(cast(Session, w.a1), text("bob", "hello", cid="k1"))
    assert w.a1.sent[-1]["duplicate"] is True and len(w.b1.sent) == 1    # the retry is pushed to nobody
    assert w.m.counts["stored:text"] == 1


async def test_a_group_message_is_for_members_only(w: World) -> None:
    g = await w.m.store.create_group("alice", "g", ["bob"])
    assert (await refused(w.m.send("carol", p.SendMessage("g1", "", "hi", None, g.id)))).code == ErrorCode.FORBIDDEN
    assert (await refused(w.m.send("carol", p.SendMessage("g2", "", "hi", None, "g0000000000000000")))).code == \
        ErrorCode.NOT_FOUND
    await w.m.on_send(cast(Session, w.a1), p.SendMessage("g3", "", "hi all", None, g.id))
    assert w.b1.sent[-1]["message"]["group"] == g.id and w.a2.sent[-1]["message"]["text"] == "hi all"
    assert w.m.counts["delivered:live"] == 1                                # bob; alice's own tab does not count


# --- receipts -------------------------------------------------------------------------------------
async def test_a_receipt_tells_the_sender_the_cumulative_watermark(w: World) -> None:
    for i in range(3):
        await w.m.send("alice", text("bob", str(i), cid=f"r{i}"))
    await w.m.on_receipt(cast(Session, w.b1), p.Receipt("alice", "read", 2))
    assert w.a1.sent == w.a2.sent == [{"type": "receipt", "with": "bob", "by": "bob", "state": "read", "up_to_seq": 2}]
    await w.m.on_receipt(cast(Session, w.b1), p.Receipt("alice", "read", 2))
    assert len(w.a1.sent) == 1                                               # nothing changed: nothing said
    assert (await refused(w.m.on_receipt(cast(Session, w.b1), p.Receipt("nobody", "read", 1)))).code == \
        ErrorCode.UNKNOWN_USER


async def test_a_group_receipt_needs_a_member(w: World) -> None:
    g = await w.m.store.create_group("alice", "g", [])
    carol = FakeSession("carol", "c1")
    e = await refused(w.m.on_receipt(cast(Session, carol), p.Receipt("", "read", 1, g.id)))
    assert e.code == ErrorCode.FORBIDDEN


# --- sync -------------------------------------------------------------------------------------------
async def test_sync_gives_what_is_new_what_was_not_delivered_and_the_receipts(w: World) -> None:
    for i in range(3):
        await w.m.send("alice", text("bob", f"ab{i}", cid=f"s{i}"))
    await w.m.store.mark("bob", "alice", 1, "read")
    fresh = FakeSession("alice", "a3")
    await w.m.on_sync(cast(Session, fresh), p.Sync((("bob", 1), ("bob", 0))))     # twice: once only
    kinds = [(m["type"], m.get("message", {}).get("seq"), m.get("state")) for m in fresh.sent]
    assert kinds == [("message", 2, None), ("message", 3, None), ("receipt", None, "delivered"),
                     ("receipt", None, "read"), ("sync_done", None, None)]
    assert fresh.sent[-1] == {"type": "sync_done", "count": 2, "more": False}
    bob = FakeSession("bob", "b2")
    await w.m.on_sync(cast(Session, bob), p.Sync(()))
    assert [m["message"]["seq"] for m in bob.sent if m["type"] == "message"] == [2, 3]   # 1 was read
    assert w.m.counts["delivered:sync"] == 2


async def test_sync_says_more_when_it_is_cut(w: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(svc, "SYNC_LIMIT", 2)
    for i in range(3):
        await w.m.send("alice", text("bob", str(i), cid=f"m{i}"))
    bob = FakeSession("bob", "b2")
    await w.m.on_sync(cast(Session, bob), p.Sync(()))
    assert bob.sent[-1] == {"type": "sync_done", "count": 2, "more": True}
