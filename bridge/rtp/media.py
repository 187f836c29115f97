"""One RTP leg, sans I/O: :class:`RtpSession` receives, plays out, sends and reports.

The same object carries the carrier's calls (bridge/carrier/media.py) and the bridge's SIP leg
(bridge/gateway/pyvoip/media.py); the asyncio engine (bridge/net/media.py) owns the sockets
and one shared 20 ms timer. Use::

    s = RtpSession(MediaFormat("PCMU", 0, 101, remote=("192.0.2.1", 4000)), FrameQueues())
    s.start(now)                          # the first 20 ms slot is due at ``now``
    s.receive(datagram, addr, now)        # every datagram of the RTP port (rtcp_port=True: RTCP's)
    s.tick(now)                           # whenever ``now >= s.next_due``: every slot due is served
    s.out, s.events                       # datagrams to send ((bytes, addr, via_rtcp)), events: drain
    s.configure(new_format)               # re-INVITE: codec, remote, direction; SSRC/seq/ts go on
    s.close(now)                          # a last RTCP packet with BYE (RFC 3550 §6.6)

Receive (RFC 3550 App. A.1/A.3/A.8 in :class:`~bridge.rtp.session.JitterBuffer`): packets are
validated, ordered by sequence number, decoded and placed in a bounded sample FIFO by RTP
timestamp (:class:`Playout`), so any packet length (10-60 ms) arrives whole, a timestamp gap
becomes that much silence, and an SSRC change, underrun or timestamp jump restarts playout.
Send: one 20 ms slot at ``t0 + n * 20 ms`` (absolute, never drifting); a slot more than
``max_burst`` slots late is skipped (played out and advanced, not sent) instead of bursting.
RFC 4733 events replace the audio of their slots and keep their start timestamp. RTCP
(RFC 3550 §6): SR or RR + SDES CNAME every ``rtcp_interval`` (App. A.7 randomisation), the far
end's reports about us become :class:`RemoteStats` (loss, jitter, RTT from LSR/DLSR).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .codec import AudioCodec, G711Codec
from .dtmf import DtmfEvent, DtmfPacket, DtmfReceiver, digit_to_event, dtmf_packets
from .packet import PacketKind, RtpPacket, RtpParseError, classify, ts_delta
from .red import RedBlock, RedEncoder, RedError, parse_red
from .rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    Sdes,
    SenderReport,
    build_compound,
    ntp_from_seconds,
    ntp_middle,
    parse_compound,
    round_trip,
    rtcp_interval,
)
from .session import JitterBuffer, RtpSender

RATE = 8000
FRAME = 160  # samples in one 20 ms slot
PERIOD = 0.020
MAX_PAYLOAD = 1600  # 200 ms of G.711: anything longer is not audio we play
UDP_IP_OVERHEAD = 28

Pcm = npt.NDArray[np.int16]
Addr = tuple[str, int]
SILENCE: Pcm = np.zeros(FRAME, dtype=np.int16)
SILENCE.setflags(write=False)


class AudioPort(Protocol):
    """The application side of a leg: once per 20 ms slot it gets the received frame (``live``:
    False while nothing is playing out) and returns the frame to send (None: nothing to send)."""

    def exchange(self, rx: Pcm, live: bool) -> Pcm | None: ...


class StandingDepth:
    """A buffer's standing backlog, observed once per 20 ms slot with :meth:`observe`.

    A frame that comes and goes within a slot is the buffer working; a backlog that stays is
    latency that nothing takes back (what a load stall's burst left in a queue that moves one
    in, one out per slot). ``standing`` is the least depth of the last whole ``window`` slots
    (the gauge); with a ``target``, :meth:`observe` returns True once the depth has been above
    it for ``after`` slots in a row: the caller then drops one frame (counted in ``drained``).
    """

    def __init__(self, target: int | None = None, *, after: int = 5, window: int = 50) -> None:
        self.target = target
        self.after = max(1, after)
        self.window = max(1, window)
        self.standing = 0
        self.peak = 0  # the deepest seen
        self.drained = 0
        self._low: int | None = None
        self._seen = 0
        self._above = 0

    def observe(self, depth: int) -> bool:
        """This slot's depth; True: drop one frame now (a standing backlog above ``target``)."""
        self.peak = max(self.peak, depth)
        low = self._low
        self._low = depth if low is None or depth < low else low
        self._seen += 1
        if self._seen >= self.window:
            self.standing = self._low
            self._low = None
            self._seen = 0
        if self.target is None or depth <= self.target:
            self._above = 0
            return False
        self._above += 1
        if self._above < self.after:
            return False
        self._above = 0
        self.drained += 1
        return True


