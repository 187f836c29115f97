"""Per-stream RTP state: RFC 3550 App. A.1 sequence validation, A.3 loss and A.8 jitter
(:class:`RtpSource`), a bounded jitter buffer keyed on the extended sequence number
(:class:`JitterBuffer`) and the sending side's seq/ts/ssrc counters (:class:`RtpSender`).

Receive side: ``jb = JitterBuffer()``; for each parsed packet call ``jb.push(packet, now)``
(``audio=False`` for telephone-event packets, which only occupy their sequence slot); every
20 ms call ``jb.pop(now)`` and conceal ``None`` with silence. Read ``jb.stats()``.
Send side: ``tx = RtpSender(payload_type=0)``; ``tx.packet(payload, 160).serialize()`` per frame.
Times (``now``) are seconds from any monotonic clock supplied by the caller.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum

from .packet import RTP_SEQ_MOD, RtpPacket, seq_delta, ts_delta

# The bridge's app leg plays out from 1 frame on a clean path (issue 15: <= 40 ms added each
# way); its adaptive target raises that for measured jitter and for loss runs.
APP_LEG_FLOOR = 1

# RFC 3550 App. A.1 constants.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


class RtpSource:
    """Reception state of one SSRC (RFC 3550 App. A.1, A.3, A.8).

    Create it on the first packet of an SSRC, then call :meth:`update` for every packet; it
    returns the extended (cycle-counting) sequence number, or ``None`` while the source is
    on probation or when the packet is a wild jump (A.1 ``update_seq`` returning 0).
    """

    def __init__(self, ssrc: int, seq: int, clock_rate: int = 8000, probation: int = MIN_SEQUENTIAL) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0
        # A.1: "init_seq(s, seq); s->max_seq = seq - 1; s->probation = MIN_SEQUENTIAL;"
        self._init_seq(seq)
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = probation
        self.resyncs = 0
        self._last_arrival: tuple[float, int] | None = None  # (arrival in ts units, rtp ts)
        self.jitter = 0.0  # A.8, in timestamp units

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update_seq(self, seq: int) -> bool:
        """RFC 3550 App. A.1 ``update_seq``: True when the packet counts as valid."""
        seq &= 0xFFFF
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            # Source is not valid until MIN_SEQUENTIAL packets with sequential numbers arrive.
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            # In order, with permissible gap.
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # sequence number wrapped
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            # The sequence number made a very large jump.
            if seq == self.bad_seq:
                # Two sequential packets: assume the other side restarted without telling us.
                self._init_seq(seq)
                self.resyncs += 1
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet
        self.received += 1
        return True

    def extended(self, seq: int) -> int:
        """Extended sequence number of ``seq`` relative to the highest seen (handles 65535 -> 0)."""
        return self.cycles + self.max_seq + seq_delta(seq, self.max_seq)

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    def update_jitter(self, timestamp: int, arrival: float) -> None:
        """RFC 3550 App. A.8: J += (|D(i-1,i)| - J) / 16, with arrival in seconds."""
        arrival_ts = arrival * self.clock_rate
        if self._last_arrival is not None:
            # D(i,j) = (Rj - Ri) - (Sj - Si), timestamps compared modulo 2^32
            last_arrival, last_ts = self._last_arrival
            d = (arrival_ts - last_arrival) - ts_delta(timestamp, last_ts)
            self.jitter += (abs(d) - self.jitter) / 16.0
        self._last_arrival = (arrival_ts, timestamp)

    def update(self, packet: RtpPacket, now: float, *, measure_jitter: bool = True) -> int | None:
        """Validate ``packet`` (A.1), update jitter (A.8); return its extended seq or None."""
        if not self.update_seq(packet.sequence_number):
            return None
        if measure_jitter:
            self.update_jitter(packet.timestamp, now)
        return self.extended(packet.sequence_number)

    @property
    def expected(self) -> int:
        """A.3: packets expected = extended max - base + 1 (0 while on probation)."""
        if self.probation:
            return 0
        return self.extended_max - self.base_seq + 1

    @property
    def cumulative_lost(self) -> int:
        """A.3 cumulative number of packets lost (negative when duplicates arrived), clamped to 24 bits."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    def fraction_lost(self) -> float:
        """A.3 fraction lost since the previous call (0.0 .. 1.0); advances the interval."""
        expected_interval = self.expected - self.expected_prior
        self.expected_prior = self.expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost = expected_interval - received_interval
        if expected_interval <= 0 or lost <= 0:
            return 0.0
        return lost / expected_interval

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate


