"""PyVoipTrunk: the bridge worker's SIP user agent on pyVoIP (the SipTrunk protocol)."""


from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP.VoIP import VoIP as pv_voip

from bridge.gateway.dialogs import DialogRecord, DialogStore, record_of
from bridge.gateway.legs import InboundHandler, LegEnded
from bridge.net.driver import EndpointDriver
from bridge.sip.causes import reason_header
from bridge.sip.dialog import DialogId
from bridge.sip.endpoint import (
    AckReceived,
    AckTimeout,
    BadAck,
    CancelReceived,
    EndpointConfig,
    MessageDropped,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
    TransactionTimeout,
    UnmatchedResponse,
)
from bridge.sip.errors import CallDoesNotExist, SipError
from bridge.sip.message import SipRequest, SipResponse, error_response, parse_message
from bridge.sip.sdp import SdpError, answer_offer
from bridge.sip.transaction import Addr, TimerConfig, TransactionKey
from bridge.sip.uri import NameAddr, SipUri, parse_name_addr
from jego_call.call.reasons import EndReason
from jego_call.log import bind_call
from jego_call.numbering import e164_of

from .common import ALLOW_METHODS, TrunkConfig, TrunkError, _has_sdp, _target_addr
from .leg import PyVoipLeg
from .phone import _Call, _Phone


def _wall() -> float:
    return time.time()


log = logging.getLogger(__name__)

ClientResult = ResponseReceived | TransactionTimeout
ResultHandler = Callable[[ClientResult], None]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


