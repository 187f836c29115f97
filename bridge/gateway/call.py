"""`BridgeCall`: the asyncio shell of one phone call through the bridge, the app's WebRTC leg
joined to one SIP leg.

The worker (bridge/gateway/worker.py) creates one per call and feeds it:

    call = BridgeCall(call_id, "out", leg, send, settings, ice_servers, on_done)
    call.begin_outbound(to_e164, offer_sdp)     # app -> phone: answer SDP, then INVITE
    call.begin_inbound(from_e164, username)     # phone -> app: offer SDP to the user
    call.post(msg)                              # accept, ice, dtmf, call_ended, error, ...
    await call.shutdown()                       # the bridge ends it (worker stopping)

Every decision is made by the pure `BridgeCallCore` (call_core.py: the `BridgeStateMachine`,
the reason mapping, the deadlines). This shell owns what does I/O: the `MediaEndpoint`
(aiortc), the `SipLeg`, the audio glue (`PhoneToAppTrack`, `AppToPhoneSink`, through
`bridge.gateway.transcode`), the server connection (`send`) and one `loop.call_at` for the
core's next deadline. One task (the driver) takes the call's events in order (server messages,
leg events, WebRTC state changes, timer ticks, results of its own operations), hands each to
the core with `now` = the loop's clock, and carries out the commands that come back; at the
end `_close` sends `call_report`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bridge.net.webrtc import WebRtcLeg
from bridge.rtp.media import StandingDepth
from bridge.rtp.session import APP_LEG_FLOOR
from jego_call.call.reasons import EndReason
from jego_call.log import call_context
from jego_call.media.impair import ImpairmentSpec

from .call_core import (
    TRANSITIONS,
    AnswerApplied,
    AppAudio,
    BridgeCallCore,
    BridgeEvent,
    BridgeState,
    BridgeStateMachine,
    CallSettings,
    Command,
    Event,
    Finish,
    LegAnswer,
    LegDial,
    LegHangup,
    LegOpFailed,
    LegReject,
    LegSendDtmf,
    Log,
    MediaAcceptOffer,
    MediaAddIce,
    MediaCreateOffer,
    MediaFailed,
    MediaSetAnswer,
    OfferAnswered,
    OfferCreated,
    PhoneAudio,
    ServerMessage,
    Shutdown,
    StartInbound,
    StartOutbound,
    ToServer,
    WebRtcStateChanged,
    decline_for,
    sip_refusal,
)
from .legs import AppLeg, LegEnded, SipLeg
from .metrics import BridgeMetrics, call_quality, leg_counters, summarise

__all__ = ["TRANSITIONS", "AppLegFactory", "BridgeCall", "BridgeEvent", "BridgeState", "BridgeStateMachine",
           "CallSettings", "PhoneLink", "Send", "decline_for", "lean_app_leg", "sip_refusal"]

log = logging.getLogger("jego.bridge")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Clock = Callable[[], float]
Pcm = npt.NDArray[np.int16]


def loop_clock() -> float:
    """The running loop's clock (monotonic seconds): the one `loop.call_at` keeps."""
    return asyncio.get_running_loop().time()