class FrameQueues:
    """Bounded frame queues for an application that reads and writes at its own pace.

    ``write(pcm16_bytes)`` never blocks and drops the oldest frame when ``tx_max`` wait;
    ``read()`` returns the oldest received frame (bytes) or None. Only live frames are queued,
    so a leg whose far end went silent delivers nothing (the caller's media timeout sees it).
    ``tx_target`` (None: off) is a standing drain on the send queue: when more than that many
    frames wait at the leg's slot for ``drain_after`` slots in a row, the oldest is dropped
    (``tx_drained``), so a backlog a stall left behind does not stay as latency (one in, one
    out per slot never shortens it). ``tx_depth`` is its :class:`StandingDepth` gauge.
    """

    def __init__(self, tx_max: int = 5, rx_max: int = 25, tx_target: int | None = None,
                 drain_after: int = 5) -> None:
        self.tx: deque[bytes] = deque(maxlen=max(1, tx_max))
        self.rx: deque[bytes] = deque(maxlen=max(1, rx_max))
        self.tx_dropped = 0
        self.rx_dropped = 0
        self.tx_depth = StandingDepth(None if tx_target is None else max(1, tx_target), after=drain_after)

    @property
    def tx_drained(self) -> int:
        """Frames the standing drain dropped from the send queue."""
        return self.tx_depth.drained

    def write(self, pcm: bytes) -> None:
        if len(self.tx) == self.tx.maxlen:
            self.tx_dropped += 1
        self.tx.append(pcm)

    def read(self) -> bytes | None:
        return self.rx.popleft() if self.rx else None

    def exchange(self, rx: Pcm, live: bool) -> Pcm | None:
        if live:
            if len(self.rx) == self.rx.maxlen:
                self.rx_dropped += 1
            self.rx.append(rx.tobytes())
        tx = self.tx
        if self.tx_depth.observe(len(tx)):
            tx.popleft()  # a standing backlog: one frame less of delay from now on
        if not tx:
            return None
        return np.frombuffer(tx.popleft(), dtype=np.int16)


# A frame is quiet (a drop for latency may take it: JitterBuffer.QUIET_RUN) when its mean power
# is under -44 dBFS, or 35 dB under the stream's recent peak frame (a 2.8 s half-life).
QUIET_POWER = 200.0 ** 2
QUIET_REL = 0.0003


