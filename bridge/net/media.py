"""The RTP media engine: one per event loop (so one per process), shared by every leg it carries.

No task, thread or sleep loop per call: each leg is an :class:`~bridge.rtp.media.RtpSession`
(the sans-I/O core) plus its non-blocking UDP sockets (RTP, and RTCP on port + 1 unless
rtcp-mux), read with ``loop.add_reader``; ONE ``loop.call_at`` timer serves every leg that is
due (``bridge.rtp.schedule.Scheduler``), and legs start on a shared 20 ms grid so one wake-up
serves them all. Sends go straight to ``sendto`` (a full socket buffer drops the packet: RTP
is never queued). Use::

    engine = MediaEngine.get()                         # the running loop's engine
    ep = engine.bind(session, host="127.0.0.1", port=0, on_events=handle)   # sync: binds now
    engine.start(ep)                                   # joins the 20 ms clock
    ep.session.configure(...)                          # any time (re-INVITE)
    engine.close(ep)                                   # RTCP BYE, sockets closed, port free

A leg whose datagrams travel through someone else's transport (the WebRTC leg: SRTP over the
ICE pair aiortc negotiated, bridge/net/webrtc.py) attaches without sockets and delivers what it
received itself::

    ep = engine.attach(session, send=protect_and_send, on_events=handle)
    engine.start(ep)
    engine.receive(ep, rtp_or_rtcp, now)               # from its transport, after SRTP

Two legs that trade frames (the bridge's app leg and SIP leg, bridge/gateway/call.py
``PhoneLink``) hand them over in the same 20 ms slot: the app leg's AudioPort queues its frame for
the SIP leg, then calls ``engine.serve(sip_ep)`` (through ``PyVoipLeg.serve_media``), which ticks
the SIP leg's due slot there and then, so it sends that frame and its received one is ready for
the app leg to read; from then on the engine ticks the serving leg first in each wake-up.

Callers (bridge/carrier/media.py, bridge/gateway/pyvoip/media.py, bridge/net/webrtc.py) must
call these on the loop's thread. :func:`format_of` turns an SDP offer/answer result into a ``MediaFormat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from jego_call.media.impair import Impairment, ImpairmentSpec

from ..rtp.media import MediaEvent, MediaFormat, RtpSession
from ..rtp.rtcp import NTP_EPOCH_OFFSET
from ..rtp.schedule import Scheduler, align

if TYPE_CHECKING:
    from ..sip.sdp import NegotiatedAudio

log = logging.getLogger(__name__)

PERIOD = 0.020
TOLERANCE = 0.001  # a leg due within 1 ms counts as due (timers may wake early, uvloop has ms ticks)
RECV_SIZE = 8192
READ_BURST = 64  # datagrams read per readiness callback before yielding to other work

Addr = tuple[str, int]
EventHandler = Callable[[list[MediaEvent]], None]
SendFn = Callable[[bytes, Addr, bool], None]  # (datagram, address, via the RTCP port)


def format_of(audio: NegotiatedAudio, *, rtcp_mux: bool = False, remote_rtcp: Addr | None = None) -> MediaFormat:
    """The engine's view of an offer/answer result (bridge.sip.sdp.NegotiatedAudio)."""
    return MediaFormat(
        codec=audio.codec.upper(), payload_type=audio.payload_type, telephone_event_pt=audio.telephone_event_pt,
        remote=audio.remote, send=audio.send, recv=audio.recv, remote_rtcp=remote_rtcp, rtcp_mux=rtcp_mux,
    )  # fmt: skip


