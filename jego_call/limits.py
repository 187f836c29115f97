"""[pure] Rate limits for the doors: token buckets, a growing account lockout, the login and
register policy, and the work budget of the password hasher. Everything takes `now` (any
monotonic clock, in seconds) and returns how long to wait; nothing here sleeps or reads a clock.

Call `LoginPolicy(LoginLimits(...))`, then for each POST /api/login: `before_login(account,
source, now)` (a `Denied` means 429 with Retry-After, and no hash is computed), then
`login_failed(...)` or `login_ok(...)`; for POST /api/register `before_register(source, now)`.
`WorkBudget` bounds hashing seconds per second (accounts.HashGate is its asyncio shell).

Decisions, explicitly:
- The lockout is per account name *as tried*, whether the account exists or not, so neither a
  429 nor its absence tells an attacker which names exist.
- While an account is locked, every attempt gets 429, the right password too: otherwise the
  lockout would only slow guessing down, not stop it. The answer is "too many attempts", never
  "wrong password".
- A successful login clears the account's failures and its lockout level.
- Memory is bounded: at most `max_keys` accounts and sources are tracked; the least recently
  used are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second. `take` takes one (or says how long until
    one is there); `charge` takes any amount and may go into debt (for costs known afterwards)."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be greater than 0")
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.last = float(burst), now

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def wait(self, now: float, n: float = 1.0) -> float:
        """Seconds until `n` tokens are there (0: now). Takes nothing."""
        self._refill(now)
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate

    def take(self, now: float, n: float = 1.0) -> float:
        """Take `n` tokens and return 0, or take nothing and return the seconds to wait."""
        w = self.wait(now, n)
        if w == 0.0:
            self.tokens -= n
        return w

    def charge(self, now: float, cost: float) -> None:
        """Take `cost` tokens even if that leaves the bucket in debt."""
        self._refill(now)
        self.tokens -= cost

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class _Lru(Generic[T]):
    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.items: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str) -> T | None:
        item = self.items.get(key)
        if item is not None:
            self.items.move_to_end(key)
        return item

    def put(self, key: str, item: T) -> T:
        self.items[key] = item
        self.items.move_to_end(key)
        while len(self.items) > self.max_keys:
            self.items.popitem(last=False)
        return item

    def __len__(self) -> int:
        return len(self.items)


class KeyedBuckets:
    """One TokenBucket per key (a source address), created full on first use."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst = rate, burst
        self._lru: _Lru[TokenBucket] = _Lru(max_keys)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        b = self._lru.get(key)
        return b if b is not None else self._lru.put(key, TokenBucket(self.rate, self.burst, now))

    def wait(self, key: str, now: float) -> float:
        b = self._lru.get(key)
        return 0.0 if b is None else b.wait(now)

    def take(self, key: str, now: float) -> float:
        return self._bucket(key, now).take(now)

    def charge(self, key: str, now: float, cost: float = 1.0) -> None:
        self._bucket(key, now).charge(now, cost)

    def __len__(self) -> int:
        return len(self._lru)


@dataclass(slots=True)
class _Lock:
    failures: deque[float] = field(default_factory=deque)
    until: float = float("-inf")
    level: int = 0
    pending: int = 0          # attempts let through whose password is still being checked


