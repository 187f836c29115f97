"""Call quality on the server: the apps' live `call_stats` reports, the E-model score each gets
back (`call_quality`), the score in the call record, and the one summary line when a call ends.

    setup_call_quality(app)    # create_app: a cleanup_ctx entry (after the hub's) builds CallQuality

A party of a connected call (the caller's or the answering session; not a gateway, which sends
`call_report`) sends `call_stats` every few seconds with what its receiver counted (cumulative
since the call began: packets received and lost, jitter, round trip, optionally the playout
delay). The server scores it with the G.107 E-model (jego_call/quality.py) and answers
`call_quality` for the interval since that session's previous report (so the word is live: a
stretch of loss shows at once), with 100 % loss when nothing at all arrived in the interval. One
last report with `final: true` may come just after the call ended. The call's score is the
worse of its parties' whole-call scores; for phone calls the bridge's own score (in its
`call_report`, both legs and both directions) replaces it. docs/signalling.md "Call quality".
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..calllog import CallLog
from ..errors import ErrorCode, SignallingError
from ..log import call_summary
from ..metrics import ServerMetrics, call_kind
from ..quality import LegCounters, Quality, estimate, webrtc_receive, word_for, worst
from . import messages as m
from .hub import Hub, Session
from .hub_core import Call, StoreReport
from .keys import CALL_LOG, HUB, METRICS

log = logging.getLogger("jego.hub")

RECENT = 1024                 # ended calls that may still send their final report
FINAL_GRACE_S = 30.0          # ... for this long after the end
NO_AUDIO_AFTER_S = 1.5        # a report interval this long with no packet at all: 100 % loss
MAX_COUNT = 2**31


@dataclass(frozen=True, slots=True)
class CallStats:
    """One `call_stats` report: cumulative receive counters of one party's WebRTC leg."""

    call_id: str
    codec: str | None
    packets_received: int
    packets_lost: int
    jitter_ms: float | None
    rtt_ms: float | None
    jitter_buffer_ms: float | None
    final: bool

    def counters(self) -> dict[str, Any]:
        return {"codec": self.codec, "packets_received": self.packets_received, "packets_lost": self.packets_lost,
                "jitter_ms": self.jitter_ms, "rtt_ms": self.rtt_ms, "jitter_buffer_ms": self.jitter_buffer_ms}


@m.message("call_stats")
def _call_stats(d: dict[str, Any]) -> CallStats:
    final = d.get("final", False)
    if not isinstance(final, bool):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'final' must be true or false")
    codec = m.field_str(d, "codec", max_len=16, optional=True)
    return CallStats(
        m.call_id(d), codec.lower() if isinstance(codec, str) else None,
        int(m.field_int(d, "packets_received", 0, MAX_COUNT, optional=False) or 0),
        int(m.field_int(d, "packets_lost", 0, MAX_COUNT, optional=False) or 0),
        m.field_num(d, "jitter_ms", 0.0, 60_000.0), m.field_num(d, "rtt_ms", 0.0, 60_000.0),
        m.field_num(d, "jitter_buffer_ms", 0.0, 60_000.0), final)


@dataclass(slots=True)
class _Party:
    last: CallStats | None = None
    last_at: float = 0.0
    quality: Quality | None = None      # the whole call so far, as this party heard it


@dataclass(eq=False)
class _Tracked:
    call: Call
    parties: dict[str, _Party] = field(default_factory=dict)   # session id -> its reports
    ended_at: float | None = None                               # monotonic
    observed: bool = False                                      # its MOS is in the histogram
    gateway: Quality | None = None                              # the bridge's score (phone calls)
    codec: str | None = None

    def quality(self) -> Quality | None:
        return self.gateway or worst(*(p.quality for p in self.parties.values()))