# --- media glue: the app leg's AudioPort -----------------------------------------------------
class PhoneLink:
    """The app leg's ``AudioPort`` in a bridged call: once per 20 ms slot (on the media engine's
    clock, the same one the SIP leg ticks on) the app's decoded 8 kHz audio goes to the SIP leg
    (`SipLeg.send_audio`) and the SIP leg's next frame (`SipLeg.read_audio`) comes back.

    The hand-over is in the same slot both ways: after `send_audio`, `SipLeg.serve_media` (when
    the leg has it: PyVoipLeg) has the media engine tick the SIP leg's due slot there and then
    (bridge/net/media.py `MediaEngine.serve`), so the SIP leg sends this frame now, not 20 ms
    later, and its received frame of this slot is there for `read_audio`.

    A small playout buffer sits between the two legs' slots: it drains what the SIP leg has,
    starts (and restarts after running dry) once `prefill` frames wait, trims back to `prefill`
    above `max_frames`, and drains a standing backlog: when more than `prefill` frames have
    waited for `drain_after` slots in a row, the oldest is dropped (`drained`; `depth` is the
    bridge/rtp/media.py `StandingDepth` gauge). One in and one out per slot never shortens a
    backlog, so without that a late burst from the SIP leg (a load stall) would stay as
    latency for the rest of the call. Both legs tick in the same engine wake-up, so one frame
    is enough. `last_app` / `last_phone` are when (on `clock`) audio last came from each side,
    for the core's media deadlines.
    """

    def __init__(self, leg: SipLeg, clock: Clock = loop_clock, prefill: int = 1, max_frames: int = 4,
                 drain_after: int = 5) -> None:
        self.leg = leg
        self.clock = clock
        self.prefill = prefill
        self.max_frames = max_frames
        self._buf: collections.deque[bytes] = collections.deque()
        self._playing = False
        self.depth = StandingDepth(max(1, prefill), after=drain_after)
        self.sent = 0                     # frames given to the SIP leg
        self.received = 0                 # frames the SIP leg delivered
        self.underruns = 0
        self.trimmed = 0
        self.last_app: float | None = None
        self.last_phone: float | None = None
        serve = getattr(leg, "serve_media", None)
        self._serve: Callable[[], None] | None = serve if callable(serve) else None

    @property
    def drained(self) -> int:
        """Frames dropped by the standing drain (a backlog above `prefill` that stayed)."""
        return self.depth.drained

    def exchange(self, rx: Pcm, live: bool) -> Pcm | None:
        if live:
            self.last_app = self.clock()
            self.leg.send_audio(rx.tobytes())
            self.sent += 1
        if self._serve is not None:
            try:
                self._serve()  # the SIP leg's slot now: this frame goes out in it
            except Exception:  # a leg that has ended may raise; the frame then waits, as it did
                log.debug("serve_media failed", exc_info=True)
        buf = self._buf
        for _ in range(50):  # at most a second's worth per slot
            try:
                pcm = self.leg.read_audio()
            except Exception:  # a leg that has ended may raise; it has nothing more anyway
                break
            if pcm is None:
                break
            self.received += 1
            self.last_phone = self.clock()
            buf.append(pcm)
        if len(buf) > self.max_frames:
            while len(buf) > self.prefill:
                buf.popleft()
                self.trimmed += 1
        if self.depth.observe(len(buf)):
            buf.popleft()  # a standing backlog: one frame less of delay from now on
        if not self._playing:
            if len(buf) < self.prefill or not buf:
                return None
            self._playing = True
        if not buf:
            self._playing = False
            self.underruns += 1
            return None
        return np.frombuffer(buf.popleft(), dtype="<i2")


AppLegFactory = Callable[[PhoneLink, Callable[[str], None]], AppLeg]


def lean_app_leg(settings: CallSettings, ice_servers: list[dict[str, Any]], name: str) -> AppLegFactory:
    """The default app leg: bridge/net/webrtc.py `WebRtcLeg` (aiortc for SDP, ICE, DTLS keys;
    SRTP, RTP and Opus at 8 kHz on the shared media engine)."""

    impair = ImpairmentSpec.parse(settings.impair) if settings.impair else None

    def make(port: PhoneLink, on_state: Callable[[str], None]) -> AppLeg:
        codecs = ("opus", "PCMU", "PCMA") if settings.app_codec == "opus" else (settings.app_codec,)
        return WebRtcLeg(port, codecs=codecs, ice=ice_servers, opus_bitrate=settings.opus_bitrate,
                         opus_complexity=settings.opus_complexity, on_state=on_state, name=name, impair=impair,
                         ice_transport_policy=settings.ice_transport_policy, jitter_prefetch=APP_LEG_FLOOR,
                         jitter_speech=True)

    return make


@dataclass(frozen=True, slots=True)
class _Tick:
    """The loop timer fired for the core's deadline `at`."""

    at: float


