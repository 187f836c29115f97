"""jego_call/messaging/store.py's `MessageStore` on a real SQLite file: sequence numbers per
conversation are gap-free from 1 in both directions, a retried client id is stored once (and
burns no seq), receipts move a cumulative watermark only forward and only on the recipient's
messages, history pages tile the conversation, media is readable only by those it was sent to,
and groups: membership periods bound what a member sees, the last admin is replaced, group
watermarks clamp and only rise, per-member receipts. The store's coroutines never wait on
SQLite, so the property tests run them with `run_sync`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.errors import ErrorCode, SignallingError
from jego_call.messaging.store import Media, Message, MessageStore, pair

T0 = 1_800_000_000.0
_ids = itertools.count()


def add_users(db: Database, *names: str) -> None:
    for n in names:
        run_sync(db.execute("INSERT INTO users(username, password_hash, created_at) VALUES (?, 'x', 0)"
                            " ON CONFLICT DO NOTHING", (n,)))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path_factory.mktemp("msg") / "jego.sqlite3")
    yield database
    run_sync(database.close())


@pytest.fixture
def ms(db: SqliteDatabase) -> MessageStore:
    return MessageStore(db)


def fresh(db: Database, *prefixes: str) -> list[str]:
    """New users (unique in the module's database) named after `prefixes`."""
    n = next(_ids)
    names = [f"{p}{n}" for p in prefixes]
    add_users(db, *names)
    return names


def send(ms: MessageStore, a: str, b: str, text: str | None = "hi", cid: str | None = None,
         now: float = T0, media: str | None = None, kind: str = "text") -> tuple[Message, bool]:
    return run_sync(ms.send(a, b, cid or f"c{next(_ids)}", kind, text, media, now))


def media_row(owner: str, kind: str = "photo") -> Media:
    return Media(f"m{next(_ids)}", owner, kind, "image/png", 123, "ab" * 32, "p.png", 10, 20, None, "cd" * 32, T0)


# --- pairs ----------------------------------------------------------------------------------------
@given(st.text(min_size=1), st.text(min_size=1))
def test_pair_orders_the_two_names(a: str, b: str) -> None:
    x, y = pair(a, b)
    assert {x, y} == {a, b} and x <= y and pair(b, a) == (x, y)


def test_sequence_numbers_start_at_one_and_are_shared_by_both_directions(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    seqs = [send(ms, a, b)[0].seq, send(ms, b, a)[0].seq, send(ms, a, b)[0].seq, send(ms, a, c)[0].seq]
    assert seqs == [1, 2, 3, 1]                       # a-c is its own conversation
    assert run_sync(ms.conversation_id(a, b)) == run_sync(ms.conversation_id(b, a)) is not None
    assert run_sync(ms.conversation_id(b, c)) is None


def test_a_retried_client_id_is_stored_once_and_burns_no_seq(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    first, dup = send(ms, a, b, "hello", cid="same")
    assert not dup and first.seq == 1
    again, dup = send(ms, a, b, "DIFFERENT TEXT", cid="same", now=T0 + 5)
    assert dup and again.seq == 1 and again.text == "hello" and again.created_at == T0
    assert send(ms, a, b)[0].seq == 2                 # no gap where the retry was
    other, dup = send(ms, b, a, "mine", cid="same")   # a client id is unique per sender only
    assert not dup and other.seq == 3
    assert len(run_sync(ms.after(a, b, 0, 100))) == 3


def test_a_message_reads_back_as_it_was_sent(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    sent, _ = send(ms, a, b, "你好 👋", cid="k1", now=T0 + 0.1234)
    got = run_sync(ms.get(sent.conversation_id, 1))
    assert got == sent
    assert got.to_wire() == {"seq": 1, "from": a, "to": b, "client_id": "k1", "kind": "text",
                             "ts": round(T0 + 0.1234, 3), "state": "sent", "text": "你好 👋"}
    assert run_sync(ms.get(sent.conversation_id, 2)) is None
    assert run_sync(ms.by_client_id(a, "k1")) == sent and run_sync(ms.by_client_id(b, "k1")) is None


# --- receipts -------------------------------------------------------------------------------------
def test_receipts_move_a_cumulative_watermark_forward_once(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    for _ in range(4):
        send(ms, a, b)
    send(ms, b, a)                                                   # seq 5, bob's own
    assert run_sync(ms.watermarks(a, b)) == (0, 0)
    assert run_sync(ms.mark(b, a, 2, "delivered", T0 + 1)) == 2
    assert run_sync(ms.mark(b, a, 2, "delivered", T0 + 2)) is None   # idempotent: nothing changed
    assert run_sync(ms.mark(b, a, 1, "delivered", T0 + 3)) is None   # never backwards
    assert run_sync(ms.mark(b, a, 99, "read", T0 + 4)) == 4          # read implies delivered; bob's own skipped
    assert run_sync(ms.watermarks(a, b)) == (4, 4)
    msgs = run_sync(ms.after(a, b, 0, 10))
    assert [m.state for m in msgs] == ["read"] * 4 + ["sent"]        # bob's message to alice untouched
    assert msgs[2].delivered_at == T0 + 4 and msgs[0].delivered_at == T0 + 1
    assert run_sync(ms.watermarks(b, a)) == (0, 0)


def test_a_sender_cannot_mark_their_own_messages(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    send(ms, a, b)
    assert run_sync(ms.mark(a, b, 10, "read")) is None
    assert run_sync(ms.watermarks(a, b)) == (0, 0)


def test_marking_with_nobody_to_talk_to_changes_nothing(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    assert run_sync(ms.mark(a, b, 10, "delivered")) is None
    assert run_sync(ms.watermarks(a, b)) == (0, 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send_ab", "send_ba", "deliver", "read"]), st.integers(0, 12)),
                min_size=1, max_size=25))
def test_watermarks_only_rise_and_read_never_passes_delivered(db: SqliteDatabase,
                                                              ops: list[tuple[str, int]]) -> None:
    ms = MessageStore(db)
    a, b = fresh(db, "alice", "bob")
    mine: list[int] = []                                  # seqs of a's messages to b
    last = (0, 0)
    for op, n in ops:
        if op == "send_ab":
            mine.append(send(ms, a, b)[0].seq)
        elif op == "send_ba":
            send(ms, b, a)
        else:
            got = run_sync(ms.mark(b, a, n, "delivered" if op == "deliver" else "read"))
            marks = run_sync(ms.watermarks(a, b))
            want = max([s for s in mine if s <= n], default=0)
            assert got is None or got == marks[1 if op == "read" else 0]
            assert marks[1 if op == "read" else 0] == max(last[1 if op == "read" else 0], want)
        marks = run_sync(ms.watermarks(a, b))
        assert marks[0] >= last[0] and marks[1] >= last[1] and marks[1] <= marks[0]
        last = marks


# --- reading ----------------------------------------------------------------------------------------
def test_undelivered_is_by_conversation_then_seq_with_limit_and_exclusions(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    send(ms, a, c, "1")
    send(ms, b, c, "2")
    send(ms, a, c, "3")
    send(ms, c, a, "mine")
    send(ms, b, c, "4")
    got = run_sync(ms.undelivered(c, 10))
    by_conv = sorted({m.conversation_id for m in got})
    assert [(m.conversation_id, m.seq) for m in got] == sorted((m.conversation_id, m.seq) for m in got)
    assert sorted(m.text or "" for m in got) == ["1", "2", "3", "4"]
    assert len(run_sync(ms.undelivered(c, 2))) == 2
    rest = run_sync(ms.undelivered(c, 10, exclude={by_conv[0]}))
    assert {m.conversation_id for m in rest} == {by_conv[1]}
    run_sync(ms.mark(c, a, 99, "delivered"))
    assert sorted(m.text or "" for m in run_sync(ms.undelivered(c, 10))) == ["2", "4"]


def test_after_reads_both_directions_past_a_seq(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    for i in range(5):
        send(ms, a if i % 2 == 0 else b, b if i % 2 == 0 else a, str(i))
    assert [m.seq for m in run_sync(ms.after(a, b, 2, 100))] == [3, 4, 5]
    assert [m.seq for m in run_sync(ms.after(b, a, 0, 2))] == [1, 2]
    assert run_sync(ms.after(a, b, 5, 100)) == []
    assert run_sync(ms.after(a, "nobody", 0, 100)) == []


def test_history_pages_end_before_a_seq_and_say_if_there_is_more(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    for _ in range(7):
        send(ms, a, b)
    page, more = run_sync(ms.page(a, b, None, 3))
    assert [m.seq for m in page] == [5, 6, 7] and more
    page, more = run_sync(ms.page(b, a, 5, 3))
    assert [m.seq for m in page] == [2, 3, 4] and more
    page, more = run_sync(ms.page(a, b, 4, 3))
    assert [m.seq for m in page] == [1, 2, 3] and not more      # exactly the rest: no more
    assert run_sync(ms.page(a, b, 1, 3)) == ([], False)
    assert run_sync(ms.page(a, "nobody", None, 3)) == ([], False)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 25), st.integers(1, 9))
def test_pages_tile_the_whole_history(db: SqliteDatabase, n: int, limit: int) -> None:
    ms = MessageStore(db)
    a, b = fresh(db, "alice", "bob")
    for i in range(n):
        send(ms, a, b, str(i))
    seen: list[int] = []
    before: int | None = None
    while True:
        page, more = run_sync(ms.page(a, b, before, limit))
        assert len(page) <= limit
        seen = [m.seq for m in page] + seen
        if not more:
            break
        before = page[0].seq
    assert seen == list(range(1, n + 1))


def test_conversations_are_most_recent_first_with_unread_and_receipts(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    send(ms, b, a, "old", now=T0)
    send(ms, b, a, "old2", now=T0 + 1)
    send(ms, a, c, "new", now=T0 + 10)
    run_sync(ms.mark(c, a, 1, "read"))
    convs = run_sync(ms.conversations(a))
    assert [c_["with"] for c_ in convs] == [c, b]
    assert convs[0]["unread"] == 0 and convs[0]["read_seq"] == 1 and convs[0]["delivered_seq"] == 1
    assert convs[1]["unread"] == 2 and convs[1]["last_seq"] == 2
    assert convs[1]["last_message"]["text"] == "old2"
    assert sorted(run_sync(ms.peers(a))) == sorted([b, c]) and run_sync(ms.peers(b)) == [a]


# --- media ----------------------------------------------------------------------------------------
def test_media_is_readable_by_the_uploader_and_whom_it_was_sent_to_only(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    m = media_row(a)
    run_sync(ms.add_media(m))
    assert run_sync(ms.media(m.id)) == m
    assert run_sync(ms.require_media(a, m.id)) == m
    with pytest.raises(SignallingError) as e:
        run_sync(ms.require_media(b, m.id))
    assert e.value.code == ErrorCode.FORBIDDEN
    sent, _ = send(ms, a, b, None, media=m.id, kind="photo")
    assert sent.media == m.to_wire() and sent.to_wire()["media"]["thumbnail"] is True
    assert "text" not in sent.to_wire()
    assert run_sync(ms.require_media(b, m.id)) == m
    with pytest.raises(SignallingError) as e:
        run_sync(ms.require_media(c, m.id))
    assert e.value.code == ErrorCode.FORBIDDEN
    with pytest.raises(SignallingError) as e:
        run_sync(ms.require_media(a, "no-such-media"))
    assert e.value.code == ErrorCode.NOT_FOUND
    assert run_sync(ms.get(sent.conversation_id, sent.seq)) == sent


# --- groups ---------------------------------------------------------------------------------------
def events(msgs: list[Message]) -> list[dict[str, object]]:
    return [json.loads(m.text or "{}") for m in msgs if m.kind == "system"]


def test_a_new_group_starts_with_its_created_line_and_the_creator_as_admin(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    g = run_sync(ms.create_group(a, "家人", [b, c, b, a], now=T0))
    assert g.usernames == [a, b, c] and g.last_seq == 1          # duplicates and the creator dropped
    assert g.is_admin(a) and not g.is_admin(b) and not g.is_admin("stranger")
    assert all(m.joined_seq == 1 for m in g.members)
    first = run_sync(ms.group_after(b, g.id, 0, 10))
    assert [m.kind for m in first] == ["system"]
    assert first[0].to_wire()["event"] == {"action": "created", "by": a, "name": "家人", "members": [b, c]}
    assert first[0].to_wire()["group"] == g.id and "to" not in first[0].to_wire()
    assert run_sync(ms.groups_of(b)) == [g.id]


def test_the_sender_has_their_own_group_message_and_others_wait_for_it(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    g = run_sync(ms.create_group(a, "g", [b, c], now=T0))
    msg, dup = run_sync(ms.send_group(b, g.id, "x1", "text", "hello", None, T0 + 1))
    assert not dup and msg.seq == 2 and msg.recipient is None
    again, dup = run_sync(ms.send_group(b, g.id, "x1", "text", "other", None, T0 + 2))
    assert dup and again.seq == 2 and again.text == "hello"
    member = run_sync(ms.membership(g.id, b))
    # watermarks are cumulative: b has not read line 1, so their own message cannot jump it
    assert member is not None and (member.delivered_seq, member.read_seq) == (0, 0)
    assert run_sync(ms.mark_group(b, g.id, 2, "read")) == 2
    run_sync(ms.mark_group(c, g.id, 1, "read"))
    mine, _ = run_sync(ms.send_group(c, g.id, "x2", "text", "caught up", None, T0 + 3))
    member = run_sync(ms.membership(g.id, c))
    assert member is not None and (member.delivered_seq, member.read_seq) == (1, 1)   # 2 still unread
    run_sync(ms.mark_group(c, g.id, 2, "read"))
    run_sync(ms.send_group(c, g.id, "x3", "text", "now", None, T0 + 4))
    member = run_sync(ms.membership(g.id, c))
    # c's own 3 was sent while 2 was unread: it stays below the watermark until c marks past it
    assert member is not None and (member.delivered_seq, member.read_seq) == (2, 2)
    assert run_sync(ms.mark_group(c, g.id, 4, "read")) == 4
    run_sync(ms.send_group(c, g.id, "x4", "text", "caught up now", None, T0 + 5))
    member = run_sync(ms.membership(g.id, c))
    assert member is not None and (member.delivered_seq, member.read_seq) == (5, 5)   # read up to 4: own 5 counts
    assert mine.seq == 3
    assert run_sync(ms.receipts(g.id, 2)) == {"delivered": [c], "read": [c], "waiting": [a]}
    assert run_sync(ms.group_unread(a, g.id)) == 4 and run_sync(ms.group_unread(b, g.id)) == 3
    assert run_sync(ms.mark_group(a, g.id, 2, "delivered")) == 2
    assert run_sync(ms.receipts(g.id, 2)) == {"delivered": [a, c], "read": [c], "waiting": []}
    assert run_sync(ms.mark_group(a, g.id, 4, "read")) == 4
    assert run_sync(ms.receipts(g.id, 4)) == {"delivered": [a], "read": [a], "waiting": [b]}
    assert run_sync(ms.receipts(g.id, 5)) == {"delivered": [], "read": [], "waiting": [a, b]}
    assert run_sync(ms.group_unread(a, g.id)) == 1
    with pytest.raises(SignallingError) as e:
        run_sync(ms.receipts(g.id, 99))
    assert e.value.code == ErrorCode.NOT_FOUND


def test_sending_to_a_group_that_does_not_exist_is_not_found(ms: MessageStore) -> None:
    (a,) = fresh(ms.db, "alice")
    with pytest.raises(SignallingError) as e:
        run_sync(ms.send_group(a, "g-none", "x", "text", "hi", None))
    assert e.value.code == ErrorCode.NOT_FOUND
    for change in (lambda: ms.add_members("g-none", a, ["x"]), lambda: ms.remove_member("g-none", a, a),
                   lambda: ms.make_admin("g-none", a, a), lambda: ms.rename_group("g-none", a, "n")):
        with pytest.raises(SignallingError) as e:
            run_sync(change())
        assert e.value.code == ErrorCode.NOT_FOUND


def test_a_removed_member_sees_up_to_their_removal_and_nothing_after(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    g = run_sync(ms.create_group(a, "g", [b, c], now=T0))
    run_sync(ms.send_group(a, g.id, "m1", "text", "before", None, T0 + 1))          # seq 2
    lines = run_sync(ms.remove_member(g.id, a, c, T0 + 2))                          # seq 3
    assert [m.seq for m in lines] == [3] and events(lines)[0]["action"] == "removed"
    run_sync(ms.send_group(a, g.id, "m2", "text", "after", None, T0 + 3))           # seq 4
    assert [m.seq for m in run_sync(ms.group_after(c, g.id, 0, 10))] == [1, 2, 3]
    assert [m.seq for m in run_sync(ms.group_page(c, g.id, None, 10))[0]] == [1, 2, 3]
    assert [m.seq for m in run_sync(ms.group_undelivered(c, 10))] == [1, 2, 3]
    assert run_sync(ms.mark_group(c, g.id, 99, "delivered")) == 3                   # clamped to left_seq
    assert run_sync(ms.group_undelivered(c, 10)) == []
    assert run_sync(ms.groups_of(c)) == [] and run_sync(ms.groups_seen(c)) == [g.id]
    assert run_sync(ms.receipts(g.id, 4))["waiting"] == [b]                         # c is not asked for 4
    assert run_sync(ms.group_unread(c, g.id)) == 1                                  # "before"; lines do not count


def test_one_who_leaves_has_seen_their_own_line(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    g = run_sync(ms.create_group(a, "g", [b], now=T0))
    run_sync(ms.remove_member(g.id, b, b, T0 + 1))
    member = run_sync(ms.membership(g.id, b))
    assert member is not None and member.left_seq == 2 and member.delivered_seq == 2
    assert events(run_sync(ms.group_after(a, g.id, 1, 10))) == [{"action": "left", "by": b, "members": [b]}]


def test_when_the_last_admin_goes_the_oldest_member_becomes_admin(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    g = run_sync(ms.create_group(a, "g", [b, c], now=T0))
    lines = run_sync(ms.remove_member(g.id, a, a, T0 + 1))
    assert [json.loads(m.text or "")["action"] for m in lines] == ["left", "admin"]
    assert json.loads(lines[1].text or "")["members"] == [b]
    after = run_sync(ms.group(g.id))
    assert after is not None and after.is_admin(b) and not after.is_admin(c) and after.usernames == [b, c]
    assert run_sync(ms.make_admin(g.id, b, c, T0 + 2)) is not None
    assert run_sync(ms.make_admin(g.id, b, c, T0 + 3)) is None                      # already one: no line
    assert len(run_sync(ms.remove_member(g.id, b, b, T0 + 4))) == 1                 # c is still admin


def test_added_members_see_from_the_line_that_added_them(ms: MessageStore) -> None:
    a, b, c, d = fresh(ms.db, "alice", "bob", "carol", "dave")
    g = run_sync(ms.create_group(a, "g", [b], now=T0))
    run_sync(ms.send_group(a, g.id, "m1", "text", "early", None, T0 + 1))           # seq 2
    line = run_sync(ms.add_members(g.id, a, [c, d, c, b], T0 + 2))                  # seq 3
    assert line is not None and line.seq == 3
    assert line.to_wire()["event"] == {"action": "added", "by": a, "members": [c, d]}
    assert run_sync(ms.add_members(g.id, a, [b, c], T0 + 3)) is None                # nobody new: no line
    assert [m.seq for m in run_sync(ms.group_after(d, g.id, 0, 10))] == [3]
    grp = run_sync(ms.group(g.id))
    assert grp is not None and grp.usernames == [a, b, c, d]


def test_a_member_who_comes_back_sees_each_period_only(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    g = run_sync(ms.create_group(a, "g", [b], now=T0))                              # 1
    run_sync(ms.remove_member(g.id, a, b, T0 + 1))                                  # 2
    run_sync(ms.send_group(a, g.id, "gap", "text", "while away", None, T0 + 2))     # 3
    run_sync(ms.add_members(g.id, a, [b], T0 + 3))                                  # 4
    run_sync(ms.send_group(a, g.id, "back", "text", "welcome", None, T0 + 4))       # 5
    assert [m.seq for m in run_sync(ms.group_after(b, g.id, 0, 10))] == [1, 2, 4, 5]
    member = run_sync(ms.membership(g.id, b))
    assert member is not None and member.joined_seq == 4 and member.left_seq is None


def test_group_watermarks_only_rise_and_read_implies_delivered(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    g = run_sync(ms.create_group(a, "g", [b], now=T0))
    for i in range(3):
        run_sync(ms.send_group(a, g.id, f"m{i}", "text", str(i), None, T0 + i))    # seqs 2..4
    assert run_sync(ms.mark_group(b, g.id, 3, "read")) == 3
    member = run_sync(ms.membership(g.id, b))
    assert member is not None and (member.delivered_seq, member.read_seq) == (3, 3)
    assert run_sync(ms.mark_group(b, g.id, 2, "read")) is None
    assert run_sync(ms.mark_group(b, g.id, 3, "delivered")) is None
    assert run_sync(ms.mark_group(b, g.id, 1000, "delivered")) == 4                 # clamped to last_seq
    assert run_sync(ms.mark_group("stranger", g.id, 4, "read")) is None
    assert run_sync(ms.mark_group(b, "g-none", 4, "read")) is None


def test_a_group_rename_is_a_line_and_changes_the_name(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    g = run_sync(ms.create_group(a, "old", [b], now=T0))
    line = run_sync(ms.rename_group(g.id, a, "new name", T0 + 1))
    assert line.to_wire()["event"] == {"action": "renamed", "by": a, "name": "new name"}
    grp = run_sync(ms.group(g.id))
    assert grp is not None and grp.name == "new name" and grp.last_seq == 2


def test_group_media_is_for_members_who_saw_its_message(ms: MessageStore) -> None:
    a, b, c = fresh(ms.db, "alice", "bob", "carol")
    g = run_sync(ms.create_group(a, "g", [b, c], now=T0))
    run_sync(ms.remove_member(g.id, a, c, T0 + 1))
    m = media_row(a)
    run_sync(ms.add_media(m))
    run_sync(ms.send_group(a, g.id, "pic", "photo", None, m.id, T0 + 2))
    assert run_sync(ms.require_media(b, m.id)) == m
    with pytest.raises(SignallingError) as e:
        run_sync(ms.require_media(c, m.id))          # removed before it was sent
    assert e.value.code == ErrorCode.FORBIDDEN


def test_groups_of_are_the_most_recently_active_first(ms: MessageStore) -> None:
    a, b = fresh(ms.db, "alice", "bob")
    g1 = run_sync(ms.create_group(a, "one", [b], now=T0))
    g2 = run_sync(ms.create_group(a, "two", [b], now=T0 + 1))
    assert run_sync(ms.groups_of(b)) == [g2.id, g1.id]
    run_sync(ms.send_group(a, g1.id, "bump", "text", "x", None, T0 + 5))
    assert run_sync(ms.groups_of(b)) == [g1.id, g2.id]
    assert run_sync(ms.groups_seen(b)) == sorted([g1.id, g2.id])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "remove", "add", "mark"]), st.integers(0, 3),
                          st.integers(0, 15)), min_size=1, max_size=20))
def test_group_members_see_exactly_their_periods(db: SqliteDatabase, ops: list[tuple[str, int, int]]) -> None:
    """Any mix of sends, removals, re-adds and marks: group_after gives each user exactly the seqs
    inside their membership periods, and a member's watermarks never pass what they may see."""
    ms = MessageStore(db)
    users = fresh(db, "u", "v", "w", "x")
    admin = users[0]
    g = run_sync(ms.create_group(admin, "g", users[1:], now=T0))
    periods: dict[str, list[list[int | None]]] = {u: [[1, None]] for u in users}
    last = 1
    for i, (op, who, n) in enumerate(ops):
        u = users[who]
        current = periods[u][-1][1] is None
        if op == "send" and current:
            last = run_sync(ms.send_group(u, g.id, f"k{next(_ids)}", "text", str(i), None, T0 + i))[0].seq
        elif op == "remove" and current and u != admin:
            last = run_sync(ms.remove_member(g.id, admin, u, T0 + i))[-1].seq
            periods[u][-1][1] = last
        elif op == "add" and not current:
            line = run_sync(ms.add_members(g.id, admin, [u], T0 + i))
            assert line is not None
            last = line.seq
            periods[u].append([last, None])
        elif op == "mark":
            run_sync(ms.mark_group(u, g.id, n, "read"))
    for u in users:
        want = [s for s in range(1, last + 1)
                if any(lo is not None and lo <= s and (hi is None or s <= hi) for lo, hi in periods[u])]
        assert [m.seq for m in run_sync(ms.group_after(u, g.id, 0, 1000))] == want
        member = run_sync(ms.membership(g.id, u))
        assert member is not None
        top = member.left_seq if member.left_seq is not None else last
        assert member.read_seq <= member.delivered_seq <= top
