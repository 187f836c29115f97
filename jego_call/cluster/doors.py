"""The login doors' limits shared by every node of a cluster: the account lockout and the
per-source buckets of `limits.LoginPolicy`, kept in the shared state so that spreading guesses
over nodes gains nothing.

    shared = SharedDoors(node.state, limits)
    denied = await shared.before_login(account, source, time.time())   # None: go on
    await shared.login_failed(account, source, time.time())            # or login_ok(account)

Each node still runs its own `LoginPolicy` (attempts in flight, the hasher's queue order); a
login must pass both. When the shared state cannot be reached, these answer "go on" and log
once a minute: the node's own limits still hold, and logins do not depend on Redis.
"""

from __future__ import annotations

import logging
import time

from ..limits import Denied, LoginLimits, LogThrottle, _secs
from .state import LockoutRule, SharedState, StateUnavailable

log = logging.getLogger("jego.cluster")


class SharedDoors:
    """Cluster-wide lockouts and buckets (Unix seconds: every node's clock)."""

    def __init__(self, state: SharedState, limits: LoginLimits) -> None:
        self.state = state
        self.limits = limits
        self.rule = LockoutRule(limits.lockout_after, limits.lockout_window_s, limits.lockout_base_s,
                                limits.lockout_max_s)
        self._throttle = LogThrottle()

    def _unreachable(self, exc: StateUnavailable) -> None:
        if self._throttle.allow("down", time.monotonic()) is not None:
            log.warning("login limits: the shared state is unreachable (%s): this node's limits only", exc)

    async def before_login(self, account: str, source: str, now: float) -> Denied | None:
        lim = self.limits
        try:
            locked = await self.state.lockout_retry_after(f"acct:{account}", now)
            if locked > 0:
                return Denied(locked, f"Too many failed logins for this account: try again in {_secs(locked)}",
                              "account")
            wait = await self.state.bucket_wait(f"fail:{source}", lim.source_failures_per_s, lim.source_failures, now)
            if wait > 0:
                return Denied(wait, f"Too many failed logins from your network: try again in {_secs(wait)}",
                              "source_failures")
            wait = await self.state.bucket_take(f"login:{source}", lim.source_per_s, lim.source_burst, now)
            if wait > 0:
                return Denied(wait, f"Too many login attempts from your network: try again in {_secs(wait)}",
                              "source")
        except StateUnavailable as exc:
            self._unreachable(exc)
        return None

    async def login_failed(self, account: str, source: str, now: float) -> float:
        """Count a wrong password cluster-wide; the lockout it starts (seconds) or 0."""
        lim = self.limits
        try:
            await self.state.bucket_take(f"fail:{source}", lim.source_failures_per_s, lim.source_failures, now,
                                         debt=True)
            return await self.state.lockout_failure(f"acct:{account}", now, self.rule)
        except StateUnavailable as exc:
            self._unreachable(exc)
            return 0.0

    async def login_ok(self, account: str) -> None:
        try:
            await self.state.lockout_success(f"acct:{account}")
        except StateUnavailable as exc:
            self._unreachable(exc)

    async def before_register(self, source: str, now: float) -> Denied | None:
        lim = self.limits
        try:
            wait = await self.state.bucket_take(f"register:{source}", lim.register_per_s, lim.register_burst, now)
        except StateUnavailable as exc:
            self._unreachable(exc)
            return None
        if wait > 0:
            return Denied(wait, f"Too many new accounts from your network: try again in {_secs(wait)}", "register")
        return None
