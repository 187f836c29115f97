"""RTP media for the simulated carrier: one :class:`RtpStream` per call (asyncio, 127.0.0.1).

Lifecycle, as the carrier UAS uses it::

    stream, answer = await RtpStream.answer(offer_sdp, host="127.0.0.1", record_path=path)
    # -> put answer.sdp.serialize() in the 200 OK (SdpNotAcceptable: reply 488, nothing to close)
    stream.play(Tone(440, -10, 2.0))              # or Echo(), Ringback(), Announcement(), ...
    await stream.send_dtmf("123")                 # RFC 4733, if telephone-event was negotiated
    stream.dtmf_digits, stream.stats(), stream.last_rx   # poll; BYE when last_rx is too old
    await stream.close()                          # releases the port, finishes the WAV

As the offerer: ``stream = await RtpStream.create(...)``, ``build_offer(host, stream.local_port)``,
then ``stream.configure(negotiated_from_answer(answer, offer))`` and ``stream.start()``.
For a re-INVITE (hold, codec change) answer it from the same port and apply it::

    new = answer_offer(reoffer, address=host, port=stream.local_port,
                       session_id=answer.sdp.origin.session_id,
                       session_version=answer.sdp.origin.session_version + 1)
    stream.apply_answer(reoffer, new)  # or configure(new.audio); sendonly/inactive/c=0.0.0.0 stop our sending

The RTP work is the shared engine's: ``bridge.rtp.media.RtpSession`` (sans I/O) on
``bridge.net.media.MediaEngine`` (one per process, one 20 ms timer for every call, no task or
thread per call). Sending is paced on an absolute clock (``t0 + n * 20 ms``): it never drifts,
and when the loop falls more than ``max_burst`` frames behind it skips ahead (the skipped
frames advance the RTP timestamp but are not sent). Every tick also plays out exactly 160
samples, so the recording is exactly as long as the stream ran, with silence for gaps.

Receiving is sample-based, so any packet length (a=ptime 10/20/30/40/60 ms) arrives whole:
packets are ordered by sequence number, decoded and placed in a bounded FIFO by RTP timestamp
(``fifo_ms``, 300 ms; a gap in timestamps becomes that much silence). RTCP (RFC 3550 §6): an
SR/RR every ``rtcp_interval`` seconds on the RTP port + 1 (or muxed, RFC 5761, when the offer
asks), and what the far end reports about us is in :meth:`RtpStream.stats` (loss, jitter, RTT).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import wave
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from jego_call.media.impair import ImpairmentSpec

from ..net.media import MediaEngine, RtpEndpoint, format_of
from ..rtp.dtmf import DtmfReceiver
from ..rtp.media import (
    SILENCE,
    DtmfCancelled,
    DtmfSent,
    Latched,
    MediaEvent,
    MediaFormat,
    ReportReceived,
    RtpSession,
)
from ..rtp.session import JitterBuffer, RtpSender
from ..sip.sdp import NegotiatedAudio, SdpAnswer, SdpMedia, SdpSession, answer_offer, parse_sdp

log = logging.getLogger(__name__)

RATE = 8000
FRAME_MS = 20
FRAME = RATE * FRAME_MS // 1000  # 160 samples
FULL_SCALE = 32767

Pcm = npt.NDArray[np.int16]
Addr = tuple[str, int]



# ------------------------------------------------------------------------------------------
# sources: each returns the next ``n`` samples of 8 kHz PCM16, or None once finished


class AudioSource(Protocol):
    """Something :meth:`RtpStream.play` can play. ``rx`` is the frame just received (for echo)."""

    def read(self, n: int, rx: Pcm) -> Pcm | None: ...


def _amplitude(dbfs: float) -> float:
    """dBFS referenced to a full-scale sine (AES17): 0 dBFS = peak 32767, RMS -3.01 dB re square."""
    return FULL_SCALE * 10 ** (dbfs / 20)


class Silence:
    """Digital silence, forever or for ``seconds``."""

    def __init__(self, seconds: float | None = None) -> None:
        self._left = None if seconds is None else round(seconds * RATE)

    def read(self, n: int, rx: Pcm) -> Pcm | None:
        if self._left is not None:
            if self._left <= 0:
                return None
            n = min(n, self._left)  # the last read is short, as Tone's: exactly `seconds` long
            self._left -= n
        return np.zeros(n, dtype=np.int16)


class Echo:
    """Sends back what was received (after the jitter buffer); silence when nothing arrives."""

    def __init__(self, seconds: float | None = None) -> None:
        self._left = None if seconds is None else round(seconds * RATE)

    def read(self, n: int, rx: Pcm) -> Pcm | None:
        if self._left is not None:
            if self._left <= 0:
                return None
            n = min(n, self._left)
            self._left -= n
        return rx[:n] if len(rx) >= n else np.pad(rx, (0, n - len(rx)))


class Tone:
    """A phase-continuous sine of ``frequency`` Hz at ``dbfs`` for ``seconds`` (None = forever)."""

    def __init__(self, frequency: float, dbfs: float = -10.0, seconds: float | None = None) -> None:
        if not 0 < frequency < RATE / 2:
            raise ValueError("tone frequency must be in (0, 4000) Hz")
        self.frequency = frequency
        self.amplitude = _amplitude(dbfs)
        self._pos = 0
        self._end = None if seconds is None else round(seconds * RATE)

    def read(self, n: int, rx: Pcm) -> Pcm | None:
        if self._end is not None:
            if self._pos >= self._end:
                return None
            n = min(n, self._end - self._pos)
        t = (self._pos + np.arange(n)) / RATE
        self._pos += n
        return np.rint(self.amplitude * np.sin(2 * np.pi * self.frequency * t)).astype(np.int16)


class PcmPlayback:
    """Plays PCM16 8 kHz mono samples once (``loop=True``: repeat). See :meth:`from_wav`."""

    def __init__(self, samples: Pcm, *, loop: bool = False) -> None:
        self.samples = np.asarray(samples, dtype=np.int16)
        self.loop = loop
        self._pos = 0

    @classmethod
    def from_wav(cls, path: str | Path, *, loop: bool = False) -> PcmPlayback:
        """Load a 16-bit PCM WAV (any rate, mono or stereo) and convert it to 8 kHz mono."""
        return cls(load_wav(path, rate=RATE)[0], loop=loop)

    def read(self, n: int, rx: Pcm) -> Pcm | None:
        if self._pos >= len(self.samples):
            if not self.loop or len(self.samples) == 0:
                return None
            self._pos = 0
        out = self.samples[self._pos : self._pos + n]
        self._pos += len(out)
        return out


class Cadence:
    """A repeating on/off tone programme: ``segments`` = [(frequency or 0 for silence, seconds)]."""

    def __init__(
        self, segments: Iterable[tuple[float, float]], dbfs: float = -10.0, *, repeats: int | None = None
    ) -> None:
        self.segments = [(f, round(s * RATE)) for f, s in segments]
        self.period = sum(n for _, n in self.segments)
        if self.period <= 0:
            raise ValueError("cadence has no duration")
        self.amplitude = _amplitude(dbfs)
        self._end = None if repeats is None else repeats * self.period
        self._pos = 0

    def read(self, n: int, rx: Pcm) -> Pcm | None:
        if self._end is not None:
            if self._pos >= self._end:
                return None
            n = min(n, self._end - self._pos)
        idx = self._pos + np.arange(n)
        phase_in_cycle = idx % self.period
        freq = np.zeros(n)
        start = 0
        for f, length in self.segments:
            freq[(phase_in_cycle >= start) & (phase_in_cycle < start + length)] = f
            start += length
        self._pos += n
        t = idx / RATE  # absolute time keeps each tone burst phase-continuous
        return np.rint(self.amplitude * np.sin(2 * np.pi * freq * t) * (freq > 0)).astype(np.int16)


class Ringback(Cadence):
    """Chinese ringback tone (YD/T 1253): 450 Hz, 1 s on, 4 s off; ``seconds`` None = forever."""

    def __init__(self, dbfs: float = -10.0, seconds: float | None = None) -> None:
        super().__init__([(450.0, 1.0), (0.0, 4.0)], dbfs)
        if seconds is not None:
            self._end = round(seconds * RATE)


class Announcement(Cadence):
    """Stand-in for the carrier's recorded message: the ITU-T E.180 special information tone
    (950, 1400, 1800 Hz, 330 ms each, 30 ms gaps) then 1 s of silence, ``repeats`` times."""

    SIT: tuple[tuple[float, float], ...] = (
        (950.0, 0.33), (0.0, 0.03), (1400.0, 0.33), (0.0, 0.03), (1800.0, 0.33), (0.0, 1.0),
    )  # fmt: skip

    def __init__(self, dbfs: float = -14.0, repeats: int | None = 2) -> None:
        super().__init__(self.SIT, dbfs, repeats=repeats)


class Sequence:
    """Plays sources one after another; finished when the last one is."""

    def __init__(self, *sources: AudioSource) -> None:
        self._sources = deque(sources)

    def read(self, n: int, rx: Pcm) -> Pcm | None:
        while self._sources:
            out = self._sources[0].read(n, rx)
            if out is not None:
                return out
            self._sources.popleft()
        return None


class MediaSpec(Protocol):
    """The shape of ``bridge.carrier.scenarios.Media`` (kind, seconds, frequency_hz, path)."""

    @property
    def kind(self) -> str: ...
    @property
    def seconds(self) -> float | None: ...
    @property
    def frequency_hz(self) -> float | None: ...
    @property
    def path(self) -> str | None: ...


def source_for(media: MediaSpec, *, tone_dbfs: float = -10.0) -> AudioSource:
    """Build the source for a scenario ``Media`` spec (echo|silence|tone|ringback|announcement|file)."""
    secs = media.seconds
    if media.kind == "echo":
        return Echo(secs)
    if media.kind == "silence":
        return Silence(secs)
    if media.kind == "tone":
        return Tone(media.frequency_hz or 1000.0, tone_dbfs, secs)
    if media.kind == "ringback":
        return Ringback(seconds=secs)
    if media.kind == "announcement":
        return Announcement() if secs is None else _Limited(Announcement(repeats=None), secs)
    if media.kind == "file":
        if not media.path:
            raise ValueError("file media needs a path")
        src: AudioSource = PcmPlayback.from_wav(media.path)
        return _Limited(src, secs) if secs is not None else src
    raise ValueError(f"unknown media kind {media.kind!r}")


class _Limited:
    def __init__(self, source: AudioSource, seconds: float) -> None:
        self._source = source
        self._left = round(seconds * RATE)

    def read(self, n: int, rx: Pcm) -> Pcm | None:
        if self._left <= 0:
            return None
        out = self._source.read(min(n, self._left), rx)
        if out is None:
            out = np.zeros(min(n, self._left), dtype=np.int16)  # pad a short file with silence
        self._left -= len(out)
        return out


# ------------------------------------------------------------------------------------------
# WAV helpers


def load_wav(path: str | Path, *, rate: int | None = None) -> tuple[Pcm, int]:
    """Read a 16-bit PCM WAV as mono ``np.int16`` (channels averaged); resample if ``rate`` given."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, src_rate = w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data[: len(data) - len(data) % channels].reshape(-1, channels).mean(axis=1)
    x = data.astype(np.float64)
    if rate is not None and rate != src_rate:
        x = _resample(x, src_rate, rate)
        src_rate = rate
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16), src_rate