class PushResult(Enum):
    """What :meth:`JitterBuffer.push` did with a packet."""

    ACCEPTED = "accepted"
    PROBATION = "probation"  # held until the source is validated (A.1), then released
    INVALID = "invalid"  # A.1 wild jump, dropped
    DUPLICATE = "duplicate"
    LATE = "late"  # its playout slot has passed


@dataclass(slots=True)
class JitterStats:
    """Snapshot of a :class:`JitterBuffer` and its current :class:`RtpSource`."""

    ssrc: int | None
    received: int  # valid packets per A.1 (current SSRC, includes duplicates)
    expected: int
    lost: int  # A.3 cumulative lost, never below 0
    jitter: float  # seconds (A.8)
    accepted: int  # packets stored for playout (all SSRCs)
    duplicates: int
    late: int
    invalid: int
    overflow_dropped: int
    played: int
    non_audio: int  # pops of telephone-event slots (silence, not loss)
    concealed: int  # pops that returned None inside a started stream (gap or underrun)
    underruns: int
    resets: int
    ssrc_changes: int
    depth: int
    latency_dropped: int = 0  # frames dropped to bring an adaptive buffer's delay back down
    redundant_used: int = 0  # lost packets played from a RED copy (RFC 2198) instead
    stretched: int = 0  # slots concealed to raise the delay (loss cover) or while a packet was late


