"""`Conference`: the asyncio shell of one group call's audio conference on the bridge worker.

The worker (bridge/gateway/worker.py) makes one per group call on the first `conference_join`
and feeds it the server's messages; every decision is made by the pure `ConferenceCore`
(conference_core.py). This shell owns the legs and one 20 ms mixing clock:

    conf = Conference(call_id, trunk, send, settings, ice_servers, on_done)
    conf.post(event)          # conference_core events, in order, through one driver task
    await conf.close("hangup")

Each leg meets the mixer through the same narrow seam, `ConferenceLeg`: `read_frame()` gives
the next received 20 ms frame as 8 kHz int16 PCM (or None), `write_frame(pcm)` takes the frame
to send. `AppLeg` is a member's WebRTC leg (aiortc `MediaEndpoint`, Opus at 48 kHz, converted
with bridge/gateway/transcode.py); `PhoneLeg` is a `SipLeg` of the trunk (G.711 on the shared
RTP media engine of bridge/net). A leaner WebRTC leg (Opus at 8 kHz) plugs in as another
`ConferenceLeg`. Every 20 ms the clock reads one frame from each leg the core mixes, runs the
N-1 `Mixer` (bridge/rtp/mixer.py: only talkers summed, one shared mix for the silent, int32
headroom, limiter) and writes each leg its mix.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from av import AudioFrame

from bridge.rtp.mixer import Mixer
from jego_call.call.reasons import EndReason
from jego_call.log import call_context
from jego_call.media.endpoint import MediaEndpoint
from jego_call.media.tracks import PacedAudioTrack

from .call_core import CallSettings
from .conference_core import (
    AddIce,
    AnswerReady,
    AppFailed,
    Close,
    CloseAppLeg,
    Command,
    ConferenceCore,
    DialPhone,
    Event,
    Finish,
    HangupPhone,
    Log,
    OpenAppLeg,
    PhoneEvent,
    PhoneOpFailed,
    ReportPhone,
    ToServer,
)
from .legs import FRAME_SAMPLES, LegEnded, SipLeg, SipTrunk
from .transcode import AppToPhone, PhoneToApp

log = logging.getLogger("jego.conference")

Pcm = npt.NDArray[np.int16]
Send = Callable[[dict[str, Any]], Awaitable[None]]
PERIOD = 0.020
MAX_LATE_FRAMES = 5      # the clock skips ahead instead of bursting more than this
CLOSE_WAIT_S = 35.0      # after the close, how long phone legs may take to report LegEnded


class ConferenceLeg(Protocol):
    """One participant's audio as the mixer sees it: 20 ms frames of 8 kHz int16 PCM."""

    def read_frame(self) -> Pcm | None:
        """The next received frame, or None when nothing is due (silence)."""

    def write_frame(self, pcm: Pcm) -> None:
        """The frame this participant hears next."""


class Playout:
    """A small FIFO between a leg's own clock and the mixer's: starts after `prefill` frames,
    restarts after running dry, and trims back to `prefill` above `max_frames` (no lasting delay)."""

    def __init__(self, prefill: int = 2, max_frames: int = 6) -> None:
        self.prefill = prefill
        self.max_frames = max_frames
        self.buf: collections.deque[Pcm] = collections.deque()
        self.playing = False
        self.underruns = 0
        self.trimmed = 0

    def push(self, pcm: Pcm) -> None:
        self.buf.append(pcm)
        if len(self.buf) > self.max_frames:
            while len(self.buf) > self.prefill:
                self.buf.popleft()
                self.trimmed += 1

    def pop(self) -> Pcm | None:
        if not self.playing and len(self.buf) >= self.prefill:
            self.playing = True
        if not self.playing:
            return None
        if not self.buf:
            self.playing = False
            self.underruns += 1
            return None
        return self.buf.popleft()


class _MixTrack(PacedAudioTrack):
    """An app leg's outgoing audio: the frames the mixer wrote, up-sampled, paced on the absolute clock."""

    def __init__(self, rate: int) -> None:
        super().__init__(rate)
        self.conv = PhoneToApp(rate)
        self.out = Playout(prefill=2, max_frames=6)

    def _samples(self, n: int) -> Any:
        pcm = self.out.pop()
        return self.conv.samples(pcm.tobytes() if pcm is not None else None)


class _MixSink:
    """An app leg's incoming audio: 8 kHz frames for the mixer."""

    def __init__(self) -> None:
        self.conv = AppToPhone()
        self.inbound = Playout(prefill=2, max_frames=6)
        self.frames = 0

    def handle(self, frame: Any) -> None:
        if not isinstance(frame, AudioFrame):
            return
        for pcm in self.conv.push(frame):
            self.frames += 1
            self.inbound.push(np.frombuffer(pcm, dtype=np.int16))

    def close(self) -> None:
        pass


