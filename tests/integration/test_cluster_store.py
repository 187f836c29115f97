"""The stores on both engines (SQLite file, real PostgreSQL), each written by two "nodes" at once:
two `Database` objects on the same storage (two SQLite connections to one file, two asyncpg
pools on one database), as two `jego serve` processes would be.

- messages: 2 x 200 concurrent sends into one conversation, from both nodes, are gap-free,
  exactly once and in each client's order; a retried client_id racing on both nodes is stored once;
- groups: concurrent sends and membership changes from both nodes stay gap-free and consistent;
- accounts: the same username registered on both nodes at once: one wins, the other gets
  username_taken, and the winner's password still logs in;
- billing: holds from both nodes never exceed the balance;
- the call log: the same record from both nodes is one row;
- everything survives closing and reopening (and, on PostgreSQL, a restart of the server);
- bad input (a too-long text, a constraint broken inside a transaction) changes nothing stored.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jego_call.accounts import Accounts
from jego_call.billing.fraud import FraudConfig
from jego_call.billing.policy import Terms
from jego_call.billing.service import Billing, load_rate_table
from jego_call.billing.store import held
from jego_call.calllog import CallLog, CallRecord
from jego_call.config import AuthConfig
from jego_call.db import Database, PostgresDatabase, StorageUnavailable, UniqueViolation
from jego_call.errors import ErrorCode, SignallingError
from jego_call.messaging.store import MessageStore

from ..helpers import until
from .conftest import Backend

pytestmark = pytest.mark.backends("sqlite", "postgres")

USERS = ("alice", "bob", "carol", "dave")


class Nodes:
    """Two databases on one storage; `reopen()` closes both and opens them again."""

    def __init__(self, backend: Backend, tmp_path: Path) -> None:
        self.backend = backend
        self.path = tmp_path / "jego.sqlite3"
        self.url = ""
        self.a: Database
        self.b: Database

    async def _open(self) -> Database:
        if self.backend.pg is None:
            return Database.open(self.path)
        return await PostgresDatabase.connect(self.url, pool_min=1, pool_max=4, connect_timeout_s=2.0,
                                              command_timeout_s=5.0)

    async def open(self) -> None:
        if self.backend.pg is not None and not self.url:
            self.url = await self.backend.new_database()
        self.a = await self._open()
        self.b = await self._open()

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()

    async def reopen(self) -> None:
        await self.close()
        await self.open()


@pytest.fixture
async def nodes(backend: Backend, tmp_path: Path) -> AsyncIterator[Nodes]:
    n = Nodes(backend, tmp_path)
    await n.open()
    for u in USERS:
        await n.a.execute("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)", (u,))
    yield n
    await n.close()


async def test_two_nodes_sending_into_one_conversation_are_gap_free_exactly_once_in_order(nodes: Nodes) -> None:
    """2 x 200 sends into one conversation from both nodes at once."""
    sa, sb = MessageStore(nodes.a), MessageStore(nodes.b)

    async def stream(store: MessageStore, sender: str, to: str, tag: str) -> list[int]:
        """50 sends one after the other (as one client does): their seqs must rise."""
        seqs = []
        for i in range(50):
            msg, dup = await store.send(sender, to, f"{tag}-{i}", "text", f"{tag} {i}", None)
            assert not dup
            seqs.append(msg.seq)
        return seqs

    # 4 streams per node, both nodes at once: 8 writers into one conversation
    streams = await asyncio.gather(*(stream(st, sender, to, f"{sender}{k}") for k in range(4)
                                     for st, sender, to in ((sa, "alice", "bob"), (sb, "bob", "alice"))))
    assert sorted(s for r in streams for s in r) == list(range(1, 401))   # gap-free, nothing twice
    for r in streams:
        assert r == sorted(r)                                                # each client's order is kept
    rows = await nodes.a.query("SELECT seq, sender, client_id FROM messages ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 401)) and len({r["client_id"] for r in rows}) == 400
    page, more = await sb.page("alice", "bob", None, 500)
    assert [m.seq for m in page] == list(range(1, 401)) and not more

    # the same client_id retried on both nodes at once: stored once, both get the same message
    (m1, d1), (m2, d2) = await asyncio.gather(sa.send("alice", "bob", "retry", "text", "once", None),
                                              sb.send("alice", "bob", "retry", "text", "once", None))
    assert (m1.seq, m1.client_id) == (m2.seq, m2.client_id) == (401, "retry") and sorted([d1, d2]) == [False, True]
    count = await nodes.b.query_one("SELECT COUNT(*) FROM messages WHERE client_id = 'retry'")
    assert count is not None and count[0] == 1


async def test_receipts_from_both_nodes_only_move_forward(nodes: Nodes) -> None:
    sa, sb = MessageStore(nodes.a), MessageStore(nodes.b)
    for i in range(10):
        await sa.send("alice", "bob", f"c{i}", "text", str(i), None)
    marks = await asyncio.gather(sa.mark("bob", "alice", 7, "read"), sb.mark("bob", "alice", 4, "delivered"),
                                 sb.mark("bob", "alice", 10, "delivered"))
    assert marks[0] == 7 and max(m or 0 for m in marks) == 10
    assert await sa.watermarks("alice", "bob") == (10, 7)
    assert await sb.mark("bob", "alice", 3, "read") is None        # going back changes nothing
    assert await sb.watermarks("alice", "bob") == (10, 7)


async def test_groups_written_from_both_nodes(nodes: Nodes) -> None:
    sa, sb = MessageStore(nodes.a), MessageStore(nodes.b)
    group = await sa.create_group("alice", "family", ["bob"])
    # membership changes from both nodes at once: both apply, each with its own system line
    lines = await asyncio.gather(sa.add_members(group.id, "alice", ["carol"]),
                                 sb.add_members(group.id, "alice", ["dave"]))
    assert all(line is not None for line in lines)
    now = await sb.group(group.id)
    assert now is not None and sorted(now.usernames) == ["alice", "bob", "carol", "dave"]

    async def burst(store: MessageStore, sender: str) -> list[int]:
        async def one(i: int) -> int:
            msg, dup = await store.send_group(sender, group.id, f"{sender}-{i}", "text", str(i), None)
            assert not dup
            return msg.seq
        return list(await asyncio.gather(*(one(i) for i in range(100))))

    a_seqs, b_seqs = await asyncio.gather(burst(sa, "bob"), burst(sb, "carol"))
    assert sorted(a_seqs + b_seqs) == list(range(4, 204))          # after "created" and the two "added"
    # the last admin leaves on one node while another member is removed on the other
    await asyncio.gather(sa.remove_member(group.id, "alice", "alice"), sb.remove_member(group.id, "alice", "dave"))
    after = await sa.group(group.id)
    assert after is not None and sorted(after.usernames) == ["bob", "carol"]
    assert [m.role for m in after.members].count("admin") == 1
    seqs = [r[0] for r in await nodes.a.query(
        "SELECT m.seq FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE c.group_id = ? "
        "ORDER BY m.seq", (group.id,))]
    assert seqs == list(range(1, len(seqs) + 1)) and after.last_seq == seqs[-1]
    assert await sa.mark_group("bob", group.id, 10**6, "read") == after.last_seq   # clamped to what exists
    member = await sb.membership(group.id, "bob")
    assert member is not None and (member.delivered_seq, member.read_seq) == (after.last_seq, after.last_seq)


async def test_one_username_registered_on_both_nodes_at_once(nodes: Nodes, tmp_path: Path) -> None:
    cfg = AuthConfig()
    aa, ab = Accounts(nodes.a, b"k" * 32, cfg), Accounts(nodes.b, b"k" * 32, cfg)
    results = await asyncio.gather(aa.register("wei", "first-password-1"), ab.register("wei", "second-password-2"),
                                   return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1
    assert isinstance(lost[0], SignallingError) and lost[0].code is ErrorCode.USERNAME_TAKEN
    winner = "first-password-1" if results[0] is won[0] else "second-password-2"
    await nodes.reopen()
    again = Accounts(nodes.b, b"k" * 32, cfg)
    assert (await again.login("wei", winner)).username == "wei"    # the stored account is intact
    with pytest.raises(SignallingError, match="wrong username or password"):
        await again.login("wei", "first-password-1" if winner != "first-password-1" else "second-password-2")
    # contacts added from both nodes at once: both there, nothing twice
    aa, ab = Accounts(nodes.a, b"k" * 32, cfg), again
    await asyncio.gather(aa.add_contact("wei", "alice"), ab.add_contact("wei", "bob"),
                         ab.add_contact("wei", "alice"))
    assert sorted(await again.contacts("wei")) == ["alice", "bob"]


async def test_holds_from_both_nodes_never_exceed_the_balance(nodes: Nodes) -> None:
    fraud = FraudConfig(max_concurrent_calls=100, max_calls_per_hour=10_000, max_minutes_per_day=10_000,
                        distinct_destinations_warning=10_000, distinct_destinations_critical=10_000,
                        sequential_warning=10_000, sequential_critical=10_000)
    ba = await Billing.open(nodes.a, load_rate_table(), fraud, Terms(max_call_s=60))
    bb = await Billing.open(nodes.b, load_rate_table(), fraud, Terms(max_call_s=60))
    await ba.top_up("alice", 300, "card", time.time())   # 3.00 CNY: 20 one-minute holds of 0.15 (China Mobile)
    now = time.time()
    grants = await asyncio.gather(*(b.authorise(f"{tag}-{i}", "alice", f"+86138001380{i:02d}", now)
                                    for i in range(20) for tag, b in (("a", ba), ("b", bb))))
    hold, n_open, _ = await held(nodes.a, "alice")
    assert sum(g.ok for g in grants) == n_open == 20 and hold == 300   # 40 tries, 20 holds of 0.15 fit
    view = await bb.view("alice")
    assert view["balance"] == 300 and view["available"] == 300 - hold >= 0


async def test_the_same_call_record_from_both_nodes_is_one_row(nodes: Nodes) -> None:
    rec = CallRecord("call-x", "alice", "bob", "user", "user", "audio", 1.0, 2.0, 3.0, "hangup", None, None)
    await asyncio.gather(CallLog(nodes.a).record(rec), CallLog(nodes.b).record(rec))
    assert await CallLog(nodes.b).report("call-x", "opus", {"rtt_ms": 20}, {})
    await nodes.reopen()
    rows = await nodes.a.query("SELECT call_id, codec, app_stats FROM calls")
    assert [(r["call_id"], r["codec"]) for r in rows] == [("call-x", "opus")]


async def test_bad_input_changes_nothing_stored(nodes: Nodes) -> None:
    store = MessageStore(nodes.a)
    first, _ = await store.send("alice", "bob", "ok-1", "text", "kept", None)

    async def half_done() -> None:
        async with nodes.a.transaction() as tx:
            await tx.execute("UPDATE messages SET body = 'overwritten' WHERE seq = 1")
            await tx.execute("INSERT INTO users(username, password_hash, created_at) VALUES ('alice', 'y', 0)")

    with pytest.raises(UniqueViolation):  # a transaction that breaks a constraint half-way is rolled back
        await half_done()
    with pytest.raises(Exception, match="(?i)check|constraint"):   # a kind the schema does not know
        await store.send("alice", "bob", "bad-kind", "exe", "x", None)
    await nodes.reopen()
    again = MessageStore(nodes.b)
    page, _ = await again.page("bob", "alice", None, 10)
    assert [(m.seq, m.text, m.client_id) for m in page] == [(first.seq, "kept", "ok-1")]
    user = await nodes.b.query_one("SELECT password_hash FROM users WHERE username = 'alice'")
    assert user is not None and user[0] == "x"
    second, dup = await again.send("alice", "bob", "ok-2", "text", "next", None)   # no seq was burnt
    assert (second.seq, dup) == (2, False)


@pytest.mark.backends("postgres")   # SQLite has no server to stop: its reopen is in the tests above
async def test_data_survives_a_postgres_restart_and_outage(backend: Backend, nodes: Nodes) -> None:
    """PostgreSQL stopped under a running pool: StorageUnavailable (nothing half-stored), then
    the same pool works again once the server is back, without reopening; all data is there."""
    assert backend.pg is not None
    store = MessageStore(nodes.a)
    await store.send("alice", "bob", "before", "text", "before the outage", None)
    backend.pg.server.stop(signal.SIGINT)   # fast shutdown: the pools' connections are cut
    try:
        with pytest.raises(StorageUnavailable):
            await store.send("alice", "bob", "during", "text", "while it is down", None)
        assert not await nodes.a.ping()
    finally:
        backend.pg.server.start()
    # the pool's broken connections are replaced on the next acquire
    await until(nodes.a.ping, 5, "PostgreSQL to answer again", interval=0.1)
    msg, dup = await store.send("alice", "bob", "during", "text", "while it is down", None)
    assert (msg.seq, dup) == (2, False)   # the refused try stored nothing, so no gap
    page, _ = await MessageStore(nodes.b).page("alice", "bob", None, 10)
    assert [m.client_id for m in page] == ["before", "during"]
