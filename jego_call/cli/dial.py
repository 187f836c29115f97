"""`jego dial`: a command-line test phone. `jego dial call TARGET` places a call through a Jego
Call server; `jego dial answer` waits for calls. Both send audio from --play (a file or
tone:FREQ[:DBFS[:SECONDS]]; --echo on answer), record with --record, print progress on stderr
(dialing -> ringing -> connected -> one line a second -> ended) unless --quiet, and with --json
print one JSON object per call on stdout.

TARGET is a username, or a phone number (+86..., 0086..., a national number with its leading 0,
or an 11-digit mobile); phone numbers go to the server as `to` unchanged apart from spaces and
dashes, and the server routes them.

Exit codes of `jego dial call`:
    0  answered                      3  busy or declined
    4  no answer or unavailable      5  invalid number (or unknown user)
    1  any other failure (failed, unreachable, cancelled, wrong password, server down)
    2  usage error (bad option, missing --play file, no --user)
`jego dial answer` exits 0 after --count calls or on SIGINT/SIGTERM, 1 on failure, 2 on usage.

`jego dial group GROUP_ID` takes part in a group call (docs/signalling.md, ## Group calls): it
starts the group's call, or joins the one that is running (with --answer: waits to be rung),
sends --play, records the conference's mix with --record, and can --add-phone a number,
--mute-at / --unmute-at seconds after joining, and leaves after --duration. Exit codes: 0 joined,
4 not rung (--answer) or the call could not be joined in time, 1 other failures, 2 usage.

JSON fields: outcome, reason, sip_code, q850_cause, setup_ms (dial -> media connected),
ringing_ms (dial -> first ringing), connected_s, audio {packets_sent, packets_received,
packets_lost, jitter_ms, rtt_ms, level_dbfs, dominant_hz, bitrate_send_kbps, bitrate_recv_kbps,
frames_on_time, codec}, call_id, cpu_s (this process's CPU while connected), mos and r_factor
(the ITU-T G.107 E-model of what this end received: jego_call/quality.py; null when no audio came)
with quality (good / fair / poor), detail and detail_zh (the words of a refusal, e.g.
insufficient_credit), credit_low (a paid phone call's warning: remaining_s, ends_at, balance,
..., at_s after the answer), added_latency_ms and latency (with --latency, below), and more.

--latency (jego dial call, to an echo: the carrier's numbers that answer and echo, or a
`jego dial answer --echo`) sends a click (an 8 ms chirp, jego_call/media/analysis.py) every
second instead of --play and finds each one in what comes back by cross-correlation. Each
click's round trip runs from the instant its 20 ms frame left this dialer's media clock to the
instant the frame holding its echo was handed to this dialer by its receiver (after its receive
buffer and decoder), so it includes this dialer's own send and receive path.
`latency` is {round_trip_ms (median over the clicks found), round_trip_min_ms, round_trip_max_ms,
echo_delay_ms (what the echo itself takes: CARRIER_ECHO_DELAY_MS = 50 for the simulated
carrier, or --echo-delay-ms), one_way_ms = (round_trip_ms - echo_delay_ms) / 2, clicks_sent,
clicks_found}; added_latency_ms is one_way_ms: an estimate, per direction, of what the path
between this dialer and the echo adds (for a phone number: the bridge, plus half of this
dialer's own send and receive path). Both are null without --latency or when no click came
back (not an echo). scripts/bench_latency.py measures each direction of the bridge alone. While connected it sends the server `call_stats` every
2 s (and a final one), so the call record gets its score (docs/signalling.md, Call quality).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..call.reasons import EndReason, from_sip
from ..client import ApiError, ConnectionLost, JegoClient, ServerUnreachable, new_call_id
from ..config import load_config
from ..errors import ConfigError
from ..media import analysis
from ..media.endpoint import MediaEndpoint, MediaError, enable_loopback_candidates
from ..media.impair import ImpairmentSpec
from ..media.sinks import Analyser, Sink, VideoFrameCounter, WavRecorder, _MonoAudio
from ..media.tracks import EchoTrack, PacedAudioTrack, TestPatternVideo, source_from_spec
from ..quality import estimate, webrtc_receive

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_NO_ANSWER, EXIT_INVALID = 0, 1, 2, 3, 4, 5
OUTCOME_EXIT = {
    "answered": EXIT_OK, "busy": EXIT_BUSY, "declined": EXIT_BUSY, "no_answer": EXIT_NO_ANSWER,
    "unavailable": EXIT_NO_ANSWER, "invalid_number": EXIT_INVALID,
}
ERROR_OUTCOME = {"unknown_user": "invalid_number", "invalid_number": "invalid_number"}
STATS_EVERY_S = 2                # send call_stats every this many seconds while connected
LATENCY_PERIOD_S = 1.0           # --latency: one click a second (a round trip must be shorter)
LATENCY_FIRST_S = 0.5            # ... the first half a second after the answer
# The simulated carrier's echo: the mean delay of its own receive buffer (it echoes a frame in the
# slot it plays it out), scripts/bench_latency.py "receivers_alone" carrier_rx_ms (3 frames of
# prefetch: 40 ms plus the arrival phase, 0-20 ms). --echo-delay-ms changes it.
CARRIER_ECHO_DELAY_MS = 50.0
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{2,31}$")
SETUP_ERRORS = {"unknown_user", "invalid_number", "self_call", "already_in_call", "call_exists",
                "invalid_message", "rate_limited", "not_authenticated", "unsupported_media", "internal"}


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit 2."""


class Failure(Exception):
    """A failure before any call could be made (login, server): one line on stderr, exit 1."""


def classify_target(target: str) -> tuple[str, str]:
    """Return ("phone" | "user", the `to` to send); raise UsageError for neither."""
    t = target.strip()
    compact = re.sub(r"[ ()\-.]", "", t)
    if t.startswith("+") or compact.startswith("00") or (compact.isdigit() and len(compact) >= 5):
        return "phone", compact  # the server judges whether it is a valid number
    if USERNAME_RE.match(t.lower()):
        return "user", t.lower()
    raise UsageError(f"not a username or phone number: {target!r}")