class Lockout:
    """`after` failures within `window_s` lock a key for `base_s`, doubling with each further
    lockout up to `max_s`; a success resets it. `retry_after(key, now)` > 0 while locked."""

    def __init__(self, after: int, window_s: float, base_s: float, max_s: float, max_keys: int = 100_000) -> None:
        self.after, self.window_s, self.base_s, self.max_s = after, window_s, base_s, max_s
        self._lru: _Lru[_Lock] = _Lru(max_keys)

    def retry_after(self, key: str, now: float) -> float:
        lock = self._lru.get(key)
        return max(0.0, lock.until - now) if lock is not None else 0.0

    def full(self, key: str, now: float) -> bool:
        """True when the failures in the window plus the attempts still being checked reach
        `after`: one more concurrent attempt could pass the lockout."""
        lock = self._lru.get(key)
        if lock is None:
            return False
        recent = sum(1 for t in lock.failures if t > now - self.window_s)
        return recent + lock.pending >= self.after

    def begin(self, key: str) -> None:
        lock = self._lru.get(key) or self._lru.put(key, _Lock())
        lock.pending += 1

    def end(self, key: str) -> None:
        lock = self._lru.get(key)
        if lock is not None and lock.pending > 0:
            lock.pending -= 1

    def failure(self, key: str, now: float) -> float:
        """Count a failure; returns the lockout it starts (seconds), or 0."""
        lock = self._lru.get(key) or self._lru.put(key, _Lock())
        if lock.until > now:
            return 0.0
        if lock.level and now - lock.until > 24 * 3600.0:
            lock.level = 0  # a day without a lockout forgets the earlier ones
        lock.failures.append(now)
        while lock.failures and lock.failures[0] <= now - self.window_s:
            lock.failures.popleft()
        if len(lock.failures) < self.after:
            return 0.0
        duration = min(self.max_s, self.base_s * 2.0 ** lock.level)
        lock.level += 1
        lock.until = now + duration
        lock.failures.clear()
        return duration

    def success(self, key: str) -> None:
        lock = self._lru.items.get(key)
        if lock is None:
            return
        if lock.pending:   # other attempts still in flight keep their count
            lock.failures.clear()
            lock.level = 0
            lock.until = float("-inf")
        else:
            del self._lru.items[key]

    def __len__(self) -> int:
        return len(self._lru)


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """The [auth] keys of the doors (see config/jego.toml)."""

    source_burst: int = 30
    source_per_s: float = 1.0
    source_failures: int = 20
    source_failures_per_s: float = 0.1
    lockout_after: int = 5
    lockout_window_s: float = 900.0
    lockout_base_s: float = 60.0
    lockout_max_s: float = 3600.0
    register_burst: int = 50
    register_per_s: float = 0.03
    max_keys: int = 100_000


@dataclass(frozen=True, slots=True)
class Denied:
    """Answer 429 with `Retry-After: ceil(retry_after)` and `message`; `rule` is for logs."""

    retry_after: float
    message: str
    rule: str


class LoginPolicy:
    """Per-source buckets (attempts, failures, registrations) and the per-account lockout."""

    def __init__(self, limits: LoginLimits) -> None:
        self.limits = limits
        k = limits.max_keys
        self.attempts = KeyedBuckets(limits.source_per_s, limits.source_burst, k)
        self.failures = KeyedBuckets(limits.source_failures_per_s, limits.source_failures, k)
        self.registrations = KeyedBuckets(limits.register_per_s, limits.register_burst, k)
        self.lockout = Lockout(limits.lockout_after, limits.lockout_window_s, limits.lockout_base_s,
                               limits.lockout_max_s, k)
        # what happened, for metrics (jego_call/metrics.py reads these at scrape time)
        self.counts = {"failures": 0, "lockouts": 0}
        self.refused: dict[str, int] = {}

    def _counted(self, denied: Denied | None) -> Denied | None:
        if denied is not None:
            self.refused[denied.rule] = self.refused.get(denied.rule, 0) + 1
        return denied

    def before_login(self, account: str, source: str, now: float) -> Denied | None:
        """None: go on and check the password, then call exactly one of `login_failed`,
        `login_ok` or `login_abandoned`. Denied: answer 429, hash nothing."""
        return self._counted(self._before_login(account, source, now))

    def _before_login(self, account: str, source: str, now: float) -> Denied | None:
        locked = self.lockout.retry_after(account, now)
        if locked > 0:
            return Denied(locked, f"Too many failed logins for this account: try again in {_secs(locked)}", "account")
        if self.lockout.full(account, now):
            return Denied(1.0, "Too many login attempts for this account at once: try again in 1 s", "account_busy")
        wait = self.failures.wait(source, now)
        if wait > 0:
            return Denied(wait, f"Too many failed logins from your network: try again in {_secs(wait)}",
                          "source_failures")
        wait = self.attempts.take(source, now)
        if wait > 0:
            return Denied(wait, f"Too many login attempts from your network: try again in {_secs(wait)}", "source")
        self.lockout.begin(account)
        return None

    def suspicion(self, account: str, source: str, now: float) -> float:
        """How suspect an attempt is (0: no recent failures for the account or the source); the
        hasher serves the least suspect first, so a flood waits behind everyone else."""
        lock = self.lockout._lru.items.get(account)
        mine = (len(lock.failures) + lock.level * self.limits.lockout_after) if lock is not None else 0
        b = self.failures._lru.items.get(source)
        theirs = 0.0
        if b is not None:
            b._refill(now)
            theirs = b.burst - b.tokens
        return mine + theirs

    def login_failed(self, account: str, source: str, now: float) -> float:
        """Count a wrong password; returns the account lockout it starts (seconds) or 0."""
        self.lockout.end(account)
        self.failures.charge(source, now)
        locked = self.lockout.failure(account, now)
        self.counts["failures"] += 1
        if locked > 0:
            self.counts["lockouts"] += 1
        return locked

    def login_ok(self, account: str, source: str, now: float) -> None:
        self.lockout.end(account)
        self.lockout.success(account)

    def login_abandoned(self, account: str) -> None:
        """The password was never checked (the hasher was busy, the client went away)."""
        self.lockout.end(account)

    def register_suspicion(self, source: str, now: float) -> float:
        b = self.registrations._lru.items.get(source)
        if b is None:
            return 0.0
        b._refill(now)
        return b.burst - b.tokens

    def before_register(self, source: str, now: float) -> Denied | None:
        wait = self.registrations.take(source, now)
        if wait > 0:
            return self._counted(Denied(wait, f"Too many new accounts from your network: try again in {_secs(wait)}",
                                        "register"))
        return None


