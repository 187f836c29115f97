"""jego_call/groups/service.py's `Groups` (membership changes and their pushes) on a real SQLite
store with a stand-in hub: who may be added (existing users, in the actor's contacts, who have
not blocked the actor; the creator and repeats dropped; at most 200 in a group, counting those
already in it), who may change a group (admins; anyone may leave), each refusal with its code
and nothing written, and what every member is told (the system line, then the group) — also
the one removed, who is told they are no longer a member.
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
from jego_call.groups.names import MAX_MEMBERS
from jego_call.groups.service import Groups
from jego_call.messaging.media import MediaFiles
from jego_call.messaging.service import Messaging
from jego_call.messaging.store import MessageStore
from jego_call.signalling.hub import Hub


@dataclass
class FakeHub:
    """What Groups and Messaging ask of the hub: presence, group calls, and sending to users."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)

    def presence(self, user: str) -> str:
        return "online" if user == "alice" else "offline"

    def group_call(self, group_id: str) -> None:
        return None

    def send_to_user(self, user: str, msg: dict[str, Any], skip: object = None) -> bool:
        self.sent.append((user, msg))
        return True

    def group_member_left(self, group_id: str, user: str) -> None:
        self.left.append((group_id, user))

    def to(self, user: str) -> list[dict[str, Any]]:
        return [m for u, m in self.sent if u == user]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path / "jego.sqlite3")
    yield database
    run_sync(database.close())


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
async def groups(db: SqliteDatabase, hub: FakeHub) -> Groups:
    accounts = Accounts(db, b"g" * 32, AuthConfig())
    for name in ("alice", "bob", "carol", "dave", "erin"):
        await accounts.create(name, "x", display_name=name.capitalize() if name != "erin" else None)
    for other in ("bob", "carol", "dave", "erin"):
        await accounts.add_contact("alice", other)
    await accounts.add_contact("bob", "carol")
    messaging = Messaging(MessageStore(db), cast(MediaFiles, None), accounts, cast(Hub, hub), MessagingConfig())
    return Groups(messaging, accounts, cast(Hub, hub))


async def refused(coro: Any) -> SignallingError:
    with pytest.raises(SignallingError) as e:
        await coro
    return e.value


# --- creating ---------------------------------------------------------------------------------------
async def test_a_new_group_tells_each_member_its_line_and_itself(groups: Groups, hub: FakeHub) -> None:
    g = await groups.create("alice", "  Family  ", ["bob", "BOB", "alice", " Carol "])
    assert g.name == "Family" and g.usernames == ["alice", "bob", "carol"] and g.is_admin("alice")
    for user in g.usernames:
        kinds = [m["type"] for m in hub.to(user)]
        assert kinds == ["message", "group"], user
        assert hub.to(user)[0]["message"]["event"]["action"] == "created"
        assert hub.to(user)[1]["event"] == "created"
    wire = hub.to("bob")[1]["group"]
    assert [(m["username"], m["display_name"], m["presence"], m["role"]) for m in wire["members"]] == [
        ("alice", "Alice", "online", "admin"), ("bob", "Bob", "offline", "member"),
        ("carol", "Carol", "offline", "member")]
    assert wire["call"] is None and "unread" not in wire


@pytest.mark.parametrize(("members", "code"), [
    ("bob", ErrorCode.INVALID_MESSAGE), (["bob", 7], ErrorCode.INVALID_MESSAGE),
    (["nobody"], ErrorCode.UNKNOWN_USER), (["not a name!"], ErrorCode.UNKNOWN_USER),
    (["bob", "zed"], ErrorCode.UNKNOWN_USER),
])
async def test_bad_member_lists_are_refused_and_nothing_is_made(groups: Groups, hub: FakeHub, members: object,
                                                                code: ErrorCode) -> None:
    assert (await refused(groups.create("alice", "g", members))).code == code
    assert await groups.store.groups_of("alice") == [] and hub.sent == []


async def test_only_contacts_who_have_not_blocked_you_can_be_added(groups: Groups) -> None:
    e = await refused(groups.create("bob", "g", ["dave"]))                 # dave is not bob's contact
    assert e.code == ErrorCode.NOT_CONTACT and "add them first" in e.message
    await groups.accounts.block("dave", "alice")
    e = await refused(groups.create("alice", "g", ["bob", "dave"]))
    assert e.code == ErrorCode.UNAVAILABLE and e.message == "'dave' is not available"
    assert await groups.store.groups_of("alice") == []


async def test_a_bad_name_is_refused(groups: Groups) -> None:
    assert (await refused(groups.create("alice", "   ", ["bob"]))).code == ErrorCode.INVALID_MESSAGE
    assert (await refused(groups.create("alice", None, ["bob"]))).code == ErrorCode.INVALID_MESSAGE


async def test_a_group_without_members_is_just_its_creator(groups: Groups) -> None:
    g = await groups.create("alice", "notes", None)
    assert g.usernames == ["alice"]