def _resample(x: npt.NDArray[np.float64], src: int, dst: int) -> npt.NDArray[np.float64]:
    """Offline resampling: windowed-sinc low-pass below the new Nyquist, then interpolation."""
    if len(x) == 0:
        return x
    if dst < src:
        cutoff = 0.45 * dst / src  # cycles per input sample
        taps = np.arange(-128, 129)
        h = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(len(taps))
        x = np.convolve(x, h / h.sum(), mode="same")
    t_out = np.arange(int(len(x) * dst / src)) * (src / dst)
    out: npt.NDArray[np.float64] = np.interp(t_out, np.arange(len(x)), x)
    return out


class WavRecorder:
    """Appends PCM16 frames to an 8 kHz mono WAV; :meth:`close` fixes up the header."""

    def __init__(self, path: str | Path, rate: int = RATE) -> None:
        self.path = Path(path)
        self._wav: wave.Wave_write | None = wave.open(str(self.path), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate)
        self.samples = 0

    def write(self, pcm: Pcm) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(pcm.astype("<i2").tobytes())
            self.samples += len(pcm)

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None


class HoldRecorder:
    """Beside a recording (``<call>.hold``): per 20 ms slot, how long its frame waited in the
    receive buffer, little-endian float32 ms, NaN when no packet of its own played (lab use:
    [media] record_hold; read it with `read_holds`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f: BinaryIO | None = self.path.open("wb")
        self._pack = struct.Struct("<f").pack

    def write(self, hold_s: float | None) -> None:
        if self._f is not None:
            self._f.write(self._pack(math.nan if hold_s is None else 1000.0 * hold_s))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_holds(path: str | Path) -> npt.NDArray[np.float32]:
    """A `HoldRecorder` file: ms per slot (NaN where none played)."""
    return np.fromfile(str(path), dtype="<f4")


# ------------------------------------------------------------------------------------------
# port pool


class PortPool:
    """Even RTP ports in [low, high) handed out round-robin (RFC 3550 §11: RTP on even ports)."""

    def __init__(self, low: int, high: int) -> None:
        if not 0 < low < high <= 65536:
            raise ValueError("bad port range")
        self._ports = deque(p for p in range(low + low % 2, high, 2))
        self._in_use: set[int] = set()

    def candidates(self) -> list[int]:
        """Free ports to try, in order (the caller binds, then calls :meth:`take`)."""
        return [p for p in self._ports if p not in self._in_use]

    def take(self, port: int) -> None:
        self._in_use.add(port)
        self._ports.remove(port)
        self._ports.append(port)  # reuse last: lets stale packets for the old call die out

    def release(self, port: int) -> None:
        self._in_use.discard(port)


# ------------------------------------------------------------------------------------------
# the stream


@dataclass(slots=True, frozen=True)
class MediaStats:
    """Snapshot from :meth:`RtpStream.stats`. Times are seconds; ``jitter`` is RFC 3550 A.8.

    The ``remote_*`` fields and ``rtt`` come from the far end's RTCP reports about our stream
    (RFC 3550 §6.4.1): None until one arrived (``rtt`` also needs one that names our SR).
    """

    packets_sent: int
    packets_received: int  # accepted RTP (audio + telephone-event) from the expected source
    packets_lost: int  # RFC 3550 A.3 cumulative, never negative
    jitter: float
    concealed_frames: int  # playout slots filled with silence (loss, underrun)
    late: int
    duplicates: int
    dropped_malformed: int  # < 12 bytes, wrong version, truncated, bad padding
    dropped_rtcp: int  # RTCP on the RTP port without rtcp-mux
    dropped_unknown_pt: int
    dropped_wrong_source: int
    dropped_other: int  # STUN/DTLS/unknown first byte
    dtmf_sent: int
    dtmf_received: int
    ticks: int
    on_time: int
    on_time_share: float  # share of send ticks that ran within ``on_time_tolerance`` of schedule
    skipped_ticks: int
    max_lateness: float
    ssrc_changes: int
    last_rx: float | None
    recorded_seconds: float
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtt: float | None = None
    remote_fraction_lost: float | None = None
    remote_packets_lost: int | None = None
    remote_jitter: float | None = None
    impaired_dropped: int = 0  # datagrams the [media] impair network dropped before the session


def rtcp_of(media: SdpMedia, remote: Addr | None) -> tuple[bool, Addr | None]:
    """(rtcp-mux offered, the RTCP address ``a=rtcp`` names) for one m-line (RFC 5761 §5.1.1,
    RFC 3605 §2.1: ``a=rtcp:PORT [IN IP4 ADDRESS]``); None means "RTP port + 1"."""
    mux = media.attribute("rtcp-mux") is not None
    value = media.attribute("rtcp")
    target: Addr | None = None
    if value:
        parts = value.split()
        if parts and parts[0].isdigit() and 0 < int(parts[0]) < 65536:
            host = parts[3] if len(parts) >= 4 else (remote[0] if remote else None)
            if host is not None:
                target = (host, int(parts[0]))
    return mux, target


class _Programme:
    """The carrier's side of a leg (``bridge.rtp.media.AudioPort``): records what arrives and
    plays the current source (an echo source reads the frame just received)."""

    def __init__(self, stream: RtpStream) -> None:
        self.stream = stream
        self.source: AudioSource = Silence()
        self.done: asyncio.Future[None] | None = None
        self.recorder: WavRecorder | None = None
        self.holds: HoldRecorder | None = None

    def exchange(self, rx: Pcm, live: bool) -> Pcm | None:
        if self.recorder is not None:
            self.recorder.write(rx)
            if self.holds is not None:
                self.holds.write(self.stream.session.last_hold)
        tx = self.source.read(FRAME, rx)
        if tx is None:
            self.finish()
            self.source = Silence()
            return SILENCE
        return tx

    def finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)
        self.done = None


class RtpStream:
    """One call's RTP on the shared media engine: port, jitter buffer, recorder, DTMF, RTCP.

    Construct (no I/O), ``await open()`` to bind, ``configure(NegotiatedAudio)``, ``start()``;
    or use :meth:`answer` / :meth:`create`. The receive buffer is adaptive by default (floor
    ``jitter_prefetch`` frames, raised by the measured jitter, RFC 3550 §6.4.1): what a burst
    after a stall puts in it is drained again instead of staying as latency for the call. ``latch=True`` switches the send address to the
    source of the first valid RTP packet (symmetric RTP) and then only accepts that source.
    The RTP work is ``bridge.rtp.media.RtpSession``; ``bridge.net.media.MediaEngine`` runs it.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        port_pool: PortPool | None = None,
        codec: str = "PCMU",
        payload_type: int | None = None,
        telephone_event_pt: int | None = 101,
        remote: Addr | None = None,
        latch: bool = False,
        record_path: str | Path | None = None,
        jitter_capacity: int = 16,
        jitter_prefetch: int = 3,
        jitter_adaptive: bool = True,
        fifo_ms: int = 300,
        max_burst: int = 3,
        on_time_tolerance: float = 0.005,
        ssrc: int | None = None,
        rtcp: bool = True,
        rtcp_interval: float = 5.0,
        impair: ImpairmentSpec | None = None,
        record_hold: bool = False,
    ) -> None:
        self.host = host
        self.impair = impair
        self.record_hold = record_hold
        self._want_port = port
        self._pool = port_pool
        self.ptime = FRAME_MS / 1000
        self.record_path = Path(record_path) if record_path is not None else None
        self.rtcp = rtcp
        codec = codec.upper()
        fmt = MediaFormat(codec, payload_type if payload_type is not None else (0 if codec == "PCMU" else 8),
                          telephone_event_pt, remote)
        self._programme = _Programme(self)
        self.session = RtpSession(
            fmt, self._programme, ssrc=ssrc, latch=latch, max_burst=max_burst,
            on_time_tolerance=on_time_tolerance, jitter_capacity=jitter_capacity,
            jitter_prefetch=jitter_prefetch, jitter_adaptive=jitter_adaptive, fifo_ms=fifo_ms, rtcp=rtcp,
            rtcp_interval=rtcp_interval,
        )  # fmt: skip
        self.local_port = 0
        self._engine: MediaEngine | None = None
        self._ep: RtpEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dtmf_done: dict[int, asyncio.Future[None]] = {}
        self._closed = False

    # -- the session's state, as attributes ------------------------------------------------------
    @property
    def codec(self) -> str:
        return self.session.fmt.codec

    @property
    def payload_type(self) -> int:
        return self.session.fmt.payload_type

    @property
    def telephone_event_pt(self) -> int | None:
        return self.session.fmt.telephone_event_pt

    @property
    def send_enabled(self) -> bool:
        return self.session.fmt.send

    @property
    def remote(self) -> Addr | None:
        return self.session.remote

    @property
    def latch(self) -> bool:
        return self.session.latch

    @property
    def latched(self) -> bool:
        return self.session.latched

    @property
    def rtcp_mux(self) -> bool:
        return self.session.fmt.rtcp_mux

    @property
    def sender(self) -> RtpSender:
        return self.session.sender

    @property
    def jitter(self) -> JitterBuffer:
        return self.session.playout.jitter

    @property
    def dtmf(self) -> DtmfReceiver:
        return self.session.dtmf

    @property
    def last_rx(self) -> float | None:
        return self.session.last_rx

    @property
    def t0(self) -> float | None:
        return self.session.t0

    @property
    def max_burst(self) -> int:
        return self.session.max_burst

    # -- set-up ------------------------------------------------------------------------------
    @classmethod
    async def create(cls, **kwargs: object) -> RtpStream:
        """Construct and bind (``await``); then ``configure`` and ``start``."""
        stream = cls(**kwargs)  # type: ignore[arg-type]
        await stream.open()
        return stream

    @classmethod
    async def answer(
        cls,
        offer: SdpSession | str | bytes,
        *,
        host: str = "127.0.0.1",
        supported: tuple[str, ...] = ("PCMU", "PCMA"),
        start: bool = True,
        **kwargs: object,
    ) -> tuple[RtpStream, SdpAnswer]:
        """Bind a port, answer ``offer`` from it, configure and start. Raises ``SdpNotAcceptable``
        (488) or ``SdpParseError`` (400) with nothing left open. rtcp-mux is accepted when
        offered (RFC 5761 §5.1.1: the answer carries ``a=rtcp-mux`` too)."""
        stream = await cls.create(host=host, **kwargs)
        try:
            offer_sdp = parse_sdp(offer)
            ans = answer_offer(offer_sdp, address=host, port=stream.local_port, supported=supported)
        except BaseException:
            await stream.close()
            raise
        stream.apply_answer(offer_sdp, ans)
        if start:
            stream.start()
        return stream, ans

    def apply_answer(self, offer: SdpSession | str | bytes, ans: SdpAnswer) -> None:
        """Configure from our answer to ``offer`` (also for re-INVITEs): codec, address,
        direction, and RTCP: rtcp-mux if offered (added to ``ans.sdp``), else ``a=rtcp`` or
        the RTP port + 1."""
        media = parse_sdp(offer).media[ans.media_index]
        mux, target = rtcp_of(media, ans.audio.remote)
        if mux:
            ans.sdp.media[ans.media_index].attributes.append(("rtcp-mux", None))
        self.configure(ans.audio, rtcp_mux=mux, remote_rtcp=target)

    async def open(self) -> None:
        """Bind the UDP sockets (RTP from the pool, else ``port``, 0 = any; RTCP next to it) and
        open the recording."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._engine = MediaEngine.get(loop)
        ports = self._pool.candidates() if self._pool else [self._want_port]
        self._ep = self._engine.bind(self.session, host=self.host, ports=ports, rtcp=self.rtcp,
                                     on_events=self._on_events)
        self.local_port = self._ep.local_port
        if self.impair is not None:
            self._engine.impair(self._ep, self.impair)
        if self._pool:
            self._pool.take(self.local_port)
        if self.record_path is not None:
            self._programme.recorder = WavRecorder(self.record_path)
            if self.record_hold:
                self._programme.holds = HoldRecorder(self.record_path.with_suffix(".hold"))

    def configure(self, audio: NegotiatedAudio, *, rtcp_mux: bool | None = None,
                  remote_rtcp: Addr | None = None) -> None:
        """Apply an offer/answer result (also for re-INVITEs: hold, codec change). Our SSRC and
        sequence numbers run on; rtcp-mux stays as negotiated unless given."""
        mux = self.session.fmt.rtcp_mux if rtcp_mux is None else rtcp_mux
        self.session.configure(format_of(audio, rtcp_mux=mux, remote_rtcp=remote_rtcp))

    def start(self) -> None:
        """Join the engine's 20 ms clock (sending, playout, recording, RTCP). Call once, after
        ``open``."""
        if self._ep is None or self._engine is None:
            raise RuntimeError("open() the stream before start()")
        self._engine.start(self._ep)
        # Slot n is sent, played out and recorded at t0 + n * 20 ms: on one machine this loop
        # clock is CLOCK_MONOTONIC, so a benchmark can line the recording up with its own sends.
        log.info("carrier RTP port %s: media clock t0 %.4f (monotonic)", self.local_port, self.session.t0)

    @property
    def local_address(self) -> Addr:
        return (self.host, self.local_port)

    # -- programme ---------------------------------------------------------------------------
    def play(self, source: AudioSource) -> asyncio.Future[None]:
        """Switch the outgoing audio to ``source`` now. The returned future completes when the
        source finishes (or is replaced, or the stream closes); then silence is sent."""
        loop = self._loop or asyncio.get_running_loop()
        prog = self._programme
        prog.finish()
        prog.source = source
        prog.done = done = loop.create_future()
        self.session.sender.start_talkspurt()
        return done

    def send_dtmf(
        self, digits: str, *, duration_ms: int = 100, gap_ms: int = 60, volume: int = 10
    ) -> asyncio.Future[None]:
        """Queue RFC 4733 events for ``digits``; the future completes after the last end packet
        and gap. Raises ValueError if no telephone-event PT was negotiated or a digit is bad."""
        loop = self._loop or asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        jobs = self.session.send_dtmf(digits, duration_ms=duration_ms, volume=volume, gap_ms=gap_ms)
        if not jobs:
            done.set_result(None)
            return done
        self._dtmf_done[jobs[-1]] = done
        return done

    @property
    def dtmf_digits(self) -> list[str]:
        """DTMF digits received so far (RFC 4733 events 0-15), in order."""
        return self.session.dtmf.digits

    def _on_events(self, events: list[MediaEvent]) -> None:
        for ev in events:
            if isinstance(ev, DtmfSent | DtmfCancelled):
                fut = self._dtmf_done.pop(ev.job, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(ev, Latched):
                log.info("RTP port %s latched to %s:%s", self.local_port, *ev.addr)
            elif isinstance(ev, ReportReceived):
                st = ev.stats
                log.debug("RTCP report on port %s: lost %.1f%% (%d), jitter %.1f ms, rtt %s", self.local_port,
                          100 * st.fraction_lost, st.cumulative_lost, 1000 * st.jitter,
                          f"{1000 * st.rtt:.1f} ms" if st.rtt is not None else "-")

    # -- results -----------------------------------------------------------------------------
    def stats(self) -> MediaStats:
        s = self.session
        js = s.playout.jitter.stats()
        n = s.n
        rs = s.remote_stats
        rec = self._programme.recorder
        return MediaStats(
            packets_sent=s.sender.packets_sent,
            packets_received=n["received"],
            packets_lost=js.lost,
            jitter=js.jitter,
            concealed_frames=js.concealed,
            late=js.late,
            duplicates=js.duplicates,
            dropped_malformed=n["malformed"] + n["bad_payload"],
            dropped_rtcp=n["rtcp_on_rtp_port"],
            dropped_unknown_pt=n["unknown_pt"],
            dropped_wrong_source=n["wrong_source"],
            dropped_other=n["other"],
            dtmf_sent=n["dtmf_sent"],
            dtmf_received=len(s.dtmf.digits),
            ticks=n["ticks"],
            on_time=n["on_time"],
            on_time_share=s.on_time_share,
            skipped_ticks=n["skipped"],
            max_lateness=s.max_lateness,
            ssrc_changes=js.ssrc_changes,
            last_rx=s.last_rx,
            recorded_seconds=(rec.samples / RATE) if rec else 0.0,
            rtcp_sent=n["rtcp_sent"],
            rtcp_received=n["rtcp_received"],
            rtt=s.rtt,
            remote_fraction_lost=rs.fraction_lost if rs else None,
            remote_packets_lost=rs.cumulative_lost if rs else None,
            remote_jitter=rs.jitter if rs else None,
            impaired_dropped=(self._ep.impairment.counters.dropped
                              if self._ep is not None and self._ep.impairment is not None else 0),
        )

    def inactive_for(self, now: float | None = None) -> float:
        """Seconds since the last valid RTP packet (since start if none yet): the owner sends BYE
        when this exceeds its media timeout."""
        loop = self._loop or asyncio.get_running_loop()
        return self.session.inactive_for(loop.time() if now is None else now)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Leave the clock (RTCP BYE), release the sockets (and pool port), finish the WAV.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ep is not None and self._engine is not None:
            self._engine.close(self._ep)
        if self._pool and self.local_port:
            self._pool.release(self.local_port)
        prog = self._programme
        if prog.recorder is not None:
            prog.recorder.close()
        if prog.holds is not None:
            prog.holds.close()
        prog.finish()
        for fut in self._dtmf_done.values():
            if not fut.done():
                fut.set_result(None)
        self._dtmf_done.clear()

    async def __aenter__(self) -> RtpStream:
        if self._ep is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()



def measure_tone(samples: Pcm, rate: int = RATE) -> tuple[float, float]:
    """Dominant frequency (Hz, interpolated FFT peak) and RMS level (dBFS, sine-referenced).

    A judge for tests and diagnostics: a -10 dBFS sine measures -10.0.
    """
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < 16:
        return 0.0, -math.inf
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    denom = a - 2 * b + c
    peak = k + (0.5 * (a - c) / denom if denom else 0.0)
    rms = float(np.sqrt(np.mean(x**2)))
    level = 20 * math.log10(rms * math.sqrt(2) / FULL_SCALE) if rms > 0 else -math.inf
    return peak * rate / len(x), level


__all__ = [
    "Announcement",
    "AudioSource",
    "Cadence",
    "Echo",
    "MediaStats",
    "PcmPlayback",
    "PortPool",
    "Ringback",
    "RtpStream",
    "Sequence",
    "Silence",
    "Tone",
    "WavRecorder",
    "load_wav",
    "measure_tone",
    "source_for",
]
