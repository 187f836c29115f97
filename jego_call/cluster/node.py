"""One `jego serve` node of a cluster: the link between its Hub and the shared state.

    node = ClusterNode(state, cfg.cluster, node_id)     # state: RedisState or MemoryState
    await node.start()                                   # reach the store (waits, logging, until it can)
    secret = await node.shared_secret("token", local)    # keys every node must share
    node.bind(hub)                                       # hub.cluster = node; heartbeats, bus, first sync
    ...
    await node.stop()                                    # after hub.shutdown(): leave, flush the bus

What it does, all on the event loop:
- Mirrors this node's sessions (users and gateways) into the directory and tells every node
  (`attach`/`detach` on the bus); feeds the other nodes' sessions into the hub core
  (`attach_remote`, `detach`), so presence, "busy" and ringing every device work cluster-wide.
- Relays the core's `Send`s for sessions of other nodes to their node's channel, and messages
  from this node's sessions for a call another node owns to that owner (who decides: one owner
  per call, so the first answer wins however the devices are spread).
- Claims a new call in the shared state before the core sees it (atomically: the call id, both
  users not busy, one call of capacity on the gateway with the most free), stores each change
  of a call as a snapshot, and frees it when it ends.
- Heartbeats its node key every `heartbeat_s`; a node whose key expired (`node_ttl_s`) is dead:
  its sessions are dropped and its calls taken over (ownership moves atomically, from the dead
  node only) and ended with `peer_lost`, within `node_ttl_s` + `heartbeat_s`.
- Redis unreachable: `healthy` is False (GET /healthz says 503), one log line, new calls get
  `service_unavailable` at once, calls in progress go on (their media never touches the server);
  relayed messages wait in a bounded outbox. When Redis answers again: the outbox is sent, this
  node writes its sessions and calls again (Redis may have restarted empty) and reloads the
  others'; no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..call.reasons import EndReason
from ..config import ClusterConfig
from ..errors import ErrorCode, SignallingError
from ..signalling import messages as m
from ..signalling.hub import Hub, Session
from ..signalling.hub_core import Call, Command, SessionInfo, is_phone_target, snapshot
from .state import Claim, SessionEntry, SharedState, StateUnavailable

if TYPE_CHECKING:
    from ..directory import LiveDirectory

log = logging.getLogger("jego.cluster")

RECENT = 4096            # ended calls whose owner is remembered (late call_report, dedup)
BATCH = 256              # bus messages per round trip


def default_node_id() -> str:
    """host name and process id, as a node id (A-Z a-z 0-9 _ -)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:20] or "node"
    return f"{host}-{os.getpid()}"


def call_users(call: Call) -> list[str]:
    """The users (not phone numbers) a call makes busy."""
    if call.kind == "phone_out":
        return [call.caller]
    if call.kind == "phone_in":
        return [call.callee]
    return [call.caller, call.callee]


@dataclass(slots=True)
class _Op:
    run: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any] | None = None


@dataclass(slots=True)
class _SessionWrite:
    """A directory put (True) or drop (False): the writer sends a run of them in one round trip."""
    put: bool
    entry: SessionEntry


class _Lru(OrderedDict[str, str]):
    def remember(self, key: str, value: str) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > RECENT:
            self.popitem(last=False)