class JitterBuffer:
    """Bounded playout buffer keyed on the extended sequence number.

    ``capacity`` bounds the number of stored packets (oldest dropped first), so memory never
    depends on sequence or timestamp values. Playout starts once ``prefetch`` packets are
    buffered and restarts the same way after an underrun. The buffer flushes itself when the
    SSRC changes, when the source resyncs (A.1) and when the timestamp jumps by more than
    ``max_ts_jump`` seconds from where the sequence number says it should be.

    ``adaptive=True`` (the bridge's app -> phone path): the playout delay follows the measured
    interarrival jitter (RFC 3550 §6.4.1) instead of keeping whatever a burst left behind.
    ``target`` = ``prefetch`` (the floor: 1 frame on the bridge's app leg, ``APP_LEG_FLOOR``),
    3 x jitter + 1 frame (so at least 2 once any jitter is measured), or the loss cover, at most
    ``capacity - 2``. The drain is NetEq-like: the slack of a slot is what still waits after it
    played; when ``target`` or more frames wait and the slack never fell to ``MIN_MARGIN`` over
    the last ``SLACK_WINDOW`` slots, one frame is dropped (``latency_dropped``, at most one per
    ``DRAIN_EVERY`` slots), so after a stall and its burst the delay is back at the floor within
    about a second, and a path whose packets come in clumps keeps what it needs. RFC 3550 jitter
    is never 0 on a real path, so that target is 2 frames even on a calm one; when the slack
    stayed above ``MIN_MARGIN`` for ``CALM_WINDOW`` slots (3 s) in a row, one frame is dropped
    below the target too, down to the floor (never below the loss cover), at most once per such
    window; a stretch within the window after it (a late packet that frame was for) doubles the
    window for the next one, up to ``CALM_MAX``, so a jittery path keeps its frame. ``capacity``
    is the ceiling: packets beyond it are dropped and counted
    (``overflow_dropped``), as are those that arrive after their slot (``late``). With
    ``start_cover`` a fresh stream starts with that loss cover (``START_COVER``); with
    ``quiet_drops`` the player drops a frame of a pause instead (``take_quiet_drop``, ``QUIET_RUN``).
    ``last_arrival`` is the push time of the packet `pop_packet` gave last (None: none, or a RED
    copy), so a player can tell how long each frame waited here (RtpSession.last_hold).
    """

    # adaptive drain (see the class docstring): slots the slack minimum looks back over, the
    # slack it must stay above, and the fewest slots between two dropped frames.
    SLACK_WINDOW = 15
    MIN_MARGIN = 0
    DRAIN_EVERY = 2
    # adaptive: slots (3 s) the slack must stay above MIN_MARGIN before one frame is dropped below
    # the jitter term of the target (down to the floor / loss cover), and the fewest between two
    # such drops: RFC 3550 jitter is never 0 on a real path, and its 3 x jitter + 1 frame would
    # otherwise hold a frame the arrivals show is not needed for the rest of the call.
    CALM_WINDOW = 150
    # a drop below the target that a dry slot (a late packet's stretch) proves wrong within the
    # window after it doubles the window the next one waits for, up to CALM_MAX (60 s): a path
    # whose late packets come every few seconds keeps its frame; one that proves right halves it.
    CALM_MAX = 3000
    # adaptive: the playout delay also covers the longest recent loss run (at most this many
    # frames), so the packet after a burst is here in time for its FEC / RED copies to rebuild it.
    # 4: a sender's RED 3 deep + the LBRR in its oldest copy rebuilds a run of 4 (RFC 2198, RFC 6716
    # §2.1.7), if that packet arrives before the run's first frame is due.
    LOSS_COVER = 4
    # Loss runs are counted at playout (slots whose own packet was missing, RED-filled ones
    # included), not at arrival; a run longer than this is an outage, which no cover helps.
    LOSS_RUN_MAX = 2 * LOSS_COVER
    # adaptive: slots an empty buffer keeps playing (concealed) before it gives up and re-buffers:
    # a loss run up to LOSS_RUN_MAX, so from the 1-frame floor (nothing waiting) too.
    # Its place is held, not advanced: a late packet still plays when it comes (the concealment
    # was a stretch: `take_stretched`), a packet after a loss burst plays on time (the concealment
    # stood for the lost frames). NetEq's "expand" does the same.
    MAX_DRY = LOSS_RUN_MAX
    LOSS_MEMORY = 500  # slots (10 s) a seen loss run keeps the delay up
    SHORT_FOR = 10  # slots the delay must stay below the loss cover before it is raised
    # adaptive with ``start_cover=START_COVER`` (the bridge's app leg, Opus with FEC / RED: a
    # speech-aware playout): a fresh stream starts as if a loss run of START_COVER had just been seen, for
    # START_MEMORY slots (3 s) of playout: the first losses of a lossy path then find the next
    # packet (its FEC / RED copies) already here instead of being concealed and the delay raised
    # mid-speech; a clean path gives those 40 ms back in a pause after 3 s.
    START_COVER = 2
    START_MEMORY = 150
    # quiet drops (``quiet_drops``, set by a player that can tell, bridge.rtp.media.Playout): a
    # drop for latency waits until the player has played QUIET_RUN quiet frames (100 ms of a
    # pause) and then discards a quiet frame, not speech (a 20 ms cut inside a word costs ~0.1
    # PESQ); it waits at most QUIET_WAIT slots (5 s), and not at all while QUIET_EXCESS or more
    # frames above the target wait (after a burst: the bulk drains at once, the last 40 ms in a pause).
    QUIET_WAIT = 250
    QUIET_EXCESS = 2
    QUIET_RUN = 5

    def __init__(
        self,
        capacity: int = 16,
        prefetch: int = 3,
        clock_rate: int = 8000,
        frame_samples: int = 160,
        max_ts_jump: float = 5.0,
        adaptive: bool = False,
        start_cover: int = 0,
        quiet_drops: bool = False,
    ) -> None:
        if capacity < 1 or not 0 < prefetch <= capacity:
            raise ValueError("need capacity >= 1 and 0 < prefetch <= capacity")
        self.capacity = capacity
        self.prefetch = prefetch
        self.clock_rate = clock_rate
        self.frame_samples = frame_samples
        self.max_ts_jump = int(max_ts_jump * clock_rate)
        self.adaptive = adaptive
        self.target = prefetch  # frames of playout delay aimed at (adaptive)
        self._since_drain = 0  # slots since the last frame dropped for latency (adaptive)
        self._slack: deque[int] = deque(maxlen=self.SLACK_WINDOW)  # slack + _drained, per slot
        self._drained = 0  # frames dropped for latency or overflow, ever (offsets `_slack`)
        self._calm = 0  # slots in a row whose slack stayed above MIN_MARGIN, since the last drop
        self._calm_need = self.CALM_WINDOW  # of those a drop below the target waits for
        self._since_calm_drop: int | None = None  # slots since the last such drop, within its window
        self._miss = 0  # slots in a row played without their own packet (a loss run at playout)
        self._skipped = 0  # frames dropped for latency since `take_skipped` (adaptive)
        self._dry = 0  # consecutive slots played from an empty buffer (adaptive)
        self._stretched = 0  # dry slots that turned out to be a late packet, not a loss
        self._redundant: set[int] = set()  # slots filled from a RED copy, not the packet itself
        self.last_redundant = False  # the packet `pop_packet` gave last came from a RED copy
        self._arrived: dict[int, float] = {}  # ext -> `now` of its push (see last_arrival)
        self.last_arrival: float | None = None  # when the packet `pop_packet` gave last arrived
        self._run = 0  # the longest loss run (at most LOSS_COVER) seen in the last LOSS_MEMORY slots
        self._run_age = [self.LOSS_MEMORY + 1] * (self.LOSS_COVER + 1)  # slots since a run of each length
        self._hold = 0  # slots still to hold back (raising the delay for loss runs)
        if adaptive and start_cover > 0:
            c = min(start_cover, self.LOSS_COVER)
            self._run = c
            self._run_age[c] = self.LOSS_MEMORY - self.START_MEMORY
        self._short = 0  # consecutive slots below the loss cover
        self.quiet_drops = adaptive and quiet_drops  # the player calls `take_quiet_drop` on quiet frames (see QUIET_RUN)
        self._want_drop = 0  # a drop waits for a quiet frame: 1 to drain, 2 below the target (calm)
        self._deferred = 0  # slots the current drop has waited for one
        self.source: RtpSource | None = None
        self._slots: dict[int, RtpPacket | None] = {}
        self._next: int | None = None  # next extended seq to play, or floor while re-buffering
        self._playing = False
        self._held: list[tuple[RtpPacket, bool, float]] = []  # packets seen during A.1 probation, when
        self._ref: tuple[int, int] | None = None  # (extended seq, timestamp) of the last audio packet
        self._n = {
            "accepted": 0, "duplicates": 0, "late": 0, "invalid": 0, "overflow_dropped": 0,
            "played": 0, "non_audio": 0, "concealed": 0, "underruns": 0, "resets": 0, "ssrc_changes": 0,
            "latency_dropped": 0, "redundant_used": 0, "stretched": 0,
        }  # fmt: skip

    # -- receive ---------------------------------------------------------------------------
    def push(self, packet: RtpPacket, now: float, *, audio: bool = True) -> PushResult:
        """Account for ``packet`` and store its payload (``audio=False``: keep the slot silent)."""
        if self.source is None or packet.ssrc != self.source.ssrc:
            if self.source is not None:
                self._n["ssrc_changes"] += 1
                self.reset()
            self.source = RtpSource(packet.ssrc, packet.sequence_number, self.clock_rate)
            self._held.clear()
        source = self.source
        resyncs = source.resyncs
        ext = source.update(packet, now, measure_jitter=audio)
        if source.resyncs != resyncs:
            self.reset()  # A.1 restart: the extended sequence space starts again
        if ext is None:
            if source.probation:
                self._held = [*self._held[-(MIN_SEQUENTIAL - 1) :], (packet, audio, now)]
                return PushResult.PROBATION
            self._n["invalid"] += 1
            return PushResult.INVALID
        if self._held:
            held, self._held = self._held, []
            duration = (packet.timestamp - held[-1][0].timestamp) & 0xFFFFFFFF  # RFC 3550 §5.1
            if self.adaptive and self._next is None and duration <= self.clock_rate // 50:
                # a fresh start: of what A.1 probation held back, only what the floor needs is kept
                # (with a 1-frame floor the first packet would only be 20 ms of delay to drain);
                # longer packets (a 30 ms ptime peer) keep it: one of them is not a 20 ms slot's cover
                held = held[max(0, len(held) + 1 - self._start_need()):]
            for old, old_audio, old_at in held:
                if seq_delta(old.sequence_number, packet.sequence_number) < 0:
                    old_ext = source.extended(old.sequence_number)
                    if self._store(old_ext, old, old_audio) is PushResult.ACCEPTED:
                        self._arrived[old_ext] = old_at
        result = self._store(ext, packet, audio)
        if result is PushResult.ACCEPTED:
            arrived = self._arrived
            arrived[ext] = now
            if len(arrived) > 2 * self.capacity + 8:  # bounded: only what still waits
                self._arrived = {k: v for k, v in arrived.items() if k in self._slots}
        return result

    def push_redundant(self, packet: RtpPacket, distance: int) -> bool:
        """A RED copy (RFC 2198) of the frame ``distance`` packets before one just pushed (same
        SSRC): it fills that slot if the packet itself is missing and not yet played. It does not
        count as received (RFC 3550 A.3 loss stays what the network did). True when it was used."""
        src = self.source
        if src is None or src.probation or packet.ssrc != src.ssrc or distance <= 0:
            return False
        ext = src.extended(packet.sequence_number)
        if ext in self._slots or (self._next is not None and ext < self._next):
            return False
        if self.adaptive and self._next is None and (not self._slots or ext < min(self._slots)):
            return False  # before playout's first packet: it would only be delay
        if self._slots and ext < max(self._slots) - self.capacity + 1:
            return False
        self._slots[ext] = packet
        self._redundant.add(ext)
        return True

    def _start_need(self) -> int:
        """Packets playout (re)starts with: the floor, or the loss cover + 1 (see START_COVER)."""
        return max(self.prefetch, self._run + 1) if self.adaptive and self._run else self.prefetch

    def _note_loss_run(self, run: int) -> None:
        """A loss run of ``run`` slots just ended at playout (adaptive target): the delay covers
        up to ``LOSS_COVER`` of it for ``LOSS_MEMORY`` slots; an outage (> ``LOSS_RUN_MAX``) not."""
        if 0 < run <= self.LOSS_RUN_MAX:
            cover = min(run, self.LOSS_COVER)
            self._run_age[cover] = 0
            self._run = max(self._run, cover)

    def _store(self, ext: int, packet: RtpPacket, audio: bool) -> PushResult:
        if audio:
            if self._ref is not None:
                ref_ext, ref_ts = self._ref
                drift = ts_delta(packet.timestamp, ref_ts) - (ext - ref_ext) * self.frame_samples
                if abs(drift) > self.max_ts_jump:
                    self.reset()  # forged or restarted timestamp: resynchronise playout
            self._ref = (ext, packet.timestamp)
        if self._next is not None and ext < self._next:
            self._n["late"] += 1
            return PushResult.LATE
        if ext in self._slots:
            if ext in self._redundant and audio:
                self._redundant.discard(ext)  # the packet itself beat its RED copy's slot
                self._slots[ext] = packet
                self._n["accepted"] += 1
                return PushResult.ACCEPTED
            self._n["duplicates"] += 1
            return PushResult.DUPLICATE
        if self._next is not None and ext >= self._next + self.capacity:
            # Far ahead: slide the window so that ext is its last slot (bounded work).
            new_next = ext - self.capacity + 1
            for key in [k for k in self._slots if k < new_next]:
                del self._slots[key]
                self._n["overflow_dropped"] += 1
            self._next = new_next
        self._slots[ext] = packet if audio else None
        self._n["accepted"] += 1
        while len(self._slots) > self.capacity:
            oldest = min(self._slots)
            del self._slots[oldest]
            self._n["overflow_dropped"] += 1
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1
        return PushResult.ACCEPTED

    # -- playout ---------------------------------------------------------------------------
    def pop(self, now: float) -> bytes | None:
        """Payload for the next 20 ms slot, or None: a gap, an underrun, or not started yet."""
        packet = self.pop_packet(now)
        return packet.payload if packet is not None else None

    def pop_packet(self, now: float) -> RtpPacket | None:
        """Like `pop`, but the whole packet: for playout that places samples by RTP timestamp."""
        del now  # playout is paced by the caller's clock; kept for symmetry with push
        self.last_arrival = None
        if not self._playing:
            if len(self._slots) < self._start_need():
                return None
            first = min(self._slots)
            if self._next is not None and first > self._next:
                self._miss += first - self._next  # lost while it re-buffered: the run goes on
            self._next = first if self._next is None else max(first, self._next)
            self._playing = True
        self.last_redundant = False
        if self.adaptive:
            # the longest run still remembered: a shorter one seen since keeps its own cover
            ages = self._run_age
            for r in range(1, len(ages)):
                ages[r] += 1
            while self._run and ages[self._run] > self.LOSS_MEMORY:
                self._run = max((r for r in range(1, self._run) if ages[r] <= self.LOSS_MEMORY), default=0)
        if self._hold and self._slots:
            # raising the delay (loss cover): this slot is concealed and playout's place kept
            self._hold -= 1
            self._stretched += 1
            self._n["stretched"] += 1
            self._slack.append(self._drained)  # no slack to drain while raising it
            self._calm = 0
            return None
        if not self._slots and self.adaptive and self._dry < self.MAX_DRY and self._next is not None:
            # an empty buffer: a loss burst, or a late packet. Its slot passes concealed and the
            # place is held (see MAX_DRY); re-buffering would add silence and delay.
            self._dry += 1
            self._n["concealed"] += 1
            self._slack.append(self._drained)  # it ran dry: no slack
            self._calm = 0
            return None
        if not self._slots:
            self._dry = 0
            self._slack.clear()
            self._unsettled()
            self._playing = False  # underrun: re-buffer ``prefetch`` packets before resuming
            self._n["underruns"] += 1
            self._n["concealed"] += 1
            return None
        assert self._next is not None
        if self._dry:
            # back from dry slots: those that stood for lost packets are done; the rest were a
            # stretch (the packet was late) and playout's clock goes back by that much
            covered = min(self._dry, max(0, min(self._slots) - self._next))
            for ext in range(self._next, self._next + covered):
                self._slots.pop(ext, None)
            self._next += covered
            self._miss += covered  # they stood for lost packets
            self._stretched += self._dry - covered
            self._n["stretched"] += self._dry - covered
            if self._dry > covered:
                self._unsettled()  # a late packet: the frame a drop below the target took was needed
            self._dry = 0
        present = self._next in self._slots
        packet = self._slots.pop(self._next, None)
        arrived = self._arrived.pop(self._next, None)
        if packet is not None and self._next in self._redundant:
            self._redundant.discard(self._next)
            self.last_redundant = True
            self._n["redundant_used"] += 1
        elif packet is not None:
            self.last_arrival = arrived
        self._next += 1
        if self._redundant:
            self._redundant = {e for e in self._redundant if e >= self._next}
        if packet is not None:
            self._n["played"] += 1
            if self.last_redundant:
                self._miss += 1  # its own packet was lost: part of a loss run all the same
            elif self._miss:
                if self.adaptive:
                    self._note_loss_run(self._miss)
                self._miss = 0
        elif present:
            self._n["non_audio"] += 1  # a telephone-event slot: silent, but not a loss
        else:
            self._n["concealed"] += 1
            self._miss += 1
        # Latency control: when the buffer is nearly full, drop one extra frame per pop.
        if self._slots and max(self._slots) - self._next >= self.capacity - 1:
            self._slots.pop(self._next, None)
            self._next += 1
            self._n["overflow_dropped"] += 1
            if self.adaptive:
                self._skipped += 1
                self._drained += 1
                self._calm = 0
        elif self.adaptive:
            self._adapt()
        return packet

    def _adapt(self) -> None:
        """Adaptive playout delay: aim at 3 x jitter + 1 frame (floor ``prefetch``), drain above it."""
        self._want_drop = 0
        src = self.source
        jitter = src.jitter if src is not None else 0.0  # RFC 3550 A.8, in timestamp units
        # under one timestamp unit is no jitter (A.8's reported value, an integer, would be 0)
        by_jitter = math.ceil(3 * jitter / self.frame_samples) + 1 if jitter >= 1.0 else 1
        by_loss = self._run + 1 if self._run else 0
        self.target = max(self.prefetch, min(self.capacity - 2, max(by_jitter, by_loss)))
        assert self._next is not None
        waiting = max(self._slots) - self._next + 1 if self._slots else 0
        if self._run and waiting < self._run and not self._hold and not self._dry:
            # loss runs of `_run` frames lately: wait for that many packets ahead, so the one after
            # a run is here before its first lost frame is due (its FEC / RED copies rebuild them);
            # only when short for SHORT_FOR slots in a row (a loss at the tail is not a low delay)
            self._short += 1
            if self._short >= self.SHORT_FOR:
                self._hold = self._run - waiting
                self._short = 0
        else:
            self._short = 0
        # NetEq-like drain: the slack (frames still waiting after this slot) over the last
        # SLACK_WINDOW slots; drained frames are counted in `_drained`, so older entries compare
        # as if they had been dropped then too
        slack = self._slack
        slack.append(waiting + self._drained)
        self._since_drain += 1
        self._calm = self._calm + 1 if waiting > self.MIN_MARGIN else 0
        if self._since_calm_drop is not None:
            self._since_calm_drop += 1
            if self._since_calm_drop >= self._calm_need:  # that drop proved right
                self._since_calm_drop = None
                self._calm_need = max(self.CALM_WINDOW, self._calm_need // 2)
        # below the jitter term, down to the floor and the loss cover: only after `_calm_need`
        # slots whose arrivals never used that frame (a jittery path's late packets empty the
        # slack long before), and then the count starts again, so at most one such drop per window
        below = waiting >= max(self.prefetch, by_loss) and self._calm >= self._calm_need
        if below or (waiting >= self.target and len(slack) == slack.maxlen and self._since_drain >= self.DRAIN_EVERY
                     and min(slack) - self._drained > self.MIN_MARGIN):
            if self.quiet_drops and not (waiting >= self.target + self.QUIET_EXCESS or self._deferred >= self.QUIET_WAIT):
                self._deferred += 1
                self._want_drop = 2 if below and waiting < self.target else 1
                return
            self._dropped(below and waiting < self.target)
            self._slots.pop(self._next, None)
            self._next += 1
            self._skipped += 1
        else:
            self._deferred = 0

    def _dropped(self, below_target: bool) -> None:
        """Account for one frame dropped for latency (here, or by the player: `take_quiet_drop`)."""
        self._deferred = 0
        self._want_drop = 0
        if below_target:
            self._since_calm_drop = 0
        self._since_drain = 0
        self._calm = 0
        self._drained += 1
        self._n["latency_dropped"] += 1

    def take_quiet_drop(self) -> bool:
        """The frame just played out was quiet: True when a drop waits for one (the player then
        discards that frame and plays the next packet in its slot)."""
        want, self._want_drop = self._want_drop, 0
        if not want or not self._slots:
            return False
        self._dropped(want == 2)
        return True

    def _unsettled(self) -> None:
        """A stretch or an underrun: the calm count starts again, and a drop below the target
        within the window before it was wrong (see ``CALM_MAX``)."""
        self._calm = 0
        if self._since_calm_drop is not None:
            self._since_calm_drop = None
            self._calm_need = min(self.CALM_MAX, 2 * self._calm_need)

    def take_stretched(self) -> int:
        """Dry slots (concealed while empty) that a late packet, not a loss, stood behind, since
        the last call: playout moves its timestamp clock back by that much (the delay grew)."""
        n, self._stretched = self._stretched, 0
        return n

    def take_skipped(self) -> int:
        """Frames dropped to cut the delay (adaptive) since the last call: playout must move its
        clock on by that much rather than fill them in (that would keep the delay)."""
        n, self._skipped = self._skipped, 0
        return n

    def peek_packet(self) -> RtpPacket | None:
        """The packet the next `pop_packet` would give, if it is here (Opus FEC looks at it)."""
        if self._next is None:
            return None
        return self._slots.get(self._next)

    def reset(self) -> None:
        """Forget buffered packets and playout position (keeps counters and the RtpSource)."""
        if self._slots or self._next is not None:
            self._n["resets"] += 1
        self._slots.clear()
        self._arrived.clear()
        self._redundant.clear()
        self._dry = 0
        self._hold = 0
        self._miss = 0
        self._slack.clear()
        self._calm = 0
        self._since_calm_drop = None
        self._next = None
        self._playing = False
        self._ref = None

    @property
    def depth(self) -> int:
        return len(self._slots)

    @property
    def playing(self) -> bool:
        """True once prefetch is done and until the next underrun (or reset)."""
        return self._playing

    def stats(self) -> JitterStats:
        src = self.source
        return JitterStats(
            ssrc=src.ssrc if src else None,
            received=src.received if src else 0,
            expected=src.expected if src else 0,
            lost=max(0, src.cumulative_lost) if src else 0,
            jitter=src.jitter_seconds if src else 0.0,
            depth=len(self._slots),
            **self._n,
        )


class RtpSender:
    """Outgoing seq/ts/ssrc state (RFC 3550 §5.1): random initial values, wrap-safe counters.

    Per 20 ms frame call :meth:`packet` (it advances the timestamp). Call
    :meth:`start_talkspurt` after silence so the next packet carries the marker bit;
    :meth:`skip` advances the clock for frames not sent; :meth:`event_packet` sends a packet
    with an explicit timestamp (RFC 4733 events keep their start timestamp).
    """

    def __init__(
        self,
        payload_type: int,
        *,
        ssrc: int | None = None,
        sequence_number: int | None = None,
        timestamp: int | None = None,
        clock_rate: int = 8000,
        rng: random.Random | None = None,
    ) -> None:
        rnd = rng or random.SystemRandom()
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.ssrc = rnd.getrandbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self.sequence_number = rnd.getrandbits(16) if sequence_number is None else sequence_number & 0xFFFF
        self.timestamp = rnd.getrandbits(32) if timestamp is None else timestamp & 0xFFFFFFFF
        self.packets_sent = 0
        self.octets_sent = 0
        self._marker_pending = True  # the first packet starts a talkspurt

    def start_talkspurt(self) -> None:
        """Mark the next audio packet (first packet after silence, RFC 3551 §4.1)."""
        self._marker_pending = True

    def skip(self, samples: int) -> None:
        """Advance the media clock without sending (silence suppression, skipped ticks)."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self._marker_pending = True

    def _next_seq(self) -> int:
        seq = self.sequence_number
        self.sequence_number = (seq + 1) & 0xFFFF
        return seq

    def packet(self, payload: bytes, samples: int, *, payload_type: int | None = None) -> RtpPacket:
        """Packet for the next frame at the current timestamp; then advance ts by ``samples``."""
        pkt = RtpPacket(
            payload_type=self.payload_type if payload_type is None else payload_type,
            sequence_number=self._next_seq(),
            timestamp=self.timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=self._marker_pending,
        )
        self._marker_pending = False
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return pkt

    def event_packet(self, payload: bytes, payload_type: int, timestamp: int, marker: bool) -> RtpPacket:
        """Packet with an explicit timestamp (does not move the media clock)."""
        pkt = RtpPacket(
            payload_type=payload_type,
            sequence_number=self._next_seq(),
            timestamp=timestamp & 0xFFFFFFFF,
            ssrc=self.ssrc,
            payload=payload,
            marker=marker,
        )
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return pkt
