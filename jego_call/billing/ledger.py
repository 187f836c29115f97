"""The hub core's `Ledger` (synchronous authorise / answered / credit, awaited settle) over the
asynchronous `Billing`, for either engine. `make_ledger(billing)`:

- SQLite: `SqliteLedger` runs each coroutine to its end at once (`db.run_sync`: SQLite's never
  wait), exactly as the core has always had it.
- PostgreSQL: `PreparedLedger`. The pure core must not wait on the network, so the socket shell
  authorises first: `await ledger.prepare(call_id, user, number)` before an app-to-phone
  invite reaches the core (the same numbering checks decide whether there is anything to
  authorise); the core's `authorise(call_id, ...)` then takes that answer. `answered` computes
  the timers from the grant (`policy.timers`, pure) and marks the answer in the database in
  the background; `credit` answers from the balance read at `prepare`. A call the core never
  took (refused before it asked, e.g. busy) is released by `release_unused(call_id)`. A group
  call's phone is prepared the same way under the leg id the desk will give it
  (`GroupCallDesk.next_phone_leg`). A number nobody prepared is refused by the core as "the
  credit check failed" (its `authorise` raises), never placed unpaid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import numbering
from ..db import run_sync
from . import policy
from .policy import Timers
from .service import Authorisation, Billing, Settlement

log = logging.getLogger("jego.billing")

Also = Callable[[Any], Awaitable[None]]


class SqliteLedger:
    """`Billing` on SQLite, synchronously (its coroutines never wait)."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing

    def authorise(self, call_id: str, username: str, e164: str, now: float) -> Authorisation:
        return run_sync(self.billing.authorise(call_id, username, e164, now))

    def answered(self, call_id: str, at: float) -> Timers | None:
        return run_sync(self.billing.answered(call_id, at))

    def credit(self, username: str) -> dict[str, Any]:
        return run_sync(self.billing.credit(username))

    async def settle(self, call_id: str, answered_at: float | None, ended_at: float, now: float | None = None, *,
                     also: Also | None = None, by: str = "call") -> Settlement | None:
        return await self.billing.settle(call_id, answered_at, ended_at, now, also=also, by=by)

    async def prepare(self, call_id: str, username: str, number: str, region: str, international: bool) -> None:
        """Nothing to do: the core asks SQLite itself."""

    async def release_unused(self, call_id: str) -> None:
        pass


class PreparedLedger:
    """`Billing` on PostgreSQL, authorised by the shell before the core asks (see the module doc)."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing
        self.ready: dict[str, Authorisation] = {}     # call id -> the answer the core will take
        self.grants: dict[str, Any] = {}              # call id -> its grant (for `answered`)
        self.balances: dict[str, dict[str, Any]] = {}  # user -> credit as last read
        self._tasks: set[asyncio.Task[None]] = set()

    async def prepare(self, call_id: str, username: str, number: str, region: str, international: bool) -> None:
        """Authorise `number` for `call_id` now if the core will ask (the same checks it makes
        first). StorageUnavailable propagates: the invite is refused with service_unavailable."""
        if numbering.is_emergency(number, region):
            return
        try:
            e164 = numbering.normalise(number, region)
        except numbering.NumberError:
            return
        if numbering.classify(e164).kind in ("invalid", "incomplete", "short"):
            return
        if not e164.startswith("+86") and not international:
            return
        auth = await self.billing.authorise(call_id, username, e164, time.time())
        self.ready[call_id] = auth
        self.balances[username] = await self.billing.credit(username)

    def authorise(self, call_id: str, username: str, e164: str, now: float) -> Authorisation:
        auth = self.ready.pop(call_id, None)
        if auth is None:
            raise LookupError(f"call {call_id} was not authorised before it reached the hub")
        if auth.grant is not None:
            self.grants[call_id] = auth.grant
        return auth

    def answered(self, call_id: str, at: float) -> Timers | None:
        grant = self.grants.get(call_id)
        self._background(self.billing.answered(call_id, at), call_id)
        return policy.timers(grant, at, self.billing.terms) if grant is not None else None

    def credit(self, username: str) -> dict[str, Any]:
        have = self.balances.get(username)
        if have is None:
            raise LookupError(f"no credit read for {username}")
        return have

    async def settle(self, call_id: str, answered_at: float | None, ended_at: float, now: float | None = None, *,
                     also: Also | None = None, by: str = "call") -> Settlement | None:
        self.grants.pop(call_id, None)
        return await self.billing.settle(call_id, answered_at, ended_at, now, also=also, by=by)

    async def release_unused(self, call_id: str) -> None:
        """The core refused `call_id` before it asked: release its hold (a settlement of nothing)."""
        if self.ready.pop(call_id, None) is not None:
            await self.billing.settle(call_id, None, time.time())

    def _background(self, aw: Awaitable[Any], call_id: str) -> None:
        async def run() -> None:
            try:
                await aw
            except Exception:  # the grant still bounds the call; recovery bills the time it was seen up
                log.exception("could not mark the answer in the ledger", extra={"call_id": call_id})

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


LiveLedger = SqliteLedger | PreparedLedger


def make_ledger(billing: Billing) -> LiveLedger:
    """The core's ledger for the engine `billing` runs on."""
    if billing.db.engine == "sqlite":
        return SqliteLedger(billing)
    return PreparedLedger(billing)