class ClusterNode:
    """This node's side of the cluster. See the module doc for the life cycle."""

    def __init__(self, state: SharedState, cfg: ClusterConfig, node_id: str = "", *,
                 info: dict[str, Any] | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.cfg = cfg
        self.id = node_id or default_node_id()
        self.info = dict(info or {})
        self.wall = wall_clock
        self.hub: Hub | None = None
        self.healthy = False
        self.down_since: float | None = None
        self.last_error = ""
        self._up_since = 0.0
        self._outbox: deque[_Op | _SessionWrite | tuple[str | None, bytes]] = deque()
        self._bus_queued = 0     # bus messages in the outbox (the bound is on these alone)
        self._in_flight = 0      # outbox head items being sent now (never dropped)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub_task: asyncio.Task[None] | None = None
        self._dead: set[str] = set()
        self._remote_owner: dict[str, str] = {}            # call id -> owner, for calls my sessions are in
        self._remote_parties: dict[str, set[str]] = {}     # call id -> my sessions in it
        self._recent_owner = _Lru()
        self._ended: _Lru = _Lru()                           # "sid call" -> "" : call_ended delivered
        self._gates: dict[str, deque[tuple[Any, dict[str, Any] | None, object]]] = {}
        self._gateway_of: dict[str, tuple[str, int]] = {}  # my gateway sessions: name, capacity
        self.people: LiveDirectory | None = None
        self._attaching: dict[str, SessionEntry] = {}      # remote sessions waiting for `people`
        self._stopping = False       # stop() began: no more heartbeats, bus, reloads
        self._closed = False         # stop() flushed the outbox: the writer ends too
        self._spawned: set[asyncio.Task[None]] = set()
        self.dropped = 0                                     # bus messages lost to a full outbox
        self.resyncs = 0                                     # completed resyncs (start-up, after an outage)
        self.stats = {"relayed": 0, "forwarded": 0, "received": 0}

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self, wait_s: float | None = None) -> None:
        """Reach the shared state; while it cannot be reached, log once and keep trying (for at
        most `wait_s`, then StateUnavailable)."""
        t0 = time.monotonic()
        said = False
        while True:
            try:
                await self.state.connect()
                break
            except StateUnavailable as exc:
                if wait_s is not None and time.monotonic() - t0 > wait_s:
                    raise
                if not said:
                    log.warning("node %s: waiting for the shared state: %s", self.id, exc)
                    said = True
                await asyncio.sleep(0.5)
        self._set_up()

    async def shared_secret(self, name: str, proposal: bytes) -> bytes:
        """The cluster-wide secret `name` (token signing, the gateway secret); the first node's
        `proposal` becomes it."""
        return await self.state.shared_secret(name, proposal)

    def bind(self, hub: Hub, people: LiveDirectory | None = None) -> None:
        """Attach to `hub` and start the heartbeat, the bus and the first sync. `people`: the
        directory the hub's core reads (a remote user is loaded into it before the core hears
        of them, so their contacts are told they are online)."""
        self.hub = hub
        self.people = people
        hub.cluster = self
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(), name=f"cluster-writer-{self.id}"),
                       loop.create_task(self._heartbeats(), name=f"cluster-heartbeat-{self.id}")]
        self._restart_subscriber()

    async def stop(self, flush_s: float = 2.0) -> None:
        """Leave the cluster: say bye, flush the outbox (briefly), remove this node's entries."""
        if self._stopping:
            return
        self._stopping = True
        self._publish(None, {"t": "bye", "n": self.id})
        with contextlib.suppress(Exception):
            await self.run(self.state.leave, self.id, timeout=flush_s)
        self._closed = True
        self._wake.set()
        tasks = [*self._tasks, *([self._sub_task] if self._sub_task else []), *self._spawned]
        for t in tasks:
            t.cancel()
        # The loops also stop on `_stopping`: a cancellation that redis-py's own timeout turns
        # into a TimeoutError (StateUnavailable) must not keep them, and so the shutdown, going.
        if tasks:
            await asyncio.wait(tasks, timeout=flush_s)
        with contextlib.suppress(Exception):
            await self.state.close()

    def status(self) -> dict[str, Any]:
        """For GET /healthz."""
        out: dict[str, Any] = {"node": self.id, "shared_state": "ok" if self.healthy else "unreachable"}
        if not self.healthy:
            out["error"] = self.last_error
            if self.down_since is not None:
                out["down_s"] = round(time.monotonic() - self.down_since, 1)
        return out

    # --- health -------------------------------------------------------------------------------
    def _set_down(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if self.healthy or self.down_since is None:
            self.healthy = False
            self.down_since = time.monotonic()
            log.error("node %s: the shared state is unreachable (%s): new calls are refused with "
                      "service_unavailable, calls in progress go on", self.id, exc)

    def _set_up(self) -> None:
        if not self.healthy:
            if self.down_since is not None:
                log.warning("node %s: the shared state is reachable again after %.1f s", self.id,
                            time.monotonic() - self.down_since)
            self.healthy = True
            self.down_since = None
            self._up_since = asyncio.get_running_loop().time()
            self._wake.set()

    # --- the ordered outbox: bus messages and state writes, in the order they happened -------
    def _publish(self, node: str | None, env: dict[str, Any]) -> None:
        self._outbox.append((node, json.dumps(env, separators=(",", ":")).encode()))
        self._bus_queued += 1
        if self._bus_queued > self.cfg.outbox_limit:
            self._drop_oldest_message()
        self._wake.set()

    def _drop_oldest_message(self) -> None:
        """The outbox is full of bus messages: the oldest goes. State writes never do (a dropped
        directory write would leave a session missing from the directory until the next resync)."""
        for i, item in enumerate(self._outbox):
            if i >= self._in_flight and isinstance(item, tuple):
                del self._outbox[i]
                self._bus_queued -= 1
                break
        else:
            return  # all of them in flight: the bound waits for that round trip
        self.dropped += 1
        if self.dropped in (1, 10, 100, 1000) or self.dropped % 10000 == 0:
            log.warning("node %s: %d relayed messages dropped (the outbox is full: the shared state "
                        "is unreachable or slow)", self.id, self.dropped)

    def _write_sessions(self, put: bool, entry: SessionEntry) -> None:
        """A directory write: queued in order with the bus, sent with its neighbours in one batch."""
        if not self.healthy:
            return
        self._outbox.append(_SessionWrite(put, entry))
        self._wake.set()

    def _write(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """A state write that needs no answer (lost while the store is unreachable: the
        resync after it comes back rewrites what is true then)."""
        if not self.healthy:
            return
        self._outbox.append(_Op(lambda: fn(*args)))
        self._wake.set()

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float | None = None) -> Any:
        """A state operation whose answer matters, in order after everything queued before it."""
        if not self.healthy:
            raise StateUnavailable(self.last_error or "the shared state is unreachable")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Op(lambda: fn(*args), fut))
        self._wake.set()
        return await asyncio.wait_for(fut, timeout or self.cfg.op_timeout_s * 2 + 1)

    async def _writer(self) -> None:
        while not self._closed:  # (runs on while stop() flushes, after _stopping)
            if not self._outbox or not self.healthy:
                self._wake.clear()
                await self._wake.wait()
                continue
            head = self._outbox[0]
            if isinstance(head, _Op):
                self._outbox.popleft()
                try:
                    result = await head.run()
                except StateUnavailable as exc:
                    self._set_down(exc)
                    if head.done is not None and not head.done.done():
                        head.done.set_exception(exc)
                    self._fail_ops(exc)
                    continue
                except Exception as exc:  # a bug in one operation must not stop the writer
                    if head.done is not None and not head.done.done():
                        head.done.set_exception(exc)
                    else:
                        log.exception("node %s: shared-state write failed", self.id)
                    continue
                if head.done is not None and not head.done.done():
                    head.done.set_result(result)
                continue
            # a run of directory writes and bus messages (up to the next operation): one round trip,
            # the writes first, then the messages, each message after every write made before it
            changes: list[tuple[bool, SessionEntry]] = []
            batch: list[tuple[str | None, bytes]] = []
            for item in self._outbox:
                if isinstance(item, _Op) or len(changes) + len(batch) >= BATCH:
                    break
                if isinstance(item, _SessionWrite):
                    changes.append((item.put, item.entry))
                else:
                    batch.append(item)
            self._in_flight = len(changes) + len(batch)
            try:
                await self.state.flush(changes, _merge(batch))
            except StateUnavailable as exc:
                self._set_down(exc)
                self._fail_ops(exc)
                continue
            except Exception:  # a bug must not stop the writer (the items are lost, and said so)
                log.exception("node %s: shared-state flush of %d writes and %d messages failed",
                              self.id, len(changes), len(batch))
            finally:
                self._in_flight = 0
            for _ in range(len(changes) + len(batch)):
                self._outbox.popleft()
            self._bus_queued -= len(batch)

    def _fail_ops(self, exc: StateUnavailable) -> None:
        """The store went away: operations waiting for an answer fail now (new calls get
        service_unavailable); writes are dropped (the resync rewrites them); bus messages wait."""
        keep: deque[_Op | _SessionWrite | tuple[str | None, bytes]] = deque()
        for item in self._outbox:
            if isinstance(item, _Op):
                if item.done is not None and not item.done.done():
                    item.done.set_exception(exc)
            elif isinstance(item, tuple):
                keep.append(item)
        self._outbox = keep

    # --- heartbeats, dead nodes, resync -------------------------------------------------------
    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while not self._stopping:
            t0 = loop.time()
            try:
                fresh = await self.state.heartbeat(self.id, {**self.info, "at": self.wall()}, self.cfg.node_ttl_s)
                if first or not self.healthy or not fresh:
                    if not fresh and not first:
                        log.error("node %s: the other nodes declared this node dead (its heartbeat "
                                  "expired): its calls were taken over", self.id)
                    self._set_up()
                    await self._resync()
                    first = False
                await self._check_nodes()
            except StateUnavailable as exc:
                self._set_down(exc)
                self._fail_ops(exc)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad round stop the heartbeat
                log.exception("node %s: heartbeat round failed", self.id)
            await asyncio.sleep(max(0.05, self.cfg.heartbeat_s - (loop.time() - t0)))

    async def _check_nodes(self) -> None:
        alive = await self.state.nodes()
        loop = asyncio.get_running_loop()
        for n, ok in alive.items():
            if n != self.id and ok:
                self._dead.discard(n)
        if loop.time() - self._up_since < self.cfg.node_ttl_s:
            return  # just (re)connected: the others may not have written their heartbeat yet
        gone = {n for n, ok in alive.items() if not ok and n != self.id}
        gone |= {n for n in self._known_nodes() if n not in alive}
        for n in sorted(gone - self._dead):
            await self._node_died(n)

    def _known_nodes(self) -> set[str]:
        assert self.hub is not None
        core = self.hub.core
        nodes = {i.node for i in core.sessions.values() if i.node}
        nodes |= {rc.owner for rc in core.remote_calls.values()}
        nodes |= set(self._remote_owner.values())
        nodes.discard(self.id)
        return nodes

    async def _node_died(self, dead: str) -> None:
        """`dead` stopped heartbeating: end what it had, as far as this node is concerned, and
        take over (atomically, so only one node does each) the calls it owned."""
        hub = self.hub
        assert hub is not None
        self._dead.add(dead)
        core = hub.core
        sids = sorted(s for s, i in core.sessions.items() if i.node == dead)
        log.warning("node %s: node %s is gone (no heartbeat for %.0f s): dropping its %d sessions, "
                    "ending its calls (peer_lost)", self.id, dead, self.cfg.node_ttl_s, len(sids))
        for cid in [c for c, o in self._remote_owner.items() if o == dead]:
            for sid in sorted(self._remote_parties.pop(cid, set())):
                self._deliver(sid, {"type": "call_ended", "call_id": cid, "reason": EndReason.PEER_LOST.value})
            self._remote_owner.pop(cid, None)
        for sid in sids:
            self._detach(sid, EndReason.PEER_LOST)
        for cid in await self.state.node_calls(dead):
            snap = await self.state.take_over(cid, dead, self.id)
            if snap is not None:
                self._adopt(snap)
        for user, rc in sorted(core.remote_calls_of(dead).items()):
            self._clear(user, rc.call_id)
        await self.state.reap(dead, self.id)

    async def _resync(self) -> None:
        """After (re)connecting: write this node's truth (the store may have restarted empty),
        drop calls another node took over meanwhile, reload the others' sessions and calls."""
        hub = self.hub
        assert hub is not None
        core = hub.core
        mine = [self._entry(i) for i in core.sessions.values() if not i.node]
        await self.run(self.state.replace_node_sessions, self.id, mine)  # in order with queued writes
        owned = [(snapshot(c), call_users(c), c.state.value == "connected") for c in core.calls.values()]
        lost = await self.run(self.state.restore_calls, self.id, owned)
        for cid in lost:
            log.warning("node %s: call %s was taken over while this node was cut off", self.id, cid)
            self._drop(cid)
        live = {c.id for c in core.calls.values()}
        for cid in await self.run(self.state.node_calls, self.id):
            if cid not in live:
                await self.run(self.state.release, cid, [])
        for c in core.calls.values():  # the others note who is busy in my calls again
            self._publish(None, {"t": "call", "u": call_users(c), "c": c.id, "o": self.id,
                                 "x": c.state.value == "connected", "n": self.id})
        self._publish(None, {"t": "resync", "n": self.id})
        # Only add what the others wrote: a node that has not resynced yet (Redis restarted
        # empty) must not lose its sessions here. Its own `resync` message prunes (below); a
        # node that never comes back is ended by _check_nodes (peer_lost).
        for n in sorted(await self.state.nodes()):
            if n != self.id:
                await self._reload_node(n, prune=False)
        busy = await self.state.busy_table()
        for user, rc in sorted(core.remote_calls.items()):
            b = busy.get(user)
            if b is None or b.call_id != rc.call_id:
                self._clear(user, rc.call_id)
        for user, b in sorted(busy.items()):
            if b.owner != self.id:
                self._note([user], b.call_id, b.owner, b.connected)
        self.resyncs += 1

    async def _reload_node(self, node: str, prune: bool = True) -> None:
        """Make the core's view of `node`'s sessions what the directory says (`prune=False`:
        only add the ones this node did not know)."""
        hub = self.hub
        assert hub is not None
        core = hub.core
        entries = {e.id: e for e in await self.state.node_sessions(node)}
        have = {s for s, i in core.sessions.items() if i.node == node}
        if prune:
            for sid in sorted(have - set(entries)):
                self._detach(sid, None)
        for sid in sorted(set(entries) - have):
            self._attach_remote(entries[sid])

    def _forget_node(self, node: str, reason: EndReason | None) -> None:
        hub = self.hub
        assert hub is not None
        core = hub.core
        for sid in sorted(s for s, i in core.sessions.items() if i.node == node):
            self._detach(sid, reason)
        for user, rc in sorted(core.remote_calls_of(node).items()):
            self._clear(user, rc.call_id)

    # --- the bus: receiving -------------------------------------------------------------------
    def _restart_subscriber(self) -> None:
        if self._sub_task is not None:
            self._sub_task.cancel()
        self._sub_task = asyncio.get_running_loop().create_task(self._subscriber(), name=f"cluster-bus-{self.id}")

    async def _subscriber(self) -> None:
        first = True
        while not self._stopping:
            if not first:
                self._spawn(self._reload_all())
            first = False
            try:
                async for payload in self.state.subscribe(self.id):
                    for env in json.loads(payload):
                        try:
                            self._on_bus(env)
                        except Exception:  # one bad message must not stop the bus
                            log.exception("node %s: bus message %s failed", self.id, env.get("t"))
            except StateUnavailable as exc:
                self._set_down(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s: bus subscriber failed", self.id)
            await asyncio.sleep(0.25)
            while not self.healthy and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
            # reconnected: what was missed meanwhile is reloaded by the heartbeat's resync

    def _on_bus(self, env: dict[str, Any]) -> None:
        hub = self.hub
        assert hub is not None
        core = hub.core
        t = env.get("t")
        self.stats["received"] += 1
        if env.get("n") == self.id and t in ("attach", "detach", "call", "free", "resync", "bye"):
            return  # my own broadcast
        if t == "send":
            self._deliver(env["s"], env["m"], env.get("o"))
        elif t == "user":
            hub.send_to_local_user(env["u"], env["m"], env.get("x"))
        elif t == "handle":
            self._handle_forwarded(env)
        elif t == "attach":
            g = env.get("g") or ["", 0]
            self._attach_remote(SessionEntry(env["s"], env["u"], env["n"], env.get("r", "user"), g[0], int(g[1])))
        elif t == "detach":
            sid = env["s"]
            if sid in core.sessions and core.sessions[sid].node:
                self._detach(sid, None)
        elif t == "call":
            owner = env["o"]
            self._note(env["u"], env["c"], owner, bool(env.get("x")))
        elif t == "free":
            self._clear_all(env["u"], env["c"])
        elif t == "resync":
            node = env["n"]
            self._dead.discard(node)
            self._spawn(self._reload_node(node))
        elif t == "bye":
            self._forget_node(env["n"], None)

    def _spawn(self, aw: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(self._safe(aw))
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _safe(self, aw: Awaitable[None]) -> None:
        try:
            await aw
        except StateUnavailable as exc:
            self._set_down(exc)
        except Exception:
            log.exception("node %s: background step failed", self.id)

    async def _reload_all(self) -> None:
        """Reload every other node's sessions (the bus was cut: messages may have been missed)."""
        await asyncio.sleep(0.5)
        if not self.healthy:
            return
        for n in sorted(await self.state.nodes()):
            if n != self.id:
                await self._reload_node(n, prune=False)

    def _attach_remote(self, e: SessionEntry) -> None:
        hub = self.hub
        assert hub is not None
        core = hub.core
        if e.node == self.id or e.id in core.sessions or e.id in self._attaching:
            return
        if e.role == "gateway":
            hub.feed(lambda _now, _wall: core.attach_remote_gateway(e.id, e.name, e.capacity, e.node))
        elif self.people is not None and not self.people.ready(e.username):
            self._attaching[e.id] = e
            self._spawn(self._attach_when_ready(e, self.people))
        else:
            hub.feed(lambda _now, _wall: core.attach_remote(e.id, e.username, e.node))

    async def _attach_when_ready(self, e: SessionEntry, people: LiveDirectory) -> None:
        """Load the remote user (their watchers, display name) first: the core's presence
        change then reaches their contacts. A detach meanwhile cancels the attach."""
        try:
            await people.ensure(e.username)
        except Exception as exc:  # the database away: attach anyway, presence reaches whom it can
            log.warning("node %s: could not load %s for their session on %s: %s", self.id, e.username, e.node, exc)
        if self._attaching.pop(e.id, None) is None or self.hub is None:
            return
        core = self.hub.core
        self.hub.feed(lambda _now, _wall: core.attach_remote(e.id, e.username, e.node))

    # core inputs from the cluster (each carried out by the hub at once)
    def _detach(self, sid: str, reason: EndReason | None) -> None:
        self._attaching.pop(sid, None)
        assert self.hub is not None
        core = self.hub.core
        self.hub.feed(lambda now, wall: core.detach(sid, now=now, wall=wall, reason=reason))

    def _adopt(self, snap: dict[str, Any]) -> None:
        assert self.hub is not None
        core = self.hub.core
        self.hub.feed(lambda now, wall: core.adopt(snap, now=now, wall=wall))

    def _drop(self, cid: str) -> None:
        assert self.hub is not None
        core = self.hub.core
        self.hub.feed(lambda now, wall: core.drop_call(cid, now=now, wall=wall))

    def _note(self, users: list[str], cid: str, owner: str, connected: bool) -> None:
        assert self.hub is not None
        core = self.hub.core
        self.hub.feed(lambda _now, _wall: core.note_call(users, cid, owner, connected))

    def _clear(self, user: str, cid: str) -> None:
        self._clear_all([user], cid)

    def _clear_all(self, users: list[str], cid: str) -> None:
        assert self.hub is not None
        core = self.hub.core
        self.hub.feed(lambda _now, _wall: core.clear_call(users, cid))

    def _deliver(self, sid: str, msg: dict[str, Any], owner: str | None = None) -> None:
        """A message from another node for one of this node's sessions."""
        hub = self.hub
        assert hub is not None
        cid = msg.get("call_id")
        if isinstance(cid, str) and owner is not None and owner != self.id:
            if msg.get("type") == "call_ended":
                key = f"{sid} {cid}"
                if key in self._ended:
                    return  # already told (its node died and this node said peer_lost first)
                self._ended.remember(key, "")
                parties = self._remote_parties.get(cid)
                if parties is not None:
                    parties.discard(sid)
                    if not parties:
                        del self._remote_parties[cid]
                        self._remote_owner.pop(cid, None)
                self._recent_owner.remember(cid, owner)
            elif msg.get("type") != "error":
                self._remote_owner[cid] = owner
                self._remote_parties.setdefault(cid, set()).add(sid)
        elif isinstance(cid, str) and msg.get("type") == "call_ended":
            self._ended.remember(f"{sid} {cid}", "")
        if not hub.send_local(sid, msg) and sid.startswith(f"{self.id}-"):
            # the sender still thinks the socket is here (a detach it missed while the bus was
            # cut): say again that it is gone
            self._publish(None, {"t": "detach", "s": sid, "n": self.id})

    def _handle_forwarded(self, env: dict[str, Any]) -> None:
        """A message from a session of another node for a call this node owns."""
        hub = self.hub
        assert hub is not None
        core = hub.core
        sid, ref = env["s"], env.get("f")
        if sid not in core.sessions:
            g = env.get("g")
            self._attach_remote(SessionEntry(sid, env["u"], env["n"], env.get("r", "user"),
                                             g[0] if g else "", int(g[1]) if g else 0))
        try:
            msg = m.parse_message(env["m"])
            hub.handle_call(sid, msg)
        except SignallingError as exc:
            self.relay(sid, exc.to_wire(ref))
        except Exception:
            log.exception("node %s: forwarded message from %s failed", self.id, sid)
            self.relay(sid, SignallingError(ErrorCode.INTERNAL, "internal error").to_wire(ref))

    # --- ClusterLink: what the hub calls ------------------------------------------------------
    def new_session_id(self, n: int) -> str:
        return f"{self.id}-s{n}"

    def _entry(self, info: SessionInfo) -> SessionEntry:
        name, capacity = self._gateway_of.get(info.id, ("", 0))
        return SessionEntry(info.id, info.username, self.id, info.role, name, capacity)

    def attached(self, session: Session, name: str = "", capacity: int = 0) -> None:
        if session.role == "gateway":
            self._gateway_of[session.id] = (name, capacity)
        e = SessionEntry(session.id, session.username, self.id, session.role, name, capacity)
        self._write_sessions(True, e)
        env: dict[str, Any] = {"t": "attach", "s": e.id, "u": e.username, "r": e.role, "n": self.id}
        if e.role == "gateway":
            env["g"] = [name, capacity]
        self._publish(None, env)

    def detached(self, session: Session) -> None:
        name, capacity = self._gateway_of.pop(session.id, ("", 0))
        self._gates.pop(session.id, None)
        e = SessionEntry(session.id, session.username, self.id, session.role, name, capacity)
        self._write_sessions(False, e)
        self._publish(None, {"t": "detach", "s": session.id, "n": self.id})

    def relay(self, session_id: str, msg: dict[str, Any]) -> bool:
        hub = self.hub
        assert hub is not None
        info = hub.core.sessions.get(session_id)
        if info is None or not info.node or info.node in self._dead:
            return False
        self.stats["relayed"] += 1
        self._publish(info.node, {"t": "send", "s": session_id, "m": msg, "o": self.id})
        return True

    def send_to_user(self, username: str, msg: dict[str, Any], skip: str | None) -> int:
        hub = self.hub
        assert hub is not None
        core = hub.core
        nodes: dict[str, int] = {}
        for sid in core.user_sessions.get(username, ()):
            node = core.sessions[sid].node
            if node and sid != skip and node not in self._dead:
                nodes[node] = nodes.get(node, 0) + 1
        for node in sorted(nodes):
            env: dict[str, Any] = {"t": "user", "u": username, "m": msg}
            if skip is not None:
                env["x"] = skip
            self._publish(node, env)
        return sum(nodes.values())

    def intercept(self, session: Session, msg: Any, raw: dict[str, Any] | None, ref: object) -> bool:
        gate = self._gates.get(session.id)
        if gate is not None:  # a claim of this session is in flight: keep its order
            gate.append((msg, raw, ref))
            return True
        if isinstance(msg, m.Invite):
            if not self.healthy:
                raise SignallingError(ErrorCode.SERVICE_UNAVAILABLE,
                                      "the service cannot take new calls right now: try again in a moment",
                                      call_id=msg.call_id)
            self._gates[session.id] = deque()
            self._spawn(self._claim_then_invite(session, msg, ref))
            return True
        call_id = getattr(msg, "call_id", None)
        hub = self.hub
        assert hub is not None
        if not isinstance(call_id, str) or call_id in hub.core.calls:
            return False
        owner = self._remote_owner.get(call_id) or self._recent_owner.get(call_id)
        if owner is None or owner == self.id or owner in self._dead or raw is None:
            return False
        env: dict[str, Any] = {"t": "handle", "s": session.id, "u": session.username, "r": session.role,
                               "n": self.id, "m": raw}
        if ref is not None:
            env["f"] = ref
        if session.id in self._gateway_of:
            env["g"] = list(self._gateway_of[session.id])
        self.stats["forwarded"] += 1
        self._publish(owner, env)
        return True

    async def _claim_then_invite(self, session: Session, msg: m.Invite, ref: object) -> None:
        """Claim the call in the shared state, then let the core decide it; then the messages
        the session sent meanwhile, in order."""
        hub = self.hub
        assert hub is not None
        core = hub.core
        try:
            if session.role == "gateway":
                users, phone = [msg.to.lower()], False
            elif is_phone_target(msg.to):
                users, phone = [session.username], True
            else:
                users, phone = sorted({session.username, msg.to.lower()}), False
            snap = {"id": msg.call_id, "caller": msg.from_ or session.username, "callee": msg.to,
                    "caller_session": session.id, "state": "calling", "kind": "user"}
            try:
                claim: Claim = await self.run(functools.partial(self.state.claim, want_gateway=phone),
                                              msg.call_id, self.id, users, snap)
            except (StateUnavailable, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    self._set_down(StateUnavailable("the shared state did not answer in time"))
                raise SignallingError(ErrorCode.SERVICE_UNAVAILABLE,
                                      "the service cannot take new calls right now: try again in a moment",
                                      call_id=msg.call_id) from None
            if claim.exists:
                raise SignallingError(ErrorCode.CALL_EXISTS, "call_id already used", call_id=msg.call_id)
            for user, b in sorted(claim.busy.items()):
                if b.owner != self.id:
                    self._note([user], b.call_id, b.owner, b.connected)
            if claim.ok:
                if phone:
                    pick = claim.gateway
                    if pick is not None and pick.session not in core.gateways:
                        self._attach_remote(SessionEntry(pick.session, f"gateway:{pick.name}", pick.node, "gateway",
                                                         pick.name, pick.capacity))
                    core.reserve_gateway(msg.call_id, pick.session if pick is not None else "")
            if session.id not in core.sessions:  # the socket went away meanwhile
                if claim.ok:
                    self._write(self.state.release, msg.call_id, users)
                return
            try:
                hub.handle_call(session.id, msg)
            except SignallingError:
                if claim.ok and msg.call_id not in core.calls:
                    core.reserved.pop(msg.call_id, None)
                    self._write(self.state.release, msg.call_id, users)
                raise
        except SignallingError as exc:
            session.send(exc.to_wire(ref))
        except Exception:
            log.exception("node %s: invite %s failed", self.id, msg.call_id)
            session.send(SignallingError(ErrorCode.INTERNAL, "internal error").to_wire(ref))
        finally:
            await self._drain_gate(session)

    async def _drain_gate(self, session: Session) -> None:
        hub = self.hub
        assert hub is not None
        gate = self._gates.get(session.id)
        while gate:
            msg, raw, ref = gate.popleft()
            if isinstance(msg, m.Invite):  # another new call: claim it in turn
                self._gates[session.id] = gate
                self._spawn(self._claim_then_invite(session, msg, ref))
                return
            try:
                if not self.intercept_after_gate(session, msg, raw, ref):
                    hub.handle_call(session.id, msg)
            except SignallingError as exc:
                session.send(exc.to_wire(ref))
        self._gates.pop(session.id, None)

    def intercept_after_gate(self, session: Session, msg: Any, raw: dict[str, Any] | None, ref: object) -> bool:
        """`intercept` for a message that waited behind a claim (never gated again)."""
        gate = self._gates.pop(session.id, None)
        try:
            return self.intercept(session, msg, raw, ref)
        finally:
            if gate is not None:
                self._gates[session.id] = gate

    def call_changed(self, call: Call) -> None:
        users = call_users(call)
        connected = call.state.value == "connected"
        self._write(self.state.save_call, self.id, snapshot(call), users, connected)
        self._publish(None, {"t": "call", "u": users, "c": call.id, "o": self.id, "x": connected, "n": self.id})

    def call_ended(self, call: Call) -> None:
        users = call_users(call)
        self._write(self.state.release, call.id, users)
        self._publish(None, {"t": "free", "u": users, "c": call.id, "n": self.id})


def _merge(batch: list[tuple[str | None, bytes]]) -> list[tuple[str | None, bytes]]:
    """Consecutive messages to one channel become one payload (a JSON array), order kept."""
    out: list[tuple[str | None, list[bytes]]] = []
    for node, payload in batch:
        if out and out[-1][0] == node:
            out[-1][1].append(payload)
        else:
            out.append((node, [payload]))
    return [(node, b"[" + b",".join(items) + b"]") for node, items in out]


def feed_all(hub: Hub, steps: list[Callable[[float, float], list[Command]]]) -> None:
    """Run several core inputs in order (helper for tests)."""
    for step in steps:
        hub.feed(step)