def outcome_for(reason: str | None, sip_code: int | None, q850: int | None, answered: bool) -> str:
    """Map a call_ended (reason, sip_code, q850_cause) to the dialer's outcome word: the end
    reason's `outcome` (jego_call.call.reasons), or for an unknown reason that of the SIP code."""
    if answered:
        return "answered"
    try:
        end = EndReason(reason or "")
    except ValueError:
        end = from_sip(sip_code, q850) if sip_code else EndReason.FAILED
    return end.outcome if end.outcome != "answered" else "failed"


@dataclass
class Report:
    """What `--json` prints for one call."""

    call_id: str
    role: str
    peer: str
    target_kind: str = "user"
    outcome: str = "failed"
    reason: str | None = None
    by: str | None = None
    detail: str | None = None
    detail_zh: str | None = None
    credit_low: dict[str, Any] | None = None
    sip_code: int | None = None
    q850_cause: int | None = None
    setup_ms: float | None = None
    early_media_ms: float | None = None
    ringing_ms: float | None = None
    connected_s: float = 0.0
    cpu_s: float | None = None
    codec: str | None = None
    dtmf_sent: str | None = None
    dtmf_received: str = ""
    record: str | None = None
    mos: float | None = None
    r_factor: float | None = None
    quality: str | None = None
    audio: dict[str, Any] = field(default_factory=dict)
    video: dict[str, Any] | None = None
    added_latency_ms: float | None = None
    latency: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if d["video"] is None:
            del d["video"]
        return d


class Output:
    """Progress lines on stderr (silenced by --quiet) and JSON on stdout."""

    def __init__(self, quiet: bool, as_json: bool) -> None:
        self.quiet = quiet
        self.as_json = as_json

    def progress(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def result(self, report: Report) -> None:
        if self.as_json:
            print(json.dumps(report.to_json(), separators=(", ", ": ")), flush=True)


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000, 1)