# --- the call -------------------------------------------------------------------------------
class BridgeCall:
    """One bridged call. Start it with `begin_outbound` or `begin_inbound`, feed it the server's
    messages with `post`; `done` is set when both legs are closed and the report is sent."""

    def __init__(self, call_id: str, direction: str, leg: SipLeg, send: Send, settings: CallSettings,
                 ice_servers: list[dict[str, Any]] | None = None,
                 on_done: Callable[[BridgeCall], None] | None = None, clock: Clock = loop_clock,
                 app_leg: AppLegFactory | None = None, metrics: BridgeMetrics | None = None) -> None:
        self.core = BridgeCallCore(call_id, direction, settings)  # raises ValueError for a bad direction
        self.call_id = call_id
        self.direction = direction
        self.leg = leg
        self.send = send
        self.settings = settings
        self.on_done = on_done
        self.clock = clock
        self.link = PhoneLink(leg, clock=clock)
        make = app_leg or lean_app_leg(settings, ice_servers or [], f"bridge {call_id}")
        self.app: AppLeg = make(self.link, self._on_webrtc_state)
        self.leg_stats: dict[str, Any] = {}
        self.done = asyncio.Event()
        self._inbox: asyncio.Queue[Event | _Tick] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._driver: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tick_pending = False
        self._fed_app: float | None = None
        self._fed_phone: float | None = None
        self.metrics = metrics           # bridge/gateway/metrics.py: counted at the end and at scrapes
        if metrics is not None:
            metrics.call_started(call_id)

    # --- public -------------------------------------------------------------------------
    @property
    def sm(self) -> BridgeStateMachine:
        return self.core.sm

    @property
    def state(self) -> BridgeState:
        return self.core.state

    @property
    def connected_at(self) -> float | None:
        return self.core.connected_at

    @property
    def end_info(self) -> dict[str, Any]:
        return self.core.end_info

    def begin_outbound(self, to: str, offer_sdp: str, max_s: float | None = None,
                       max_reason: EndReason = EndReason.CREDIT_EXHAUSTED) -> None:
        """App -> phone: answer the app's offer (kept until 183/200), then INVITE `to` (E.164);
        a paid call (`max_s`) is ended by the bridge too if the server has not cut it in time."""
        self._inbox.put_nowait(StartOutbound(to, offer_sdp, max_s, max_reason))
        self._ensure_running()

    def begin_inbound(self, from_number: str, username: str) -> None:
        """Phone -> app: offer audio to `username` as a gateway `invite` from `from_number`."""
        self._inbox.put_nowait(StartInbound(from_number, username))
        self._ensure_running()

    def post(self, msg: dict[str, Any]) -> None:
        """Queue a server message for this call (handled in order); never blocks."""
        self._inbox.put_nowait(ServerMessage(msg))

    async def shutdown(self, cause: int = 41) -> None:
        """End the call from the bridge side (worker stopping, connection lost); returns when done."""
        if self.done.is_set():
            return
        self._inbox.put_nowait(Shutdown(cause))
        self._ensure_running()
        await self.done.wait()

    # --- the driver: events in order through the core ------------------------------------------
    def _ensure_running(self) -> None:
        if self._driver is None:
            self._driver = self._spawn(self._drive(), "driver")
            self._spawn(self._pump_leg(), "leg-events")

    async def _pump_leg(self) -> None:
        """The SIP leg's events, in order, up to its one LegEnded."""
        while True:
            ev = await self.leg.events.get()
            if isinstance(ev, LegEnded):
                self._snapshot_leg_stats()  # a leg may drop its counters once it has ended
            self._inbox.put_nowait(ev)
            if isinstance(ev, LegEnded):
                return

    def _on_webrtc_state(self, state: str) -> None:
        self._inbox.put_nowait(WebRtcStateChanged(state))

    async def _drive(self) -> None:
        while not self.core.finished:
            item = await self._inbox.get()
            try:
                await self._feed(item)
            except Exception:  # a bug must not leave the call hanging: log it, go on with the next event
                log.exception("failed on %s", item)

    async def _feed(self, item: Event | _Tick) -> None:
        """One event through the core; results of our own operations go straight back in."""
        pending: collections.deque[Event | _Tick] = collections.deque([item])
        while pending:
            ev = pending.popleft()
            now = self.clock()
            if isinstance(ev, _Tick):
                self._tick_pending = False
                cmds = [c for a in self._audio_seen() for c in self.core.handle(a, now)]
                cmds += self.core.handle_timer(max(ev.at, now))
            else:
                cmds = self.core.handle(ev, now)
            for cmd in cmds:
                result = await self._execute(cmd)
                if result is not None:
                    pending.append(result)
        self._arm()

    def _audio_seen(self) -> list[AppAudio | PhoneAudio]:
        """When audio last came from each side, for the core (only what changed since last time).
        The media deadlines are only due when these stamps are old, so the stamps travel with
        each timer tick rather than with every 20 ms frame."""
        out: list[AppAudio | PhoneAudio] = []
        app, phone = self.link.last_app, self.link.last_phone
        if app is not None and app != self._fed_app:
            self._fed_app = app
            out.append(AppAudio(app))
        if phone is not None and phone != self._fed_phone:
            self._fed_phone = phone
            out.append(PhoneAudio(phone))
        return out

    def _arm(self) -> None:
        """One loop timer, at the core's next deadline."""
        at = self.core.next_deadline()
        if self._timer is not None and self._timer_at != at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and at is not None and not self._tick_pending:
            self._timer = asyncio.get_running_loop().call_at(at, self._tick, at)
        self._timer_at = at

    def _tick(self, at: float) -> None:
        self._timer = None
        self._tick_pending = True
        self._inbox.put_nowait(_Tick(at))

    async def _execute(self, cmd: Command) -> Event | None:
        """Carry out one command; an operation's result (or failure) comes back as an event."""
        if isinstance(cmd, ToServer):
            try:
                await self.send(cmd.msg)
            except Exception as exc:  # the worker drops what it cannot send; never fail the call on it
                log.warning("sending %s failed: %s", cmd.msg.get("type"), exc)
        elif isinstance(cmd, Log):
            log.log(cmd.level, "%s", cmd.text)  # the call id comes from the task's log context
        elif isinstance(cmd, MediaAddIce):
            with contextlib.suppress(Exception):  # a bad candidate from the app is not fatal
                await self.app.add_ice_candidate(cmd.candidate)
        elif isinstance(cmd, MediaAcceptOffer):
            try:
                return OfferAnswered(await self.app.accept_offer(cmd.sdp))
            except Exception as exc:
                return MediaFailed("accept_offer", str(exc))
        elif isinstance(cmd, MediaCreateOffer):
            try:
                return OfferCreated(await self.app.create_offer())
            except Exception as exc:
                return MediaFailed("create_offer", str(exc))
        elif isinstance(cmd, MediaSetAnswer):
            try:
                await self.app.set_answer(cmd.sdp)
            except Exception as exc:
                return MediaFailed("set_answer", str(exc))
            return AnswerApplied()
        elif isinstance(cmd, LegSendDtmf):
            self._spawn(self.leg.send_dtmf(cmd.digits), "dtmf")  # 100 ms a digit: not in the driver
        elif isinstance(cmd, Finish):
            await self._close()
        else:
            return await self._leg_op(cmd)
        return None

    async def _leg_op(self, cmd: LegDial | LegAnswer | LegReject | LegHangup) -> Event | None:
        op = ""
        try:
            if isinstance(cmd, LegDial):
                op = "dial"
                await self.leg.dial(cmd.number)
            elif isinstance(cmd, LegAnswer):
                op = "answer"
                await self.leg.answer()
            elif isinstance(cmd, LegReject):
                op = "reject"
                await self.leg.reject(cmd.sip_code, cmd.q850_cause)
            else:
                op = "hangup"
                if cmd.reason is None:
                    await self.leg.hangup(cmd.q850_cause)
                else:
                    await self.leg.hangup(cmd.q850_cause, cmd.reason)
        except Exception as exc:
            return LegOpFailed(op, str(exc) or type(exc).__name__)
        return None

    # --- the end ----------------------------------------------------------------------------------
    async def _close(self) -> None:
        """Close the WebRTC leg, send call_report, stop our tasks. Runs once (the core's Finish)."""
        if self.done.is_set():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        app: dict[str, int] = {"packets_sent": 0, "packets_received": 0, "packets_lost": 0}
        codec = self.core.phone_codec or self.leg.codec
        st: dict[str, Any] = {}
        try:
            st = self.app.stats()
            app = {k: int(st.get(k) or 0) for k in ("packets_sent", "packets_received", "packets_lost",
                                                     "fec_recovered", "red_recovered", "concealed_frames")}
            app_codec = st.get("codec")
        except Exception:
            app_codec = None
        with contextlib.suppress(Exception):
            await self.app.close()
        link = self.link
        phone = {"packets_sent": link.sent, "packets_received": link.received, "packets_lost": 0}
        self._snapshot_leg_stats()
        got = self.leg_stats
        if got:  # the leg's RTP counters, when it keeps them (pyvoip_leg: tx/rx_packets)
            log.info("leg stats %s; app->phone frames %d; phone->app frames %d, %d underruns, %d trimmed, "
                     "%d drained, standing %d (peak %d)", got, link.sent, link.received, link.underruns,
                     link.trimmed, link.drained, link.depth.standing, link.depth.peak)
            for ours, theirs in (("packets_sent", "tx_packets"), ("packets_received", "rx_packets")):
                if theirs in got or ours in got:
                    phone[ours] = int(got.get(theirs, got.get(ours, 0)))
            lost = getattr(got.get("jitter"), "lost", None)
            if isinstance(lost, int):
                phone["packets_lost"] = lost
            for key in ("rtt_ms", "jitter_ms", "remote_loss"):  # the far end's RTCP reports (RFC 3550 §6.4)
                if isinstance(got.get(key), int):
                    phone[key] = got[key]
        # "PCMU" when G.711 went straight through to the app, "opus/PCMU" when transcoded
        report_codec = f"{app_codec}/{codec}" if app_codec and codec and app_codec != codec else codec
        quality = call_quality(st, got, app_codec, codec) if self.connected_at is not None else None
        report: dict[str, Any] = {"type": "call_report", "call_id": self.call_id, "codec": report_codec,
                                  "app": app, "phone": phone}
        if quality is not None:  # the E-model, both legs and both directions (jego_call/quality.py)
            report.update(mos=round(quality.mos, 2), r_factor=round(quality.r_factor, 1))
        with contextlib.suppress(Exception):
            await self.send(report)
        log.info("ended (%s); app %s phone %s; frames on time %.4f (max late %.1f ms); app leg %s",
                 self.end_info.get("reason"), app, phone, float(st.get("frames_on_time", 1.0)),
                 float(st.get("max_late_ms", 0.0)),
                 {k: st[k] for k in ("jitter_ms", "rtt_ms", "concealed_ms", "fec_sent_for_loss", "red_received", "srtp") if k in st})
        kind, outcome = summarise(self, st, got, report_codec, quality, self.clock())
        if self.metrics is not None:
            self.metrics.call_closed(self.call_id, kind, outcome, leg_counters(st, got, st.get("late_frames")),
                                     quality.mos if quality is not None else None)
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current and not t.done():
                t.cancel()
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)

    def _snapshot_leg_stats(self) -> None:
        """Keep the leg's latest counters (a leg may drop them when it ends)."""
        leg_stats = getattr(self.leg, "stats", None)
        if callable(leg_stats):
            with contextlib.suppress(Exception):
                got = leg_stats()
                if got:
                    self.leg_stats = dict(got)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        with call_context(call_id=self.call_id):  # every record of the call's tasks carries its id
            task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"bridge-call-{self.call_id}-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception(), extra={"call_id": self.call_id})