def _secs(s: float) -> str:
    n = max(1, int(-(-s // 1)))
    return f"{n} s" if n < 120 else f"{-(-n // 60)} min"


class WorkBudget(TokenBucket):
    """Seconds of work allowed per second (`share`, e.g. 0.5 of one core) with `burst_s` in
    hand. Before a job: `wait(now, 0)` > 0 means wait that long (the budget is in debt); after
    it: `charge(now, seconds_it_took)`."""

    def __init__(self, share: float, burst_s: float, now: float) -> None:
        super().__init__(share, burst_s, now)

    def wait_to_start(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.tokens > 0 else -self.tokens / self.rate + 1e-6


class BoundedPriorityQueue(Generic[T]):
    """At most `maxsize` items; `pop()` gives the lowest priority first (FIFO among equals).
    When full, `push` evicts the worst item (highest priority, newest first), which may be the
    one just pushed, and returns it so the caller can refuse it."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: list[tuple[float, int, T]] = []
        self._seq = 0

    def push(self, priority: float, item: T) -> T | None:
        self._seq += 1
        entry = (priority, self._seq, item)
        if len(self._items) < self.maxsize:
            self._items.append(entry)
            return None
        worst = max(self._items, key=lambda e: (e[0], e[1]))
        if (priority, self._seq) >= (worst[0], worst[1]):
            return item
        self._items.remove(worst)
        self._items.append(entry)
        return worst[2]

    def pop(self) -> T | None:
        if not self._items:
            return None
        best = min(self._items, key=lambda e: (e[0], e[1]))
        self._items.remove(best)
        return best[2]

    def discard(self, item: T) -> None:
        self._items = [e for e in self._items if e[2] is not item]

    def __len__(self) -> int:
        return len(self._items)


class LogThrottle:
    """At most one log line per key per `window_s`: `allow(key, now)` returns None to stay
    quiet, or how many lines were held back since the last one (a flood must not flood the log)."""

    def __init__(self, window_s: float = 60.0, max_keys: int = 10_000) -> None:
        self.window_s = window_s
        self._lru: _Lru[list[float]] = _Lru(max_keys)

    def allow(self, key: str, now: float) -> int | None:
        entry = self._lru.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            return None
        held = int(entry[1]) if entry is not None else 0
        self._lru.put(key, [now, 0.0])
        return held