class Leg:
    """Runs one call from invite/accept to call_ended: media, ticks, DTMF, hang-up timer."""

    def __init__(self, args: argparse.Namespace, client: JegoClient, ep: MediaEndpoint, report: Report,
                 analyser: Analyser, video_counter: VideoFrameCounter | None, out: Output,
                 stop: asyncio.Event, t_dial: float) -> None:
        self.args, self.client, self.ep, self.report = args, client, ep, report
        self.analyser, self.video_counter, self.out, self.stop = analyser, video_counter, out, stop
        self.t_dial = t_dial
        self.accepted = False
        self.connected_at: float | None = None
        self.cpu_at_connect = 0.0
        self.connect_task: asyncio.Task[None] | None = None
        self.ending_sent = False
        self.end_deadline: float | None = None
        self.local_end: tuple[str, str | None] | None = None  # (reason, detail) decided here
        self.seconds: list[tuple[float, float]] = []  # per-second (level, dominant) of received audio
        self.last_stats: dict[str, Any] = {}
        self.next_tick: float | None = None
        self.early_answer = False   # the answer SDP came with `ringing` (phone early media)
        self.media_ready = False    # media connected before the call was answered
        self.hangup_at: float | None = None
        self.ticks = 0
        self.quality_word: str | None = None   # the server's live call_quality word

    def _start_duration(self) -> None:
        if self.args.duration is not None:
            self.hangup_at = time.monotonic() + self.args.duration

    @property
    def call_id(self) -> str:
        return self.report.call_id

    def start_media(self) -> None:
        self.connect_task = asyncio.ensure_future(self.ep.wait_connected(15.0))

    async def _end(self, kind: str, reason: str, detail: str | None = None) -> None:
        """Send hangup/cancel once; wait up to 3 s for the server's call_ended."""
        if self.ending_sent:
            return
        self.ending_sent = True
        self.local_end = (reason, detail)
        self.end_deadline = time.monotonic() + 3.0
        with contextlib.suppress(ConnectionLost):
            if kind == "hangup":
                await self.client.hangup(self.call_id)
            elif kind == "cancel":
                await self.client.cancel(self.call_id)
            else:
                await self.client.decline(self.call_id, kind)

    async def _on_connected(self) -> None:
        now = time.monotonic()
        self.connected_at = now
        self.cpu_at_connect = time.process_time()
        self.report.setup_ms = _ms(self.t_dial, now)
        self.report.codec = self.ep.negotiated_codec()
        with contextlib.suppress(Exception):
            await self.ep.stats()  # so the first tick has a rate
        if isinstance(self.ep.source, HeldSource):
            self.ep.source.release()
        self.out.progress(f"connected (setup {self.report.setup_ms:.0f} ms, {self.report.codec})")
        if self.args.dtmf:
            await self.client.dtmf(self.call_id, self.args.dtmf)
            self.report.dtmf_sent = self.args.dtmf
            self.out.progress(f"dtmf sent: {self.args.dtmf}")
        self.next_tick = now + 1.0

    async def _tick(self) -> None:
        assert self.connected_at is not None
        st = await self.ep.stats()
        self.last_stats = st
        level, hz = self.analyser.level_dbfs, self.analyser.dominant_hz
        self.seconds.append((level, hz))
        lost, got = st.get("packets_lost", 0), st.get("packets_received", 0)
        loss = 100.0 * lost / (lost + got) if lost + got else 0.0
        rtt = st.get("rtt_ms")
        line = (f"  {time.monotonic() - self.connected_at:4.0f}s  level {level:6.1f} dBFS  {hz:6.0f} Hz  "
                f"tx {st.get('bitrate_send_kbps') or 0:5.1f} kb/s  rx {st.get('bitrate_recv_kbps') or 0:5.1f} kb/s  "
                f"loss {loss:4.1f}%  rtt {'-' if rtt is None else f'{rtt:.0f} ms'}")
        if self.video_counter is not None:
            line += f"  video {self.video_counter.frames} frames"
        if self.quality_word:
            line += f"  quality {self.quality_word}"
        self.out.progress(line)
        self.ticks += 1
        if self.ticks % STATS_EVERY_S == 0:
            await self._send_stats(st)

    async def _send_stats(self, st: dict[str, Any], final: bool = False) -> None:
        """`call_stats`: what our receiver counted so far (the server scores it; Call quality)."""
        msg: dict[str, Any] = {"type": "call_stats", "call_id": self.call_id,
                               "packets_received": int(st.get("packets_received") or 0),
                               "packets_lost": max(0, int(st.get("packets_lost") or 0))}
        if st.get("codec"):
            msg["codec"] = str(st["codec"])[:16]
        for key in ("jitter_ms", "rtt_ms"):
            v = st.get(key)
            if isinstance(v, int | float) and 0 <= v <= 60_000:
                msg[key] = float(v)
        if final:
            msg["final"] = True
        with contextlib.suppress(ConnectionLost):
            await self.client.send(msg)

    async def run(self, ring_deadline: float | None = None, offer_sdp: str | None = None,
                  accept_at: float | None = None) -> None:
        """Drive the call until it has ended; fills `self.report`."""
        hangup_at: float | None = None
        ended: dict[str, Any] | None = None
        while ended is None:
            now = time.monotonic()
            if self.end_deadline is not None and now >= self.end_deadline:
                break  # the server never confirmed: report what we decided
            if self.stop.is_set() and not self.ending_sent:
                if self.accepted or self.connected_at is not None:
                    await self._end("hangup", "hangup")
                elif self.report.role == "caller":
                    await self._end("cancel", "cancelled")
                else:
                    await self._end("declined", "declined")
            if accept_at is not None and now >= accept_at and offer_sdp is not None and not self.ending_sent:
                offer, offer_sdp = offer_sdp, None
                try:
                    answer = await self.ep.accept_offer(offer)
                except MediaError as exc:
                    await self._end("declined", "failed", str(exc))
                else:
                    await self.client.accept(self.call_id, answer)
                    self.accepted = True
                    self.start_media()
            if ring_deadline is not None and now >= ring_deadline and not self.accepted and not self.ending_sent:
                await self._end("cancel", "no_answer", "ring timeout")
            if self.connect_task is not None and self.connect_task.done():
                task, self.connect_task = self.connect_task, None
                err = task.exception()
                if err is not None:
                    await self._end("hangup" if self.accepted else "cancel", "failed", f"media: {err}")
                elif not self.accepted:
                    self.media_ready = True  # early media flows; connected once `accept` comes
                else:
                    await self._on_connected()
                    self._start_duration()
            if self.hangup_at is not None and hangup_at is None:
                hangup_at = self.hangup_at
            if self.next_tick is not None and now >= self.next_tick and not self.ending_sent:
                self.next_tick += 1.0
                await self._tick()
            if hangup_at is not None and now >= hangup_at and not self.ending_sent:
                await self._end("hangup", "hangup")
            # wait for the next message or the next timer
            wake = [t for t in (self.next_tick, hangup_at, ring_deadline, accept_at, self.end_deadline)
                    if t is not None and t > now]
            timeout = min([0.1, *[t - now for t in wake]]) if self.connect_task is not None else \
                min([0.5, *[t - now for t in wake]])
            try:
                msg = await self.client.recv(max(0.005, timeout))
            except ConnectionLost:
                self.local_end = self.local_end or ("connection_lost", "signalling connection lost")
                break
            if msg is None or msg.get("call_id") not in (None, self.call_id):
                if msg is not None and msg.get("type") == "invite":  # a second call while busy
                    with contextlib.suppress(ConnectionLost):
                        await self.client.decline(str(msg["call_id"]), "busy")
                continue
            ended = await self._handle(msg)
        await self._finish(ended)

    async def _handle(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        kind = msg.get("type")
        if kind == "ringing":
            if self.report.ringing_ms is None:
                self.report.ringing_ms = _ms(self.t_dial, time.monotonic())
                self.out.progress(f"ringing ({self.report.ringing_ms:.0f} ms)")
            if msg.get("sdp") and self.report.role == "caller" and not self.early_answer and not self.accepted:
                # a phone call's early media (ringback, announcements): the answer comes now
                self.early_answer = True
                self.report.early_media_ms = _ms(self.t_dial, time.monotonic())
                try:
                    await self.ep.set_answer(str(msg["sdp"]))
                except MediaError as exc:
                    await self._end("cancel", "failed", str(exc))
                else:
                    self.out.progress("early media")
                    self.start_media()
        elif kind == "accept" and self.report.role == "caller" and not self.accepted:
            self.accepted = True
            if self.early_answer:  # accept without sdp: the early-media answer stands
                if self.media_ready:
                    await self._on_connected()
                    self._start_duration()
            else:
                try:
                    await self.ep.set_answer(str(msg.get("sdp", "")))
                except MediaError as exc:
                    await self._end("hangup", "failed", str(exc))
                else:
                    self.start_media()
        elif kind == "call_state" and msg.get("state") == "connected":
            self.accepted = True
        elif kind == "ice":
            with contextlib.suppress(MediaError):
                await self.ep.add_ice_candidate(msg.get("candidate"))
        elif kind == "dtmf":
            digits = str(msg.get("digits", ""))
            self.report.dtmf_received += digits
            self.out.progress(f"dtmf received: {digits}")
        elif kind == "credit_low":
            at = round(time.monotonic() - self.connected_at, 3) if self.connected_at is not None else None
            self.report.credit_low = {k: v for k, v in msg.items() if k not in ("type", "call_id")} | {"at_s": at}
            self.out.progress(f"credit low: the call ends in {msg.get('remaining_s')} s")
        elif kind == "call_ended":
            return msg
        elif kind == "call_quality":
            self.quality_word = str(msg.get("quality") or "") or None
        elif kind == "error":
            code = str(msg.get("code"))
            if not self.accepted and code in SETUP_ERRORS:
                return {"type": "call_ended", "reason": code, "outcome": ERROR_OUTCOME.get(code, "failed"),
                        "detail": f"{code}: {msg.get('message', '')}"}
            self.out.progress(f"server error: {code}: {msg.get('message', '')}")
        return None

    async def _finish(self, ended: dict[str, Any] | None) -> None:
        r = self.report
        now = time.monotonic()
        if self.connected_at is not None:
            r.connected_s = round(now - self.connected_at, 3)
            r.cpu_s = round(time.process_time() - self.cpu_at_connect, 3)
            with contextlib.suppress(Exception):
                self.last_stats = await self.ep.stats()
        if ended is not None:
            r.reason = str(ended.get("reason") or "failed")
            r.by = ended.get("by")
            r.detail = ended.get("detail")
            r.detail_zh = ended.get("detail_zh")
            r.sip_code = ended.get("sip_code")
            r.q850_cause = ended.get("q850_cause")
        if self.local_end is not None and (ended is None or r.reason in ("cancelled", "hangup", "declined")):
            # our own decision explains the end better (e.g. ring timeout sent as cancel)
            if ended is None or self.local_end[0] not in ("hangup",):
                r.reason = self.local_end[0]
                r.detail = r.detail or self.local_end[1]
        r.outcome = outcome_for(r.reason, r.sip_code, r.q850_cause,
                                self.accepted and self.connected_at is not None)
        if ended is not None and ended.get("outcome"):
            r.outcome = str(ended["outcome"])  # a setup error the server sent instead of call_ended
        if self.accepted and self.connected_at is None and r.reason == "hangup":
            r.outcome = "answered"  # answered, but hung up before media came up
        st = self.last_stats
        active = [s for s in self.seconds if s[0] > -60.0]
        r.audio = {
            "codec": st.get("codec"),
            "packets_sent": st.get("packets_sent", 0), "packets_received": st.get("packets_received", 0),
            "packets_lost": st.get("packets_lost", 0), "jitter_ms": st.get("jitter_ms"),
            "rtt_ms": st.get("rtt_ms"),
            "level_dbfs": round(statistics.median(s[0] for s in active), 2) if active else None,
            "dominant_hz": round(statistics.median(s[1] for s in active), 1) if active else None,
            "received_s": round(self.analyser.received_s, 3),
            "payload_send_kbps": round(st.get("bytes_sent", 0) * 8 / r.connected_s / 1000, 1) if r.connected_s else None,
            "bitrate_send_kbps": round(st.get("wire_bytes_sent", 0) * 8 / r.connected_s / 1000, 1) if r.connected_s else None,
            "bitrate_recv_kbps": round(st.get("wire_bytes_received", 0) * 8 / r.connected_s / 1000, 1) if r.connected_s else None,
            "frames_on_time": st.get("frames_on_time"),
        }
        if st.get("impairment"):
            r.audio["impairment"] = st["impairment"]
        if st.get("loss"):  # lost frames rebuilt from Opus FEC, concealed, lost (media/receive.py)
            r.audio["loss"] = st["loss"]
        if self.connected_at is not None and int(st.get("packets_received") or 0) > 0:
            q = estimate([webrtc_receive(st, st.get("codec"))])   # G.107: what we heard
            r.mos, r.r_factor, r.quality = round(q.mos, 2), round(q.r_factor, 1), q.word
            await self._send_stats(st, final=True)
        if self.video_counter is not None:
            v = st.get("video", {})
            r.video = {"frames_received": self.video_counter.frames, "packets_sent": v.get("packets_sent", 0),
                       "packets_received": v.get("packets_received", 0)}
        text = f"ended: {r.outcome}"
        if r.reason and r.reason != r.outcome:
            text += f" ({r.reason}{' by ' + r.by if r.by else ''})"
        if r.sip_code or r.q850_cause:
            text += f" sip {r.sip_code} q850 {r.q850_cause}"
        if r.detail:
            text += f": {r.detail}"
        if self.connected_at is not None:
            text += f" after {r.connected_s:.1f} s"
        self.out.progress(text)


class HeldSource(PacedAudioTrack):
    """Silence until `release()`, then `inner`'s audio from its start: a caller's --play begins
    when the call is answered, not during a phone call's early media (ringback, announcements)."""

    def __init__(self, inner: PacedAudioTrack) -> None:
        super().__init__(inner.rate)
        self.inner = inner
        self.released = False
        self._k = 0

    def release(self) -> None:
        self.released = True

    def _samples(self, n: int) -> Any:
        if not self.released:
            return super()._samples(n)
        k, self._k = self._k, self._k + 1
        return self.inner._samples(k)

    def stop(self) -> None:
        self.inner.stop()
        super().stop()


class ClickSource(PacedAudioTrack):
    """--latency: a click every LATENCY_PERIOD_S from LATENCY_FIRST_S on, silence between; `sent`
    holds the monotonic instant each click's first sample left (its frame's slot)."""

    def __init__(self, rate: int = 48000, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rate)
        self.clock = clock
        self.click = np.asarray(np.round(analysis.click(rate) * 32767), dtype=np.int16)
        self.period = int(round(LATENCY_PERIOD_S * rate))
        self.first = int(round(LATENCY_FIRST_S * rate))
        self.sent: list[float] = []

    def _samples(self, n: int) -> np.ndarray:
        now = self.clock()
        spf = self.samples_per_frame
        a = n * spf
        out = np.zeros(spf, dtype=np.int16)
        k = max(0, (a - self.first - self.click.size) // self.period)
        while (start := self.first + k * self.period) < a + spf:
            lo, hi = max(start, a), min(start + self.click.size, a + spf)
            if lo < hi:
                out[lo - a: hi - a] = self.click[lo - start: hi - start]
            if a <= start:
                self.sent.append(now + (start - a) / self.rate)
            k += 1
        return out


class ClickListener:
    """--latency: keeps received audio (mono) and the monotonic instant each frame arrived."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._conv = _MonoAudio(None)
        self.chunks: list[np.ndarray] = []
        self.starts: list[int] = []      # sample index of each frame's first sample
        self.arrived: list[float] = []   # when it was handed to us
        self.samples = 0

    def handle(self, frame: Any) -> None:
        if not hasattr(frame, "sample_rate"):
            return
        now = self.clock()
        data = self._conv.convert(frame)
        self.chunks.append(data)
        self.starts.append(self.samples)
        self.arrived.append(now)
        self.samples += data.size

    def close(self) -> None:
        pass

    def round_trips(self, sent: list[float]) -> list[float | None]:
        """Each sent click's round trip in seconds (None: not found within the click period)."""
        rate = self._conv.rate
        if not self.chunks or rate is None:
            return [None] * len(sent)
        x = np.concatenate(self.chunks)
        starts, arrived = np.asarray(self.starts), np.asarray(self.arrived)
        out: list[float | None] = []
        for t in sent:
            j = max(0, int(np.searchsorted(arrived, t)) - 1)   # the frame playing when it left
            p0 = int(starts[j])
            (d,) = analysis.click_delays(x, rate, [p0], max_delay_s=LATENCY_PERIOD_S - 0.1)
            if d is None:
                out.append(None)
                continue
            f = p0 + int(round(d * rate))
            i = max(0, int(np.searchsorted(starts, f, side="right")) - 1)
            out.append(float(arrived[i] + (f - starts[i]) / rate - t))
        return out


def latency_report(sent: list[float], listener: ClickListener, echo_delay_ms: float) -> dict[str, Any]:
    """The `latency` JSON object (see the module docstring) of the clicks `sent`."""
    trips = [d for d in listener.round_trips(sent) if d is not None and d > 0]
    rep: dict[str, Any] = {"round_trip_ms": None, "round_trip_min_ms": None, "round_trip_max_ms": None,
                           "echo_delay_ms": echo_delay_ms, "one_way_ms": None,
                           "clicks_sent": len(sent), "clicks_found": len(trips)}
    if trips:
        rt = 1000 * statistics.median(trips)
        rep.update(round_trip_ms=round(rt, 1), round_trip_min_ms=round(1000 * min(trips), 1),
                   round_trip_max_ms=round(1000 * max(trips), 1),
                   one_way_ms=round(max(0.0, rt - echo_delay_ms) / 2, 1))
    return rep


# --- set-up shared by both subcommands ----------------------------------------------------
def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    user = args.user or os.environ.get("JEGO_USER")
    password = args.password or os.environ.get("JEGO_PASSWORD")
    if not user:
        raise UsageError("--user (or JEGO_USER) is required")
    if not password:
        raise UsageError("--password (or JEGO_PASSWORD) is required")
    return user, password


def _check_record(path: str | None) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise UsageError(f"cannot record to {path}: no such directory")


def _source(args: argparse.Namespace) -> PacedAudioTrack:
    if getattr(args, "echo", False):
        return EchoTrack()
    if getattr(args, "latency", False):
        return ClickSource()
    try:
        return source_from_spec(args.play, loop=args.loop)
    except FileNotFoundError as exc:
        raise UsageError(f"--play: {exc}") from None
    except ValueError as exc:
        raise UsageError(f"--play: {exc}") from None


def _endpoint(args: argparse.Namespace, source: PacedAudioTrack, record: str | None,
              ice_servers: list[dict[str, Any]], ice_transport_policy: str = "all",
              extra_sinks: tuple[Sink, ...] = (),
              ) -> tuple[MediaEndpoint, Analyser, VideoFrameCounter | None]:
    analyser = Analyser()
    sinks: list[Sink] = [analyser, *extra_sinks]
    if isinstance(source, EchoTrack):
        sinks.append(source)
    if record:
        sinks.append(WavRecorder(record))
    counter = VideoFrameCounter() if args.video else None
    ep = MediaEndpoint(source=source, video_source=TestPatternVideo() if args.video else None,
                       sinks=sinks, video_sinks=[counter] if counter else [], ice_servers=ice_servers,
                       codecs=[args.codec] if args.codec else None, opus_bitrate=args.opus_bitrate,
                       impair=args.impair_spec, ice_transport_policy=ice_transport_policy,
                       fec=not getattr(args, "no_fec", False), send_fec_loss=getattr(args, "send_fec", 0))
    return ep, analyser, counter


async def _login(args: argparse.Namespace, client: JegoClient, user: str, password: str) -> None:
    try:
        await client.login(user, password)
        await client.connect()
    except ServerUnreachable as exc:
        raise Failure(f"cannot reach the server: {exc}") from None
    except ApiError as exc:
        if exc.code in ("auth_failed", "unknown_user", "invalid_username"):
            raise Failure(f"login failed for {user!r}: wrong username or password") from None
        raise Failure(f"login failed: {exc.code}: {exc.message}") from None
    except ConnectionLost as exc:
        raise Failure(str(exc)) from None


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


# --- jego dial call -------------------------------------------------------------------------
async def dial_call(args: argparse.Namespace, out: Output) -> Report:
    """Place one call to args.target; returns its Report."""
    kind, to = classify_target(args.target)
    user, password = _credentials(args)
    _check_record(args.record)
    source: PacedAudioTrack = _source(args)
    clicks = source if isinstance(source, ClickSource) else None
    listener = ClickListener() if clicks is not None else None
    if kind == "phone":
        source = HeldSource(source)  # --play starts at the answer, after any early media
    stop = asyncio.Event()
    _install_stop(stop)
    async with JegoClient(args.server, auto_ringing=False) as client:
        await _login(args, client, user, password)
        ep, analyser, counter = _endpoint(args, source, args.record, client.ice_servers, client.ice_transport_policy,
                                          (listener,) if listener is not None else ())
        report = Report(call_id=new_call_id(), role="caller", peer=to, target_kind=kind, record=args.record)
        t_dial = time.monotonic()
        try:
            out.progress(f"dialing {to} ...")
            offer = await ep.create_offer(audio=True, video=args.video)
            await client.invite(report.call_id, to, offer, ["audio", "video"] if args.video else ["audio"])
            leg = Leg(args, client, ep, report, analyser, counter, out, stop, t_dial)
            ring_deadline = t_dial + args.ring_timeout if args.ring_timeout else None
            await leg.run(ring_deadline=ring_deadline)
        except ConnectionLost as exc:
            report.outcome, report.reason, report.detail = "failed", "connection_lost", str(exc)
            out.progress(f"ended: failed ({exc})")
        finally:
            await ep.close()
    if clicks is not None and listener is not None and report.outcome == "answered":
        report.latency = latency_report(clicks.sent, listener, args.echo_delay_ms)
        report.added_latency_ms = report.latency["one_way_ms"]
    return report


# --- jego dial answer -------------------------------------------------------------------------
def _record_path(base: str | None, n: int) -> str | None:
    if not base or n == 1:
        return base
    p = Path(base)
    return str(p.with_name(f"{p.stem}-{n}{p.suffix}"))


async def dial_answer(args: argparse.Namespace, out: Output) -> list[Report]:
    """Answer (or reject) calls to --user until --count calls or a stop signal."""
    user, password = _credentials(args)
    _check_record(args.record)
    if args.echo and args.play:
        raise UsageError("--echo and --play cannot be combined")
    _source(args).stop()  # validate --play before going online
    stop = asyncio.Event()
    _install_stop(stop)
    reports: list[Report] = []
    async with JegoClient(args.server, auto_ringing=True) as client:
        await _login(args, client, user, password)
        out.progress(f"waiting for calls to {client.username} on {args.server}")
        while not stop.is_set() and (args.count is None or len(reports) < args.count):
            try:
                msg = await client.recv(0.2)
            except ConnectionLost as exc:
                raise Failure(f"signalling connection lost: {exc}") from None
            if msg is None or msg.get("type") != "invite":
                continue
            call_id, caller = str(msg["call_id"]), str(msg.get("from", "?"))
            t0 = time.monotonic()
            report = Report(call_id=call_id, role="callee", peer=caller)
            out.progress(f"incoming call from {caller} ({call_id})")
            if args.reject:
                reason = "busy" if args.reject == "busy" else "declined"
                await client.decline(call_id, reason)
                report.outcome = report.reason = reason
                out.progress(f"rejected: {reason}")
                reports.append(report)
                out.result(report)
                continue
            n = len(reports) + 1
            report.record = _record_path(args.record, n)
            ep, analyser, counter = _endpoint(args, _source(args), report.record, client.ice_servers,
                                                 client.ice_transport_policy)
            try:
                leg = Leg(args, client, ep, report, analyser, counter, out, stop, t0)
                await leg.run(offer_sdp=str(msg.get("sdp", "")), accept_at=t0 + args.answer_after)
            except ConnectionLost as exc:
                report.outcome, report.reason, report.detail = "failed", "connection_lost", str(exc)
            finally:
                await ep.close()
            reports.append(report)
            out.result(report)
    return reports


# --- jego dial group --------------------------------------------------------------------------
class StampedRecorder(WavRecorder):
    """A WavRecorder that notes the Unix time of its first frame (to line recordings up)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.started_at: float | None = None

    def handle(self, frame: Any) -> None:
        if self.started_at is None:
            self.started_at = time.time()
        super().handle(frame)


@dataclass
class GroupReport:
    """What `jego dial group --json` prints."""

    group: str
    call_id: str | None = None
    outcome: str = "failed"
    reason: str | None = None
    detail: str | None = None
    started: bool = False            # this dialer started the call (else it joined a running one)
    joined_at: float | None = None   # Unix seconds: media connected
    left_at: float | None = None
    connected_s: float = 0.0
    setup_ms: float | None = None
    record: str | None = None
    record_started_at: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)   # {"t": unix, "what": ...}
    participants: list[dict[str, Any]] = field(default_factory=list)  # the last group_call_state's
    phones: list[dict[str, Any]] = field(default_factory=list)
    audio: dict[str, Any] = field(default_factory=dict)
    cpu_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class GroupDialer:
    """One member's part in a group call, from start/join to leaving."""

    def __init__(self, args: argparse.Namespace, client: JegoClient, ep: MediaEndpoint, analyser: Analyser,
                 recorder: StampedRecorder | None, out: Output, stop: asyncio.Event) -> None:
        self.args, self.client, self.ep, self.analyser = args, client, ep, analyser
        self.recorder, self.out, self.stop = recorder, out, stop
        self.report = GroupReport(group=args.group, record=args.record)
        self.answered = False
        self.left_sent = False
        self.t0 = time.monotonic()

    def _event(self, what: str, **extra: Any) -> None:
        self.report.events.append({"t": round(time.time(), 3), "what": what, **extra})

    async def _start_or_join(self, offer: str) -> None:
        """Start the group's call; if one is running, join it instead."""
        gid = self.args.group
        if self.args.answer:
            self.out.progress(f"waiting to be rung in {gid} ...")
            deadline = time.monotonic() + (self.args.ring_timeout or 60.0)
            while time.monotonic() < deadline and not self.stop.is_set():
                msg = await self.client.recv(0.2)
                if msg and msg.get("type") == "group_call_ring" and msg.get("group") == gid:
                    self.report.call_id = str(msg["call_id"])
                    break
            if self.report.call_id is None:
                self.report.reason, self.report.outcome = "no_answer", "no_answer"
                return
            await self.client.send({"type": "group_call_join", "call_id": self.report.call_id, "sdp": offer,
                                    "video": False})
            return
        call_id = new_call_id()
        await self.client.send({"type": "group_call_start", "call_id": call_id, "group": gid, "media": ["audio"],
                                "sdp": offer})
        while True:
            msg = await self.client.recv(10.0)
            if msg is None:
                raise Failure("the server did not answer group_call_start")
            if msg.get("call_id") != call_id:
                continue
            if msg.get("type") == "error" and msg.get("code") == "call_exists":
                live = (await self.client.group(gid)).get("call")
                if not live:
                    raise Failure(f"cannot start or join the call: {msg.get('message')}")
                self.report.call_id = str(live["call_id"])
                self.out.progress(f"joining the running call {self.report.call_id}")
                await self.client.send({"type": "group_call_join", "call_id": self.report.call_id, "sdp": offer,
                                        "video": False})
                return
            if msg.get("type") == "error":
                raise Failure(f"{msg.get('code')}: {msg.get('message')}")
            if msg.get("type") in ("group_call_state", "group_call_answer", "group_call_ended"):
                self.report.call_id, self.report.started = call_id, True
                self.client._inbox.put_nowait(msg)  # handled by run()
                return

    async def run(self) -> GroupReport:
        r = self.report
        offer = await self.ep.create_offer(audio=True)
        try:
            await self._start_or_join(offer)
        except ApiError as exc:
            raise Failure(f"{exc.code}: {exc.message}") from None
        if r.call_id is None:
            return r
        actions: list[tuple[float, str]] = []
        if self.args.add_phone:
            actions.append((self.args.add_phone_at, "add_phone"))
        if self.args.mute_at is not None:
            actions.append((self.args.mute_at, "mute"))
        if self.args.unmute_at is not None:
            actions.append((self.args.unmute_at, "unmute"))
        if self.args.duration is not None:
            actions.append((self.args.duration, "leave"))
        actions.sort()
        joined_mono: float | None = None
        end_deadline: float | None = None
        connect: asyncio.Task[None] | None = None
        next_tick: float | None = None
        cpu0 = 0.0
        while True:
            now = time.monotonic()
            if end_deadline is not None and now >= end_deadline:
                r.reason = r.reason or "left"
                break
            if joined_mono is None and now - self.t0 > 20.0:
                r.reason, r.detail = "failed", "the conference did not connect within 20 s"
                break
            if connect is not None and connect.done():
                err = connect.exception()
                connect = None
                if err is not None:
                    r.reason, r.detail = "media_failed", str(err)
                    break
                joined_mono, cpu0 = time.monotonic(), time.process_time()
                r.joined_at, r.setup_ms = time.time(), _ms(self.t0, joined_mono)
                self.answered = True
                self._event("joined")
                self.out.progress(f"in the group call {r.call_id} (setup {r.setup_ms:.0f} ms)")
                next_tick = joined_mono + 1.0
            if joined_mono is not None:
                while actions and now - joined_mono >= actions[0][0] and not self.left_sent:
                    _t, what = actions.pop(0)
                    await self._act(what)
                    if what == "leave":
                        end_deadline = time.monotonic() + 3.0
            if self.stop.is_set() and not self.left_sent:
                await self._act("leave")
                end_deadline = time.monotonic() + 3.0
            if next_tick is not None and now >= next_tick:
                next_tick += 1.0
                self.out.progress(f"  level {self.analyser.level_dbfs:6.1f} dBFS  {self.analyser.dominant_hz:6.0f} Hz  "
                                  f"{sum(1 for p in r.participants if p['state'] == 'joined')} members, "
                                  f"{sum(1 for p in r.phones if p['state'] == 'joined')} phones")
            try:
                msg = await self.client.recv(0.05)
            except ConnectionLost:
                r.reason = r.reason or "connection_lost"
                break
            if msg is None or msg.get("call_id") != r.call_id:
                continue
            kind = msg.get("type")
            if kind == "group_call_answer":
                try:
                    await self.ep.set_answer(str(msg.get("sdp", "")))
                except MediaError as exc:
                    r.reason, r.detail = "media_failed", str(exc)
                    break
                connect = asyncio.ensure_future(self.ep.wait_connected(15.0))
            elif kind == "group_call_state":
                r.participants, r.phones = list(msg.get("participants") or []), list(msg.get("phones") or [])
            elif kind == "group_call_left":
                r.reason = str(msg.get("reason") or "left")
                break
            elif kind == "group_call_ended":
                r.reason, r.detail = str(msg.get("reason") or "hangup"), msg.get("detail")
                break
            elif kind == "error":
                self.out.progress(f"server error: {msg.get('code')}: {msg.get('message', '')}")
                self._event("error", code=msg.get("code"))
        if joined_mono is not None:
            r.left_at = time.time()
            r.connected_s = round(time.monotonic() - joined_mono, 3)
            r.cpu_s = round(time.process_time() - cpu0, 3)
        with contextlib.suppress(Exception):
            st = await self.ep.stats()
            r.audio = {k: st.get(k) for k in ("codec", "packets_sent", "packets_received", "packets_lost")}
        r.audio["received_s"] = round(self.analyser.received_s, 3)
        if self.recorder is not None:
            r.record_started_at = self.recorder.started_at
        r.outcome = "answered" if self.answered else outcome_for(r.reason, None, None, False)
        self.out.progress(f"left the group call: {r.outcome} ({r.reason})")
        return r

    async def _act(self, what: str) -> None:
        call_id = self.report.call_id
        if what == "add_phone":
            await self.client.send({"type": "group_call_add_phone", "call_id": call_id, "number": self.args.add_phone})
            self.out.progress(f"adding {self.args.add_phone}")
        elif what in ("mute", "unmute"):
            await self.client.send({"type": "group_call_mute", "call_id": call_id, "muted": what == "mute"})
            self.out.progress(what + "d")
        elif what == "leave":
            self.left_sent = True
            await self.client.send({"type": "group_call_leave", "call_id": call_id})
            self.out.progress("leaving")
        self._event(what)


async def dial_group(args: argparse.Namespace, out: Output) -> GroupReport:
    user, password = _credentials(args)
    _check_record(args.record)
    source = _source(args)
    stop = asyncio.Event()
    _install_stop(stop)
    async with JegoClient(args.server, auto_ringing=False) as client:
        await _login(args, client, user, password)
        analyser = Analyser()
        recorder = StampedRecorder(args.record) if args.record else None
        sinks: list[Sink] = [analyser] + ([recorder] if recorder is not None else [])
        ep = MediaEndpoint(source=source, sinks=sinks, ice_servers=client.ice_servers,
                           codecs=[args.codec] if args.codec else None, opus_bitrate=args.opus_bitrate,
                           ice_transport_policy=client.ice_transport_policy)
        try:
            return await GroupDialer(args, client, ep, analyser, recorder, out, stop).run()
        finally:
            await ep.close()


def run_group(args: argparse.Namespace) -> int:
    """Entry point of `jego dial group`; returns the exit code."""
    try:
        out = _prepare(args)
        report = asyncio.run(dial_group(args, out))
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        _error(str(exc))
        if args.json:
            print(json.dumps({"outcome": "failed", "reason": "setup", "detail": str(exc), "group": args.group}))
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report.to_json(), separators=(", ", ": ")), flush=True)
    return OUTCOME_EXIT.get(report.outcome, EXIT_FAILED)


