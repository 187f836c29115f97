"""pyVoIP's RTPClient/RTPPacketManager, mended: G.711 payloads below its 8-bit API."""


from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP import RTP as pv_rtp

from bridge.gateway.legs import (
    FRAME_BYTES,
    FRAME_SAMPLES,
)
from bridge.rtp import g711
from bridge.rtp.dtmf import DtmfReceiver, dtmf_packets
from bridge.rtp.packet import RtpPacket, RtpParseError
from bridge.rtp.session import JitterBuffer, RtpSender
from bridge.sip.sdp import (
    NegotiatedAudio,
)

from .common import FRAME_S, TrunkConfig

if TYPE_CHECKING:
    from .leg import PyVoipLeg

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------
# media: pyVoIP's RTPClient / RTPPacketManager, mended

class _FrameBuffer(pv_rtp.RTPPacketManager):
    """pyVoIP's RTPPacketManager with a bounded deque of 16-bit frames instead of a BytesIO of the
    whole call (RTP.py:157-216). `write` appends (oldest dropped when full), `read` pops or b""."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.frames: collections.deque[bytes] = collections.deque(maxlen=maxlen)
        self.dropped = 0

    def read(self, length: int = FRAME_BYTES) -> bytes:
        try:
            return self.frames.popleft()
        except IndexError:
            return b""

    def write(self, offset: int, data: bytes) -> None:
        del offset  # frames are in order; there is no byte-offset space to grow
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        self.frames.append(data)

    def rebuild(self, reset: bool, offset: int = 0, data: bytes = b"") -> None:
        self.frames.clear()

    def __len__(self) -> int:
        return len(self.frames)


class _MediaClient(pv_rtp.RTPClient):
    """pyVoIP's RTPClient with the G.711 payloads taken below its 8-bit API.

    Receive: RFC 3550 parse (malformed datagrams dropped), bounded JitterBuffer, RFC 4733 DTMF.
    Send: absolute clock t0 + n·20 ms, RtpSender (wrapping seq/ts), RFC 4733 DTMF events.
    Call `write(pcm16)` / `read()` for 320-byte frames, `queue_dtmf`, `update(audio)`, `stop()`.
    """

    def __init__(self, leg: PyVoipLeg, sock: socket.socket, audio: NegotiatedAudio, cfg: TrunkConfig) -> None:
        assoc = {audio.payload_type: pv_rtp.PayloadType.PCMA if audio.codec == "PCMA" else pv_rtp.PayloadType.PCMU}
        if audio.telephone_event_pt is not None:
            assoc[audio.telephone_event_pt] = pv_rtp.PayloadType.EVENT
        host, port = audio.remote or ("", 0)
        mode = pv_rtp.TransmitType(audio.direction)
        super().__init__(assoc, cfg.local_host, sock.getsockname()[1], host, port, mode, dtmf=leg._dtmf_from_thread)
        self.sin = self.sout = sock
        self._tx = _FrameBuffer(cfg.tx_queue_frames)  # 16-bit frames to send
        self._rx = _FrameBuffer(cfg.rx_queue_frames)  # 16-bit frames received, played out
        self.pmout, self.pmin = self._tx, self._rx
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jb = JitterBuffer(capacity=cfg.jitter_capacity, prefetch=cfg.jitter_prefetch)
        self._dtmf_rx = DtmfReceiver()
        self._dtmf_jobs: collections.deque[tuple[str, concurrent.futures.Future[None]]] = collections.deque()
        self._dtmf_active: tuple[list[Any], int, int, concurrent.futures.Future[None]] | None = None
        self._dtmf_gap = 0
        self._fifo = np.zeros(0, dtype=np.int16)
        self._label = leg.call_id
        self.counters: collections.Counter[str] = collections.Counter()
        self.sender = RtpSender(audio.payload_type, sequence_number=cfg.rtp_initial_sequence)
        self.update(audio)

    # -- configuration ------------------------------------------------------------------------
    def update(self, audio: NegotiatedAudio) -> None:
        """Apply (re-)negotiated media: codec, payload types, remote address, direction."""
        with self._lock:
            self.audio = audio
            self.codec = audio.codec
            self.preference = pv_rtp.PayloadType.PCMA if audio.codec == "PCMA" else pv_rtp.PayloadType.PCMU
            self._decode = g711.decoder_for(audio.codec)
            self._encode = g711.encoder_for(audio.codec)
            self.sender.payload_type = audio.payload_type
            self.outIP, self.outPort = audio.remote or ("", 0)

    # -- threads ------------------------------------------------------------------------------
    def start(self) -> None:
        self.NSD = True
        self.sin.setblocking(False)
        for name, target in (("RTP Receiver", self.recv), ("RTP Transmitter", self.trans)):
            t = threading.Thread(target=target, name=f"{name} {self._label}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """End both threads, join them and close the socket (blocking: call via to_thread)."""
        self.NSD = False
        self._wake.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2.0)
        with contextlib.suppress(OSError):
            self.sin.close()
        with self._lock:
            job = self._dtmf_active
            self._dtmf_active = None
            jobs = list(self._dtmf_jobs)
            self._dtmf_jobs.clear()
        for fut in [j[1] for j in jobs] + ([job[3]] if job else []):
            if not fut.done():
                fut.set_exception(ConnectionError("media stopped"))

    # -- receive ------------------------------------------------------------------------------
    def recv(self) -> None:
        while self.NSD:
            try:
                ready, _, _ = select.select([self.sin], [], [], 0.05)
                if not ready:
                    continue
                packet, _addr = self.sin.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):  # closed under us by stop()
                if not self.NSD:
                    break
                time.sleep(0.01)
                continue
            try:
                self.parse_packet(packet)
            except Exception:  # never let one datagram end the receiver (pyVoIP RTP.py:370-380)
                self.counters["rx_errors"] += 1
                log.exception("RTP receive error on %s", self._label)

    def parse_packet(self, packet: bytes) -> None:
        try:
            pkt = RtpPacket.parse(packet)  # 0-byte, < 12 bytes, truncated CSRC/ext, bad padding
        except RtpParseError:
            self.counters["rx_malformed"] += 1
            return
        now = time.monotonic()
        audio = self.audio
        if audio.telephone_event_pt is not None and pkt.payload_type == audio.telephone_event_pt:
            self.counters["rx_dtmf_packets"] += 1
            with self._lock:
                self._jb.push(pkt, now, audio=False)
                ev = self._dtmf_rx.receive(pkt.payload, pkt.timestamp, ssrc=pkt.ssrc, marker=pkt.marker)
            if ev is not None and ev.is_digit and self.dtmf is not None:
                self.dtmf(ev.name)
            elif ev is not None:
                self.counters["rx_dtmf_other"] += 1  # flash (16) and others: no IndexError here
            return
        if pkt.payload_type != audio.payload_type or not pkt.payload or len(pkt.payload) > 1600:
            self.counters["rx_dropped"] += 1
            return
        self.counters["rx_packets"] += 1
        with self._lock:
            self._jb.push(pkt, now)

    # -- transmit + playout clock -------------------------------------------------------------
    def trans(self) -> None:
        t0 = time.monotonic()
        n = 0
        while self.NSD:
            due = t0 + n * FRAME_S  # absolute schedule: no drift (pyVoIP RTP.py:415-419 sleeps relative)
            delay = due - time.monotonic()
            if delay > 0 and self._wake.wait(delay):
                break
            if not self.NSD:
                break
            late = time.monotonic() - due
            if late > 0.2:
                # The thread was starved: skip the missed ticks instead of bursting them out;
                # the RTP timestamp still advances with real time (RFC 3550 §5.1).
                missed = int(late / FRAME_S)
                n += missed
                self.sender.skip(missed * FRAME_SAMPLES)
                self.counters["tx_skipped_ticks"] += missed
            try:
                self._tick(time.monotonic())
            except OSError:
                if not self.NSD:
                    break
                self.counters["tx_errors"] += 1
            except Exception:
                self.counters["tx_errors"] += 1
                log.exception("RTP transmit error on %s", self._label)
            n += 1

    def _tick(self, now: float) -> None:
        with self._lock:
            self._playout(now)
            packet = self._next_packet()
            dest = (self.outIP, self.outPort) if self.audio.send else None
        if packet is not None and dest is not None:
            self.sout.sendto(packet, dest)
            self.counters["tx_packets"] += 1

    def _playout(self, now: float) -> None:
        """One 20 ms frame from the jitter buffer into pmin (re-framed: ptime may not be 20)."""
        if len(self._fifo) < FRAME_SAMPLES:
            depth = self._jb.depth
            payload = self._jb.pop(now)
            if payload is not None:
                self._fifo = np.concatenate([self._fifo, self._decode(payload)])
            elif depth > 0:
                # A hole inside the stream: silence (pyVoIP fills holes with 0x00, full-scale clicks)
                self._fifo = np.concatenate([self._fifo, np.zeros(FRAME_SAMPLES, dtype=np.int16)])
        if len(self._fifo) >= FRAME_SAMPLES:
            frame, self._fifo = self._fifo[:FRAME_SAMPLES], self._fifo[FRAME_SAMPLES:]
            self._rx.write(0, frame.tobytes())
        if len(self._fifo) > 8 * FRAME_SAMPLES:  # bounded re-framing buffer
            self._fifo = self._fifo[-FRAME_SAMPLES:]

    def _next_packet(self) -> bytes | None:
        te_pt = self.audio.telephone_event_pt
        if self._dtmf_active is None and self._dtmf_gap > 0:
            self._dtmf_gap -= 1
        elif self._dtmf_active is None and self._dtmf_jobs and te_pt is not None:
            digit, fut = self._dtmf_jobs.popleft()
            self._dtmf_active = (dtmf_packets(digit), 0, self.sender.timestamp, fut)
        if self._dtmf_active is not None and te_pt is not None:
            # RFC 4733 §2.5.1: every packet of the event carries the event's start timestamp;
            # the media clock keeps running underneath so audio resumes in step.
            pkts, i, start_ts, fut = self._dtmf_active
            item = pkts[i]
            rtp = self.sender.event_packet(item.payload, te_pt, start_ts, item.marker)
            self.sender.skip(FRAME_SAMPLES)
            self._tx.read()  # the frame this tick would have carried is replaced by the event
            if i + 1 < len(pkts):
                self._dtmf_active = (pkts, i + 1, start_ts, fut)
            else:
                self._dtmf_active = None
                self._dtmf_gap = 3  # 60 ms of audio between digits
                if not fut.done():
                    fut.set_result(None)
            self.counters["tx_dtmf_packets"] += 1
            return rtp.serialize()
        frame = self._tx.read()
        if len(frame) != FRAME_BYTES:
            frame = bytes(FRAME_BYTES)  # nothing queued: send silence to keep the stream alive
            self.counters["tx_underruns"] += 1
        return self.encode_packet(frame)

    def encode_packet(self, payload: bytes) -> bytes:
        """PCM16 frame -> RTP packet in the negotiated codec (pyVoIP RTP.py:460 sends μ-law as PCMA)."""
        return self.sender.packet(self._encode(np.frombuffer(payload, dtype=np.int16)), FRAME_SAMPLES).serialize()

    # -- the application side -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self._tx.write(0, data)

    def read(self, length: int = FRAME_BYTES, blocking: bool = False) -> bytes:
        return self._rx.read(length)

    def queue_dtmf(self, digits: str) -> list[concurrent.futures.Future[None]]:
        futs: list[concurrent.futures.Future[None]] = []
        with self._lock:
            for d in digits:
                fut: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._dtmf_jobs.append((d, fut))
                futs.append(fut)
        return futs

    @property
    def tx_backlog(self) -> int:
        return len(self._tx)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            jb = self._jb.stats()
        out: dict[str, Any] = dict(self.counters)
        out.update(tx_backlog=len(self._tx), tx_dropped=self._tx.dropped, rx_backlog=len(self._rx),
                   rx_dropped_frames=self._rx.dropped, jitter=jb, next_seq=self.sender.sequence_number)
        return out


