"""Shared test helpers: wait for the event a test stands on, never for a guessed time.

`wait_for(pred, timeout, what)` polls `pred` from a plain thread (subprocesses, browsers, logs);
`await until(pred, timeout, what)` does the same on the event loop (in-process servers, sockets).
Both return `pred`'s first truthy value and fail the test with `what` when the timeout passes.
`one_row(db, sql)` is a `query_one` that must find its row (typed `sqlite3.Row`, not `| None`);
`wav_frames(path)` reads the length a WAV header declares (0 until its writer has written it).

A real `sleep` stays in a test only where the passing of time is what is tested (a timeout that
must or must not fire, a call held for N seconds of audio, packets paced 20 ms apart); each says so.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import wave
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

from jego_call.db import run_sync

T = TypeVar("T")

POLL_S = 0.02   # how often a condition is looked at again: short next to every timeout used


def wait_for(pred: Callable[[], T | None], timeout: float = 10.0, what: str = "condition",
             interval: float = POLL_S) -> T:
    """Call `pred` until it returns a truthy value (returned); AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(interval)  # the poll step: the thread has nothing to wait on but the condition


@overload
async def until(pred: Callable[[], Awaitable[T | None]], timeout: float = 10.0,
                what: str = "condition", interval: float = POLL_S) -> T: ...
@overload
async def until(pred: Callable[[], T | None], timeout: float = 10.0,
                what: str = "condition", interval: float = POLL_S) -> T: ...
async def until(pred: Callable[[], Any], timeout: float = 10.0,
                what: str = "condition", interval: float = POLL_S) -> Any:
    """`wait_for` on the event loop: `pred` may be a plain or an async function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = pred()
        value = await got if isinstance(got, Awaitable) else got
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)  # the poll step: yields to the code that makes `pred` true


def one_row(db: Any, sql: str, params: Iterable[Any] = ()) -> Any:
    """The row `sql` must find (fails the test when there is none); `db` an SQLite `Database`
    (its coroutine run to its end) or a synchronous wrapper of one."""
    row = db.query_one(sql, params)
    if inspect.isawaitable(row):
        row = run_sync(row)  # type: ignore[arg-type]
    assert row is not None, f"no row for {sql}"
    return row


def wav_frames(path: Path) -> int:
    """The frame count a WAV file's header declares: 0 while another process has not written it."""
    try:
        with wave.open(str(path)) as w:
            return int(w.getnframes())
    except (OSError, EOFError, wave.Error):
        return 0