async def many_contacts(groups: Groups, owner: str, n: int) -> list[str]:
    names = [f"user{i:03d}" for i in range(n)]
    db = groups.store.db
    for name in names:
        await db.execute("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)", (name,))
        await db.execute("INSERT INTO contacts(owner, contact, created_at) VALUES (?, ?, 0)", (owner, name))
    return names


async def test_a_group_holds_at_most_200_counting_those_in_it(groups: Groups) -> None:
    names = await many_contacts(groups, "alice", MAX_MEMBERS)
    e = await refused(groups.create("alice", "too big", names))            # 200 + the creator
    assert e.code == ErrorCode.GROUP_FULL and "at most 200" in e.message
    g = await groups.create("alice", "full", names[:MAX_MEMBERS - 1])      # exactly 200
    assert len(g.usernames) == MAX_MEMBERS
    e = await refused(groups.add("alice", g.id, ["bob"]))
    assert e.code == ErrorCode.GROUP_FULL
    assert len((await groups.store.group(g.id) or g).usernames) == MAX_MEMBERS


# --- changing -------------------------------------------------------------------------------------
async def test_only_admins_add_and_adding_members_again_says_nothing(groups: Groups, hub: FakeHub) -> None:
    g = await groups.create("alice", "g", ["bob"])
    e = await refused(groups.add("bob", g.id, ["carol"]))
    assert e.code == ErrorCode.FORBIDDEN and e.message == "only the group's admins may do that"
    assert (await refused(groups.add("carol", g.id, ["dave"]))).code == ErrorCode.FORBIDDEN   # not a member
    assert (await refused(groups.add("alice", "g-none", ["dave"]))).code == ErrorCode.NOT_FOUND
    hub.sent.clear()
    same = await groups.add("alice", g.id, ["bob", "alice"])
    assert same.usernames == ["alice", "bob"] and hub.sent == []           # nobody new: no line, no push
    after = await groups.add("alice", g.id, ["carol", "dave"])
    assert after.usernames == ["alice", "bob", "carol", "dave"]
    assert [m["type"] for m in hub.to("dave")] == ["message", "group"]
    assert hub.to("dave")[0]["message"]["event"] == {"action": "added", "by": "alice", "members": ["carol", "dave"]}


async def test_an_admin_removes_and_the_removed_one_is_told(groups: Groups, hub: FakeHub) -> None:
    g = await groups.create("alice", "g", ["bob", "carol"])
    assert (await refused(groups.remove("bob", g.id, "carol"))).code == ErrorCode.FORBIDDEN
    assert (await refused(groups.remove("alice", g.id, "dave"))).code == ErrorCode.NOT_FOUND
    hub.sent.clear()
    after = await groups.remove("alice", g.id, "carol")
    assert after.usernames == ["alice", "bob"] and hub.left == [(g.id, "carol")]
    told = hub.to("carol")
    assert [m["type"] for m in told] == ["message", "group"]
    assert told[0]["message"]["event"]["action"] == "removed"
    assert told[1] == {"type": "group", "event": "removed", "member": False, "group": {"id": g.id, "name": "g"}}
    assert [m["event"] for m in hub.to("bob") if m["type"] == "group"] == ["removed"]


async def test_anyone_may_leave_and_the_oldest_becomes_admin(groups: Groups, hub: FakeHub) -> None:
    g = await groups.create("alice", "g", ["bob", "carol"])
    after = await groups.remove("alice", g.id, "alice")
    assert after.usernames == ["bob", "carol"] and after.is_admin("bob")
    lines = [m["message"]["event"]["action"] for m in hub.to("bob") if m["type"] == "message"]
    assert lines == ["created", "left", "admin"]
    assert (await refused(groups.remove("alice", g.id, "alice"))).code == ErrorCode.FORBIDDEN  # not a member now


async def test_make_admin_and_rename_are_for_admins(groups: Groups) -> None:
    g = await groups.create("alice", "g", ["bob", "carol"])
    assert (await refused(groups.make_admin("bob", g.id, "carol"))).code == ErrorCode.FORBIDDEN
    assert (await refused(groups.make_admin("alice", g.id, "dave"))).code == ErrorCode.NOT_FOUND
    assert (await groups.make_admin("alice", g.id, "bob")).is_admin("bob")
    assert (await groups.rename("bob", g.id, " 新名字 ")).name == "新名字"
    assert (await refused(groups.rename("carol", g.id, "x"))).code == ErrorCode.FORBIDDEN
    assert (await refused(groups.rename("bob", g.id, ""))).code == ErrorCode.INVALID_MESSAGE


async def test_the_group_as_a_member_sees_it(groups: Groups) -> None:
    g = await groups.create("alice", "g", ["bob"])
    await groups.store.send_group("alice", g.id, "k1", "text", "hello", None)
    fresh = await groups.store.group(g.id)
    assert fresh is not None
    wire = await groups.to_wire(fresh, viewer="bob")
    assert wire["unread"] == 1 and wire["role"] == "member" and wire["last_message"]["text"] == "hello"
    assert (await groups.to_wire(fresh, viewer="carol"))["role"] is None
