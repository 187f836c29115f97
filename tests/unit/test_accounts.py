"""jego_call/accounts.py on a real SQLite file: usernames and display names normalised or refused
with their own error code, passwords checked at both bounds, tokens that verify until their
expiry second and not after (and not when forged, truncated or for a deleted account), login
that says the same for an unknown user and a wrong password, contacts and blocks with their
notifications, the server secret kept once with mode 0600. argon2 runs with its cheapest
parameters here (the module's hasher is swapped for the test).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

from jego_call import accounts as acc
from jego_call.accounts import Accounts, LoginDoors, load_secret, normalise_display_name, normalise_username
from jego_call.config import AuthConfig
from jego_call.db import Database, SqliteDatabase, run_sync
from jego_call.errors import ErrorCode, SignallingError

SECRET = b"k" * 32
PW = "correct-horse-9"
T0 = 1_800_000_000.0


def outcome(fn: Callable[[object], str], raw: object) -> str | SignallingError:
    try:
        return fn(raw)
    except SignallingError as exc:
        return exc


def code_of(exc: pytest.ExceptionInfo[SignallingError]) -> ErrorCode:
    return exc.value.code


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(acc, "_HASHER", cheap)
    monkeypatch.setattr(acc, "_DUMMY_HASH", cheap.hash("not-a-real-password"))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = Database.open(tmp_path / "jego.sqlite3")
    yield database
    run_sync(database.close())


@pytest.fixture
def changes() -> list[tuple[str, ...]]:
    return []


@pytest.fixture
def accounts(db: SqliteDatabase, changes: list[tuple[str, ...]]) -> Accounts:
    async def hook(users: tuple[str, ...]) -> None:
        changes.append(users)

    return Accounts(db, SECRET, AuthConfig(token_ttl_s=3600, min_password_length=8), on_change=hook)


# --- usernames ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "want"), [("Alice", "alice"), ("  bob.smith ", "bob.smith"), ("a_1", "a_1"),
                                           ("x" * 32, "x" * 32), ("9lives", "9lives"), ("li-wei", "li-wei")])
def test_usernames_are_lowercased_and_trimmed(raw: str, want: str) -> None:
    assert normalise_username(raw) == want


@pytest.mark.parametrize("raw", ["ab", "x" * 33, "_alice", ".bob", "-c-d", "al ice", "zoë", "123", "1.2.3",
                                 "", "alice@example", "李伟"])
def test_bad_usernames_are_refused_with_invalid_username(raw: str) -> None:
    with pytest.raises(SignallingError) as e:
        normalise_username(raw)
    assert code_of(e) == ErrorCode.INVALID_USERNAME and "3-32" in e.value.message


@pytest.mark.parametrize("raw", [None, 42, ["alice"], b"alice"])
def test_a_username_that_is_not_a_string_is_refused(raw: object) -> None:
    with pytest.raises(SignallingError) as e:
        normalise_username(raw)
    assert code_of(e) == ErrorCode.INVALID_USERNAME and "string" in e.value.message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_a_normalised_username_is_a_fixed_point(raw: str) -> None:
    name = outcome(normalise_username, raw)
    if isinstance(name, SignallingError):
        assert name.code == ErrorCode.INVALID_USERNAME
        return
    assert normalise_username(name) == name and acc.USERNAME_RE.match(name)
    assert 3 <= len(name) <= 32 and any(c.isalpha() for c in name)


# --- display names --------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "want"), [("  Li   Wei ", "Li Wei"), ("王\u3000小明", "王 小明"),
                                           ("Cafe\u0301", "Café"), ("x" * 32, "x" * 32), ("👩‍👧", "👩‍👧"),
                                           ("line\u2028break\ttab", "line break tab")])
def test_display_names_are_nfc_with_spaces_collapsed(raw: str, want: str) -> None:
    assert normalise_display_name(raw) == want


@pytest.mark.parametrize(("raw", "words"), [("", "empty"), ("   ", "empty"), ("x" * 33, "at most 32"),
                                            ("bad\x00name", "control"), ("evil\u202eman", "control"),
                                            ("priv\ue000", "control"), ("nul\x7f", "control"),
                                            (None, "string"), (7, "string")])
def test_bad_display_names_are_refused_with_their_reason(raw: object, words: str) -> None:
    with pytest.raises(SignallingError) as e:
        normalise_display_name(raw)
    assert code_of(e) == ErrorCode.INVALID_DISPLAY_NAME and words in e.value.message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_a_normalised_display_name_is_a_fixed_point(raw: str) -> None:
    name = outcome(normalise_display_name, raw)
    if isinstance(name, SignallingError):
        assert name.code == ErrorCode.INVALID_DISPLAY_NAME
        return
    assert normalise_display_name(name) == name
    assert 1 <= len(name) <= 32 and name == name.strip() and "  " not in name


# --- register, login, tokens ------------------------------------------------------------------------
async def test_register_stores_a_normalised_user_and_returns_a_token(accounts: Accounts,
                                                                     changes: list[tuple[str, ...]]) -> None:
    tok = await accounts.register("  Alice ", PW, " Alice  Liu ")
    assert tok.username == "alice"
    assert await accounts.verify_token(tok.token) == "alice"
    assert await accounts.display_name("alice") == "Alice Liu"
    assert await accounts.profile("alice") == {"username": "alice", "display_name": "Alice Liu"}
    assert changes == [("alice",)]
    with pytest.raises(SignallingError) as e:
        await accounts.register("ALICE", PW)
    assert code_of(e) == ErrorCode.USERNAME_TAKEN
    with pytest.raises(SignallingError) as e:        # a concurrent register that lost the race
        await accounts.create("alice", "hash")
    assert code_of(e) == ErrorCode.USERNAME_TAKEN


@pytest.mark.parametrize(("pw", "ok"), [("1234567", False), ("12345678", True), ("x" * 1024, True),
                                        ("x" * 1025, False), (None, False), (12345678, False)])
async def test_password_length_is_checked_at_both_bounds(accounts: Accounts, pw: object, ok: bool) -> None:
    if ok:
        assert (await accounts.register("bob", pw)).username == "bob"
        return
    with pytest.raises(SignallingError) as e:
        await accounts.register("bob", pw)
    assert code_of(e) == ErrorCode.WEAK_PASSWORD
    assert not await accounts.exists("bob")             # nothing stored


async def test_an_invalid_display_name_at_register_stores_nothing(accounts: Accounts) -> None:
    with pytest.raises(SignallingError) as e:
        await accounts.register("carol", PW, "x" * 40)
    assert code_of(e) == ErrorCode.INVALID_DISPLAY_NAME
    assert not await accounts.exists("carol")


async def test_login_says_the_same_for_a_wrong_password_and_an_unknown_user(accounts: Accounts) -> None:
    await accounts.register("alice", PW)
    assert (await accounts.login(" ALICE ", PW)).username == "alice"
    messages = []
    for user, pw in [("alice", "wrong-password"), ("nobody", PW), ("bad name!", PW), (None, PW), ("alice", None),
                     ("alice", "x" * 2000)]:
        with pytest.raises(SignallingError) as e:
            await accounts.login(user, pw)
        assert code_of(e) == ErrorCode.AUTH_FAILED
        messages.append(e.value.message)
    assert set(messages) == {"wrong username or password"}


async def test_the_stored_hash_for_an_unknown_user_is_the_dummy_one(accounts: Accounts) -> None:
    await accounts.register("alice", PW)
    name, h = await accounts.stored_hash("Alice")
    assert name == "alice" and h != acc._DUMMY_HASH and Accounts.verify_password(h, PW)
    assert await accounts.stored_hash("nobody") == (None, acc._DUMMY_HASH)
    assert await accounts.stored_hash(3) == (None, acc._DUMMY_HASH)
    assert not Accounts.verify_password("not a hash", PW)


async def test_a_token_is_valid_until_its_expiry_and_not_a_second_after(accounts: Accounts) -> None:
    await accounts.register("alice", PW)
    tok = accounts.issue_token("alice", now=T0)
    assert tok.expires_at == T0 + 3600
    assert await accounts.verify_token(tok.token, now=T0 + 3600) == "alice"
    with pytest.raises(SignallingError) as e:
        await accounts.verify_token(tok.token, now=T0 + 3600.001)
    assert code_of(e) == ErrorCode.AUTH_FAILED and "expired" in e.value.message


def forged(token: str, **claims: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{body}.{token.split('.')[1]}"


async def test_forged_and_malformed_tokens_are_refused(accounts: Accounts, db: SqliteDatabase) -> None:
    await accounts.register("alice", PW)
    await accounts.register("mallory", PW)
    tok = accounts.issue_token("mallory", now=T0).token
    other = Accounts(db, b"z" * 32, accounts.cfg)
    bad = {
        "signed with another secret": other.issue_token("mallory", now=T0).token,
        "claims changed": forged(tok, u="alice", exp=T0 + 3600),
        "truncated": tok[:-2],
        "no dot": tok.replace(".", ""),
        "two dots": tok + ".x",
        "too long": "a" * 600 + "." + "b",
        "not text": 12345,
        "empty": "",
    }
    for why, t in bad.items():
        with pytest.raises(SignallingError) as e:
            await accounts.verify_token(t, now=T0)
        assert code_of(e) == ErrorCode.AUTH_FAILED, why


async def test_a_well_signed_token_with_bad_claims_is_malformed_not_a_crash(accounts: Accounts) -> None:
    import hashlib
    import hmac

    for claims in (b"not json", b'{"u": "alice"}', b'{"u": "alice", "exp": "soon"}', b"[1, 2]"):
        body = acc._b64(claims)
        sig = acc._b64(hmac.new(SECRET, body.encode(), hashlib.sha256).digest())
        with pytest.raises(SignallingError) as e:
            await accounts.verify_token(f"{body}.{sig}", now=T0)
        assert code_of(e) == ErrorCode.AUTH_FAILED and e.value.message == "malformed token"


async def test_a_token_for_an_account_that_is_gone_is_refused(accounts: Accounts, db: SqliteDatabase) -> None:
    tok = await accounts.register("alice", PW)
    await db.execute("DELETE FROM users WHERE username = 'alice'")
    with pytest.raises(SignallingError) as e:
        await accounts.verify_token(tok.token)
    assert code_of(e) == ErrorCode.AUTH_FAILED and "no longer exists" in e.value.message


async def test_created_at_of_an_unknown_user_is_unknown_user(accounts: Accounts) -> None:
    await accounts.register("alice", PW)
    assert await accounts.created_at("alice") > 0
    with pytest.raises(SignallingError) as e:
        await accounts.created_at("nobody")
    assert code_of(e) == ErrorCode.UNKNOWN_USER


# --- display names stored ---------------------------------------------------------------------------
async def test_display_names_default_to_the_username(accounts: Accounts, changes: list[tuple[str, ...]]) -> None:
    await accounts.register("alice", PW)
    await accounts.register("bob", PW, "Bob")
    assert await accounts.display_name("alice") == "alice"
    assert await accounts.display_names(["alice", "bob", "nobody", "bob"]) == {"alice": None, "bob": "Bob"}
    assert await accounts.set_display_name("alice", "  爱丽丝 ") == "爱丽丝"
    assert await accounts.display_name("alice") == "爱丽丝"
    assert changes[-1] == ("alice",)
    with pytest.raises(SignallingError) as e:
        await accounts.set_display_name("alice", "")
    assert code_of(e) == ErrorCode.INVALID_DISPLAY_NAME
    assert await accounts.display_name("alice") == "爱丽丝"     # unchanged


async def test_display_names_in_bulk_beyond_one_query(accounts: Accounts, db: SqliteDatabase) -> None:
    for i in range(1203):
        await db.execute("INSERT INTO users(username, password_hash, created_at, display_name) VALUES (?, 'x', 0, ?)",
                         (f"user{i:04d}", f"U{i}" if i % 2 else None))
    names = await accounts.display_names(f"user{i:04d}" for i in range(1203))
    assert len(names) == 1203 and names["user1201"] == "U1201" and names["user1202"] is None


# --- contacts and blocks ----------------------------------------------------------------------------
async def users(accounts: Accounts, *names: str) -> None:
    for n in names:
        await accounts.create(n, "x")


async def test_contacts_are_added_once_and_removed_once(accounts: Accounts, changes: list[tuple[str, ...]]) -> None:
    await users(accounts, "alice", "bob", "carol")
    changes.clear()
    assert await accounts.add_contact("alice", " BOB ") == ("bob", True)
    assert await accounts.add_contact("alice", "bob") == ("bob", False)
    assert changes == [("alice", "bob"), ("alice", "bob")]
    assert await accounts.contacts("alice") == ["bob"] and await accounts.watchers("bob") == ["alice"]
    assert await accounts.is_contact("alice", "bob") and not await accounts.is_contact("bob", "alice")
    await accounts.remove_contact("alice", "Bob")
    assert await accounts.contacts("alice") == []
    with pytest.raises(SignallingError) as e:
        await accounts.remove_contact("alice", "bob")
    assert code_of(e) == ErrorCode.NOT_CONTACT


async def test_reach_answers_exists_contact_and_blocked_in_one_query(accounts: Accounts) -> None:
    await users(accounts, "alice", "bob", "carol")
    assert await accounts.reach("alice", "nobody") == (False, False, False)
    assert await accounts.reach("alice", "bob") == (True, False, False)
    await accounts.add_contact("alice", "bob")
    assert await accounts.reach("alice", "bob") == (True, True, False)
    assert await accounts.reach("bob", "alice") == (True, False, False)  # contacts are one way
    await accounts.block("bob", "alice")  # bob blocks alice: alice's messages to bob are refused
    assert await accounts.reach("alice", "bob") == (True, True, True)
    assert await accounts.reach("carol", "bob") == (True, False, False)


@pytest.mark.parametrize(("other", "code"), [("alice", ErrorCode.SELF_CONTACT), ("ALICE", ErrorCode.SELF_CONTACT),
                                             ("nobody", ErrorCode.UNKNOWN_USER),
                                             ("no!", ErrorCode.INVALID_USERNAME)])
async def test_contact_and_block_refusals(accounts: Accounts, other: str, code: ErrorCode) -> None:
    await users(accounts, "alice")
    for op in (accounts.add_contact, accounts.block):
        with pytest.raises(SignallingError) as e:
            await op("alice", other)
        assert code_of(e) == code
    assert await accounts.contacts("alice") == [] and await accounts.blocked("alice") == []


async def test_a_block_hides_presence_both_ways_and_replaces_the_contact(accounts: Accounts) -> None:
    await users(accounts, "alice", "bob", "carol")
    await accounts.add_contact("alice", "bob")
    await accounts.add_contact("bob", "alice")
    await accounts.add_contact("carol", "alice")
    assert await accounts.block("alice", "bob") == ("bob", True)
    assert await accounts.block("alice", "bob") == ("bob", False)
    assert await accounts.is_blocked("alice", "bob") and not await accounts.is_blocked("bob", "alice")
    assert await accounts.contacts("alice") == []              # removed from alice's list
    assert await accounts.contacts("bob") == []                # bob no longer sees alice
    assert await accounts.watchers("alice") == ["carol"]       # bob does not watch alice any more
    listed = await accounts.contact_list("bob")
    assert listed == [{"username": "alice", "display_name": "alice", "hidden": True}]
    assert await accounts.blocked("alice") == [{"username": "bob", "display_name": "bob"}]
    assert await accounts.blocks_of("alice") == ({"bob"}, set())
    assert await accounts.blocks_of("bob") == (set(), {"alice"})


async def test_unblocking_does_not_add_the_contact_back(accounts: Accounts) -> None:
    await users(accounts, "alice", "bob")
    await accounts.add_contact("alice", "bob")
    await accounts.block("alice", "bob")
    assert await accounts.unblock("alice", " Bob ") == "bob"
    assert not await accounts.is_blocked("alice", "bob") and await accounts.contacts("alice") == []
    with pytest.raises(SignallingError) as e:
        await accounts.unblock("alice", "bob")
    assert code_of(e) == ErrorCode.NOT_FOUND


async def test_adding_a_blocked_user_as_a_contact_lifts_the_block(accounts: Accounts) -> None:
    await users(accounts, "alice", "bob")
    await accounts.block("alice", "bob")
    await accounts.add_contact("alice", "bob")
    assert not await accounts.is_blocked("alice", "bob") and await accounts.contacts("alice") == ["bob"]


# --- the secret and the doors ----------------------------------------------------------------------
def test_the_secret_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_secret(tmp_path / "data")
    assert len(key) == 32
    path = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(tmp_path / "data") == key
    assert load_secret(tmp_path / "data", "gateway.key") != key


async def test_the_shared_secret_on_sqlite_is_the_file(db: SqliteDatabase, tmp_path: Path) -> None:
    assert await acc.load_shared_secret(db, tmp_path / "d") == load_secret(tmp_path / "d")


@pytest.mark.parametrize(("tried", "key"), [(" Alice ", "alice"), ("X" * 100, "x" * 64), (None, "?"), (5, "?")])
def test_the_lockout_key_is_the_tried_name_normalised(tried: object, key: str) -> None:
    assert LoginDoors.account_key(tried) == key


def test_refusal_logs_are_throttled_per_key() -> None:
    doors = LoginDoors(AuthConfig())
    try:
        assert doors.should_log("k", 0.0) == ""
        assert doors.should_log("k", 1.0) is None
        assert doors.should_log("k", 2.0) is None
        assert doors.should_log("other", 2.0) == ""
        assert doors.should_log("k", 61.0) == " (2 more like it in the last minute)"
    finally:
        doors.close()