class CallQuality:
    """Quality reports and end-of-call summaries for one hub (app[HUB]); see the module doc."""

    def __init__(self, hub: Hub, call_log: CallLog | None, metrics: ServerMetrics,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.call_log = call_log
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.live: dict[str, _Tracked] = {}
        self.recent: OrderedDict[str, _Tracked] = OrderedDict()

    def register(self) -> None:
        """Route `call_stats` here; summarise ended calls; take the bridge's scores."""
        self.hub.register_handler(CallStats, self.on_stats)
        self.hub.on_call_ended.append(self.on_call_ended)
        self.hub.on_call_report.append(self.on_call_report)

    # --- reports from the apps -------------------------------------------------------------------
    def _tracked_for(self, session: Session, call_id: str) -> _Tracked:
        if session.role == "gateway":
            raise SignallingError(ErrorCode.FORBIDDEN, "gateways report calls with call_report", call_id=call_id)
        call = self.hub.calls.get(call_id)
        if call is not None:
            if session.id not in (call.caller_session, call.answered_session):
                raise SignallingError(ErrorCode.NOT_PARTY, "you are not a party to this call", call_id=call_id)
            if call.answered_session is None:
                raise SignallingError(ErrorCode.INVALID_STATE, "call_stats needs a connected call", call_id=call_id)
            tracked = self.live.get(call_id)
            if tracked is None or tracked.call is not call:
                tracked = self.live[call_id] = _Tracked(call)
            return tracked
        tracked = self.recent.get(call_id)
        if tracked is None or tracked.ended_at is None or self.clock() - tracked.ended_at > FINAL_GRACE_S:
            raise SignallingError(ErrorCode.UNKNOWN_CALL, "no such call, or it has ended", call_id=call_id)
        if session.id not in (tracked.call.caller_session, tracked.call.answered_session):
            raise SignallingError(ErrorCode.NOT_PARTY, "you are not a party to this call", call_id=call_id)
        return tracked

    def on_stats(self, session: Session, msg: CallStats) -> None:
        """A party's `call_stats`: score it, answer `call_quality`, keep the whole-call score."""
        tracked = self._tracked_for(session, msg.call_id)
        self.metrics.quality_report()
        now = self.clock()
        party = tracked.parties.setdefault(session.id, _Party())
        whole = estimate([webrtc_receive(msg.counters(), msg.codec)])
        interval = whole
        last = party.last
        if last is not None and not msg.final:
            got = max(0, msg.packets_received - last.packets_received)
            lost = max(0, msg.packets_lost - last.packets_lost)
            elapsed = now - party.last_at
            if got == 0 and elapsed >= NO_AUDIO_AFTER_S:
                lost = max(lost, int(elapsed / 0.020))  # nothing came at all: every 20 ms packet lost
            base = webrtc_receive(msg.counters(), msg.codec)
            interval = estimate([LegCounters(base.codec, expected=got + lost, lost=lost, delay_ms=base.delay_ms,
                                             jitter_ms=base.jitter_ms)])
        party.last, party.last_at, party.quality = msg, now, whole
        tracked.codec = tracked.codec or msg.codec
        session.send({"type": "call_quality", "call_id": msg.call_id, **interval.as_dict()})
        if tracked.ended_at is not None:  # the final report after the end: the record gets it
            self._store(tracked)

    # --- the end of a call -------------------------------------------------------------------------
    def on_call_ended(self, call: Call) -> None:
        """The hub ended `call`: its summary line, its metrics, its score in the record."""
        tracked = self.live.pop(call.id, None) or _Tracked(call)
        tracked.call = call
        tracked.ended_at = self.clock()
        self.recent[call.id] = tracked
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        q = tracked.quality()
        duration = round(self.wall() - call.answered_at, 3) if call.answered_at is not None else None
        # A phone call's MOS is the bridge's (observed when its call_report comes, or came already)
        self.metrics.call_ended(call, duration, q.mos if q is not None and not call.phone and not tracked.observed
                                else None)
        tracked.observed = tracked.observed or (q is not None and not call.phone)
        by = call.ended_by
        hung_up_by = "server" if by is None else "caller" if by == call.caller else "callee" if by == call.callee \
            else "party"
        call_summary(log, call.id, kind=call_kind(call.kind),
                     outcome=call.end_reason.value if call.end_reason else "failed", sip_code=call.sip_code,
                     q850_cause=call.q850_cause, duration_s=duration, codec=tracked.codec,
                     mos=round(q.mos, 2) if q else None, r_factor=round(q.r_factor, 1) if q else None,
                     quality=q.word if q else None, hung_up_by=hung_up_by)
        if q is not None:
            self._store(tracked)

    def on_call_report(self, report: StoreReport) -> None:
        """A gateway's call_report: its score (both legs, both directions) is the call's."""
        if report.mos is None or report.r_factor is None:
            return
        tracked = self.recent.get(report.call_id) or self.live.get(report.call_id)
        q = Quality(report.r_factor, report.mos, word_for(report.r_factor), 0.0, 1.0, 0.0)
        if tracked is None:
            if self.call_log is not None:
                self.hub.queue_write(functools.partial(self.call_log.set_quality, report.call_id, q.mos, q.r_factor),
                                     report.call_id, "could not store the call's quality")
            return
        tracked.gateway = q
        if not tracked.observed:
            tracked.observed = True
            self.metrics.observe_mos(tracked.call.kind, q.mos)
        if tracked.ended_at is not None:
            self._store(tracked)

    def _store(self, tracked: _Tracked) -> None:
        q = tracked.quality()
        if q is None:
            return
        if not tracked.observed and tracked.ended_at is not None and (not tracked.call.phone or tracked.gateway):
            tracked.observed = True   # an app call's final report after the end (a phone call waits for the bridge)
            self.metrics.observe_mos(tracked.call.kind, q.mos)
        if self.call_log is not None:  # after the call's record, on the hub's writer (a failure is logged there)
            self.hub.queue_write(functools.partial(self.call_log.set_quality, tracked.call.id, q.mos, q.r_factor),
                                 tracked.call.id, "could not store the call's quality")


async def _quality_ctx(app: web.Application) -> AsyncIterator[None]:
    svc = CallQuality(app[HUB], app[CALL_LOG], app[METRICS])
    svc.register()
    yield


def setup_call_quality(app: web.Application) -> None:
    """Add quality reports and call summaries to a `create_app` app (after the hub's cleanup_ctx)."""
    app.cleanup_ctx.append(_quality_ctx)