class AppLeg:
    """A member's WebRTC audio leg to the conference (aiortc)."""

    def __init__(self, leg: str, settings: CallSettings, ice_servers: list[dict[str, Any]]) -> None:
        self.leg = leg
        self.track = _MixTrack(settings.app_rate)
        self.sink = _MixSink()
        self.ep = MediaEndpoint(source=self.track, sinks=[self.sink], ice_servers=ice_servers,
                                codecs=settings.app_codecs, opus_bitrate=settings.opus_bitrate,
                                name=f"conference {leg}")

    def read_frame(self) -> Pcm | None:
        return self.sink.inbound.pop()

    def write_frame(self, pcm: Pcm) -> None:
        self.track.out.push(pcm)

    async def close(self) -> None:
        await self.ep.close()


class PhoneLeg:
    """A phone participant: a `SipLeg` (bytes of PCM16 at 8 kHz, 20 ms frames)."""

    def __init__(self, sip: SipLeg) -> None:
        self.sip = sip
        self.inbound = Playout(prefill=2, max_frames=6)
        self.sent = 0
        self.received = 0

    def read_frame(self) -> Pcm | None:
        for _ in range(50):
            try:
                data = self.sip.read_audio()
            except Exception:  # an ended leg may raise; it has nothing more
                break
            if data is None:
                break
            self.received += 1
            self.inbound.push(np.frombuffer(data, dtype=np.int16))
        return self.inbound.pop()

    def write_frame(self, pcm: Pcm) -> None:
        self.sip.send_audio(pcm.tobytes())
        self.sent += 1


@dataclass
class MixStats:
    """What the clock did: frames mixed, slots skipped after a stall, legs mixed per frame."""

    frames: int = 0
    skipped: int = 0
    leg_frames: int = 0
    talkers: collections.Counter[int] = field(default_factory=collections.Counter)