class RtpEndpoint:
    """One leg on the engine: its session and sockets. Made by :meth:`MediaEngine.bind`."""

    def __init__(self, engine: MediaEngine, session: RtpSession, sock: socket.socket | None,
                 rtcp_sock: socket.socket | None, on_events: EventHandler | None,
                 send: SendFn | None = None) -> None:
        self.engine = engine
        self.session = session
        self.sock = sock
        self.rtcp_sock = rtcp_sock
        self.on_events = on_events
        self.send = send  # set: datagrams go to it instead of our sockets (attach)
        name: tuple[str, int] = sock.getsockname()[:2] if sock is not None else ("", 0)
        self.host, self.local_port = name
        self.rtcp_port = rtcp_sock.getsockname()[1] if rtcp_sock is not None else None
        self.closed = False
        self.started = False
        self.fed_by: RtpEndpoint | None = None  # the leg whose tick serves this one (MediaEngine.serve)
        self.tx_dropped = 0  # socket buffer full
        self.tx_errors = 0
        self.rx_errors = 0
        # A seeded network on the receive path (MediaEngine.impair; test and lab use only).
        self.impairment: Impairment[tuple[bytes, Addr, bool]] | None = None
        self._impair_timer: asyncio.TimerHandle | None = None

    @property
    def local_address(self) -> Addr:
        return (str(self.host), int(self.local_port))


def _udp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_pair(host: str, ports: Sequence[int] = (0,), *, rtcp: bool = True) -> tuple[socket.socket, socket.socket | None]:
    """Bind an RTP socket and, with ``rtcp``, its RTCP socket on port + 1 (RFC 3550 §11).

    ``ports`` are tried in order (0: any; then an even port whose odd neighbour is free is
    looked for). A candidate whose port + 1 is taken is passed over; if none has both, the
    first RTP port that binds is used without RTCP. Raises OSError when nothing binds."""
    last: OSError | None = None
    fallback: socket.socket | None = None
    for port in ports:
        for _ in range(16 if port == 0 else 1):
            try:
                sock = _udp(host, port)
            except OSError as exc:
                last = exc
                break
            real = sock.getsockname()[1]
            if not rtcp:
                return sock, None
            if real % 2 == 0 or port != 0:
                try:
                    return sock, _udp(host, real + 1)
                except OSError as exc:
                    last = exc
            if fallback is None:
                fallback = sock
            else:
                sock.close()
    if fallback is not None:
        log.info("no RTCP port next to RTP port %s on %s: RTCP not received", fallback.getsockname()[1], host)
        return fallback, None
    raise OSError(f"no free RTP port on {host}") from last


_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MediaEngine] = weakref.WeakKeyDictionary()


