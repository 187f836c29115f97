"""Accounts: users with argon2 password hashes, display names, signed expiring tokens, contacts
and blocks.

Call `Accounts(db, secret, cfg)`; every method that reads or writes the database is a coroutine
(SQLite or PostgreSQL, jego_call/db.py). `register`/`login` return a token, `verify_token` turns one
back into a username. `display_name(user)` is what people see beside the username (Unicode,
1-32 characters; the username when none is set). `block(owner, other)` stops `other`'s calls,
messages and view of `owner`'s presence; `is_blocked(owner, other)` is what the hub and
messaging check. Everything raises SignallingError with its wire code.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .config import AuthConfig
from .db import Database, Executor, UniqueViolation
from .errors import ErrorCode, SignallingError
from .limits import BoundedPriorityQueue, LoginLimits, LoginPolicy, LogThrottle, WorkBudget

_R = TypeVar("_R")

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{2,31}$")
MAX_PASSWORD = 1024
MAX_DISPLAY_NAME = 32
# Unicode categories a display name may not contain: controls, separators other than the space,
# unassigned and private-use code points, surrogates.
_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
# Bidirectional overrides and isolates can make a name display as another one.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# argon2id with the library's RFC 9106 "low memory" profile: ~50 ms per hash on these cores.
_HASHER = PasswordHasher()
# A hash to verify against when the user does not exist, so timing does not reveal it.
_DUMMY_HASH = _HASHER.hash("not-a-real-password")


@dataclass(frozen=True, slots=True)
class Token:
    token: str
    username: str
    expires_at: float


def load_secret(data_dir: Path, name: str = "secret.key") -> bytes:
    """A 32-byte server secret kept in DATA/<name> (mode 0600), created at first start."""
    path = data_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex())
        return key


async def load_shared_secret(db: Database, data_dir: Path, name: str = "secret.key") -> bytes:
    """The server secret `name`: DATA/<name> (load_secret) on SQLite; on PostgreSQL the one in the
    `secrets` table, so every node has the same (the first node to start puts it there, taken
    from its DATA/<name> when it has one, so tokens stay valid after a move to PostgreSQL)."""
    if db.engine == "sqlite":
        return load_secret(data_dir, name)
    path = data_dir / name
    try:
        candidate = path.read_text().strip()
    except FileNotFoundError:
        candidate = secrets.token_bytes(32).hex()
    await db.execute("INSERT INTO secrets(name, value, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                     (name, candidate, time.time()))
    row = await db.query_one("SELECT value FROM secrets WHERE name = ?", (name,))
    assert row is not None
    return bytes.fromhex(str(row["value"]))


def normalise_username(name: object) -> str:
    if not isinstance(name, str):
        raise SignallingError(ErrorCode.INVALID_USERNAME, "username must be a string")
    name = name.strip().lower()
    if not USERNAME_RE.match(name) or not any(c.isalpha() for c in name):
        raise SignallingError(
            ErrorCode.INVALID_USERNAME,
            "username must be 3-32 characters of a-z, 0-9, '.', '_', '-', start with a letter or digit"
            " and contain a letter",
        )
    return name


def normalise_display_name(name: object) -> str:
    """A display name as stored: NFC, spaces collapsed, 1-32 characters; invalid_display_name otherwise."""
    if not isinstance(name, str):
        raise SignallingError(ErrorCode.INVALID_DISPLAY_NAME, "display name must be a string")
    name = " ".join(unicodedata.normalize("NFC", name).split())
    if not name:
        raise SignallingError(ErrorCode.INVALID_DISPLAY_NAME, "display name must not be empty")
    if len(name) > MAX_DISPLAY_NAME:
        raise SignallingError(ErrorCode.INVALID_DISPLAY_NAME,
                              f"display name must have at most {MAX_DISPLAY_NAME} characters")
    if any(unicodedata.category(c) in _BAD_NAME_CATEGORIES or c in _BIDI_CONTROLS for c in name):
        raise SignallingError(ErrorCode.INVALID_DISPLAY_NAME, "display name contains a control character")
    return name


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


PEOPLE_CHANNEL = "jego_people"  # notify payload: the usernames whose contacts, blocks or name changed

ChangeHook = Callable[[tuple[str, ...]], Awaitable[None]]


class Accounts:
    """User accounts and contacts on top of `Database` (either engine); every lookup is a
    coroutine. Writes that change what the hub's `Directory` answers (a new user, a display
    name, contacts, blocks) notify PEOPLE_CHANNEL with the users concerned and await
    `on_change(users)` (this node's directory) before they return."""

    def __init__(self, db: Database, secret: bytes, cfg: AuthConfig, on_change: ChangeHook | None = None) -> None:
        self.db = db
        self.secret = secret
        self.cfg = cfg
        self.on_change = on_change

    async def _changed(self, *users: str, tx: Executor | None = None) -> None:
        await (tx or self.db).notify(PEOPLE_CHANNEL, " ".join(users))
        if self.on_change is not None:
            await self.on_change(users)

    # -- passwords and tokens -------------------------------------------------------------
    def _check_password(self, password: object) -> str:
        if not isinstance(password, str):
            raise SignallingError(ErrorCode.WEAK_PASSWORD, "password must be a string")
        if len(password) < self.cfg.min_password_length:
            raise SignallingError(
                ErrorCode.WEAK_PASSWORD, f"password must have at least {self.cfg.min_password_length} characters"
            )
        if len(password) > MAX_PASSWORD:
            raise SignallingError(ErrorCode.WEAK_PASSWORD, f"password must have at most {MAX_PASSWORD} characters")
        return password

    def issue_token(self, username: str, now: float | None = None) -> Token:
        now = time.time() if now is None else now
        exp = int(now + self.cfg.token_ttl_s)
        body = _b64(json.dumps({"u": username, "exp": exp}, separators=(",", ":")).encode())
        sig = _b64(hmac.new(self.secret, body.encode(), hashlib.sha256).digest())
        return Token(f"{body}.{sig}", username, float(exp))

    async def verify_token(self, token: object, now: float | None = None) -> str:
        """The username a valid, unexpired token names; SignallingError(auth_failed) otherwise."""
        now = time.time() if now is None else now
        if not isinstance(token, str) or len(token) > 512 or token.count(".") != 1:
            raise SignallingError(ErrorCode.AUTH_FAILED, "malformed token")
        body, sig = token.split(".")
        want = _b64(hmac.new(self.secret, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sig, want):
            raise SignallingError(ErrorCode.AUTH_FAILED, "bad token signature")
        try:
            claims = json.loads(_unb64(body))
            username, exp = claims["u"], float(claims["exp"])
        except (ValueError, KeyError, TypeError):
            raise SignallingError(ErrorCode.AUTH_FAILED, "malformed token") from None
        if exp < now:
            raise SignallingError(ErrorCode.AUTH_FAILED, "token expired: log in again")
        if not isinstance(username, str) or not await self.exists(username):
            raise SignallingError(ErrorCode.AUTH_FAILED, "account no longer exists")
        return username

    # -- users ----------------------------------------------------------------------------
    @staticmethod
    def hash_password(password: str) -> str:
        """CPU-bound (~50 ms): call it in a worker thread from async code."""
        return _HASHER.hash(password)

    async def validate_new(self, username: object, password: object) -> tuple[str, str]:
        name = normalise_username(username)
        pw = self._check_password(password)
        if await self.exists(name):
            raise SignallingError(ErrorCode.USERNAME_TAKEN, f"username {name!r} is taken")
        return name, pw

    async def create(self, username: str, password_hash: str, display_name: str | None = None) -> None:
        """Store a new user; `display_name` must come from `normalise_display_name` (None: the username)."""
        try:
            await self.db.execute(
                "INSERT INTO users(username, password_hash, created_at, display_name) VALUES (?, ?, ?, ?)",
                (username, password_hash, time.time(), display_name),
            )
        except UniqueViolation:  # a concurrent register won
            raise SignallingError(ErrorCode.USERNAME_TAKEN, f"username {username!r} is taken") from None
        await self._changed(username)

    async def register(self, username: object, password: object, display_name: object = None) -> Token:
        """Register without the login doors (CLI, tests): validate, hash, store, return a token."""
        name, pw = await self.validate_new(username, password)
        shown = normalise_display_name(display_name) if display_name is not None else None
        await self.create(name, self.hash_password(pw), shown)
        return self.issue_token(name)

    async def stored_hash(self, username: object) -> tuple[str | None, str]:
        """(normalised name or None, hash to verify against: a dummy one for unknown users)."""
        if not isinstance(username, str) or not USERNAME_RE.match(username.strip().lower()):
            return None, _DUMMY_HASH
        name = username.strip().lower()
        row = await self.db.query_one("SELECT password_hash FROM users WHERE username = ?", (name,))
        return (name, str(row["password_hash"])) if row else (None, _DUMMY_HASH)

    @staticmethod
    def verify_password(password_hash: str, password: object) -> bool:
        """CPU-bound (~50 ms): call it in a worker thread from async code."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        try:
            return _HASHER.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def login(self, username: object, password: object) -> Token:
        """Log in without the login doors (CLI, tests)."""
        name, stored = await self.stored_hash(username)
        if not self.verify_password(stored, password) or name is None:
            raise SignallingError(ErrorCode.AUTH_FAILED, "wrong username or password")
        return self.issue_token(name)

    async def exists(self, username: str) -> bool:
        return await self.db.query_one("SELECT 1 FROM users WHERE username = ?", (username,)) is not None

    async def created_at(self, username: str) -> float:
        row = await self.db.query_one("SELECT created_at FROM users WHERE username = ?", (username,))
        if row is None:
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {username!r}")
        return float(row["created_at"])

    # -- display names --------------------------------------------------------------------
    async def display_name(self, username: str) -> str:
        """What people see for `username`: its display name, or the username when none is set."""
        row = await self.db.query_one("SELECT display_name FROM users WHERE username = ?", (username,))
        return str(row["display_name"]) if row is not None and row["display_name"] else username

    async def display_names(self, usernames: Iterable[str]) -> dict[str, str | None]:
        """{username: display name, or None when none is set} for those of `usernames` that exist."""
        names = sorted(set(usernames))
        out: dict[str, str | None] = {}
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            rows = await self.db.query(
                f"SELECT username, display_name FROM users WHERE username IN ({','.join('?' * len(chunk))})", chunk)
            out.update({str(r["username"]): r["display_name"] for r in rows})
        return out

    async def set_display_name(self, username: str, name: object) -> str:
        """Change `username`'s display name (normalised, invalid_display_name if it breaks the rules)."""
        shown = normalise_display_name(name)
        await self.db.execute("UPDATE users SET display_name = ? WHERE username = ?", (shown, username))
        await self._changed(username)
        return shown

    async def profile(self, username: str) -> dict[str, object]:
        """`{"username", "display_name"}`, as contacts, presence and invites carry a person."""
        return {"username": username, "display_name": await self.display_name(username)}

    # -- contacts -------------------------------------------------------------------------
    async def _existing_other(self, owner: str, other: object) -> str:
        name = normalise_username(other)
        if name == owner:
            raise SignallingError(ErrorCode.SELF_CONTACT, "you cannot add or block yourself")
        if not await self.exists(name):
            raise SignallingError(ErrorCode.UNKNOWN_USER, f"no user {name!r}")
        return name

    async def add_contact(self, owner: str, other: object) -> tuple[str, bool]:
        """Add `other` to `owner`'s contacts (unblocking them); returns (name, created)."""
        name = await self._existing_other(owner, other)
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM blocks WHERE owner = ? AND blocked = ?", (owner, name))
            created = await tx.execute(
                "INSERT INTO contacts(owner, contact, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (owner, name, time.time()),
            )
            await tx.notify(PEOPLE_CHANNEL, f"{owner} {name}")
        if self.on_change is not None:
            await self.on_change((owner, name))
        return name, created == 1

    async def remove_contact(self, owner: str, other: str) -> None:
        n = await self.db.execute("DELETE FROM contacts WHERE owner = ? AND contact = ?", (owner, other.lower()))
        if n == 0:
            raise SignallingError(ErrorCode.NOT_CONTACT, f"{other!r} is not in your contacts")
        await self._changed(owner, other.lower())

    async def contacts(self, owner: str) -> list[str]:
        """The contacts whose presence `owner` sees: their list, less those who blocked `owner`."""
        rows = await self.db.query(
            "SELECT contact FROM contacts WHERE owner = ? AND contact NOT IN"
            " (SELECT owner FROM blocks WHERE blocked = ?) ORDER BY contact", (owner, owner))
        return [str(r["contact"]) for r in rows]

    async def contact_list(self, owner: str) -> list[dict[str, object]]:
        """Every contact of `owner` with its display name, and `hidden` when they blocked `owner`
        (whose presence `owner` then always sees as offline)."""
        rows = await self.db.query(
            "SELECT c.contact AS username, u.display_name AS display_name,"
            " EXISTS (SELECT 1 FROM blocks b WHERE b.owner = c.contact AND b.blocked = c.owner) AS hidden"
            " FROM contacts c JOIN users u ON u.username = c.contact WHERE c.owner = ? ORDER BY c.contact",
            (owner,))
        return [{"username": r["username"], "display_name": r["display_name"] or r["username"],
                 "hidden": bool(r["hidden"])} for r in rows]

    async def watchers(self, username: str) -> list[str]:
        """Users who have `username` as a contact and see its presence (not those it blocked)."""
        rows = await self.db.query(
            "SELECT owner FROM contacts WHERE contact = ? AND owner NOT IN"
            " (SELECT blocked FROM blocks WHERE owner = ?) ORDER BY owner", (username, username))
        return [str(r["owner"]) for r in rows]

    # -- blocks ---------------------------------------------------------------------------
    async def block(self, owner: str, other: object) -> tuple[str, bool]:
        """`owner` blocks `other`: removed from `owner`'s contacts; their calls and messages to
        `owner` are refused as "not available" and they see `owner` offline. (name, created)."""
        name = await self._existing_other(owner, other)
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM contacts WHERE owner = ? AND contact = ?", (owner, name))
            created = await tx.execute(
                "INSERT INTO blocks(owner, blocked, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (owner, name, time.time()))
            await tx.notify(PEOPLE_CHANNEL, f"{owner} {name}")
        if self.on_change is not None:
            await self.on_change((owner, name))
        return name, created == 1

    async def unblock(self, owner: str, other: str) -> str:
        """Lift a block (not_found if `other` is not blocked); they are not added back as a contact."""
        name = other.strip().lower()
        n = await self.db.execute("DELETE FROM blocks WHERE owner = ? AND blocked = ?", (owner, name))
        if n == 0:
            raise SignallingError(ErrorCode.NOT_FOUND, f"{other!r} is not blocked")
        await self._changed(owner, name)
        return name

    async def blocked(self, owner: str) -> list[dict[str, object]]:
        """Everyone `owner` has blocked, with display names, by username."""
        rows = await self.db.query(
            "SELECT b.blocked AS username, u.display_name AS display_name FROM blocks b"
            " JOIN users u ON u.username = b.blocked WHERE b.owner = ? ORDER BY b.blocked", (owner,))
        return [{"username": r["username"], "display_name": r["display_name"] or r["username"]} for r in rows]

    async def blocks_of(self, username: str) -> tuple[set[str], set[str]]:
        """(whom `username` blocked, who blocked `username`)."""
        mine = await self.db.query("SELECT blocked FROM blocks WHERE owner = ?", (username,))
        theirs = await self.db.query("SELECT owner FROM blocks WHERE blocked = ?", (username,))
        return {str(r[0]) for r in mine}, {str(r[0]) for r in theirs}

    async def is_blocked(self, owner: str, other: str) -> bool:
        """True when `owner` has blocked `other`."""
        return await self.db.query_one(
            "SELECT 1 FROM blocks WHERE owner = ? AND blocked = ?", (owner, other)) is not None

    async def reach(self, sender: str, peer: str) -> tuple[bool, bool, bool]:
        """(peer exists, peer is in sender's contacts, peer has blocked sender) in one query:
        what a direct message needs checked (messaging's `_check_peer`)."""
        row = await self.db.query_one(
            "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?), "
            "EXISTS(SELECT 1 FROM contacts WHERE owner = ? AND contact = ?), "
            "EXISTS(SELECT 1 FROM blocks WHERE owner = ? AND blocked = ?)", (peer, sender, peer, peer, sender))
        assert row is not None
        return bool(row[0]), bool(row[1]), bool(row[2])

    async def is_contact(self, owner: str, other: str) -> bool:
        return await self.db.query_one(
            "SELECT 1 FROM contacts WHERE owner = ? AND contact = ?", (owner, other)
        ) is not None


# -- login doors (issue 13): rate limits, lockout and the bounded password hasher ---------------
# Kept apart from Accounts: the handlers in signalling/server.py ask LoginDoors first, then
# Accounts. The decisions are the pure jego_call.limits; this is their asyncio shell.


class GateBusy(Exception):
    """The hasher's queue is full (or the client left while waiting: `gone`): answer 429 with
    Retry-After `retry_after`; nothing was hashed."""

    def __init__(self, retry_after: float, gone: bool = False) -> None:
        super().__init__("the client went away" if gone else "the password hasher is busy")
        self.retry_after = retry_after
        self.gone = gone


def _lower_priority(nice: int) -> None:
    """Set up a hashing thread: name it "argon2" (top -H, /proc), pin it to one CPU and lower
    its priority. argon2 computes its lanes in threads it starts per hash, which inherit all
    three; pinned, they never use more than one core, so the wall time HashGate charges is an
    upper bound of their CPU time; at nice `nice` the media and event-loop threads of every call
    come first when CPU is short."""
    tid = threading.get_native_id()
    try:
        with open(f"/proc/self/task/{tid}/comm", "w") as fh:
            fh.write("argon2")
    except OSError:  # not Linux: the name is only cosmetic
        pass
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(tid, {max(os.sched_getaffinity(0))})
        except OSError:  # pragma: no cover - not allowed here: the budget is then a little loose
            pass
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # pragma: no cover - not allowed here: keep the normal priority
            pass


class HashGate:
    """Runs argon2 in its own thread pool (`workers` threads, never the loop's default
    executor that messaging uses; pinned to one CPU at a lower priority, see _lower_priority),
    at most `cpu_share` hashing seconds per second with `burst_s` in hand. Callers wait in a queue of at most `queue`, the least suspect first
    (`priority`: recent failures of the account and the source); when it is full the most
    suspect gets GateBusy. `await run(fn, *args, priority=…)`."""

    def __init__(self, workers: int = 1, cpu_share: float = 0.5, burst_s: float = 1.0, queue: int = 64,
                 nice: int = 10) -> None:
        self.workers = workers
        self.budget = WorkBudget(cpu_share, burst_s, time.monotonic())
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="argon2", initializer=_lower_priority,
                                            initargs=(nice,))
        self._waiters: BoundedPriorityQueue[asyncio.Future[None]] = BoundedPriorityQueue(queue)
        self._active = 0
        self.stats = {"hashes": 0, "hash_s": 0.0, "busy": 0, "gone": 0}

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @staticmethod
    def _timed(fn: Callable[..., _R], *args: object) -> tuple[_R, float]:
        t0 = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t0

    def _release(self) -> None:
        self._active -= 1
        while (fut := self._waiters.pop()) is not None:
            if not fut.done():
                self._active += 1   # counted for the waiter we wake
                fut.set_result(None)
                return

    async def _acquire(self, priority: float) -> None:
        if self._active < self.workers and not len(self._waiters):
            self._active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        evicted = self._waiters.push(priority, fut)
        if evicted is not None:
            self.stats["busy"] += 1
            if evicted is fut:
                raise GateBusy(1.0)
            evicted.set_exception(GateBusy(1.0))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release()   # woken and cancelled at once: pass the slot on
            self._waiters.discard(fut)
            raise

    async def run(self, fn: Callable[..., _R], *args: object, priority: float = 0.0,
                  alive: Callable[[], bool] | None = None) -> _R:
        """`fn(*args)` on a hashing thread. `alive()` is asked just before hashing: a client
        that has gone away (a flood that fires and disconnects) costs no hash (GateBusy gone)."""
        await self._acquire(priority)
        try:
            # With several workers another may charge meanwhile: the budget then runs a
            # little into debt, which the next start waits out.
            wait = self.budget.wait_to_start(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
            if alive is not None and not alive():
                self.stats["gone"] += 1
                raise GateBusy(1.0, gone=True)
            loop = asyncio.get_running_loop()
            out, took = await loop.run_in_executor(self._executor, functools.partial(self._timed, fn, *args))
            self.budget.charge(time.monotonic(), took)
            self.stats["hashes"] += 1
            self.stats["hash_s"] += took
            return out
        finally:
            self._release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LoginDoors:
    """What stands before POST /api/login and /api/register: `policy` (limits.LoginPolicy) and
    `gate` (HashGate). Build it from [auth]; `close()` at shutdown."""

    def __init__(self, cfg: AuthConfig) -> None:
        self.policy = LoginPolicy(LoginLimits(
            source_burst=cfg.login_source_burst, source_per_s=cfg.login_source_per_s,
            source_failures=cfg.login_source_failures, source_failures_per_s=cfg.login_source_failures_per_s,
            lockout_after=cfg.lockout_after, lockout_window_s=cfg.lockout_window_s,
            lockout_base_s=cfg.lockout_base_s, lockout_max_s=cfg.lockout_max_s,
            register_burst=cfg.register_source_burst, register_per_s=cfg.register_source_per_s))
        self.gate = HashGate(cfg.hash_workers, cfg.hash_cpu_share, cfg.hash_burst_s, cfg.hash_queue, cfg.hash_nice)
        self.log_throttle = LogThrottle(60.0)

    def should_log(self, key: str, now: float) -> str | None:
        """None to stay quiet about this refusal; else a suffix for the log line (how many
        like it were held back)."""
        held = self.log_throttle.allow(key, now)
        if held is None:
            return None
        return f" ({held} more like it in the last minute)" if held else ""

    @staticmethod
    def account_key(username: object) -> str:
        """The lockout key for a tried name: normalised as a username would be (any text)."""
        return username.strip().lower()[:64] if isinstance(username, str) else "?"

    def close(self) -> None:
        self.gate.close()