class Playout:
    """Jitter buffer + decoder + a FIFO of 8 kHz samples placed by RTP timestamp.

    :meth:`push` each accepted packet; :meth:`frame` once per slot returns 160 samples and
    whether anything was playing. The FIFO holds at most ``fifo_ms`` (oldest dropped).
    ``codec`` is an encoding name ("PCMU", "PCMA") or an :class:`~bridge.rtp.codec.AudioCodec`
    (its ``clock_rate`` is the RTP clock: timestamps count ``clock_rate / 8000`` per sample);
    a lost packet inside a playing stream is filled by ``codec.conceal`` (Opus: its PLC), or,
    when the codec has ``recover(next_payload, samples)`` (Opus in-band FEC) and the packet after
    the loss is already here and carries FEC, from that. ``recovered_frames`` /
    ``concealed_frames`` count the 20 ms frames filled each way.
    """

    def __init__(
        self,
        *,
        capacity: int = 16,
        prefetch: int = 3,
        fifo_ms: int = 300,
        clock_rate: int | None = None,
        codec: str | AudioCodec = "PCMU",
        adaptive: bool = False,
        speech: bool = False,
    ) -> None:
        self.codec: AudioCodec = G711Codec(codec) if isinstance(codec, str) else codec
        self.clock_rate = clock_rate or self.codec.clock_rate
        self.ratio = max(1, self.clock_rate // RATE)  # RTP timestamp units per 8 kHz sample
        self.jitter = JitterBuffer(capacity=capacity, prefetch=prefetch, clock_rate=self.clock_rate,
                                   frame_samples=FRAME * self.ratio, adaptive=adaptive,
                                   start_cover=JitterBuffer.START_COVER if speech else 0, quiet_drops=speech)
        self.decode = self.codec.decode
        self.conceal = self.codec.conceal
        self.recover: Callable[[bytes, int], Pcm | None] | None = getattr(self.codec, "recover", None)
        self.fifo_cap = max(FRAME, RATE * fifo_ms // 1000)  # samples at 8 kHz
        self._pcm: Pcm = np.zeros(0, dtype=np.int16)
        self._end_ts: int | None = None  # RTP timestamp just after the FIFO's last sample
        self._ssrc: int | None = None
        self._resync = True  # the next packet starts playout afresh (no gap fill)
        self.concealed_samples = 0
        self.recovered_frames = 0  # lost frames rebuilt from the next packet's FEC
        self.red_recovered_frames = 0  # lost frames played from a later packet's RED copy (RFC 2198)
        self._back = 0  # stretched slots whose clock rewind waits for the slot's end
        self.concealed_frames = 0  # lost frames (or parts) filled by PLC / silence
        self._level = 0.0
        self._quiet_run = 0
        self.last_arrival: float | None = None  # when the first packet of the last frame arrived

    def set_codec(self, codec: AudioCodec) -> None:
        """A new codec on the same clock (re-INVITE from PCMU to PCMA)."""
        self.codec = codec
        self.decode = codec.decode
        self.conceal = codec.conceal
        self.recover = getattr(codec, "recover", None)

    def _fill(self, samples: int, following: RtpPacket | None) -> Pcm:
        """``samples`` for a lost stretch: its last 20 ms from ``following``'s FEC when it
        carries some (the rest, if longer, concealed first, as libopus wants), else concealed."""
        recover = self.recover
        if recover is not None and following is not None and samples >= FRAME:
            before = samples - FRAME
            head = self.conceal(before) if before else None
            fec = recover(following.payload, FRAME)
            if fec is not None:
                self.recovered_frames += 1
                self._concealed(before)
                return np.concatenate((head, fec)) if head is not None else fec
            tail = self.conceal(FRAME)
            self._concealed(samples)
            return np.concatenate((head, tail)) if head is not None else tail
        self._concealed(samples)
        return self.conceal(samples)

    def _concealed(self, samples: int) -> None:
        if samples > 0:
            self.concealed_samples += samples
            self.concealed_frames += -(-samples // FRAME)

    def _pop(self, now: float) -> RtpPacket | None:
        """The jitter buffer's next packet; its clock changes (stretch) applied first."""
        jb = self.jitter
        item = jb.pop_packet(now)
        if item is not None and self.last_arrival is None:
            self.last_arrival = jb.last_arrival
        if jb.adaptive:
            self._back += jb.take_stretched()
            if item is not None:
                self._rewind()  # before this packet is placed; else after the concealed slot
            if jb.last_redundant:
                self.red_recovered_frames += 1
        return item

    def _rewind(self) -> None:
        """The buffer stretched (concealed a slot that no lost packet stood for): the clock goes
        back by that much, so the packets after it play whole."""
        if self._back and self._end_ts is not None:
            self._end_ts = (self._end_ts - self._back * FRAME * self.ratio) & 0xFFFFFFFF
        self._back = 0

    def frame(self, now: float) -> tuple[Pcm, bool]:
        """The next 160 samples and whether anything was playing (see `_frame`). An adaptive
        buffer's drop for latency is done here, on a quiet frame of a pause: that frame is
        discarded and the slot plays the next packet (the decoder's state stays whole)."""
        self.last_arrival = None
        out, live = self._frame(now)
        jb = self.jitter
        if jb.quiet_drops:
            self._quiet_run = self._quiet_run + 1 if self._quiet(out) else 0
            if self._quiet_run >= jb.QUIET_RUN and live and not len(self._pcm) and jb.take_quiet_drop():
                self.last_arrival = None
                out, live = self._frame(now)
        return out, live

    def _quiet(self, out: Pcm) -> bool:
        """True when ``out`` is quiet (QUIET_POWER, QUIET_REL); tracks the stream's peak power."""
        f = out.astype(np.float32)
        e = float(np.dot(f, f)) / FRAME
        self._level = max(e, self._level * 0.995)
        return e < max(QUIET_POWER, self._level * QUIET_REL)

    def _frame(self, now: float) -> tuple[Pcm, bool]:
        """The next 160 samples: pull packets until the FIFO holds a frame; a short FIFO is
        padded (concealment inside a playing stream, else silence)."""
        gap = False
        jb = self.jitter
        if jb.adaptive:
            self._skip(jb.take_skipped())
        if not len(self._pcm) and jb.depth:
            # Fast path: an empty FIFO and a next packet of exactly one slot, in sequence.
            item = self._pop(now)
            if item is not None:
                if not self._resync and item.ssrc == self._ssrc and item.timestamp == self._end_ts:
                    pcm = self.decode(item.payload)
                    if len(pcm) == FRAME:
                        self._end_ts = (item.timestamp + FRAME * self.ratio) & 0xFFFFFFFF
                        return pcm, True
                    self._feed(item, pcm)
                else:
                    self._feed(item)
            else:
                gap = True  # the buffer was not empty: a lost packet, an event slot or prefetching
        while len(self._pcm) < FRAME and not gap:
            empty = jb.depth == 0
            item = self._pop(now)
            if item is None:
                if empty and not jb.playing:
                    self._resync = True  # underrun: restart at the next packet, as the buffer does
                else:
                    gap = True  # a lost packet or a telephone-event slot: its time passes
                break
            self._feed(item)
        have = len(self._pcm)
        live = have > 0 or (gap and jb.playing)
        if have >= FRAME:
            out = self._pcm[:FRAME]
            self._pcm = self._pcm[FRAME:]
            return out, live
        if gap and jb.playing:
            # a lost packet: from the next one's FEC when it is here and follows on, else concealed
            nxt = jb.peek_packet()
            follows = nxt is not None and self._end_ts is not None and not have and \
                nxt.timestamp == (self._end_ts + FRAME * self.ratio) & 0xFFFFFFFF
            fill = self._fill(FRAME - have, nxt if follows else None)
            out = np.concatenate((self._pcm, fill)) if have else fill
        else:
            out = np.pad(self._pcm, (0, FRAME - have)) if have else SILENCE
        self._pcm = self._pcm[:0]
        if gap and self._end_ts is not None:
            self._end_ts = (self._end_ts + (FRAME - have) * self.ratio) & 0xFFFFFFFF
        if self._back:
            self._rewind()
        return out, live

    def _skip(self, frames: int) -> None:
        """The jitter buffer dropped ``frames`` to cut the delay: their time is gone, not lost."""
        if frames and self._end_ts is not None:
            self._end_ts = (self._end_ts + frames * FRAME * self.ratio) & 0xFFFFFFFF

    def _feed(self, item: RtpPacket, pcm: Pcm | None = None) -> None:
        ssrc, ts = item.ssrc, item.timestamp
        delta = 0 if self._end_ts is None else ts_delta(ts, self._end_ts)
        if self.ratio != 1:
            delta = delta // self.ratio if delta >= 0 else -(-delta // self.ratio)  # in 8 kHz samples
        if self._resync or ssrc != self._ssrc or abs(delta) > self.fifo_cap:
            delta = 0  # a new start, a new source or a timestamp jump: no gap fill
        fill = None
        if delta > 0 and pcm is None:
            fill = self._fill(delta, item)  # before decoding what follows the gap (the PLC's order)
        if pcm is None:
            pcm = self.decode(item.payload)
        self._resync = False
        self._ssrc = ssrc
        self._end_ts = (ts + len(pcm) * self.ratio) & 0xFFFFFFFF
        if delta < 0:
            pcm = pcm[-delta:]  # overlaps samples already queued or played
        elif delta > 0:
            pcm = np.concatenate((fill if fill is not None else np.zeros(delta, dtype=np.int16), pcm))
        if len(pcm):
            fifo = np.concatenate((self._pcm, pcm)) if len(self._pcm) else pcm
            self._pcm = fifo[-self.fifo_cap :]  # bounded: drop the oldest samples

    @property
    def buffered(self) -> int:
        """Samples waiting in the FIFO."""
        return len(self._pcm)


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """What a leg sends and accepts, from our side of the offer/answer.

    ``remote`` is where RTP goes (None: nowhere, e.g. c=0.0.0.0 hold); ``send`` False stops
    sending (recvonly/inactive) but not RTCP. ``remote_rtcp`` None means the RTP port + 1
    (RFC 3550 §11), or the RTP address itself with ``rtcp_mux`` (RFC 5761).
    """

    codec: str = "PCMU"
    payload_type: int = 0
    telephone_event_pt: int | None = 101
    remote: Addr | None = None
    send: bool = True
    recv: bool = True
    remote_rtcp: Addr | None = None
    rtcp_mux: bool = False
    red_pt: int | None = None  # RFC 2198 redundancy accepted on this payload type (None: not negotiated)
    red_distance: int = 0  # send: each packet also carries the previous N frames (0: send plain)


@dataclass(frozen=True, slots=True)
class RemoteStats:
    """What the far end last reported about our stream (RFC 3550 §6.4.1), and the RTT."""

    ssrc: int  # the reporter
    fraction_lost: float
    cumulative_lost: int
    highest_seq: int
    jitter: float  # seconds
    rtt: float | None  # seconds, from this report's LSR/DLSR (None: it named no SR of ours)
    at: float  # our clock


# -- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """A new RFC 4733 event from the far end (one per event, however many packets)."""

    event: DtmfEvent


@dataclass(frozen=True, slots=True)
class DtmfSent:
    """A queued digit went out: its end packets and the gap after it."""

    job: int


@dataclass(frozen=True, slots=True)
class DtmfCancelled:
    """A queued digit will not be sent (session closed, telephone-event no longer negotiated)."""

    job: int


@dataclass(frozen=True, slots=True)
class ReportReceived:
    """An SR/RR from the far end carried a report block about us."""

    stats: RemoteStats


@dataclass(frozen=True, slots=True)
class RemoteBye:
    """The far end sent RTCP BYE (RFC 3550 §6.6)."""

    ssrcs: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Latched:
    """Symmetric RTP: we now send to the address the far end's media really comes from."""

    addr: Addr


MediaEvent = DtmfReceived | DtmfSent | DtmfCancelled | ReportReceived | RemoteBye | Latched


@dataclass(slots=True)
class _DtmfJob:
    job: int
    packets: deque[DtmfPacket]
    gap_slots: int
    event_ts: int | None = None


COUNTERS = (
    "received", "rx_audio", "rx_events", "malformed", "other", "rtcp_on_rtp_port", "unknown_pt",
    "wrong_source", "bad_payload", "ticks", "send_ticks", "on_time", "skipped", "tx_underruns",
    "tx_dtmf_packets", "dtmf_sent", "rtcp_sent", "rtcp_received", "rtcp_malformed", "remote_byes",
    "rx_red", "red_malformed", "red_copies",
)  # fmt: skip


class RtpSession:
    """One leg's RTP and RTCP in virtual time (see the module docstring for the call pattern).

    ``latch=True``: symmetric RTP (RFC 4961), the first valid packet's source becomes the
    send address and then the only accepted source. ``ntp_offset`` turns ``now`` into NTP
    seconds for SR timestamps (the engine passes wall clock minus its monotonic clock).
    """

    def __init__(
        self,
        fmt: MediaFormat,
        audio: AudioPort,
        *,
        ssrc: int | None = None,
        sequence_number: int | None = None,
        timestamp: int | None = None,
        rng: random.Random | None = None,
        latch: bool = False,
        max_burst: int = 3,
        on_time_tolerance: float = 0.005,
        jitter_capacity: int = 16,
        jitter_prefetch: int = 3,
        jitter_adaptive: bool = False,
        jitter_speech: bool = False,
        fifo_ms: int = 300,
        rtcp: bool = True,
        rtcp_interval: float = 5.0,
        rtcp_bandwidth: float = 500.0,
        cname: str | None = None,
        ntp_offset: float = 0.0,
        dtmf_gap_ms: int = 60,
        codec: AudioCodec | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self._own_codec = codec is None  # G.711 by name: re-INVITEs may switch PCMU <-> PCMA
        self.codec: AudioCodec = codec if codec is not None else G711Codec(fmt.codec)
        self.clock_rate = self.codec.clock_rate
        self._step = FRAME * max(1, self.clock_rate // RATE)  # RTP timestamp units per 20 ms slot
        self.audio = audio
        self.fmt = fmt
        self.latch = latch
        self.latched = False
        self.remote: Addr | None = fmt.remote
        self.remote_rtcp: Addr | None = None
        self._rtcp_latched = False
        self.max_burst = max(1, max_burst)
        self.on_time_tolerance = on_time_tolerance
        self.sender = RtpSender(
            fmt.payload_type, ssrc=ssrc, sequence_number=sequence_number, timestamp=timestamp,
            clock_rate=self.clock_rate, rng=rng or random.SystemRandom(),
        )  # fmt: skip
        self.playout = Playout(capacity=jitter_capacity, prefetch=jitter_prefetch, fifo_ms=fifo_ms, codec=self.codec,
                               adaptive=jitter_adaptive, speech=jitter_speech)
        self.jitter_depth = StandingDepth()  # packets left in the receive buffer after each slot: a gauge
        self._encode = self.codec.encode
        self.dtmf = DtmfReceiver()
        self.dtmf_gap_slots = max(1, dtmf_gap_ms // 20)
        self._dtmf_jobs: deque[_DtmfJob] = deque()
        self._job_ids = 0
        self.rtcp_enabled = rtcp
        self.rtcp_min_interval = rtcp_interval
        self.rtcp_bandwidth = rtcp_bandwidth
        self.cname = cname or f"jego-{self.sender.ssrc:08x}"
        self.ntp_offset = ntp_offset
        self.out: list[tuple[bytes, Addr, bool]] = []
        self.events: list[MediaEvent] = []
        self.n = dict.fromkeys(COUNTERS, 0)
        self.max_lateness = 0.0
        self.t0: float | None = None
        self.last_rx: float | None = None
        self.remote_stats: RemoteStats | None = None
        self.rtt: float | None = None
        self.closed = False
        self._slot_n = 0
        self.last_hold: float | None = None  # seconds the last slot's frame waited in the playout buffer
        self._rtcp_next: float | None = None
        self._avg_rtcp = 100.0
        self._sent_at_reports = (0, 0)  # packets_sent at the last two reports (§6.4: SR or RR)
        self._lsr: OrderedDict[int, tuple[int, float]] = OrderedDict()  # SSRC -> (LSR, arrival)
        self._red: RedEncoder | None = None
        self._set_red()
        self._set_remote_rtcp()

    def _set_red(self) -> None:
        fmt = self.fmt
        want = fmt.red_distance if fmt.red_pt is not None else 0
        if not want:
            self._red = None
        elif self._red is None or self._red.payload_type != fmt.payload_type:
            self._red = RedEncoder(fmt.payload_type, want)
        else:
            self._red.set_distance(want)  # the frames already sent stay in its history

    def set_red_distance(self, distance: int) -> None:
        """Send each packet with the previous ``distance`` frames (RFC 2198) from the next slot on,
        e.g. deeper while the far end's RTCP reports loss; only when RED is negotiated and sent
        (``fmt.red_pt`` set, ``fmt.red_distance`` > 0), else nothing changes."""
        fmt = self.fmt
        if fmt.red_pt is None or not fmt.red_distance or distance == fmt.red_distance:
            return
        self.fmt = replace(fmt, red_distance=max(1, distance))
        self._set_red()

    # -- configuration -----------------------------------------------------------------------
    def configure(self, fmt: MediaFormat) -> None:
        """Apply a new offer/answer (re-INVITE: hold, resume, codec or address change). Our SSRC,
        sequence number and timestamp run on; a new remote address is latched afresh."""
        old = self.fmt
        self.fmt = fmt
        if fmt.codec != old.codec:
            if not self._own_codec:
                raise ValueError(f"this leg's codec is {self.codec.name}: it cannot change to {fmt.codec}")
            self.codec = G711Codec(fmt.codec)
            self._encode = self.codec.encode
            self.playout.set_codec(self.codec)
        self.sender.payload_type = fmt.payload_type
        self._set_red()
        if fmt.remote is not None and fmt.remote != old.remote:
            self.remote = fmt.remote
            self.latched = False
            self._rtcp_latched = False
        elif fmt.remote is None:
            self.remote = None
        self._set_remote_rtcp()
        if fmt.telephone_event_pt is None:
            self._cancel_dtmf()

    def _set_remote_rtcp(self) -> None:
        if self._rtcp_latched:
            return
        fmt = self.fmt
        if fmt.rtcp_mux:
            self.remote_rtcp = self.remote
        elif fmt.remote_rtcp is not None and not self.latched:
            self.remote_rtcp = fmt.remote_rtcp
        elif self.remote is not None:
            self.remote_rtcp = (self.remote[0], self.remote[1] + 1)  # RFC 3550 §11
        else:
            self.remote_rtcp = None

    @property
    def ssrc(self) -> int:
        return self.sender.ssrc

    @property
    def send_enabled(self) -> bool:
        return self.fmt.send

    # -- clock ---------------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Start the 20 ms clock: slot 0 is due at ``now``. Idempotent."""
        if self.t0 is not None or self.closed:
            return
        self.t0 = now
        self._slot_n = 0
        if self.rtcp_enabled:
            self._rtcp_next = now + self._interval(initial=True)

    @property
    def running(self) -> bool:
        return self.t0 is not None and not self.closed

    @property
    def next_due(self) -> float | None:
        """When :meth:`tick` has work next (None: not started or closed)."""
        if not self.running:
            return None
        assert self.t0 is not None
        return self.t0 + self._slot_n * PERIOD

    def tick(self, now: float, tolerance: float = 0.001) -> None:
        """Serve every slot due at ``now`` (absolute schedule), then RTCP if due."""
        if not self.running:
            return
        assert self.t0 is not None
        period = PERIOD
        while True:
            deadline = self.t0 + self._slot_n * period
            if deadline > now + tolerance:
                break
            late = now - deadline
            if late >= self.max_burst * period:
                # Fell behind: skip ahead so at most ``max_burst`` slots go out back to back.
                skip = int(late / period) - self.max_burst + 1
                for k in range(skip):
                    self._slot(now, transmit=False, deadline=deadline + k * period)
                self._slot_n += skip
                self.n["skipped"] += skip
                continue
            late = max(0.0, late)
            self.max_lateness = max(self.max_lateness, late)
            self.n["send_ticks"] += 1
            if late <= self.on_time_tolerance:
                self.n["on_time"] += 1
            self._slot(now, transmit=True, deadline=deadline)
            self._slot_n += 1
        if self._rtcp_next is not None and now >= self._rtcp_next:
            self._send_report(now)
            self._rtcp_next = now + self._interval(initial=False)

    def _slot(self, now: float, *, transmit: bool, deadline: float) -> None:
        self.n["ticks"] += 1
        rx, live = self.playout.frame(now)
        arrived = self.playout.last_arrival
        # how long this slot's frame waited in the receive buffer, against the slot's own instant
        # (t0 + n * 20 ms): mouth to ear less this is the latency at the wire (scripts/bench_soak.py)
        self.last_hold = None if arrived is None else deadline - arrived
        self.jitter_depth.observe(self.playout.jitter.depth)
        tx = self.audio.exchange(rx, live)
        if tx is None:
            tx = SILENCE
            self.n["tx_underruns"] += 1
        elif len(tx) != FRAME:
            tx = np.pad(tx[:FRAME], (0, max(0, FRAME - len(tx))))
        dest = self.remote if self.fmt.send else None
        if self._dtmf_jobs and self.fmt.telephone_event_pt is not None:
            if self._dtmf_slot(dest if transmit else None):
                return
        if not transmit or dest is None:
            self.sender.skip(self._step)
            if self._red is not None:
                self._red.reset()
            return
        red = self._red
        if red is not None and self.fmt.red_pt is not None:
            payload = red.wrap(self._encode(tx), self.sender.timestamp)
            pkt = self.sender.packet(payload, self._step, payload_type=self.fmt.red_pt)
        else:
            pkt = self.sender.packet(self._encode(tx), self._step)
        self.out.append((pkt.serialize(), dest, False))

    # -- DTMF send -----------------------------------------------------------------------------
    def send_dtmf(
        self, digits: str, *, duration_ms: int = 100, volume: int = 10, gap_ms: int | None = None
    ) -> list[int]:
        """Queue RFC 4733 events, one job per digit (``duration_ms`` each, then ``gap_ms``,
        default ``dtmf_gap_ms``, of audio); :class:`DtmfSent` follows per job. Raises
        ValueError without a telephone-event PT or for a bad digit (nothing is queued then)."""
        if self.fmt.telephone_event_pt is None:
            raise ValueError("telephone-event was not negotiated")
        for d in digits:
            digit_to_event(d)
        gap = self.dtmf_gap_slots if gap_ms is None else max(1, gap_ms // 20)
        jobs = []
        for d in digits:
            self._job_ids += 1
            pkts = deque(dtmf_packets(d, duration_ms=duration_ms, volume=volume, clock_rate=self.clock_rate))
            self._dtmf_jobs.append(_DtmfJob(self._job_ids, pkts, gap))
            jobs.append(self._job_ids)
        return jobs

    def _dtmf_slot(self, dest: Addr | None) -> bool:
        """One slot of the current event: True when it replaced the audio of this slot."""
        job = self._dtmf_jobs[0]
        te_pt = self.fmt.telephone_event_pt
        assert te_pt is not None
        if job.packets:
            item = job.packets.popleft()
            if job.event_ts is None:
                job.event_ts = self.sender.timestamp  # RFC 4733 §2.5.1.2: the event's start time
            if dest is not None:
                pkt = self.sender.event_packet(item.payload, te_pt, job.event_ts, item.marker)
                self.out.append((pkt.serialize(), dest, False))
                self.n["tx_dtmf_packets"] += 1
            self.sender.skip(self._step)  # the media clock runs on underneath the event
            if not job.packets:
                self.n["dtmf_sent"] += 1
            return True
        job.gap_slots -= 1  # inter-digit gap: this slot carries audio again
        if job.gap_slots <= 0:
            self._dtmf_jobs.popleft()
            self.events.append(DtmfSent(job.job))
        return False

    def _cancel_dtmf(self) -> None:
        while self._dtmf_jobs:
            self.events.append(DtmfCancelled(self._dtmf_jobs.popleft().job))

    @property
    def dtmf_pending(self) -> int:
        return len(self._dtmf_jobs)

    # -- receive -------------------------------------------------------------------------------
    def receive(self, data: bytes, addr: Addr, now: float, *, rtcp_port: bool = False) -> None:
        """One datagram from the RTP port (or, ``rtcp_port=True``, from the RTCP port)."""
        if self.closed:
            return
        if rtcp_port:
            self._on_rtcp(data, addr, now)
            return
        kind = classify(data)
        if kind is PacketKind.RTCP:
            if self.fmt.rtcp_mux:
                self._on_rtcp(data, addr, now)
            else:
                self.n["rtcp_on_rtp_port"] += 1  # RFC 5761 not negotiated: not ours to read
            return
        if kind is not PacketKind.RTP:
            self.n["malformed" if kind is PacketKind.UNKNOWN else "other"] += 1
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpParseError:
            self.n["malformed"] += 1
            return
        fmt = self.fmt
        pt = pkt.payload_type
        red = fmt.red_pt is not None and pt == fmt.red_pt
        if red:
            try:
                blocks = parse_red(pkt.payload)
            except RedError:
                self.n["red_malformed"] += 1
                return
            if blocks[-1].payload_type != fmt.payload_type:
                self.n["unknown_pt"] += 1
                return
            red_pkt = pkt
            pkt = RtpPacket(fmt.payload_type, pkt.sequence_number, pkt.timestamp, pkt.ssrc, blocks[-1].data,
                            pkt.marker)
            pt = fmt.payload_type
        is_audio = pt == fmt.payload_type
        is_event = fmt.telephone_event_pt is not None and pt == fmt.telephone_event_pt
        if not (is_audio or is_event):
            self.n["unknown_pt"] += 1
            return
        if is_audio and not 0 < len(pkt.payload) <= MAX_PAYLOAD:
            self.n["bad_payload"] += 1
            return
        if addr != self.remote:
            if self.latch and not self.latched:
                self.remote = addr
                self.latched = True
                self._set_remote_rtcp_latched(addr)
                self.events.append(Latched(addr))
            elif self.remote is not None:
                self.n["wrong_source"] += 1
                return
        if self.latch:
            self.latched = True
        self.last_rx = now
        self.n["received"] += 1
        self.n["rx_audio" if is_audio else "rx_events"] += 1
        self.playout.jitter.push(pkt, now, audio=is_audio)
        if red:
            self.n["rx_red"] += 1
            self._red_copies(red_pkt, blocks)
        if is_event:
            ev = self.dtmf.receive(pkt.payload, pkt.timestamp, ssrc=pkt.ssrc, marker=pkt.marker)
            if ev is not None:
                self.events.append(DtmfReceived(ev))

    def _red_copies(self, pkt: RtpPacket, blocks: list[RedBlock]) -> None:
        """RFC 2198's redundant blocks: the frame ``k`` packets back (offset ``k`` x 20 ms) fills
        that slot when the packet itself was lost."""
        step = self._step
        jb = self.playout.jitter
        for blk in blocks[:-1]:
            k, rest = divmod(blk.ts_offset, step)
            if rest or not 0 < k <= 8 or blk.payload_type != self.fmt.payload_type or not blk.data:
                continue
            copy = RtpPacket(blk.payload_type, (pkt.sequence_number - k) & 0xFFFF,
                             (pkt.timestamp - blk.ts_offset) & 0xFFFFFFFF, pkt.ssrc, blk.data)
            if jb.push_redundant(copy, k):
                self.n["red_copies"] += 1

    def _set_remote_rtcp_latched(self, addr: Addr) -> None:
        if self._rtcp_latched:
            return
        self.remote_rtcp = addr if self.fmt.rtcp_mux else (addr[0], addr[1] + 1)

    # -- RTCP ----------------------------------------------------------------------------------
    def _ntp(self, now: float) -> int:
        return ntp_from_seconds(now + self.ntp_offset)

    def _on_rtcp(self, data: bytes, addr: Addr, now: float) -> None:
        try:
            packets = parse_compound(data)
        except RtcpError:
            self.n["rtcp_malformed"] += 1
            return
        self.n["rtcp_received"] += 1
        if self.latch and not self._rtcp_latched:
            self.remote_rtcp = addr  # symmetric RTCP (RFC 4961)
            self._rtcp_latched = True
        arrival = self._ntp(now)
        for p in packets:
            if isinstance(p, SenderReport):
                self._lsr[p.ssrc] = (ntp_middle(p.ntp), now)
                self._lsr.move_to_end(p.ssrc)
                while len(self._lsr) > 8:
                    self._lsr.popitem(last=False)
            if isinstance(p, SenderReport | ReceiverReport):
                for block in p.reports:
                    if block.ssrc == self.sender.ssrc:
                        self._on_report(p.ssrc, block, arrival, now)
            elif isinstance(p, Bye):
                self.n["remote_byes"] += 1
                self.events.append(RemoteBye(p.ssrcs, p.reason))

    def _on_report(self, reporter: int, block: ReportBlock, arrival: int, now: float) -> None:
        rtt = round_trip(arrival, block)
        if rtt is not None:
            self.rtt = rtt
        stats = RemoteStats(
            ssrc=reporter, fraction_lost=block.fraction, cumulative_lost=block.cumulative_lost,
            highest_seq=block.highest_seq, jitter=block.jitter / self.clock_rate, rtt=rtt, at=now,
        )  # fmt: skip
        self.remote_stats = stats
        self.events.append(ReportReceived(stats))

    def _interval(self, *, initial: bool) -> float:
        we_sent = self.sender.packets_sent != self._sent_at_reports[0]
        remote_sends = self.last_rx is not None
        return rtcp_interval(
            members=2, senders=int(we_sent) + int(remote_sends), rtcp_bw=self.rtcp_bandwidth, we_sent=we_sent,
            avg_rtcp_size=self._avg_rtcp, initial=initial, rand=self.rng.random(), tmin=self.rtcp_min_interval,
        )  # fmt: skip

    def report_packets(self, now: float) -> list[RtcpPacket]:
        """The SR (if we sent RTP since the report before last, §6.4) or RR, then SDES CNAME."""
        blocks: list[ReportBlock] = []
        src = self.playout.jitter.source
        if src is not None and src.expected > 0:
            fraction = src.fraction_lost()
            lsr, dlsr = 0, 0
            seen = self._lsr.get(src.ssrc)
            if seen is not None:
                lsr, at = seen
                dlsr = int(max(0.0, now - at) * 65536)  # §6.4.1: units of 1/65536 s
            blocks.append(ReportBlock(
                src.ssrc, min(255, int(fraction * 256)), src.cumulative_lost, src.extended_max & 0xFFFFFFFF,
                int(src.jitter), lsr, dlsr,
            ))  # fmt: skip
        sent = self.sender.packets_sent
        report: RtcpPacket
        if sent != self._sent_at_reports[0]:
            report = SenderReport(
                self.sender.ssrc, self._ntp(now), self._rtp_timestamp_at(now), sent, self.sender.octets_sent,
                tuple(blocks),
            )  # fmt: skip
        else:
            report = ReceiverReport(self.sender.ssrc, tuple(blocks))
        self._sent_at_reports = (self._sent_at_reports[1], sent)
        return [report, Sdes.cname(self.sender.ssrc, self.cname)]

    def _rtp_timestamp_at(self, now: float) -> int:
        """Our media clock at ``now`` (§6.4.1: the SR's RTP timestamp matches its NTP time)."""
        due = self.next_due
        if due is None:
            return self.sender.timestamp
        return (self.sender.timestamp - round((due - now) * self.clock_rate)) & 0xFFFFFFFF

    def _send_report(self, now: float, bye: str | None = None) -> None:
        dest = self.remote_rtcp
        if dest is None:
            return
        packets = self.report_packets(now)
        if bye is not None:
            packets.append(Bye((self.sender.ssrc,), bye))
        data = build_compound(packets)
        # §6.3.3: avg_rtcp_size = 1/16 * packet_size + 15/16 * avg_rtcp_size (with UDP/IP)
        self._avg_rtcp += (len(data) + UDP_IP_OVERHEAD - self._avg_rtcp) / 16
        self.out.append((data, dest, not self.fmt.rtcp_mux))
        self.n["rtcp_sent"] += 1

    # -- end -----------------------------------------------------------------------------------
    def close(self, now: float, reason: str = "") -> None:
        """Stop the clock; queue a last SR/RR with BYE (RFC 3550 §6.6) when RTCP is on; cancel
        queued digits. Idempotent. Drain ``out`` and ``events`` afterwards."""
        if self.closed:
            return
        if self.rtcp_enabled and self.t0 is not None:
            self._send_report(now, bye=reason)
        self.closed = True
        self._cancel_dtmf()

    # -- results -------------------------------------------------------------------------------
    def inactive_for(self, now: float) -> float:
        """Seconds since the last valid RTP packet (since start if none yet)."""
        ref = self.last_rx if self.last_rx is not None else (self.t0 if self.t0 is not None else now)
        return max(0.0, now - ref)

    def buffers(self) -> dict[str, int]:
        """Which buffer of this leg holds what, in 20 ms frames: the jitter buffer (``jitter``: now,
        ``jitter_standing``: the least of the last second, ``jitter_peak``), the playout FIFO
        (``fifo``, rounded down) and, when the audio port is a :class:`FrameQueues`, its send
        queue (``tx``, ``tx_standing``, ``tx_drained``) and receive queue (``rx``)."""
        jd = self.jitter_depth
        out = {"jitter": self.playout.jitter.depth, "jitter_standing": jd.standing, "jitter_peak": jd.peak,
               "fifo": self.playout.buffered // FRAME}
        q = self.audio
        if isinstance(q, FrameQueues):
            out.update(tx=len(q.tx), tx_standing=q.tx_depth.standing, tx_drained=q.tx_drained, rx=len(q.rx))
        return out

    @property
    def on_time_share(self) -> float:
        st = self.n["send_ticks"]
        return self.n["on_time"] / st if st else 1.0


__all__ = [
    "AudioPort",
    "DtmfCancelled",
    "DtmfReceived",
    "DtmfSent",
    "FrameQueues",
    "Latched",
    "MediaEvent",
    "MediaFormat",
    "Playout",
    "RemoteBye",
    "RemoteStats",
    "ReportReceived",
    "RtpSession",
    "StandingDepth",
]
