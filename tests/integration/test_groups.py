"""Group chats over real sockets (issue 16): three members with one offline, in order with
receipts per member; a removed member gets nothing after removal and 403 for later media; the
admin rules; 200 concurrent sends from 4 members keep gap-free sequence numbers; migration 6
keeps two-person conversations."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jego_call.accounts import Accounts
from jego_call.db import MIGRATIONS, Database, PostgresDatabase, migration_statements, run_sync
from jego_call.signalling.keys import ACCOUNTS

from .conftest import Backend
from .sigclient import AppClient, Ws, add_contact, register
from .test_messaging import png, upload

# Each test runs on SQLite and on a real PostgreSQL (tests/integration/conftest.py).
pytestmark = pytest.mark.backends("sqlite", "postgres")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def people(client: AppClient, *names: str) -> dict[str, str]:
    """Register `names`; the first has all the others as contacts (it creates the groups)."""
    tokens = {n: await register(client, n) for n in names}
    for n in names[1:]:
        await add_contact(client, tokens[names[0]], n)
    return tokens


async def api(client: AppClient, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    res = await client.request(method, path, json=body, headers=auth(token))
    text = await res.text()
    return res.status, (json.loads(text) if text else None)


async def create(client: AppClient, token: str, name: str, members: list[str]) -> dict[str, Any]:
    status, body = await api(client, "POST", "/api/groups", token, {"name": name, "members": members})
    assert status == 201, body
    return dict(body)


async def gsend(ws: Ws, group: str, text: str | None = None, media_id: str | None = None) -> dict[str, Any]:
    cid = uuid.uuid4().hex
    msg: dict[str, Any] = {"type": "send_message", "id": cid, "client_id": cid, "group": group}
    if text is not None:
        msg["text"] = text
    if media_id is not None:
        msg["media_id"] = media_id
    await ws.send(msg)
    while True:
        got = await ws.recv()
        if got.get("type") == "message_ack" and got["client_id"] == cid:
            return got
        if got.get("type") == "error" and got.get("ref") == cid:
            return got


async def test_three_members_one_offline_in_order_with_receipts_per_member(client: AppClient) -> None:
    t = await people(client, "mum", "lili", "wei")
    g = await create(client, t["mum"], "家人 👨‍👩‍👧", ["lili", "wei"])
    gid = g["id"]
    assert g["name"] == "家人 👨‍👩‍👧" and g["role"] == "admin"
    assert [(m["username"], m["role"]) for m in g["members"]] == [("mum", "admin"), ("lili", "member"),
                                                                  ("wei", "member")]
    mum, li = await Ws.open(client, t["mum"]), await Ws.open(client, t["lili"])   # wei stays offline
    texts = ["早上好", "are you up?", "吃饭了吗"]
    seqs = []
    for text in texts:
        ack = await gsend(mum, gid, text)
        assert ack["type"] == "message_ack", ack
        assert ack["message"]["group"] == gid and "to" not in ack["message"]
        seqs.append(ack["message"]["seq"])
    assert seqs == [2, 3, 4]  # seq 1 is the system line "created"
    for s, text in zip(seqs, texts, strict=True):
        got = (await li.expect("message"))["message"]
        assert (got["seq"], got["from"], got["text"]) == (s, "mum", text)
    await li.send({"type": "receipt", "group": gid, "state": "read", "up_to_seq": 4})
    r = await mum.expect("receipt", group=gid)
    assert (r["by"], r["state"], r["up_to_seq"]) == ("lili", "read", 4)

    # wei comes online: sync brings the created line and the three messages in order, exactly once
    wei = await Ws.open(client, t["wei"])
    await wei.send({"type": "sync"})
    got = []
    while (m := await wei.recv())["type"] != "sync_done":
        if m["type"] == "message":
            got.append(m["message"])
    assert [(x["seq"], x["kind"]) for x in got] == [(1, "system"), (2, "text"), (3, "text"), (4, "text")]
    assert got[0]["event"] == {"action": "created", "by": "mum", "name": "家人 👨‍👩‍👧", "members": ["lili", "wei"]}
    await wei.send({"type": "receipt", "group": gid, "state": "delivered", "up_to_seq": 4})
    r = await mum.expect("receipt", group=gid, by="wei")
    assert (r["state"], r["up_to_seq"]) == ("delivered", 4)
    # the second sync sends nothing again (delivered), and tells the members' watermarks
    await wei.send({"type": "sync", "conversations": [{"group": gid, "after_seq": 4}]})
    receipts: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    while (m := await wei.recv())["type"] != "sync_done":
        (receipts if m["type"] == "receipt" else messages).append(m)
    assert messages == []
    assert {(r["by"], r["state"], r["up_to_seq"]) for r in receipts} >= {("lili", "read", 4), ("lili", "delivered", 4)}

    # "delivered to 2 · read by 1", with the list behind it
    status, rec = await api(client, "GET", f"/api/groups/{gid}/messages/3/receipts", t["mum"])
    assert status == 200
    assert [p["username"] for p in rec["delivered"]] == ["lili", "wei"]
    assert [p["username"] for p in rec["read"]] == ["lili"] and rec["waiting"] == []
    status, listing = await api(client, "GET", "/api/groups", t["wei"])
    assert [(x["id"], x["unread"]) for x in listing["groups"]] == [(gid, 3)]
    status, page = await api(client, "GET", f"/api/groups/{gid}/messages?limit=2", t["lili"])
    assert [m["seq"] for m in page["messages"]] == [3, 4] and page["has_more"]
    for w in (mum, li, wei):
        await w.close()


async def test_removed_member_gets_nothing_after_removal_and_403_for_later_media(client: AppClient) -> None:
    t = await people(client, "mum", "lili", "wei")
    gid = (await create(client, t["mum"], "family", ["lili", "wei"]))["id"]
    mum, li, wei = [await Ws.open(client, t[n]) for n in ("mum", "lili", "wei")]
    _, before = await upload(client, t["mum"], png(8, 8), kind="photo")
    assert (await gsend(mum, gid, media_id=before["id"]))["type"] == "message_ack"
    status, after_remove = await api(client, "DELETE", f"/api/groups/{gid}/members/wei", t["mum"])
    assert status == 200 and [m["username"] for m in after_remove["members"]] == ["mum", "lili"]
    line = None
    while line is None:
        m = await wei.expect("message")
        if m["message"]["kind"] == "system":
            line = m["message"]
    assert line["event"] == {"action": "removed", "by": "mum", "members": ["wei"]}
    told = await wei.expect("group")
    assert told["member"] is False and told["event"] == "removed"
    _, later = await upload(client, t["mum"], png(9, 9), kind="photo")
    assert (await gsend(mum, gid, "after wei left", )).get("type") == "message_ack"
    assert (await gsend(mum, gid, media_id=later["id"]))["type"] == "message_ack"
    assert (await li.expect("message", timeout=5))  # li still gets messages
    await wei.no_message("message", wait=0.5)
    res = await client.get(f"/api/media/{later['id']}", headers=auth(t["wei"]))
    assert res.status == 403 and (await res.json())["error"]["code"] == "forbidden"
    res = await client.get(f"/api/media/{before['id']}", headers=auth(t["wei"]))
    assert res.status == 200  # what they could see before stays theirs
    res = await client.get(f"/api/media/{later['id']}", headers=auth(t["lili"]))
    assert res.status == 200
    # a removed member cannot send, and their history stops at their removal
    err = await gsend(wei, gid, "still here?")
    assert err["type"] == "error" and err["code"] == "forbidden"
    status, page = await api(client, "GET", f"/api/groups/{gid}/messages", t["wei"])
    assert status == 200 and page["messages"][-1]["event"]["action"] == "removed"
    await wei.send({"type": "sync"})
    while (m := await wei.recv())["type"] != "sync_done":
        assert m["type"] != "message" or m["message"]["seq"] <= line["seq"]
    for w in (mum, li, wei):
        await w.close()


async def test_admin_rules(client: AppClient) -> None:
    t = await people(client, "mum", "lili", "wei", "gran")
    await add_contact(client, t["lili"], "gran")
    status, body = await api(client, "POST", "/api/groups", t["mum"], {"name": "  ", "members": ["lili"]})
    assert status == 400 and body["error"]["code"] == "invalid_message"
    status, body = await api(client, "POST", "/api/groups", t["lili"], {"name": "x", "members": ["wei"]})
    assert status == 403 and body["error"]["code"] == "not_contact"   # only your contacts
    status, body = await api(client, "POST", "/api/groups", t["mum"], {"name": "x", "members": ["nobody"]})
    assert status == 404 and body["error"]["code"] == "unknown_user"
    gid = (await create(client, t["mum"], "family", ["lili", "wei"]))["id"]
    # members may not add, remove or promote
    for method, path, body_ in (("POST", f"/api/groups/{gid}/members", {"members": ["gran"]}),
                                ("DELETE", f"/api/groups/{gid}/members/wei", None),
                                ("POST", f"/api/groups/{gid}/admins", {"username": "wei"})):
        status, body = await api(client, method, path, t["lili"], body_)
        assert status == 403 and body["error"]["code"] == "forbidden", (path, body)
    status, body = await api(client, "GET", f"/api/groups/{gid}", t["gran"])
    assert status == 403   # not a member
    # the admin makes li an admin; li adds gran (li's contact)
    status, body = await api(client, "POST", f"/api/groups/{gid}/admins", t["mum"], {"username": "lili"})
    assert status == 200 and {m["username"]: m["role"] for m in body["members"]}["lili"] == "admin"
    status, body = await api(client, "POST", f"/api/groups/{gid}/members", t["lili"], {"members": ["gran"]})
    assert status == 200 and [m["username"] for m in body["members"]] == ["mum", "lili", "wei", "gran"]
    # anyone may leave; the last admin leaving promotes the oldest member
    status, _ = await api(client, "POST", f"/api/groups/{gid}/leave", t["lili"])
    assert status == 204
    status, _ = await api(client, "POST", f"/api/groups/{gid}/leave", t["mum"])
    assert status == 204
    status, body = await api(client, "GET", f"/api/groups/{gid}", t["wei"])
    assert [(m["username"], m["role"]) for m in body["members"]] == [("wei", "admin"), ("gran", "member")]
    status, page = await api(client, "GET", f"/api/groups/{gid}/messages", t["wei"])
    actions = [m["event"]["action"] for m in page["messages"] if m["kind"] == "system"]
    assert actions == ["created", "admin", "added", "left", "left", "admin"]
    assert page["messages"][-1]["event"] == {"action": "admin", "by": None, "members": ["wei"]}
    status, body = await api(client, "GET", f"/api/groups/{gid}", t["mum"])
    assert status == 403
    status, body = await api(client, "GET", "/api/groups/gffffffffffffffff", t["wei"])
    assert status == 404


async def test_at_most_200_members(client: AppClient) -> None:
    accounts: Accounts = client.app[ACCOUNTS]
    t = await people(client, "host")
    pw_hash = accounts.hash_password("correct-horse-9")
    names = [f"member{i:03d}" for i in range(200)]
    for n in names:
        await accounts.create(n, pw_hash)
        await accounts.add_contact("host", n)
    status, body = await api(client, "POST", "/api/groups", t["host"], {"name": "big", "members": names})
    assert status == 409 and body["error"]["code"] == "group_full"
    g = await create(client, t["host"], "big", names[:199])
    assert len(g["members"]) == 200
    status, body = await api(client, "POST", f"/api/groups/{g['id']}/members", t["host"], {"members": names[199:]})
    assert status == 409 and body["error"]["code"] == "group_full"


async def test_200_concurrent_sends_from_4_members_are_gap_free(client: AppClient) -> None:
    names = ("ann1", "bob2", "cat3", "dan4")
    t = await people(client, *names)
    gid = (await create(client, t["ann1"], "busy", list(names[1:])))["id"]
    socks = [await Ws.open(client, t[n]) for n in names]

    async def burst(ws: Ws, n: int) -> list[int]:
        cids = [uuid.uuid4().hex for _ in range(n)]
        for cid in cids:   # all 50 in flight before the first ack is read
            await ws.send({"type": "send_message", "id": cid, "client_id": cid, "group": gid, "text": cid})
        seqs: dict[str, int] = {}
        while len(seqs) < n:
            m = await ws.recv(10)
            assert m["type"] != "error", m
            if m["type"] == "message_ack":
                seqs[m["client_id"]] = m["message"]["seq"]
        return [seqs[c] for c in cids]

    results = await asyncio.gather(*(burst(ws, 50) for ws in socks))
    every = sorted(s for r in results for s in r)
    assert every == list(range(2, 202))          # gap-free after the "created" line
    for r in results:
        assert r == sorted(r)                    # each sender's messages keep their order
    status, page = await api(client, "GET", f"/api/groups/{gid}/messages?limit=200", t["bob2"])
    assert [m["seq"] for m in page["messages"]] == list(range(2, 202))
    for w in socks:
        await w.close()


_OLD_ROWS = [
    "INSERT INTO users VALUES ('ann', 'x', 1, NULL), ('bob', 'x', 1, NULL)",
    "INSERT INTO conversations(id, user_a, user_b, last_seq, created_at, updated_at) VALUES (7, 'ann', 'bob', 2, 1, 2)",
    "INSERT INTO messages VALUES (7, 1, 'ann', 'bob', 'c1', 'text', 'hi', NULL, 1, 1, NULL), "
    "(7, 2, 'bob', 'ann', 'c2', 'text', 'yo', NULL, 2, NULL, NULL)",
]


async def _schema_5_database(backend: Backend, tmp_path: Path) -> Database:
    """A database at schema 5 with two messages, written by hand; opened (so migrated) after."""
    if backend.pg is None:
        path = tmp_path / "old.sqlite3"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, script in MIGRATIONS:
            if version > 5:
                break
            conn.executescript(script)
            conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        for sql in _OLD_ROWS:
            conn.execute(sql)
        conn.commit()
        conn.close()
        return Database.open(path)
    url = await backend.new_database()
    pg = await asyncpg.connect(url)
    try:
        await pg.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, script in MIGRATIONS:
            if version > 5:
                break
            for statement in migration_statements(version, script, "postgresql"):
                await pg.execute(statement)
            await pg.execute("INSERT INTO schema_version VALUES ($1)", version)
        for sql in _OLD_ROWS:
            await pg.execute(sql)
    finally:
        await pg.close()
    return await PostgresDatabase.connect(url)


async def test_migration_6_keeps_two_person_conversations(backend: Backend, tmp_path: Path) -> None:
    """A database at schema 5 with messages: after migration 6 (groups) they are all there, keys
    intact, and a group conversation fits the new constraints (the old pair CHECK is gone)."""
    db = await _schema_5_database(backend, tmp_path)
    try:
        row = await db.query_one("SELECT MAX(version) FROM schema_version")
        assert row is not None and row[0] == max(v for v, _ in MIGRATIONS)
        rows = await db.query("SELECT c.user_a, c.user_b, c.group_id, m.seq, m.body FROM messages m "
                              "JOIN conversations c ON c.id = m.conversation_id ORDER BY m.seq")
        assert [tuple(r) for r in rows] == [("ann", "bob", None, 1, "hi"), ("ann", "bob", None, 2, "yo")]
        if db.engine == "sqlite":
            assert await db.query("PRAGMA foreign_key_check") == []
            fk = await db.query_one("PRAGMA foreign_keys")
            assert fk is not None and fk[0] == 1
        await db.execute("INSERT INTO conversations(group_id, last_seq, created_at, updated_at) "
                         "VALUES ('g0123456789abcdef', 0, 3, 3)")
        await db.execute("INSERT INTO messages(conversation_id, seq, sender, recipient, client_id, kind, body, "
                         "created_at) SELECT id, 1, 'ann', NULL, 's1', 'system', '{}', 3 FROM conversations "
                         "WHERE group_id = 'g0123456789abcdef'")
        await db.execute("DELETE FROM users WHERE username = 'ann'")   # cascades still work after the rebuild
        left = await db.query_one("SELECT COUNT(*) FROM messages WHERE recipient IS NOT NULL")
        assert left is not None and left[0] == 0
    finally:
        await db.close()


def test_sqlite_runs_without_a_loop(tmp_path: Path) -> None:
    """The CLI's synchronous path: SQLite's coroutines finish without an event loop."""
    db = Database.open(tmp_path / "x.sqlite3")
    row = run_sync(db.query_one("SELECT MAX(version) FROM schema_version"))
    assert row is not None and row[0] == max(v for v, _ in MIGRATIONS)
    run_sync(db.close())