async def trunk_networks(sources: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """The networks SIP may come from: each source an address or network; a host name (only as
    the default, the trunk's host) is resolved once."""
    out: list[IpNetwork] = []
    loop = asyncio.get_running_loop()
    for src in sources:
        try:
            out.append(ipaddress.ip_network(src, strict=False))
        except ValueError:
            for info in await loop.getaddrinfo(src, None, type=socket.SOCK_DGRAM):
                out.append(ipaddress.ip_network(str(info[4][0])))
    return tuple(out)


# -------------------------------------------------------------------------------------------------
# the trunk

class PyVoipTrunk:
    """The bridge worker's SIP user agent (the SipTrunk protocol) on pyVoIP.

    `await start()` (bind + REGISTER unless trunk mode), `new_leg(id)` then `leg.dial(number)`,
    `set_inbound_handler(h)` for calls from the carrier, `await stop()` at the end.

    SIP runs on one sans-I/O `SipEndpoint` (bridge/sip) driven on the event loop by an
    `EndpointDriver` (bridge/net): pyVoIP's receive thread hands it each datagram, its output
    leaves through pyVoIP's socket, its timers are one `loop.call_at`. Every protocol decision
    comes from the endpoint's events, routed here to the leg (by Call-ID / transaction key) or
    to the registration.
    """

    def __init__(self, config: TrunkConfig | None = None) -> None:
        self.config = config or TrunkConfig()
        self._phone: _Phone | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._endpoint: SipEndpoint | None = None
        self._driver: EndpointDriver | None = None
        self._legs: dict[str, PyVoipLeg] = {}           # live legs by SIP Call-ID
        self._owners: dict[TransactionKey, ResultHandler] = {}  # our client transactions
        self._handler: InboundHandler | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stops: list[asyncio.Future[Any]] = []
        self.counters: collections.Counter[str] = collections.Counter()
        # Answered dialogs kept where a surviving or restarted worker finds them (dialogs.py).
        self.dialog_store: DialogStore | None = None
        self.worker_id = ""
        self.sources: tuple[IpNetwork, ...] = ()    # who may send us SIP (resolved at start)
        self._foreign_logged = 0.0

    # -- SipTrunk API ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the SIP socket, start pyVoIP's receive thread and register (unless trunk mode).
        Raises TrunkError when registration fails. Then create legs with `new_leg`."""
        if self._phone is not None:
            raise RuntimeError("trunk already started")
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self.sources = await trunk_networks(cfg.trunk_sources or (cfg.server_host,))
        self._endpoint = SipEndpoint(EndpointConfig(timers=TimerConfig(t1=cfg.t1), allow=ALLOW_METHODS,
                                                    auto_ack=False, user_agent=cfg.user_agent),
                                     host=cfg.local_host, port=cfg.local_port)
        self._driver = EndpointDriver(self._endpoint, send_datagram=self._send, on_event=self._on_event)
        self._driver.start(self._loop)
        self._phone = _Phone(self)
        try:
            self._phone.start()  # bind + receive thread: quick, no network wait
            self._endpoint.set_local_address(cfg.local_host, self.local_port)
            if not await self._phone.sip.register_async():
                raise TrunkError(f"registration failed: {self._phone.sip.last_register_error}")
        except BaseException as exc:
            phone, self._phone = self._phone, None
            phone.sip.cancel_refresh()
            self._driver.close()
            await asyncio.to_thread(phone.stop, True)
            if isinstance(exc, TrunkError) or not isinstance(exc, Exception):
                raise
            raise TrunkError(str(exc)) from exc

    async def stop(self) -> None:
        """Hang up every leg, un-REGISTER, stop and join every thread, release sockets."""
        phone = self._phone
        if phone is None:
            return
        self._handler = None  # new INVITEs get 480 while we stop
        byes = []
        for leg in list(self._legs.values()):
            answered = leg.state == "answered"
            with contextlib.suppress(Exception):
                await leg.hangup()
            if answered:
                byes.append(leg._bye_done.wait())
        if byes:  # give the BYEs a moment to be answered (the endpoint retransmits them meanwhile)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*byes), min(1.0, 4 * self.config.t1))
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for leg in list(self._legs.values()):  # e.g. CANCEL sent, no 487 yet
            leg._end(LegEnded(EndReason.HANGUP, None, 16, remote=False, detail="trunk stopped"))
        await asyncio.gather(*self._pending_stops(), return_exceptions=True)
        await phone.sip.deregister_async()  # needs the endpoint and the receive thread
        if self._driver is not None:
            self._driver.close()
        await asyncio.to_thread(phone.stop)
        self._phone = None
        self._legs.clear()
        self._owners.clear()

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
    def endpoint(self) -> SipEndpoint:
        """The SIP core every leg and the registration run on (commands: then call `flush()`)."""
        if self._endpoint is None:
            raise RuntimeError("trunk not started")
        return self._endpoint

    @property
    def local_port(self) -> int:
        """The SIP port we bound (useful with local_port=0)."""
        return int(self.phone.sip.myPort)

    @property
    def server_addr(self) -> tuple[str, int]:
        return (self.config.server_host, self.config.server_port)

    def active_calls(self) -> int:
        return sum(1 for leg in self._legs.values() if not leg._ended)

    def contact(self) -> NameAddr:
        return parse_name_addr(f"<sip:{self.config.username}@{self.config.local_host}:{self.local_port}"
                               ";transport=udp>", "Contact")

    def now(self) -> float:
        """The endpoint's clock: the event loop's."""
        assert self._driver is not None
        return self._driver.now()

    def flush(self) -> None:
        """After any command on `endpoint`: send its output, deliver its events, re-arm its timer."""
        if self._driver is not None:
            self._driver.flush()

    def dialog_dest(self, dialog: DialogId) -> Addr:
        """Where in-dialog requests go (RFC 3261 §12.2.1.1, §8.1.2): the first Route, else the
        remote target, when it is an IP address; else the dialog's peer (never a DNS lookup)."""
        d = self.endpoint.dialog(dialog)
        if d is None:
            return self.server_addr
        return _target_addr(d.remote_target, d.route_set) or d.peer

    # -- commands the legs and the registration use ----------------------------------------------
    def request(self, req: SipRequest, dest: Addr, on_result: ResultHandler | None = None) -> TransactionKey:
        """Start a client transaction for `req` (the endpoint adds Via); responses and the
        timeout go to `on_result`."""
        key = self.endpoint.send_request(req, dest, self.now())
        if on_result is not None:
            self._owners[key] = on_result
        self.flush()
        return key

    def own(self, key: TransactionKey, on_result: ResultHandler) -> None:
        """Send the results of client transaction `key` (e.g. a BYE from send_in_dialog) to `on_result`."""
        self._owners[key] = on_result

    def forget(self, keys: Iterable[TransactionKey]) -> None:
        for key in keys:
            self._owners.pop(key, None)

    async def transact(self, req: SipRequest, dest: Addr) -> SipResponse:
        """One non-INVITE transaction (e.g. REGISTER): its final response; TimeoutError on Timer F."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[SipResponse] = loop.create_future()

        def done(ev: ClientResult) -> None:
            if fut.done():
                return
            if isinstance(ev, TransactionTimeout):
                fut.set_exception(TimeoutError(f"no final response to {req.method} (Timer F)"))
            elif ev.response.status >= 200:
                fut.set_result(ev.response)

        key = self.request(req, dest, done)
        try:
            return await fut
        finally:
            self._owners.pop(key, None)

    def respond(self, key: TransactionKey, status: int, reason: str | None = None, *,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None,
                contact: NameAddr | None = None) -> SipResponse | None:
        """Answer server transaction `key` through the endpoint (None if it is gone)."""
        try:
            resp = self.endpoint.respond(key, status, self.now(), reason, headers=headers, body=body,
                                         content_type=content_type, contact=contact)
        except (KeyError, ValueError) as exc:
            log.debug("cannot send %s: %s", status, exc)
            return None
        finally:
            self.flush()
        return resp

    def reject(self, key: TransactionKey, error: SipError) -> None:
        try:
            self.endpoint.reject(key, error, self.now())
        except (KeyError, ValueError) as exc:
            log.debug("cannot send %s: %s", error.status, exc)
        self.flush()

    def end_dialog(self, dialog: DialogId, q850_cause: int, *, ack: bool = False,
                   text: str | None = None) -> TransactionKey | None:
        """ACK (if asked) and BYE a dialog (RFC 3261 §13.2.2.4, §15.1.1) with `Reason: Q.850;
        cause=N;text=…` (RFC 3326; `text` default: Q.850's words); returns the BYE's key."""
        ep = self.endpoint
        if ep.dialog(dialog) is None:
            return None
        dest = self.dialog_dest(dialog)
        if ack:
            ep.send_ack(dialog, self.now(), dest=dest)
        key = ep.send_in_dialog(dialog, "BYE", self.now(), dest=dest,
                                headers=(("Reason", reason_header(q850_cause, text)),))
        self.flush()
        return key

    # -- from pyVoIP's receive thread ------------------------------------------------------------
    def _datagram(self, raw: bytes, addr: tuple[str, int]) -> None:
        """On the "SIP Recieve" thread: hand the datagram to the endpoint on the event loop, if
        it comes from the trunk ([bridge] trunk_sources); anything else goes to `_foreign`."""
        if not raw.strip(b"\r\n\x00 "):
            return  # keep-alive (RFC 5626 CRLF, pyVoIP's 4 zero bytes)
        if not self.trusted(addr[0]):
            self._call_soon(self._foreign, raw, (str(addr[0]), int(addr[1])))
            return
        if self._driver is not None:
            self._driver.receive_datagram_threadsafe(raw, (str(addr[0]), int(addr[1])))

    def trusted(self, host: str) -> bool:
        """Whether SIP from `host` is the trunk's (one of `sources`)."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self.sources)

    def _foreign(self, raw: bytes, addr: Addr) -> None:
        """SIP from an address that is not the trunk's: a request gets a stateless 403 (never an
        ACK), a response nothing; it never reaches the endpoint, so nothing rings."""
        self.counters["sip_foreign"] += 1
        try:
            msg = parse_message(raw)
        except SipError:
            return
        if isinstance(msg, SipRequest) and msg.method != "ACK":
            self._send(error_response(msg, SipError(403, "Forbidden")).serialise(), addr)  # RFC 3261 §8.2.6
        now = self.now() if self._driver is not None else 0.0
        if now - self._foreign_logged >= 60.0 or self.counters["sip_foreign"] == 1:
            self._foreign_logged = now
            log.warning("SIP from %s:%s refused (403): not one of the trunk's addresses (%s so far)",
                        addr[0], addr[1], self.counters["sip_foreign"])

    def _call_soon(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _send(self, data: bytes, addr: Addr) -> None:
        if self._phone is not None:
            self._phone.sip.send(data, addr)

    # -- the endpoint's events, on the event loop -------------------------------------------------
    def _leg_of(self, ev: SipEvent) -> PyVoipLeg | None:
        """The leg an event is about (by SIP Call-ID, or the owner of a timed-out transaction)."""
        if isinstance(ev, RequestReceived):
            return self._legs.get(ev.request.call_id)
        if isinstance(ev, ResponseReceived):
            return self._legs.get(ev.response.call_id)
        if isinstance(ev, CancelReceived):
            return self._legs.get(ev.cancel.call_id)
        if isinstance(ev, AckReceived | AckTimeout):
            return self._legs.get(ev.dialog.call_id)
        if isinstance(ev, TransactionTimeout):
            owner = getattr(self._owners.get(ev.key), "__self__", None)
            return owner if isinstance(owner, PyVoipLeg) else None
        return None

    def _on_event(self, ev: SipEvent) -> None:
        """Each event in a context of its own, carrying its leg's call id (jego_call.log): the
        driver's timer and the receive path serve every call, not the one that armed them."""
        contextvars.Context().run(self._on_event_in_context, ev)

    def _on_event_in_context(self, ev: SipEvent) -> None:
        leg = self._leg_of(ev)
        if leg is not None:
            bind_call(leg.call_id)
        self._route(ev)

    def _route(self, ev: SipEvent) -> None:
        if isinstance(ev, ResponseReceived):
            self._on_result(ev)
        elif isinstance(ev, TransactionTimeout):
            if ev.key.server:
                log.info("no ACK for our final response (Timer H): %s", ev.key.branch)
            else:
                self._on_result(ev)
        elif isinstance(ev, RequestReceived):
            self._on_request(ev)
        elif isinstance(ev, CancelReceived):
            leg = self._legs.get(ev.cancel.call_id)
            if leg is not None:
                leg._on_cancel(ev)
        elif isinstance(ev, AckReceived):
            leg = self._legs.get(ev.dialog.call_id)
            if leg is not None:
                leg._on_ack(ev)
        elif isinstance(ev, AckTimeout):
            leg = self._legs.get(ev.dialog.call_id)
            if leg is not None:
                leg._on_ack_timeout(ev)
            else:
                self.end_dialog(ev.dialog, 41)
        elif isinstance(ev, UnmatchedResponse):
            self._stray_response(ev)
        elif isinstance(ev, BadAck):
            self.counters["sip_bad_ack"] += 1
            log.info("ACK from %s not for us: %s", ev.addr, ev.reason)
        elif isinstance(ev, RequestRejected):
            self.counters["sip_rejected"] += 1
            log.info("answered %s %s to %s", ev.status, ev.reason, ev.addr)
        elif isinstance(ev, MessageDropped):
            self.counters["sip_malformed"] += 1
            log.info("dropped SIP datagram from %s: %s", ev.addr, ev.reason)

    def _on_result(self, ev: ClientResult) -> None:
        owner = self._owners.get(ev.key)
        if isinstance(ev, TransactionTimeout):
            self._owners.pop(ev.key, None)
        elif ev.response.status >= 200 and (ev.key.method != "INVITE" or ev.response.status >= 300):
            self._owners.pop(ev.key, None)  # an INVITE stays owned after a 2xx: forks may follow
        if owner is not None:
            owner(ev)
        elif (isinstance(ev, ResponseReceived) and 200 <= ev.response.status < 300
              and ev.key.method == "INVITE" and ev.dialog is not None):
            # A 2xx for an INVITE whose leg is gone: ACK it and BYE it, no half-open call (§15).
            self.end_dialog(ev.dialog, 16, ack=True)

    def _stray_response(self, ev: UnmatchedResponse) -> None:
        """A 2xx for a call we no longer have (e.g. it crossed a CANCEL after the INVITE was given
        up): ACK it and BYE it so the far end does not keep a half-open call (RFC 3261
        §13.2.2.4, §15) — through a dialog the endpoint builds from the 2xx."""
        resp = ev.response
        if not (200 <= resp.status < 300 and resp.cseq.method == "INVITE"):
            self.counters["sip_unmatched"] += 1
            return
        contacts = resp.contacts
        dest = _target_addr(contacts[0].uri, list(reversed(resp.headers.get_all("Record-Route")))) \
            if contacts else None
        did = self.endpoint.accept_stray_2xx(resp, ev.addr, self.now(), dest=dest or ev.addr)
        if did is not None:
            self.counters["sip_stray_2xx"] += 1
            d = self.endpoint.dialog(did)
            if d is not None and d.state != "terminated":
                self.end_dialog(did, 16)
        self.flush()

    def _on_request(self, ev: RequestReceived) -> None:
        req = ev.request
        if req.method == "OPTIONS":
            # Keep-alive / capability query (RFC 3261 §11.2), in or out of a dialog; pyVoIP drops
            # it (SIP.py:867). The endpoint adds Allow and Accept.
            self.respond(ev.key, 200, headers=[("Accept-Language", "en")])
            return
        if ev.dialog is not None:
            leg = self._legs.get(ev.dialog.call_id)
            if leg is not None and leg.dialog == ev.dialog:
                leg._on_request(ev)
            elif req.method == "BYE":
                self.respond(ev.key, 200)  # the call already ended here (BYEs crossed)
            else:
                self.reject(ev.key, CallDoesNotExist())
            return
        if ev.in_dialog or req.method != "INVITE":
            self.reject(ev.key, CallDoesNotExist())  # RFC 3261 §12.2.2, §15.1.2
            return
        self._new_inbound(ev)

    def _new_inbound(self, ev: RequestReceived) -> None:
        cfg = self.config
        req, key = ev.request, ev.key
        if req.call_id in self._legs:
            self.respond(key, 482)  # a second INVITE of a call we have: merged request (§8.2.2.2)
            return
        if self._handler is None:
            self.respond(key, 480, headers=[("Reason", reason_header(20))])
            return
        if self.active_calls() >= cfg.max_calls:
            self.respond(key, 486, headers=[("Reason", reason_header(17))])
            return
        if not _has_sdp(req):
            self.respond(key, 488, "Offer Required", headers=[("Warning", '304 - "no SDP offer"')])
            return
        phone = self.phone
        try:
            port = phone.request_port()
        except pv_voip.NoPortsAvailableError:
            self.respond(key, 503, headers=[("Reason", reason_header(34))])
            return
        try:
            ans = answer_offer(req.body, address=cfg.local_host, port=port,
                               supported=[c.upper() for c in cfg.codecs], session_name="Jego Call")
        except SdpError as exc:
            phone.release_port(port)
            self.respond(key, exc.status if exc.status in (400, 488) else 488, exc.reason[:80],
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
        leg._offer_inbound(ev)
        leg._respond_invite(180)
        handler = self._handler
        from_number = e164_of(req.from_.uri.user if isinstance(req.from_.uri, SipUri) else None)
        to_number = e164_of(req.to.uri.user if isinstance(req.to.uri, SipUri) else None)

        async def run() -> None:
            await handler(leg, from_number, to_number)

        self._spawn(run())

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

    # -- dialogs that must outlive this process (bridge/gateway/dialogs.py) ------------------------
    def attach_dialog_store(self, store: DialogStore, worker_id: str) -> None:
        """Keep every answered dialog in `store` under `worker_id` until its call ends."""
        self.dialog_store = store
        self.worker_id = worker_id

    def remember_dialog(self, leg: PyVoipLeg) -> None:
        """The leg's dialog is confirmed: write it to the store (a crash leaves it there)."""
        store, did = self.dialog_store, leg.dialog
        if store is None or did is None or self._endpoint is None:
            return
        d = self._endpoint.dialog(did)
        if d is None:
            return
        try:
            rec = record_of(d, self.dialog_dest(did), owner=self.worker_id, now=_wall(), app_call_id=leg.call_id)
            store.put(rec)
            leg._stored_dialog = rec.key
        except Exception as exc:  # the call goes on; only crash clean-up is lost
            log.warning("dialog store: could not keep %s: %s", did.call_id, exc)

    def forget_dialog(self, leg: PyVoipLeg) -> None:
        key, leg._stored_dialog = leg._stored_dialog, None
        if key is not None and self.dialog_store is not None:
            try:
                self.dialog_store.drop(key)
            except Exception as exc:
                log.warning("dialog store: could not drop %s: %s", key, exc)

    def send_orphan_bye(self, rec: DialogRecord) -> asyncio.Future[int | None]:
        """BYE a dialog another worker left behind (RFC 3261 §15.1.1; Reason: Q.850 cause 41,
        RFC 3326). The future gets the final status, or None when the transaction times out."""
        assert self._loop is not None
        fut: asyncio.Future[int | None] = self._loop.create_future()

        def done(ev: ResponseReceived | TransactionTimeout) -> None:
            if isinstance(ev, TransactionTimeout):
                if not fut.done():
                    fut.set_result(None)
            elif ev.response.status >= 200 and not fut.done():
                fut.set_result(ev.response.status)

        req = rec.bye_request(reason_header(EndReason.CONNECTION_LOST.q850 or 41))
        self.request(req, rec.dest, done)
        return fut

    def _release_leg(self, leg: PyVoipLeg) -> None:
        """Stop the leg's media (on the shared engine: plain, non-blocking), free its port and
        forget it. What may still arrive for the call (retransmissions, ACKs, late 2xx) is the
        endpoint's: its transactions and dialogs outlive the leg for as long as RFC 3261 says."""
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
        self.forget_dialog(leg)
        self.forget(leg._invite_keys)
        if self._legs.get(leg.sip_call_id) is leg:
            del self._legs[leg.sip_call_id]
