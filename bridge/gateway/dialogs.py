"""Trunk dialogs that outlive their worker: each answered SIP call's dialog state (Call-ID, tags,
route set, CSeq, remote target) kept in a shared store, so that when a `jego bridge` worker dies
mid-call a restarted or surviving worker sends the carrier the BYE it never got (a real carrier
bills every second until then).

    store = DialogStore.open(data_dir / "bridge-dialogs.sqlite3")   # shared by the machine's workers
    store.put(record_of(dialog, dest, owner=worker_id, now=time.time()))   # on answer
    store.drop(record.key)                                            # when the call ends
    store.heartbeat(worker_id, now)                                   # every second (OrphanReaper)
    for rec in store.claim_orphans(worker_id, now, stale_s=2.5): ... # BYE each (rec.bye_request())

`OrphanReaper` (the worker's asyncio shell) does the heartbeat, the claim and the BYEs. The
embedded default is one SQLite file per data directory (WAL, so several worker processes share
it); the records are plain JSON so another backend (Redis) can hold them as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..sip.dialog import Dialog, DialogId, DialogState
from ..sip.message import SipRequest
from ..sip.transaction import Addr
from ..sip.uri import NameAddr, drop_param, parse_name_addr, parse_uri

log = logging.getLogger("jego.bridge")

# A BYE after a crash must carry a CSeq above every request the dead worker sent in the dialog
# (RFC 3261 §12.2.1.1). The store is written on answer, not on every re-INVITE, so leave room.
CSEQ_MARGIN = 100


@dataclass(frozen=True, slots=True)
class DialogRecord:
    """One confirmed trunk dialog, as JSON-able strings and numbers."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str          # our From/To name-addr, without tag
    remote_uri: str
    remote_target: str      # the peer's Contact URI (§12.1.2)
    route_set: tuple[str, ...]
    local_seq: int
    dest_host: str          # where in-dialog requests go (the worker resolved it at answer)
    dest_port: int
    reliable: bool
    owner: str              # the worker id that holds the call
    created: float          # epoch seconds
    app_call_id: str = ""   # the signalling call id, for the logs

    @property
    def key(self) -> str:
        return f"{self.call_id};{self.local_tag};{self.remote_tag}"

    @property
    def dest(self) -> Addr:
        return (self.dest_host, self.dest_port)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DialogRecord:
        d: dict[str, Any] = json.loads(text)
        d["route_set"] = tuple(d.get("route_set", ()))
        return cls(**d)

    def dialog(self) -> Dialog:
        """The dialog rebuilt (UAC or UAS alike: From is always ours in requests we send)."""
        return Dialog(DialogId(self.call_id, self.local_tag, self.remote_tag), uac=True,
                      local_uri=parse_name_addr(self.local_uri, "From"),
                      remote_uri=parse_name_addr(self.remote_uri, "To"),
                      remote_target=parse_uri(self.remote_target), route_set=list(self.route_set),
                      local_seq=self.local_seq + CSEQ_MARGIN, remote_seq=None, invite_seq=self.local_seq,
                      peer=self.dest, reliable=self.reliable, state=DialogState.CONFIRMED)

    def bye_request(self, reason: str) -> SipRequest:
        """The BYE (§15.1.1) with a Reason header (RFC 3326); the endpoint adds Via."""
        return self.dialog().create_request("BYE", headers=(("Reason", reason),))


def _untagged(na: NameAddr) -> NameAddr:
    return replace(na, params=drop_param(na.params, "tag"))


def record_of(dialog: Dialog, dest: Addr, *, owner: str, now: float, app_call_id: str = "") -> DialogRecord:
    """A store record from the endpoint's dialog, as it is when the call is answered."""
    return DialogRecord(
        call_id=dialog.id.call_id, local_tag=dialog.id.local_tag, remote_tag=dialog.id.remote_tag,
        local_uri=str(_untagged(dialog.local_uri)), remote_uri=str(_untagged(dialog.remote_uri)),
        remote_target=str(dialog.remote_target), route_set=tuple(dialog.route_set),
        local_seq=max(dialog.local_seq, dialog.invite_seq), dest_host=dest[0], dest_port=int(dest[1]),
        reliable=dialog.reliable, owner=owner, created=now, app_call_id=app_call_id)


