"""The SIP leg's RTP on the process's shared media engine: pyVoIP's RTP threads are gone.

pyVoIP keeps the SIP side (the socket it bound for the call is adopted here); the media is a
``bridge.rtp.media.RtpSession`` on ``bridge.net.media.MediaEngine``, the same engine the
carrier runs on: no thread, task or sleep loop per call, one 20 ms timer for every leg.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from bridge.gateway.legs import FRAME_BYTES
from bridge.net.media import MediaEngine, RtpEndpoint, format_of
from bridge.rtp.media import (
    DtmfCancelled,
    DtmfReceived,
    DtmfSent,
    FrameQueues,
    MediaEvent,
    RemoteBye,
    ReportReceived,
    RtpSession,
)
from bridge.sip.sdp import NegotiatedAudio
from jego_call.log import call_context

from .common import TrunkConfig

if TYPE_CHECKING:
    from .leg import PyVoipLeg

log = logging.getLogger(__name__)

# A stall of the event loop longer than this many 20 ms slots (200 ms, as the leg's own RTP
# thread used to allow) is skipped, not burst out; shorter ones go out back to back.
MAX_BURST = 10


class _MediaClient:
    """One SIP leg's RTP (16-bit PCM at the seam, G.711 on the wire), on the shared engine.

    Receive: RFC 3550 parse (malformed datagrams dropped), bounded jitter buffer, sample FIFO by
    RTP timestamp (any ptime 10-60 ms arrives whole), RFC 4733 DTMF, symmetric RTP latching.
    Send: absolute clock t0 + n·20 ms, skip after a stall, RtpSender (wrapping seq/ts), RFC 4733
    events. RTCP SR/RR on port + 1 with the far end's reports in :meth:`stats`.
    Call `start()`, `write(pcm16)` / `read()` for 320-byte frames, `queue_dtmf`, `update(audio)`
    on a re-INVITE, `stop()` (on the event loop's thread; plain, non-blocking).
    """

    def __init__(self, leg: PyVoipLeg, sock: socket.socket, audio: NegotiatedAudio, cfg: TrunkConfig) -> None:
        self._leg = leg
        self._sock: socket.socket | None = sock
        self.inPort = int(sock.getsockname()[1])  # pyVoIP's name: leg.py answers re-INVITEs on it
        self.audio = audio
        self.queues = FrameQueues(cfg.tx_queue_frames, cfg.rx_queue_frames, tx_target=cfg.tx_queue_target)
        self.session = RtpSession(
            format_of(audio), self.queues, sequence_number=cfg.rtp_initial_sequence, latch=True,
            max_burst=MAX_BURST, jitter_capacity=cfg.jitter_capacity, jitter_prefetch=cfg.jitter_prefetch,
            jitter_adaptive=cfg.jitter_adaptive, rtcp_interval=cfg.rtcp_interval_s,
        )  # fmt: skip
        self.counters: collections.Counter[str] = collections.Counter()
        self._engine: MediaEngine | None = None
        self._ep: RtpEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dtmf: dict[int, asyncio.Future[None]] = {}
        self._stopped = False

    @property
    def codec(self) -> str:
        return self.audio.codec

    # -- configuration ------------------------------------------------------------------------
    def update(self, audio: NegotiatedAudio) -> None:
        """Apply (re-)negotiated media: codec, payload types, remote address, direction. Our
        SSRC, sequence number and timestamp run on (RFC 3550 §5.1)."""
        self.audio = audio
        self.session.configure(format_of(audio))

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Adopt the socket into the engine (and RTCP on port + 1) and join its 20 ms clock."""
        if self._ep is not None or self._stopped or self._sock is None:
            return
        self._loop = asyncio.get_running_loop()
        self._engine = MediaEngine.get(self._loop)
        self._ep = self._engine.bind(self.session, sock=self._sock, on_events=self._on_events)
        self._sock = None
        self._engine.start(self._ep)

    def stop(self) -> None:
        """Send RTCP BYE, close the sockets, fail pending DTMF. Idempotent; runs on the loop
        (called from another thread it hands over and waits up to 2 s)."""
        loop = self._loop
        if loop is not None and loop.is_running() and not _on_loop_thread(loop):
            done = threading.Event()

            def run() -> None:
                try:
                    self.stop()
                finally:
                    done.set()

            loop.call_soon_threadsafe(run)
            done.wait(2.0)
            return
        if self._stopped:
            return
        self._stopped = True
        if self._ep is not None and self._engine is not None:
            self._engine.close(self._ep)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fut in self._dtmf.values():
            if not fut.done():
                fut.set_exception(ConnectionError("media stopped"))
        self._dtmf.clear()

    def _on_events(self, events: list[MediaEvent]) -> None:
        with call_context(call_id=self._leg.call_id):  # the engine's one timer serves every leg
            self._handle_events(events)

    def _handle_events(self, events: list[MediaEvent]) -> None:
        for ev in events:
            if isinstance(ev, DtmfReceived):
                if ev.event.is_digit:
                    self._leg._dtmf_from_thread(ev.event.name)
                else:
                    self.counters["rx_dtmf_other"] += 1  # flash (16) and others: no IndexError here
            elif isinstance(ev, DtmfSent | DtmfCancelled):
                fut = self._dtmf.pop(ev.job, None)
                if fut is not None and not fut.done():
                    if isinstance(ev, DtmfSent):
                        fut.set_result(None)
                    else:
                        fut.set_exception(ConnectionError("DTMF not sent: media stopped or renegotiated"))
            elif isinstance(ev, ReportReceived):
                st = ev.stats
                log.debug("RTCP from the far end: lost %.1f%% (%d), jitter %.1f ms, rtt %s",
                          100 * st.fraction_lost, st.cumulative_lost, 1000 * st.jitter,
                          f"{1000 * st.rtt:.1f} ms" if st.rtt is not None else "-")
            elif isinstance(ev, RemoteBye):
                log.debug("RTCP BYE from the far end (%s)", ev.reason or "no reason")

    # -- the application side -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue one 20 ms PCM16 frame; never blocks, the oldest is dropped when full."""
        self.queues.write(data)

    def serve(self) -> None:
        """After `write` from another leg's media tick: send that frame in this same slot (and
        queue this slot's received frame for `read`): bridge/net/media.py `MediaEngine.serve`."""
        if self._ep is not None and self._engine is not None:
            self._engine.serve(self._ep)

    def read(self, length: int = FRAME_BYTES, blocking: bool = False) -> bytes:
        """The oldest received frame that is due (320 bytes PCM16), or b""."""
        return self.queues.read() or b""

    def queue_dtmf(self, digits: str) -> list[asyncio.Future[None]]:
        """RFC 4733 events for ``digits`` (100 ms each, 60 ms of audio between): one future per
        digit, done once its end packets and gap went out (ConnectionError if media stops)."""
        loop = self._loop or asyncio.get_running_loop()
        futs: list[asyncio.Future[None]] = []
        for job in self.session.send_dtmf(digits):
            fut: asyncio.Future[None] = loop.create_future()
            self._dtmf[job] = fut
            futs.append(fut)
        return futs

    @property
    def tx_backlog(self) -> int:
        return len(self.queues.tx)

    def stats(self) -> dict[str, Any]:
        """Counters: tx/rx packets, drops, backlogs, the jitter buffer, and RTCP: what the far
        end reports about our stream (``remote_loss`` packets, ``jitter_ms``) and ``rtt_ms``."""
        s = self.session
        n = s.n
        q = self.queues
        ep = self._ep
        out: dict[str, Any] = dict(self.counters)
        out.update(
            tx_packets=s.sender.packets_sent, tx_dtmf_packets=n["tx_dtmf_packets"], tx_underruns=n["tx_underruns"],
            tx_skipped_ticks=n["skipped"], tx_backlog=len(q.tx), tx_dropped=q.tx_dropped, tx_drained=q.tx_drained,
            tx_errors=ep.tx_errors if ep else 0, tx_socket_dropped=ep.tx_dropped if ep else 0,
            rx_packets=n["rx_audio"], rx_dtmf_packets=n["rx_events"], rx_malformed=n["malformed"] + n["other"],
            rx_dropped=n["unknown_pt"] + n["wrong_source"] + n["bad_payload"] + n["rtcp_on_rtp_port"],
            rx_errors=ep.rx_errors if ep else 0, rx_backlog=len(q.rx), rx_dropped_frames=q.rx_dropped,
            jitter=s.playout.jitter.stats(), next_seq=s.sender.sequence_number, ticks=n["ticks"],
            on_time_share=s.on_time_share, rtcp_sent=n["rtcp_sent"], rtcp_received=n["rtcp_received"],
            buffers=s.buffers(),
        )  # fmt: skip
        rs = s.remote_stats
        if rs is not None:
            out.update(remote_loss=rs.cumulative_lost, remote_fraction_lost=rs.fraction_lost,
                       jitter_ms=round(1000 * rs.jitter))
        if s.rtt is not None:
            out["rtt_ms"] = round(1000 * s.rtt)
        return out


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
