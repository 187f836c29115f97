"""jego_call/cluster/node.py's ordered outbox: bus messages and directory writes leave in the
order they were made; a full outbox drops the oldest bus message and never a directory write
(a dropped write left a session out of the shared directory until the next resync: in a
reconnect storm of 10,000 clients, 3,074 were listed); a run of directory writes and bus
messages goes in one round trip, each message after the writes made before it. The node runs on MemoryState with a store whose bus can be held shut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from jego_call.cluster.node import BATCH, ClusterNode
from jego_call.cluster.state import MemoryState, SessionEntry
from jego_call.config import ClusterConfig


class GatedState(MemoryState):
    """MemoryState whose round trips wait for `gate`, counted, with what each carried."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.published: list[dict[str, Any]] = []
        self.trips = 0
        self.order: list[str] = []

    async def flush(self, changes: Iterable[tuple[bool, SessionEntry]],
                    batches: list[tuple[str | None, bytes]]) -> None:
        items = list(changes)
        await self.gate.wait()
        self._check()
        self.trips += 1
        self.order.extend("put" if put else "drop" for put, _ in items)
        for _, payload in batches:
            sent = json.loads(payload)
            for m in sent if isinstance(sent, list) else [sent]:
                self.published.append(m)
                self.order.append("bus")
        await super().flush(items, batches)


def entry(i: int) -> SessionEntry:
    return SessionEntry(f"n1-s{i}", f"user{i}", "n1")


async def started(state: GatedState, limit: int) -> tuple[ClusterNode, asyncio.Task[None]]:
    node = ClusterNode(state, ClusterConfig(outbox_limit=limit), "n1")
    await node.start()
    return node, asyncio.get_running_loop().create_task(node._writer())


@contextlib.asynccontextmanager
async def running(limit: int, *, gate_open: bool = True) -> AsyncIterator[tuple[GatedState, ClusterNode]]:
    """A node with its writer on a GatedState; the writer is stopped after the block."""
    state = GatedState()
    if gate_open:
        state.gate.set()
    node, task = await started(state, limit)
    try:
        yield state, node
    finally:
        await stop(node, task)


async def drained(node: ClusterNode) -> None:
    for _ in range(200):
        if not node._outbox:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the outbox did not drain: {len(node._outbox)} left")


async def stop(node: ClusterNode, task: asyncio.Task[None]) -> None:
    node._closed = True
    node._wake.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_full_outbox_drops_old_bus_messages_and_keeps_every_directory_write() -> None:
    async with running(5, gate_open=False) as (state, node):
        node._publish(None, {"t": "m", "i": 0})
        await asyncio.sleep(0)                       # the writer takes message 0 and waits on the bus
        for i in range(10):
            node._write_sessions(True, entry(i))
        for i in range(1, 21):
            node._publish(None, {"t": "m", "i": i})
        assert node.dropped == 21 - 5                # five kept (one of them in flight), the rest dropped
        state.gate.set()
        await drained(node)
        assert sorted(state.sessions["n1"]) == sorted(e.id for e in map(entry, range(10)))
        # message 0 (in flight when the outbox filled) and the four newest went out, in order
        assert [m["i"] for m in state.published] == [0, 17, 18, 19, 20]


async def test_directory_writes_and_bus_messages_share_round_trips_each_message_after_its_write() -> None:
    async with running(1000) as (state, node):
        for i in range(BATCH + 10):
            node._write_sessions(True, entry(i))
        node._publish(None, {"t": "m"})
        node._write_sessions(False, entry(0))
        await drained(node)
        assert state.trips == 2                      # BATCH items, then the 12 left
        assert state.order == ["put"] * (BATCH + 10) + ["drop", "bus"]
        assert "n1-s0" not in state.sessions["n1"] and len(state.sessions["n1"]) == BATCH + 9
        # alternating attach writes and messages (as a reconnect storm makes them): BATCH a trip
        state.trips, state.order = 0, []
        for i in range(BATCH):
            node._write_sessions(True, entry(1000 + i))
            node._publish(None, {"t": "attach", "s": f"n1-s{1000 + i}"})
        await drained(node)
        assert state.trips == 2
        first = state.order[:BATCH]
        assert first == ["put"] * (BATCH // 2) + ["bus"] * (BATCH // 2)


async def test_directory_writes_made_while_the_store_is_down_are_left_to_the_resync() -> None:
    async with running(100) as (state, node):
        state.down = True
        node._write_sessions(True, entry(1))         # reaches the store: fails, node goes down
        await drained(node)
        assert not node.healthy
        node._write_sessions(True, entry(2))         # while down: not queued (the resync writes it)
        assert not node._outbox
        node._publish(None, {"t": "m"})              # bus messages wait for the store
        assert len(node._outbox) == 1
        extra: dict[str, Any] = state.sessions
        assert "n1" not in extra
