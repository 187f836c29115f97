"""The asyncio shell of `impair.Impairment` for an aiortc peer connection: what the network
delivers to ICE (everything that is not STUN: DTLS, SRTP, SRTCP) goes through the seeded model
first, so loss, delay and reordering hit the media below DTLS and SRTP as a real network would.

    shell = impair_peer_connection(pc, ImpairmentSpec.parse("loss=5,seed=1"))   # after SDP
    shell.counters                                # received / dropped / delivered / reordered

STUN (connectivity checks, consent) is left alone so a lossy "network" does not also tear the
ICE session down. Test and lab use only: it logs a warning when switched on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .impair import Impairment, ImpairmentCounters, ImpairmentSpec

log = logging.getLogger(__name__)

Deliver = Callable[[bytes, int], None]


class ImpairedReceiver:
    """Wraps one aioice Connection's `data_received(data, component)` with the model."""

    def __init__(self, spec: ImpairmentSpec, deliver: Deliver, loop: asyncio.AbstractEventLoop) -> None:
        self.model: Impairment[tuple[bytes, int]] = Impairment(spec)
        self._deliver = deliver
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def counters(self) -> ImpairmentCounters:
        return self.model.counters

    def data_received(self, data: bytes, component: int) -> None:
        now = self._loop.time()
        self.model.push((data, component), now)
        self._flush()

    def _flush(self) -> None:
        # One timer at a time, at the earliest deadline: a datagram arriving while one is set
        # replaces it (else every datagram held in a steady stream would start its own chain).
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.closed:
            return
        for data, component in self.model.pop_due(self._loop.time()):
            self._deliver(data, component)
        due = self.model.next_deadline()
        if due is not None:
            self._timer = self._loop.call_at(due, self._flush)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PeerImpairment:
    """The receivers installed on one peer connection; `counters` sums them."""

    def __init__(self, spec: ImpairmentSpec) -> None:
        self.spec = spec
        self.receivers: list[ImpairedReceiver] = []

    @property
    def counters(self) -> dict[str, int]:
        total = ImpairmentCounters()
        for r in self.receivers:
            c = r.counters
            total.received += c.received
            total.dropped += c.dropped
            total.delivered += c.delivered
            total.reordered += c.reordered
            total.loss_runs += c.loss_runs
        return {"received": total.received, "dropped": total.dropped, "delivered": total.delivered,
                "reordered": total.reordered, "loss_runs": total.loss_runs}

    def close(self) -> None:
        for r in self.receivers:
            r.close()


def _ice_connections(pc: Any) -> list[Any]:
    seen: list[Any] = []
    for t in pc.getTransceivers():
        dtls = getattr(t.receiver, "transport", None)
        conn = getattr(getattr(dtls, "transport", None), "_connection", None)
        if conn is not None and all(conn is not s for s in seen):
            seen.append(conn)
    return seen


def impair_peer_connection(pc: Any, spec: ImpairmentSpec, shell: PeerImpairment | None = None) -> PeerImpairment:
    """Route every non-STUN datagram of `pc`'s ICE connections through the model (idempotent per
    connection: call it again after renegotiation to cover new transports)."""
    shell = shell or PeerImpairment(spec)
    if not spec.active:
        return shell
    loop = asyncio.get_running_loop()
    for conn in _ice_connections(pc):
        if getattr(conn, "_jego_impaired", False):
            continue
        receiver = ImpairedReceiver(spec, conn.data_received, loop)
        conn.data_received = receiver.data_received
        conn._jego_impaired = True
        shell.receivers.append(receiver)
        log.warning("media impairment ON (%s): test and lab use only", spec)
    return shell