class MediaEngine:
    """The loop's RTP engine: sockets by ``add_reader``, one ``call_at`` timer for all legs."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.scheduler: Scheduler[RtpEndpoint] = Scheduler(TOLERANCE)
        self.endpoints: set[RtpEndpoint] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._origin: float | None = None
        self._ticking: RtpEndpoint | None = None  # the leg whose tick is running (serve)
        self.wakes = 0  # timer callbacks (one per 20 ms while any leg runs)
        self.ticks = 0  # leg ticks served by them

    @classmethod
    def get(cls, loop: asyncio.AbstractEventLoop | None = None) -> MediaEngine:
        """The engine of ``loop`` (default: the running loop), created on first use."""
        loop = loop or asyncio.get_running_loop()
        engine = _ENGINES.get(loop)
        if engine is None:
            engine = _ENGINES[loop] = cls(loop)
        return engine

    @property
    def ntp_offset(self) -> float:
        """Seconds to add to ``loop.time()`` for NTP time (RTCP SR timestamps)."""
        return time.time() + NTP_EPOCH_OFFSET - self.loop.time()

    # -- legs ------------------------------------------------------------------------------------
    def bind(
        self,
        session: RtpSession,
        *,
        host: str = "127.0.0.1",
        ports: Iterable[int] = (0,),
        sock: socket.socket | None = None,
        rtcp: bool = True,
        on_events: EventHandler | None = None,
    ) -> RtpEndpoint:
        """Bind ``session`` to sockets (``sock``: an already bound RTP socket to adopt) and start
        reading them. Raises OSError when no port binds. Then :meth:`start`."""
        if sock is not None:
            sock.setblocking(False)
            rtcp_sock = None
            if rtcp:
                h, p = sock.getsockname()[:2]
                try:
                    rtcp_sock = _udp(h, p + 1)
                except OSError:
                    log.info("RTCP port %s on %s is taken: RTCP not received on this leg", p + 1, h)
        else:
            sock, rtcp_sock = bind_pair(host, list(ports), rtcp=rtcp)
        session.ntp_offset = self.ntp_offset
        ep = RtpEndpoint(self, session, sock, rtcp_sock, on_events)
        self.endpoints.add(ep)
        self.loop.add_reader(sock.fileno(), self._readable, ep, sock, False)
        if rtcp_sock is not None:
            self.loop.add_reader(rtcp_sock.fileno(), self._readable, ep, rtcp_sock, True)
        return ep

    def attach(self, session: RtpSession, *, send: SendFn, on_events: EventHandler | None = None) -> RtpEndpoint:
        """A leg without sockets of ours: ``send(datagram, addr, via_rtcp)`` carries what the
        session sends; hand what arrives to :meth:`receive`. Then :meth:`start`."""
        session.ntp_offset = self.ntp_offset
        ep = RtpEndpoint(self, session, None, None, on_events, send)
        self.endpoints.add(ep)
        return ep

    def receive(self, ep: RtpEndpoint, data: bytes, addr: Addr, *, rtcp: bool = False) -> None:
        """One datagram for an attached leg (RTP or muxed RTCP), then its events and replies."""
        if ep.closed:
            return
        try:
            ep.session.receive(data, addr, self.loop.time(), rtcp_port=rtcp)
        except Exception:  # a bad packet must never stop reception
            ep.rx_errors += 1
            log.exception("RTP receive error on an attached leg")
        if ep.session.out or ep.session.events:
            self.flush(ep)

    def impair(self, ep: RtpEndpoint, spec: ImpairmentSpec) -> None:
        """Pass every datagram this leg receives through a seeded network (loss, bursts, delay,
        jitter with reordering: jego_call.media.impair) before its session sees it. For labs and
        tests only ([media] impair); ``ep.impairment.counters`` says what it did."""
        if not spec.active or ep.closed:
            return
        ep.impairment = Impairment(spec)
        log.warning("media impairment ON for RTP port %s (%s): test and lab use only", ep.local_port, spec)

    def start(self, ep: RtpEndpoint) -> None:
        """Put the leg on the shared 20 ms clock (its first slot on the next grid point)."""
        if ep.closed or ep.started:
            return
        ep.started = True
        now = self.loop.time()
        if self._origin is None or not self.scheduler:
            self._origin = now
        ep.session.start(align(now, self._origin, PERIOD))
        self.scheduler.set(ep, ep.session.next_due)
        self._arm()

    def close(self, ep: RtpEndpoint, reason: str = "") -> None:
        """Send the last RTCP (BYE), stop reading, close the sockets. Idempotent."""
        if ep.closed:
            return
        ep.closed = True
        ep.fed_by = None
        self.scheduler.remove(ep)
        try:
            ep.session.close(self.loop.time(), reason)
            self.flush(ep)
        finally:
            if ep._impair_timer is not None:
                ep._impair_timer.cancel()
                ep._impair_timer = None
            for s in (ep.sock, ep.rtcp_sock):
                if s is not None and s.fileno() >= 0:
                    with contextlib.suppress(Exception):
                        self.loop.remove_reader(s.fileno())
                    s.close()
            self.endpoints.discard(ep)
            self._arm()

    # -- I/O -------------------------------------------------------------------------------------
    def _readable(self, ep: RtpEndpoint, sock: socket.socket, rtcp: bool) -> None:
        session = ep.session
        loop = self.loop
        net = ep.impairment
        for _ in range(READ_BURST):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                ep.rx_errors += 1
                log.debug("RTP socket error on port %s: %s", ep.local_port, exc)
                break
            if net is not None:
                net.push((data, (addr[0], addr[1]), rtcp), loop.time())
                continue
            try:
                session.receive(data, (addr[0], addr[1]), loop.time(), rtcp_port=rtcp)
            except Exception:  # a bad packet must never stop reception
                ep.rx_errors += 1
                log.exception("RTP receive error on port %s", ep.local_port)
        if net is not None:
            self._release(ep)
        else:
            self.flush(ep)

    def _receive(self, ep: RtpEndpoint, data: bytes, addr: Addr, rtcp: bool) -> None:
        try:
            ep.session.receive(data, addr, self.loop.time(), rtcp_port=rtcp)
        except Exception:  # a bad packet must never stop reception
            ep.rx_errors += 1
            log.exception("RTP receive error on port %s", ep.local_port)

    def _release(self, ep: RtpEndpoint) -> None:
        """Hand the impaired network's due datagrams to the session; wake again for the next."""
        net = ep.impairment
        if ep._impair_timer is not None:  # one pending wake-up per leg, for its earliest datagram
            ep._impair_timer.cancel()
            ep._impair_timer = None
        if net is None or ep.closed:
            return
        for data, addr, rtcp in net.pop_due(self.loop.time()):
            self._receive(ep, data, addr, rtcp)
        self.flush(ep)
        due = net.next_deadline()
        if due is not None:
            ep._impair_timer = self.loop.call_at(due, self._release, ep)

    def flush(self, ep: RtpEndpoint) -> None:
        """Send what the session queued and hand its events to the owner."""
        session = ep.session
        if session.out:
            out, session.out = session.out, []
            if ep.send is not None:
                for data, addr, via_rtcp in out:
                    try:
                        ep.send(data, addr, via_rtcp)
                    except Exception:
                        ep.tx_errors += 1
                        log.exception("sending on an attached leg failed")
            elif ep.sock is not None and ep.sock.fileno() >= 0:
                for data, addr, via_rtcp in out:
                    sock = ep.rtcp_sock if via_rtcp and ep.rtcp_sock is not None else ep.sock
                    try:
                        sock.sendto(data, addr)
                    except (BlockingIOError, InterruptedError):
                        ep.tx_dropped += 1
                    except OSError as exc:
                        ep.tx_errors += 1
                        log.debug("RTP send to %s failed: %s", addr, exc)
        if session.events:
            events, session.events = session.events, []
            if ep.on_events is not None:
                try:
                    ep.on_events(events)
                except Exception:
                    log.exception("media event handler failed on port %s", ep.local_port)

    # -- the clock ---------------------------------------------------------------------------------
    def _arm(self) -> None:
        nxt = self.scheduler.next_deadline()
        if nxt is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= nxt:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = nxt
        # a fresh context: the one timer serves every leg, not the one whose call armed it
        self._timer = contextvars.Context().run(self.loop.call_at, nxt, self._on_timer)

    def serve(self, ep: RtpEndpoint) -> None:
        """Serve ``ep``'s slot due now at once: called from another leg's tick whose AudioPort
        just queued a frame for ``ep`` (the bridge's PhoneLink), so that frame goes out in this
        slot, not the next. From then on that leg is ticked before ``ep`` whenever both are due
        (the first time, ``ep`` may have had its turn already). A slot not yet due is left alone."""
        if ep.closed or not ep.started:
            return
        feeder = self._ticking
        if feeder is not None and feeder is not ep:
            ep.fed_by = feeder
        now = self.loop.time()
        due = ep.session.next_due
        if due is not None and due <= now + TOLERANCE:
            self._tick(ep, now)

    def _tick(self, ep: RtpEndpoint, now: float) -> None:
        outer, self._ticking = self._ticking, ep
        try:
            ep.session.tick(now, TOLERANCE)
        except Exception:
            log.exception("RTP clock of port %s failed", ep.local_port)
        finally:
            self._ticking = outer
        self.ticks += 1
        self.flush(ep)
        if not ep.closed:
            self.scheduler.set(ep, ep.session.next_due)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.wakes += 1
        now = self.loop.time()
        due = self.scheduler.pop_due(now)
        if any(ep.fed_by is not None for ep in due):
            # a leg served by another (MediaEngine.serve) goes after it: its tick serves this one
            here = set(due)
            fed = [ep for ep in due if ep.fed_by is not None and ep.fed_by in here and not ep.fed_by.closed]
            if fed:
                later = set(fed)
                due = [ep for ep in due if ep not in later] + fed
        for ep in due:
            if ep in self.scheduler:
                continue  # served already in this wake-up (its next slot is scheduled)
            self._tick(ep, now)
        self._arm()

    def stats(self) -> dict[str, int]:
        return {"legs": len(self.endpoints), "running": len(self.scheduler), "wakes": self.wakes,
                "ticks": self.ticks}


__all__ = ["MediaEngine", "RtpEndpoint", "bind_pair", "format_of"]