class DialogStore:
    """Dialog records and worker heartbeats in one SQLite file (WAL: many processes)."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> DialogStore:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(p), timeout=5.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS dialogs (key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                     "record TEXT NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, seen REAL NOT NULL)")
        return cls(conn, p)

    @classmethod
    def memory(cls) -> DialogStore:
        """A private store (tests; a worker without a data directory)."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute("CREATE TABLE dialogs (key TEXT PRIMARY KEY, owner TEXT NOT NULL, record TEXT NOT NULL)")
        conn.execute("CREATE TABLE workers (id TEXT PRIMARY KEY, seen REAL NOT NULL)")
        return cls(conn)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def put(self, rec: DialogRecord) -> None:
        self.conn.execute("INSERT OR REPLACE INTO dialogs (key, owner, record) VALUES (?, ?, ?)",
                          (rec.key, rec.owner, rec.to_json()))

    def drop(self, key: str) -> None:
        self.conn.execute("DELETE FROM dialogs WHERE key = ?", (key,))

    def records(self) -> list[DialogRecord]:
        return [DialogRecord.from_json(r[0]) for r in self.conn.execute("SELECT record FROM dialogs ORDER BY key")]

    def heartbeat(self, worker: str, now: float) -> None:
        self.conn.execute("INSERT OR REPLACE INTO workers (id, seen) VALUES (?, ?)", (worker, now))

    def retire(self, worker: str) -> None:
        """A worker stopping cleanly: its heartbeat goes (its calls were hung up)."""
        self.conn.execute("DELETE FROM workers WHERE id = ?", (worker,))

    def claim_orphans(self, worker: str, now: float, stale_s: float) -> list[DialogRecord]:
        """Take over every dialog whose owner's heartbeat is older than `stale_s` (or gone), in one
        transaction, so two surviving workers never both BYE the same dialog."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            rows = cur.execute(
                "SELECT key, record FROM dialogs WHERE owner != ? AND owner NOT IN "
                "(SELECT id FROM workers WHERE seen >= ?)", (worker, now - stale_s)).fetchall()
            out = []
            for key, text in rows:
                cur.execute("UPDATE dialogs SET owner = ? WHERE key = ?", (worker, key))
                out.append(DialogRecord.from_json(text))
            cur.execute("DELETE FROM workers WHERE seen < ?", (now - stale_s,))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return out


ByeSender = Callable[[DialogRecord], "asyncio.Future[int | None] | None"]  # see OrphanReaper


class OrphanReaper:
    """The worker's heartbeat and orphan sweep: `start()`, then `stop()`. `send_bye(record)`
    sends the BYE on the worker's trunk and returns a future of the final status (or None)."""

    def __init__(self, store: DialogStore, worker: str, send_bye: ByeSender, *, heartbeat_s: float = 1.0,
                 stale_s: float = 2.5, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.worker = worker
        self.send_bye = send_bye
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.clock = clock
        self.reaped: list[tuple[DialogRecord, int | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    def start(self) -> None:
        self.store.heartbeat(self.worker, self.clock())
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name(f"orphan-reaper-{self.worker}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(sqlite3.Error):
            self.store.retire(self.worker)

    def sweep(self) -> list[DialogRecord]:
        """One heartbeat and one claim; BYE for each orphan. Returns what was claimed."""
        now = self.clock()
        self.store.heartbeat(self.worker, now)
        orphans = self.store.claim_orphans(self.worker, now, self.stale_s)
        for rec in orphans:
            age = now - rec.created
            log.warning("orphaned trunk dialog %s (call %s, worker %s gone, up %.0f s): sending BYE",
                        rec.call_id, rec.app_call_id or "?", rec.owner, age)
            fut = self.send_bye(rec)
            if fut is None:
                self._done(rec, None)
                continue
            self._pending.add(fut)
            fut.add_done_callback(functools.partial(self._finished, rec))
        return orphans

    def _finished(self, rec: DialogRecord, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        status = None if fut.cancelled() or fut.exception() is not None else fut.result()
        self._done(rec, status)

    def _done(self, rec: DialogRecord, status: int | None) -> None:
        self.reaped.append((rec, status))
        log.info("orphaned dialog %s: BYE answered %s", rec.call_id, status if status is not None else "no response")
        with contextlib.suppress(sqlite3.Error):
            self.store.drop(rec.key)

    async def _run(self) -> None:
        while True:
            try:
                self.sweep()
            except sqlite3.Error as exc:
                log.warning("dialog store: %s", exc)
            await asyncio.sleep(self.heartbeat_s)  # the heartbeat period itself


__all__ = ["CSEQ_MARGIN", "DialogRecord", "DialogStore", "OrphanReaper", "record_of"]
