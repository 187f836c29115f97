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
    stream.configure(new.audio)      # sendonly/inactive/c=0.0.0.0 stop our sending

Sending is paced on an absolute clock (``t0 + n * 20 ms`` on ``loop.time()``): it never
drifts, and when the loop falls more than ``max_burst`` frames behind it skips ahead (the
skipped frames advance the RTP timestamp but are not sent). Every tick also plays out exactly
160 samples, so the recording is exactly as long as the stream ran, with silence for gaps.

Receiving is sample-based, so any packet length (a=ptime 10/20/30/40/60 ms) arrives whole: the
jitter buffer orders packets by sequence number; each tick pulls packets from it, decodes them
and places their samples in a bounded FIFO by RTP timestamp (a gap in timestamps becomes that
much silence), until the FIFO holds the tick's 160 samples. The FIFO keeps at most
``fifo_ms`` (300 ms) of audio, dropping the oldest samples. After an underrun (or an SSRC change,
or a timestamp jump larger than the FIFO) playout restarts at the next packet, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import wave
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..rtp import g711
from ..rtp.dtmf import DtmfPacket, DtmfReceiver, dtmf_packets
from ..rtp.packet import PacketKind, RtpPacket, RtpParseError, classify, ts_delta
from ..rtp.session import JitterBuffer, RtpSender
from ..sip.sdp import NegotiatedAudio, SdpAnswer, SdpSession, answer_offer

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

    kind: str
    seconds: float | None
    frequency_hz: float | None
    path: str | None


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
    return np.interp(t_out, np.arange(len(x)), x)


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
    """Snapshot from :meth:`RtpStream.stats`. Times are seconds; ``jitter`` is RFC 3550 A.8."""

    packets_sent: int
    packets_received: int  # accepted RTP (audio + telephone-event) from the expected source
    packets_lost: int  # RFC 3550 A.3 cumulative, never negative
    jitter: float
    concealed_frames: int  # playout slots filled with silence (loss, underrun)
    late: int
    duplicates: int
    dropped_malformed: int  # < 12 bytes, wrong version, truncated, bad padding
    dropped_rtcp: int
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


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, stream: RtpStream) -> None:
        self.stream = stream
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        _wake(self.lost)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.stream._on_datagram(data, (str(addr[0]), int(addr[1])))
        except Exception:  # a bad packet must never stop reception
            log.exception("RTP receive error on port %s", self.stream.local_port)

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error (ICMP?) on port %s: %s", self.stream.local_port, exc)


@dataclass(slots=True)
class _DtmfJob:
    packets: deque[DtmfPacket]
    gap_ticks: int
    done: asyncio.Future[None] | None
    event_ts: int | None = None