class Conference:
    """One group call's conference: legs, the core, the 20 ms mixing clock. See the module doc."""

    def __init__(self, call_id: str, trunk: SipTrunk, send: Send, settings: CallSettings,
                 ice_servers: list[dict[str, Any]] | None = None,
                 on_done: Callable[[Conference], None] | None = None) -> None:
        self.call_id = call_id
        self.core = ConferenceCore(call_id)
        self.trunk = trunk
        self.send = send
        self.settings = settings
        self.ice_servers = ice_servers or []
        self.on_done = on_done
        self.apps: dict[str, AppLeg] = {}
        self.phones: dict[str, PhoneLeg] = {}
        self.mixer = Mixer(FRAME_SAMPLES)
        self.stats = MixStats()
        self.done = asyncio.Event()
        self._inbox: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._driver: asyncio.Task[None] | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._n = 0
        self._close_timer: asyncio.TimerHandle | None = None

    # --- public ---------------------------------------------------------------------------
    def post(self, ev: Event) -> None:
        """Queue one event for the core (handled in order); never blocks."""
        self._inbox.put_nowait(ev)
        if self._driver is None:
            self._driver = self._spawn(self._drive(), "driver")

    def owns(self, leg: str) -> bool:
        return self.core.owns(leg) or leg in self.phones

    # --- the driver -----------------------------------------------------------------------
    async def _drive(self) -> None:
        while not self.core.finished:
            ev = await self._inbox.get()
            try:
                pending: collections.deque[Event] = collections.deque([ev])
                while pending:
                    for cmd in self.core.handle(pending.popleft()):
                        result = await self._execute(cmd)
                        if result is not None:
                            pending.append(result)
                self._run_clock()
            except Exception:  # a bug must not leave the conference hanging
                log.exception("conference %s failed on %s", self.call_id, ev)
        await self._finish()

    async def _execute(self, cmd: Command) -> Event | None:
        if isinstance(cmd, ToServer):
            try:
                await self.send(cmd.msg)
            except Exception as exc:
                log.warning("sending %s failed: %s", cmd.msg.get("type"), exc)
        elif isinstance(cmd, Log):
            log.log(cmd.level, "%s", cmd.text)
        elif isinstance(cmd, OpenAppLeg):
            leg = AppLeg(cmd.leg, self.settings, self.ice_servers)
            self.apps[cmd.leg] = leg

            def on_state(name: str = cmd.leg, ep: MediaEndpoint = leg.ep) -> None:
                if ep.state == "failed":
                    self.post(AppFailed(name, "the WebRTC connection failed"))

            leg.ep.pc.on("connectionstatechange", on_state)
            try:
                return AnswerReady(cmd.leg, await leg.ep.accept_offer(cmd.sdp))
            except Exception as exc:
                return AppFailed(cmd.leg, str(exc) or type(exc).__name__)
        elif isinstance(cmd, AddIce):
            leg_ = self.apps.get(cmd.leg)
            if leg_ is not None:
                with contextlib.suppress(Exception):
                    await leg_.ep.add_ice_candidate(cmd.candidate)
        elif isinstance(cmd, CloseAppLeg):
            app = self.apps.pop(cmd.leg, None)
            if app is not None:
                self._spawn(app.close(), f"close-{cmd.leg}")
        elif isinstance(cmd, DialPhone):
            sip = self.trunk.new_leg(cmd.leg)
            self.phones[cmd.leg] = PhoneLeg(sip)
            self._spawn(self._pump(cmd.leg, sip), f"leg-{cmd.leg}")
            try:
                await sip.dial(cmd.number)
            except Exception as exc:
                return PhoneOpFailed(cmd.leg, "dial", str(exc) or type(exc).__name__)
        elif isinstance(cmd, HangupPhone):
            ph = self.phones.get(cmd.leg)
            if ph is not None:
                self._spawn(self._hangup(ph.sip, cmd.cause), f"hangup-{cmd.leg}")
        elif isinstance(cmd, ReportPhone):
            ph = self.phones.pop(cmd.leg, None)
            if ph is not None:
                codec = ph.sip.codec
                with contextlib.suppress(Exception):
                    await self.send({"type": "call_report", "call_id": cmd.leg, "codec": codec,
                                     "app": {"packets_sent": 0, "packets_received": 0, "packets_lost": 0},
                                     "phone": {"packets_sent": ph.sent, "packets_received": ph.received,
                                               "packets_lost": 0}})
        elif isinstance(cmd, Finish):
            pass  # the driver loop ends and _finish runs
        if self.core.closing and self._close_timer is None and not self.core.finished:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_WAIT_S, self._give_up)
        return None

    async def _hangup(self, sip: SipLeg, cause: int) -> None:
        with contextlib.suppress(Exception):
            await sip.hangup(cause)

    async def _pump(self, leg: str, sip: SipLeg) -> None:
        """The phone leg's events, in order, up to its one LegEnded."""
        while True:
            ev = await sip.events.get()
            self.post(PhoneEvent(leg, ev))
            if isinstance(ev, LegEnded):
                return

    def _give_up(self) -> None:
        """Phone legs that never reported their end: count them ended (their SIP side is gone)."""
        for leg in list(self.core.phones):
            self.post(PhoneEvent(leg, LegEnded(EndReason.FAILED, remote=False, detail="no end reported")))

    # --- the mixing clock -------------------------------------------------------------------
    def _run_clock(self) -> None:
        """Keep the 20 ms clock running while any leg is mixed (absolute: t0 + n * 20 ms)."""
        legs, _muted = self.core.mixing()
        if legs and self._clock is None and not self.core.finished:
            loop = asyncio.get_running_loop()
            self._t0, self._n = loop.time(), 0
            self._clock = loop.call_at(self._t0, self._tick)

    def _tick(self) -> None:
        self._clock = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        legs, muted = self.core.mixing()
        if not legs or self.core.finished:
            return
        due = self._t0 + self._n * PERIOD
        if now - due > MAX_LATE_FRAMES * PERIOD:   # a stall: skip the lost slots rather than burst them
            skip = int((now - due) / PERIOD)
            self._n += skip
            self.stats.skipped += skip
        while self._t0 + self._n * PERIOD <= now + 0.001:
            self._mix_once(legs, muted)
            self._n += 1
        self._clock = loop.call_at(self._t0 + self._n * PERIOD, self._tick)

    def _mix_once(self, legs: list[str], muted: set[str]) -> None:
        seams: dict[str, ConferenceLeg] = {}
        for name in legs:
            leg: ConferenceLeg | None = self.apps.get(name) or self.phones.get(name)
            if leg is not None:
                seams[name] = leg
        frames = {name: leg.read_frame() for name, leg in seams.items()}
        result = self.mixer.mix(frames, muted)
        for name, leg in seams.items():
            leg.write_frame(result.for_participant(name))
        self.stats.frames += 1
        self.stats.leg_frames += len(seams)
        self.stats.talkers[len(result.talkers)] += 1

    # --- the end ------------------------------------------------------------------------------
    async def close(self, reason: str = "shutdown") -> None:
        """End every leg (the worker stopping); returns when the conference is done."""
        if self.done.is_set():
            return
        self.post(Close(reason))
        await self.done.wait()

    async def _finish(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        if self._close_timer is not None:
            self._close_timer.cancel()
        for app in list(self.apps.values()):
            with contextlib.suppress(Exception):
                await app.close()
        self.apps.clear()
        log.info("conference %s ended: %d frames mixed, %d skipped", self.call_id, self.stats.frames,
                 self.stats.skipped)
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current and not t.done():
                t.cancel()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        with call_context(call_id=self.call_id):
            task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"conference-{self.call_id}-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