# --- argparse wiring --------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("JEGO_SERVER", "http://127.0.0.1:8080"),
                   help="server URL (default: $JEGO_SERVER or http://127.0.0.1:8080)")
    p.add_argument("--user", help="username (default: $JEGO_USER)")
    p.add_argument("--password", help="password (default: $JEGO_PASSWORD)")
    p.add_argument("--play", metavar="FILE|tone:FREQ[:DBFS[:S]]", help="audio to send (default: silence)")
    p.add_argument("--loop", action="store_true", help="loop the --play file")
    p.add_argument("--record", metavar="OUT.wav", help="record received audio (mono 16-bit WAV)")
    p.add_argument("--dtmf", metavar="DIGITS", help="send these DTMF digits (signalling) once connected")
    p.add_argument("--video", action="store_true", help="also send a test-pattern video and count frames received")
    p.add_argument("--codec", type=str.upper, choices=["OPUS", "PCMU", "PCMA"], help="force an audio codec")
    p.add_argument("--opus-bitrate", type=int, default=32000, metavar="BPS", help="Opus bitrate (default 32000)")
    p.add_argument("--impair", metavar="SPEC", default="",
                   help="impair received media like a bad network: loss=PCT,burst=N,delay=MS,jitter=MS,seed=N")
    p.add_argument("--no-fec", action="store_true",
                   help="ask for no Opus in-band FEC (useinbandfec=0): lost frames are only concealed")
    p.add_argument("--send-fec", type=int, default=0, metavar="PCT",
                   help="send Opus in-band FEC planned for PCT %% loss when the far end asks (default 0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object per call on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def add_parser(subparsers: Any) -> None:
    """Add `jego dial call|answer`."""
    dial = subparsers.add_parser("dial", help="place or answer test calls",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = dial.add_subparsers(dest="dial_command", metavar="{call,answer,group}")
    sub.required = True
    call = sub.add_parser("call", help="call a user or a phone number")
    call.add_argument("target", help="username or phone number")
    _common(call)
    call.add_argument("--duration", type=float, default=10.0, metavar="S", help="hang up after S s connected (10)")
    call.add_argument("--ring-timeout", type=float, metavar="S", help="cancel if not answered within S s")
    call.add_argument("--latency", action="store_true",
                      help="send a click a second instead of --play and measure each one's round trip (call an "
                           "echo): latency and added_latency_ms in --json")
    call.add_argument("--echo-delay-ms", type=float, default=CARRIER_ECHO_DELAY_MS, metavar="MS",
                      help=f"with --latency: what the echo itself adds, taken off the round trip "
                           f"(default {CARRIER_ECHO_DELAY_MS:g}: the simulated carrier's echo)")
    call.set_defaults(func=run_call)
    ans = sub.add_parser("answer", help="wait for calls and answer them")
    _common(ans)
    ans.add_argument("--echo", action="store_true", help="send back what arrives")
    ans.add_argument("--count", type=int, metavar="N", help="exit after N calls")
    ans.add_argument("--reject", choices=["busy", "decline"], help="reject calls instead of answering")
    ans.add_argument("--duration", type=float, metavar="S", help="hang up after S s (default: wait for the caller)")
    ans.add_argument("--answer-after", type=float, default=0.0, metavar="S", help="ring for S s before answering")
    ans.set_defaults(func=run_answer)
    grp = sub.add_parser("group", help="start or join a group's call")
    grp.add_argument("group", metavar="GROUP_ID", help="the group's id (jego group list)")
    _common(grp)
    grp.add_argument("--answer", action="store_true", help="wait to be rung, then join")
    grp.add_argument("--ring-timeout", type=float, metavar="S", help="with --answer: give up after S s (60)")
    grp.add_argument("--duration", type=float, default=10.0, metavar="S", help="leave after S s in the call (10)")
    grp.add_argument("--add-phone", metavar="NUMBER", help="add this phone number to the call")
    grp.add_argument("--add-phone-at", type=float, default=0.5, metavar="S", help="... S s after joining (0.5)")
    grp.add_argument("--mute-at", type=float, metavar="S", help="mute yourself S s after joining")
    grp.add_argument("--unmute-at", type=float, metavar="S", help="unmute S s after joining")
    grp.set_defaults(func=run_group)


def _check_numbers(args: argparse.Namespace) -> None:
    for name in ("duration", "ring_timeout", "answer_after", "add_phone_at", "mute_at", "unmute_at"):
        v = getattr(args, name, None)
        if v is not None and v < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if getattr(args, "count", None) is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if getattr(args, "latency", False) and args.play:
        raise UsageError("--latency sends its own clicks: it cannot be combined with --play")
    if getattr(args, "echo_delay_ms", 0.0) < 0:
        raise UsageError("--echo-delay-ms must not be negative")
    if args.dtmf and not re.fullmatch(r"[0-9*#A-D]{1,32}", args.dtmf):
        raise UsageError("--dtmf takes 1 to 32 of 0-9 * # A-D")
    if args.codec == "OPUS":
        args.codec = "opus"
    try:
        args.impair_spec = ImpairmentSpec.parse(args.impair or "")
    except ConfigError as exc:
        raise UsageError(f"--impair: {exc.message}") from None


def _prepare(args: argparse.Namespace) -> Output:
    _check_numbers(args)
    cfg = load_config()
    if cfg.ice.loopback_candidates:
        enable_loopback_candidates()
    return Output(args.quiet, args.json)


def _error(msg: str) -> None:
    print(f"jego dial: {msg}", file=sys.stderr)


def run_call(args: argparse.Namespace) -> int:
    """Entry point of `jego dial call`; returns the exit code."""
    try:
        out = _prepare(args)
        report = asyncio.run(dial_call(args, out))
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        _error(str(exc))
        if args.json:
            print(json.dumps({"outcome": "failed", "reason": "setup", "detail": str(exc), "sip_code": None,
                              "q850_cause": None, "setup_ms": None, "ringing_ms": None, "connected_s": 0.0,
                              "audio": {}, "call_id": None}))
        return EXIT_FAILED
    out.result(report)
    return OUTCOME_EXIT.get(report.outcome, EXIT_FAILED)


def run_answer(args: argparse.Namespace) -> int:
    """Entry point of `jego dial answer`; returns the exit code."""
    try:
        out = _prepare(args)
        asyncio.run(dial_answer(args, out))
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        _error(str(exc))
        return EXIT_FAILED
    return EXIT_OK