class RtpStream:
    """One call's RTP: UDP socket, 20 ms absolute-clock sender, jitter buffer, recorder, DTMF.

    Construct (no I/O), ``await open()`` to bind, ``configure(NegotiatedAudio)``, ``start()``;
    or use :meth:`answer` / :meth:`create`. ``latch=True`` switches the send address to the
    source of the first valid RTP packet (symmetric RTP) and then only accepts that source.
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
        fifo_ms: int = 300,
        max_burst: int = 3,
        on_time_tolerance: float = 0.005,
        ssrc: int | None = None,
    ) -> None:
        self.host = host
        self._want_port = port
        self._pool = port_pool
        self.ptime = FRAME_MS / 1000
        self.latch = latch
        self.latched = False
        self.remote = remote
        self.send_enabled = True
        self.max_burst = max(1, max_burst)
        self.on_time_tolerance = on_time_tolerance
        self.record_path = Path(record_path) if record_path is not None else None
        self._set_codec(codec, payload_type, telephone_event_pt)
        self.sender = RtpSender(self.payload_type, ssrc=ssrc)
        self.jitter = JitterBuffer(capacity=jitter_capacity, prefetch=jitter_prefetch, frame_samples=FRAME)
        # Received samples not played out yet: ``_rx_pcm`` ends at RTP timestamp ``_rx_end_ts``.
        self._fifo_cap = max(FRAME, RATE * fifo_ms // 1000)
        self._rx_pcm: Pcm = np.zeros(0, dtype=np.int16)
        self._rx_end_ts: int | None = None
        self._rx_ssrc: int | None = None
        self._rx_resync = True  # the next packet starts playout afresh (no gap fill)
        self.dtmf = DtmfReceiver()
        self.last_rx: float | None = None
        self.local_port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._recorder: WavRecorder | None = None
        self._source: AudioSource = Silence()
        self._source_done: asyncio.Future[None] | None = None
        self._dtmf_jobs: deque[_DtmfJob] = deque()
        self._closed = False
        self._silence = np.zeros(FRAME, dtype=np.int16)
        self.t0: float | None = None
        self._n = dict.fromkeys(
            (
                "received", "malformed", "rtcp", "unknown_pt", "wrong_source", "other", "dtmf_sent",
                "ticks", "on_time", "send_ticks", "skipped",
            ),
            0,
        )  # fmt: skip
        self._max_late = 0.0

    # -- set-up ------------------------------------------------------------------------------
    def _set_codec(self, codec: str, payload_type: int | None, te_pt: int | None) -> None:
        self.codec = codec.upper()
        self._decode = g711.decoder_for(self.codec)
        self._encode = g711.encoder_for(self.codec)
        self.payload_type = payload_type if payload_type is not None else (0 if self.codec == "PCMU" else 8)
        self.telephone_event_pt = te_pt

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
        (488) or ``SdpParseError`` (400) with nothing left open."""
        stream = await cls.create(host=host, **kwargs)
        try:
            ans = answer_offer(offer, address=host, port=stream.local_port, supported=supported)
        except BaseException:
            await stream.close()
            raise
        stream.configure(ans.audio)
        if start:
            stream.start()
        return stream, ans

    async def open(self) -> None:
        """Bind the UDP socket (from the pool, else ``port``, 0 = any) and open the recording."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        ports = self._pool.candidates() if self._pool else [self._want_port]
        last_error: OSError | None = None
        for port in ports:
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), local_addr=(self.host, port)
                )
            except OSError as exc:
                last_error = exc
                continue
            self._transport = transport
            self._protocol = protocol
            self.local_port = int(transport.get_extra_info("sockname")[1])
            if self._pool:
                self._pool.take(self.local_port)
            break
        else:
            raise OSError(f"no free RTP port on {self.host}") from last_error
        if self.record_path is not None:
            self._recorder = WavRecorder(self.record_path)

    def configure(self, audio: NegotiatedAudio) -> None:
        """Apply an offer/answer result (also for re-INVITEs: hold, codec change)."""
        self._set_codec(audio.codec, audio.payload_type, audio.telephone_event_pt)
        self.sender.payload_type = self.payload_type
        self.send_enabled = audio.send
        if audio.remote is not None:
            self.remote = audio.remote
            self.latched = False

    def start(self) -> None:
        """Start the 20 ms clock (sending, playout and recording). Call once, after ``open``."""
        if self._transport is None:
            raise RuntimeError("open() the stream before start()")
        if self._task is None:
            assert self._loop is not None
            self.t0 = self._loop.time()
            self._task = self._loop.create_task(self._run(), name=f"rtp-{self.local_port}")

    @property
    def local_address(self) -> Addr:
        return (self.host, self.local_port)

    # -- programme ---------------------------------------------------------------------------
    def play(self, source: AudioSource) -> asyncio.Future[None]:
        """Switch the outgoing audio to ``source`` now. The returned future completes when the
        source finishes (or is replaced, or the stream closes); then silence is sent."""
        loop = self._loop or asyncio.get_running_loop()
        self._finish_source()
        self._source = source
        self._source_done = loop.create_future()
        self.sender.start_talkspurt()
        return self._source_done

    def _finish_source(self) -> None:
        if self._source_done is not None and not self._source_done.done():
            self._source_done.set_result(None)
        self._source_done = None

    def send_dtmf(
        self, digits: str, *, duration_ms: int = 100, gap_ms: int = 60, volume: int = 10
    ) -> asyncio.Future[None]:
        """Queue RFC 4733 events for ``digits``; the future completes after the last end packet
        and gap. Raises ValueError if no telephone-event PT was negotiated or a digit is bad."""
        if self.telephone_event_pt is None:
            raise ValueError("telephone-event was not negotiated")
        loop = self._loop or asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        jobs = [
            _DtmfJob(
                deque(dtmf_packets(d, duration_ms=duration_ms, volume=volume)),
                max(1, gap_ms // FRAME_MS),
                None,
            )
            for d in digits
        ]
        if not jobs:
            done.set_result(None)
            return done
        jobs[-1].done = done
        self._dtmf_jobs.extend(jobs)
        return done

    @property
    def dtmf_digits(self) -> list[str]:
        """DTMF digits received so far (RFC 4733 events 0-15), in order."""
        return self.dtmf.digits

    # -- receive -----------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        kind = classify(data)
        if kind is PacketKind.RTCP:
            self._n["rtcp"] += 1
            return
        if kind is not PacketKind.RTP:
            self._n["malformed" if kind is PacketKind.UNKNOWN else "other"] += 1
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpParseError:
            self._n["malformed"] += 1
            return
        is_audio = pkt.payload_type == self.payload_type
        is_event = self.telephone_event_pt is not None and pkt.payload_type == self.telephone_event_pt
        if not (is_audio or is_event):
            self._n["unknown_pt"] += 1
            return
        if addr != self.remote:
            if self.latch and not self.latched:
                log.info("RTP port %s latched to %s:%s", self.local_port, *addr)
                self.remote = addr
            elif self.remote is not None:
                self._n["wrong_source"] += 1
                return
        if self.latch:
            self.latched = True
        assert self._loop is not None
        now = self._loop.time()
        self.last_rx = now
        self._n["received"] += 1
        self.jitter.push(pkt, now, audio=is_audio)
        if is_event:
            self.dtmf.receive(pkt.payload, pkt.timestamp, ssrc=pkt.ssrc, marker=pkt.marker)

    # -- clock -------------------------------------------------------------------------------
    async def _sleep_until(self, deadline: float) -> None:
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        handle = self._loop.call_at(deadline, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()

    async def _run(self) -> None:
        assert self._loop is not None and self.t0 is not None
        loop, period, n = self._loop, self.ptime, 0
        try:
            while not self._closed:
                deadline = self.t0 + n * period
                now = loop.time()
                if now < deadline:
                    await self._sleep_until(deadline)
                    now = loop.time()
                late = now - deadline
                if late >= self.max_burst * period:
                    # Fell behind: skip ahead so at most ``max_burst`` frames go out back to back.
                    skip = int(late / period) - self.max_burst + 1
                    for _ in range(skip):
                        self._tick(now, transmit=False)
                    n += skip
                    self._n["skipped"] += skip
                    continue
                self._max_late = max(self._max_late, late)
                self._n["send_ticks"] += 1
                if late <= self.on_time_tolerance:
                    self._n["on_time"] += 1
                self._tick(now, transmit=True)
                n += 1
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("RTP clock on port %s failed", self.local_port)

    def _tick(self, now: float, *, transmit: bool) -> None:
        """One 20 ms slot: play out a received frame, record it, send one frame."""
        self._n["ticks"] += 1
        rx = self._playout(now)
        if self._recorder is not None:
            self._recorder.write(rx)
        tx = self._source.read(FRAME, rx)
        if tx is None:
            self._finish_source()
            self._source = Silence()
            tx = self._silence
        elif len(tx) < FRAME:
            tx = np.pad(tx, (0, FRAME - len(tx)))
        dest = self.remote if self.send_enabled else None
        if self._dtmf_jobs:
            self._dtmf_tick(dest if transmit else None)
            return
        if not transmit or dest is None or self._transport is None:
            self.sender.skip(FRAME)
            return
        pkt = self.sender.packet(self._encode(tx), FRAME)
        self._transport.sendto(pkt.serialize(), dest)

    def _playout(self, now: float) -> Pcm:
        """The next 160 received samples: pull packets from the jitter buffer into the FIFO until
        it holds a frame; a short FIFO is padded with silence (a gap, an underrun)."""
        gap = False
        while len(self._rx_pcm) < FRAME:
            empty = self.jitter.depth == 0
            item = self.jitter.pop_packet(now)
            if item is None:
                if empty:
                    self._rx_resync = True  # underrun: restart at the next packet, as the buffer does
                else:
                    gap = True  # a lost packet or a telephone-event slot: its time passes in silence
                break
            self._feed(item)
        out = self._rx_pcm[:FRAME]
        self._rx_pcm = self._rx_pcm[FRAME:]
        missing = FRAME - len(out)
        if missing:
            out = np.pad(out, (0, missing)) if len(out) else self._silence
            if gap and self._rx_end_ts is not None:
                self._rx_end_ts = (self._rx_end_ts + missing) & 0xFFFFFFFF
        return out

    def _feed(self, item: RtpPacket) -> None:
        """Place one packet's samples in the FIFO by RTP timestamp."""
        ssrc, ts = item.ssrc, item.timestamp
        pcm = self._decode(item.payload)
        n = len(pcm)
        delta = 0 if self._rx_end_ts is None else ts_delta(ts, self._rx_end_ts)
        if self._rx_resync or ssrc != self._rx_ssrc or abs(delta) > self._fifo_cap:
            delta = 0  # a new start, a new source or a timestamp jump: no gap fill
        self._rx_resync = False
        self._rx_ssrc = ssrc
        self._rx_end_ts = (ts + n) & 0xFFFFFFFF
        if delta < 0:
            pcm = pcm[-delta:]  # overlaps samples already queued or played
        elif delta > 0:
            pcm = np.concatenate((np.zeros(delta, dtype=np.int16), pcm))
        if len(pcm):
            fifo = np.concatenate((self._rx_pcm, pcm)) if len(self._rx_pcm) else pcm
            self._rx_pcm = fifo[-self._fifo_cap :]  # bounded: drop the oldest samples

    def _dtmf_tick(self, dest: Addr | None) -> None:
        job = self._dtmf_jobs[0]
        if job.packets:
            item = job.packets.popleft()
            if job.event_ts is None:
                job.event_ts = self.sender.timestamp  # RFC 4733 §2.5.1.2: event start time
            if item.end and not job.packets:
                self._n["dtmf_sent"] += 1
            if dest is not None and self._transport is not None and self.telephone_event_pt is not None:
                pkt = self.sender.event_packet(
                    item.payload, self.telephone_event_pt, job.event_ts, item.marker
                )
                self._transport.sendto(pkt.serialize(), dest)
            self.sender.skip(FRAME)
            return
        # inter-digit gap: normal audio resumes, as silence
        job.gap_ticks -= 1
        if dest is not None and self._transport is not None:
            pkt = self.sender.packet(self._encode(self._silence), FRAME)
            self._transport.sendto(pkt.serialize(), dest)
        else:
            self.sender.skip(FRAME)
        if job.gap_ticks <= 0:
            self._dtmf_jobs.popleft()
            if job.done is not None and not job.done.done():
                job.done.set_result(None)

    # -- results -----------------------------------------------------------------------------
    def stats(self) -> MediaStats:
        js = self.jitter.stats()
        n = self._n
        return MediaStats(
            packets_sent=self.sender.packets_sent,
            packets_received=n["received"],
            packets_lost=js.lost,
            jitter=js.jitter,
            concealed_frames=js.concealed,
            late=js.late,
            duplicates=js.duplicates,
            dropped_malformed=n["malformed"],
            dropped_rtcp=n["rtcp"],
            dropped_unknown_pt=n["unknown_pt"],
            dropped_wrong_source=n["wrong_source"],
            dropped_other=n["other"],
            dtmf_sent=n["dtmf_sent"],
            dtmf_received=len(self.dtmf.digits),
            ticks=n["ticks"],
            on_time=n["on_time"],
            on_time_share=n["on_time"] / n["send_ticks"] if n["send_ticks"] else 1.0,
            skipped_ticks=n["skipped"],
            max_lateness=self._max_late,
            ssrc_changes=js.ssrc_changes,
            last_rx=self.last_rx,
            recorded_seconds=(self._recorder.samples / RATE) if self._recorder else 0.0,
        )

    def inactive_for(self, now: float | None = None) -> float:
        """Seconds since the last valid RTP packet (since start if none yet): the owner sends BYE
        when this exceeds its media timeout."""
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time() if now is None else now
        ref = self.last_rx if self.last_rx is not None else (self.t0 if self.t0 is not None else now)
        return max(0.0, now - ref)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop the clock, release the socket (and pool port), finish the WAV. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            if self._protocol is not None:
                # the socket is really closed in connection_lost, one loop iteration later
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._protocol.lost), 1.0)
        if self._pool and self.local_port:
            self._pool.release(self.local_port)
        if self._recorder is not None:
            self._recorder.close()
        self._finish_source()
        for job in self._dtmf_jobs:
            if job.done is not None and not job.done.done():
                job.done.set_result(None)
        self._dtmf_jobs.clear()

    async def __aenter__(self) -> RtpStream:
        if self._transport is None:
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
