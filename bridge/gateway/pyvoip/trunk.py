"""PyVoipTrunk: the bridge worker's SIP user agent on pyVoIP (the SipTrunk protocol)."""


from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP.VoIP import VoIP as pv_voip

from bridge.gateway.legs import (
    InboundHandler,
    LegEnded,
)
from bridge.sip.causes import reason_header
from bridge.sip.errors import SipError
from bridge.sip.headers import Via
from bridge.sip.message import (
    KNOWN_METHODS,
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
    new_request,
    parse_message,
    random_token,
)
from bridge.sip.sdp import (
    SdpError,
    answer_offer,
)
from bridge.sip.uri import SipUri
from jego_call.call.reasons import EndReason
from jego_call.numbering import e164_of

from .common import ALLOW, TrunkConfig, TrunkError, _has_sdp, _is_ip
from .leg import PyVoipLeg
from .phone import _Call, _Phone

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------
# the trunk

class PyVoipTrunk:
    """The bridge worker's SIP user agent (the SipTrunk protocol) on pyVoIP.

    `await start()` (bind + REGISTER unless trunk mode), `new_leg(id)` then `leg.dial(number)`,
    `set_inbound_handler(h)` for calls from the carrier, `await stop()` at the end.
    """

    def __init__(self, config: TrunkConfig | None = None) -> None:
        self.config = config or TrunkConfig()
        self._phone: _Phone | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._legs: dict[str, PyVoipLeg] = {}
        self._handler: InboundHandler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stops: list[asyncio.Future[Any]] = []
        self.counters: collections.Counter[str] = collections.Counter()

    # -- SipTrunk API ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the SIP socket, start pyVoIP's receive thread and register (unless trunk mode).
        Raises TrunkError when registration fails. Then create legs with `new_leg`."""
        if self._phone is not None:
            raise RuntimeError("trunk already started")
        self._loop = asyncio.get_running_loop()
        self._phone = _Phone(self)
        try:
            await asyncio.to_thread(self._phone.start)
        except Exception as exc:
            await asyncio.to_thread(self._phone.stop, True)
            self._phone = None
            if isinstance(exc, TrunkError):
                raise
            raise TrunkError(str(exc)) from exc

    async def stop(self) -> None:
        """Hang up every leg, un-REGISTER, stop and join every thread, release sockets."""
        if self._phone is None:
            return
        self._handler = None  # new INVITEs get 480 while we stop
        byes = []
        for leg in list(self._legs.values()):
            answered = leg.state == "answered"
            with contextlib.suppress(Exception):
                await leg.hangup()
            if answered:
                byes.append(leg._bye_done.wait())
        if byes:  # give the BYEs a moment to be answered (and retransmitted) before we go
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*byes), min(1.0, 4 * self.config.t1))
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        medias = [leg.media for leg in self._legs.values() if leg.media is not None]
        for leg in list(self._legs.values()):
            leg._end(LegEnded(EndReason.HANGUP, None, 16, remote=False, detail="trunk stopped"))
        for m in medias:
            m.stop()
        await asyncio.gather(*self._pending_stops(), return_exceptions=True)
        # un-REGISTER needs the receive path (REGISTER responses are routed through the trunk)
        await asyncio.to_thread(self._phone.stop)
        self._phone = None
        self._legs.clear()

    def new_leg(self, call_id: str) -> PyVoipLeg:
        """A fresh outbound leg; call `dial` on it."""
        if self._phone is None:
            raise RuntimeError("trunk not started")
        return PyVoipLeg(self, call_id)

    def set_inbound_handler(self, handler: InboundHandler) -> None:
        """Where inbound INVITEs go; without one they get 480."""
        self._handler = handler

    @property
    def registered(self) -> bool:
        """True once the trunk accepted our REGISTER (always True in trunk mode once started)."""
        return self._phone is not None and self._phone.sip.registered

    # -- extras ----------------------------------------------------------------------------------
    @property
    def phone(self) -> _Phone:
        if self._phone is None:
            raise RuntimeError("trunk not started")
        return self._phone

    @property
    def local_port(self) -> int:
        """The SIP port we bound (useful with local_port=0)."""
        return int(self.phone.sip.myPort)

    @property
    def server_addr(self) -> tuple[str, int]:
        return (self.config.server_host, self.config.server_port)

    def active_calls(self) -> int:
        return sum(1 for leg in self._legs.values() if not leg._ended)

    def contact(self) -> str:
        return f"<sip:{self.config.username}@{self.config.local_host}:{self.local_port};transport=udp>"

    def via(self, branch: str) -> str:
        return str(Via("UDP", self.config.local_host, self.local_port, (("branch", branch), ("rport", None))))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._phone is not None:
            self._phone.sip.send(data, addr)

    def respond(self, req: SipRequest, status: int, src: tuple[str, int], *, to_tag: str | None = None,
                reason: str | None = None, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                content_type: str | None = None) -> None:
        """Send a response to `req` (our tag added to To unless it has one, RFC 3261 §8.2.6.2)."""
        extra = list(headers or []) + [("User-Agent", self.config.user_agent)]
        resp = make_response(req, status, reason, to_tag=to_tag or random_token(6), headers=extra, body=body,
                             content_type=content_type)
        self.respond_wire(req, resp.serialise(), src)

    def respond_wire(self, req: SipRequest, wire: bytes, src: tuple[str, int]) -> None:
        """Responses go back per RFC 3261 §18.2.2 / RFC 3581: to the source with rport (or when
        the Via host is not an IP literal), else to Via received/host and port."""
        try:
            via = req.top_via
        except SipError:
            self.send(wire, src)
            return
        if via.has_rport or not _is_ip(via.host):
            self.send(wire, src)
        else:
            self.send(wire, (via.received or via.host, via.port or 5060))

    # -- from pyVoIP's receive thread ------------------------------------------------------------
    def _datagram(self, raw: bytes, addr: tuple[str, int]) -> None:
        """On the "SIP Recieve" thread: parse, route REGISTER responses, hand the rest to the loop."""
        if not raw.strip(b"\r\n\x00 "):
            return  # keep-alive (RFC 5626 CRLF, pyVoIP's 4 zero bytes)
        try:
            msg = parse_message(raw)
        except SipError as exc:
            self.counters["sip_malformed"] += 1
            log.info("dropped malformed SIP datagram from %s: %s", addr, exc)
            return
        if isinstance(msg, SipResponse):
            try:
                if msg.cseq.method == "REGISTER" and self._phone is not None:
                    self._phone.sip._reg_responses.put(msg)
                    return
            except SipError:
                return
        self._call_soon(self._on_message, msg, (addr[0], addr[1]))

    def _call_soon(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    # -- on the event loop ------------------------------------------------------------------------
    def _on_message(self, msg: SipMessage, src: tuple[str, int]) -> None:
        if self._phone is None:
            return
        try:
            call_id = msg.call_id
            if isinstance(msg, SipResponse):
                leg = self._legs.get(call_id)
                if leg is not None:
                    leg._on_response(msg)
                elif 200 <= msg.status < 300 and msg.cseq.method == "INVITE":
                    self._stray_2xx(msg)
                return
            self._on_request(msg, src)
        except SipError as exc:
            self.counters["sip_bad"] += 1
            log.info("bad SIP message from %s: %s", src, exc)
        except Exception:
            log.exception("error handling SIP message from %s", src)

    def _on_request(self, req: SipRequest, src: tuple[str, int]) -> None:
        method = req.method
        leg = self._legs.get(req.call_id)
        if method == "OPTIONS" and leg is None:
            # Keep-alive / capability query (RFC 3261 §11.2); pyVoIP drops it (SIP.py:867).
            self.respond(req, 200, src, headers=[("Allow", ALLOW), ("Accept", "application/sdp"),
                                                 ("Accept-Language", "en")])
            return
        if leg is not None:
            leg._on_request(req, src)
            return
        if method == "INVITE" and req.to_tag is None:
            self._new_inbound(req, src)
        elif method == "ACK":
            return
        elif method in ("BYE", "CANCEL", "INVITE"):
            self.respond(req, 481, src)  # RFC 3261 §15.1.2, §9.2
        else:
            self.respond(req, 405 if method in KNOWN_METHODS else 501, src, headers=[("Allow", ALLOW)])

    def _new_inbound(self, req: SipRequest, src: tuple[str, int]) -> None:
        cfg = self.config
        if self._handler is None:
            self.respond(req, 480, src, headers=[("Reason", reason_header(20))])
            return
        if self.active_calls() >= cfg.max_calls:
            self.respond(req, 486, src, headers=[("Reason", reason_header(17))])
            return
        if not _has_sdp(req):
            self.respond(req, 488, src, reason="Offer Required", headers=[("Warning", '304 - "no SDP offer"')])
            return
        phone = self.phone
        try:
            port = phone.request_port()
        except pv_voip.NoPortsAvailableError:
            self.respond(req, 503, src, headers=[("Reason", reason_header(34))])
            return
        try:
            ans = answer_offer(req.body, address=cfg.local_host, port=port,
                               supported=[c.upper() for c in cfg.codecs], session_name="Jego Call")
        except SdpError as exc:
            phone.release_port(port)
            self.respond(req, exc.status if exc.status in (400, 488) else 488, src, reason=exc.reason[:80],
                         headers=[("Warning", f'305 - "{exc.reason[:60]}"')] if exc.status == 488 else [])
            return
        leg = PyVoipLeg(self, req.call_id, inbound=True)
        leg._port = port
        leg._sock = phone.take_socket(port)
        leg._call = _Call(phone, req.call_id, port, pv_voip.CallState.RINGING)
        phone.calls[req.call_id] = leg._call
        leg.audio = ans.audio
        leg._answer_sdp = ans.sdp
        self._legs[req.call_id] = leg
        leg._offer_inbound(req, src)
        self.respond(req, 100, src)
        leg._respond_invite(180)
        handler = self._handler
        from_number = e164_of(req.from_.uri.user if isinstance(req.from_.uri, SipUri) else None)
        to_number = e164_of(req.to.uri.user if isinstance(req.to.uri, SipUri) else None)

        async def run() -> None:
            await handler(leg, from_number, to_number)

        self._spawn(run())

    def _stray_2xx(self, resp: SipResponse) -> None:
        """A 2xx for a call we no longer have (e.g. it crossed a CANCEL after we gave up): ACK it
        and BYE it so the far end does not keep a half-open call (RFC 3261 §13.2.2.4, §15)."""
        contacts = resp.contacts
        if not contacts:
            return
        target = contacts[0].uri
        dest = (target.host, target.port or 5060) if isinstance(target, SipUri) and _is_ip(target.host) else self.server_addr
        for method, seq in (("ACK", resp.cseq.seq), ("BYE", resp.cseq.seq + 1)):
            req = new_request(method, target, from_=str(resp.from_), to=str(resp.to), call_id=resp.call_id, cseq=seq)
            req.headers.add("Via", self.via("z9hG4bK" + random_token(10)), first=True)
            self.send(req.serialise(), dest)

    # -- bookkeeping ------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("trunk task failed", exc_info=task.exception())

    def _pending_stops(self) -> list[asyncio.Future[Any]]:
        stops, self._stops = self._stops, []
        return stops

    def _release_leg(self, leg: PyVoipLeg) -> None:
        """Stop the leg's media, free its port, and forget the leg
        after 64·T1 so late retransmissions are still recognised."""
        phone = self._phone
        media, leg.media = leg.media, None
        if media is not None:
            leg._stopped_media = media
            media.stop()  # on the shared media engine: plain and non-blocking
        if phone is not None and leg._port is not None:
            if leg._sock is not None:
                leg._sock.close()
                leg._sock = None
            port = leg._port
            phone.calls.pop(leg.sip_call_id, None)
            # the media socket is closed by media.stop(); only the bookkeeping is released here
            with phone.portsLock:
                if port in phone.assignedPorts:
                    phone.assignedPorts.remove(port)
                phone._sockets.pop(port, None)
        leg._port = None

        async def forget() -> None:
            await asyncio.sleep(64 * self.config.t1)
            if self._legs.get(leg.sip_call_id) is leg:
                del self._legs[leg.sip_call_id]

        self._spawn(forget())

