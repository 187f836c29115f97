"""PyVoipLeg: one SIP call on the trunk (the SipLeg protocol)."""


from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP.VoIP import VoIP as pv_voip

from bridge.gateway.legs import (
    FRAME_BYTES,
    LegAnswered,
    LegDtmf,
    LegEnded,
    LegEvent,
    LegRinging,
)
from bridge.rtp.dtmf import DTMF_DIGITS
from bridge.sip.auth import build_authorization
from bridge.sip.causes import cause_for_sip, q850_of, reason_header, sip_for_cause
from bridge.sip.errors import SipError
from bridge.sip.message import (
    KNOWN_METHODS,
    SipRequest,
    SipResponse,
    make_response,
    new_request,
    random_token,
)
from bridge.sip.sdp import (
    NegotiatedAudio,
    SdpError,
    SdpSession,
    answer_offer,
    build_offer,
    negotiated_from_answer,
)
from bridge.sip.uri import NameAddr, SipUri, Uri, parse_name_addr
from jego_call.call.reasons import EndReason, from_sip

from .common import ALLOW, T2, _has_sdp, _is_ip, _pick_challenge
from .media import _MediaClient
from .phone import _Call

if TYPE_CHECKING:
    from .trunk import PyVoipTrunk

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------
# the leg

class PyVoipLeg:
    """One SIP call on the trunk (the SipLeg protocol). Outbound: `dial`; inbound: the trunk's
    handler gets it, then `answer` or `reject`. Read `events` until LegEnded; `hangup` any time."""

    def __init__(self, trunk: PyVoipTrunk, call_id: str, *, inbound: bool = False) -> None:
        self.call_id = call_id
        self.events: asyncio.Queue[LegEvent] = asyncio.Queue()
        self.inbound = inbound
        self.state = "idle"  # idle calling proceeding cancelling answered ended | offered (inbound)
        self.sip_call_id = call_id if inbound else f"{random_token(12)}@{trunk.config.local_host}"
        self.local_tag = random_token(6)
        self.remote_tag: str | None = None
        self.media: _MediaClient | None = None
        self._stopped_media: _MediaClient | None = None  # kept after the end so stats() still answers
        self.audio: NegotiatedAudio | None = None
        self.final_status: int | None = None
        self._trunk = trunk
        self._cfg = trunk.config
        self._ended = False
        self._port: int | None = None
        self._sock: socket.socket | None = None
        self._call: _Call | None = None
        self._offer: SdpSession | None = None
        self._answer_sdp: SdpSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_ringing: tuple[int, bool] | None = None
        # outbound INVITE client transaction (RFC 3261 §17.1.1)
        self._invite: SipRequest | None = None
        self._invite_wire = b""
        self._invite_sent: SipRequest | None = None
        self._branch = ""
        self._cseq = 1
        self._auth_tries = 0
        self._got_provisional = False
        self._cancel_pending = False
        self._cancel_sent = False
        self._ack_wire: bytes | None = None
        self._final_branches: set[str] = set()
        # dialog (RFC 3261 §12)
        self._remote_target: Uri | None = None
        self._route_set: list[str] = []
        self._local_cseq = random.randint(1, 10_000)
        # inbound INVITE server transaction (RFC 3261 §17.2.1)
        self._inv_req: SipRequest | None = None
        self._inv_src: tuple[str, int] | None = None
        self._last_response: bytes | None = None
        self._acked = asyncio.Event()
        self._bye_done = asyncio.Event()
        self._cancel_done = asyncio.Event()

    # -- SipLeg API ---------------------------------------------------------------------------
    @property
    def codec(self) -> str | None:
        """The negotiated G.711 codec once known ("PCMU"/"PCMA")."""
        return self.audio.codec if self.audio else None

    async def dial(self, number: str, caller_id: str | None = None) -> None:
        """Send the INVITE to `number` (Timer A/B, digest and the 18x/2xx/4xx dialogue run on the
        event loop); returns once sent. Then read `events`."""
        if self.state != "idle" or self.inbound:
            raise RuntimeError(f"dial() on a leg in state {self.state}")
        trunk = self._trunk
        cfg = self._cfg
        if trunk.active_calls() >= cfg.max_calls:
            self.state = "ended"
            self._emit(LegEnded(EndReason.CONGESTION, 503, 34, remote=False, detail="max_calls reached"))
            return
        phone = trunk.phone
        self._port = phone.request_port()
        self._sock = phone.take_socket(self._port)
        self._call = _Call(phone, self.sip_call_id, self._port, pv_voip.CallState.DIALING)
        phone.calls[self.sip_call_id] = self._call
        trunk._legs[self.sip_call_id] = self
        self._offer = build_offer(cfg.local_host, self._port, codecs=[c.upper() for c in cfg.codecs],
                                  telephone_event_pt=cfg.dtmf_payload_type, session_name="Jego Call")
        params = (("user", "phone"),) if number.startswith("+") else ()
        ruri = SipUri("sip", number, cfg.server_host, cfg.server_port, params=params)
        from_user = caller_id or cfg.caller_id or cfg.username
        from_ = NameAddr(SipUri("sip", from_user, cfg.server_host)).with_tag(self.local_tag)
        to = NameAddr(SipUri("sip", number, cfg.server_host, params=params))
        self._invite = new_request(
            "INVITE", ruri, from_=from_, to=to, call_id=self.sip_call_id, cseq=self._cseq,
            contact=trunk.contact(), headers=[("Allow", ALLOW), ("User-Agent", cfg.user_agent)],
            body=self._offer.serialize().encode(), content_type="application/sdp")
        self.state = "calling"
        self._send_invite()

    async def answer(self) -> None:
        """Answer an inbound call: 200 OK with our SDP answer, media starts; LegAnswered follows.
        A call the caller has CANCELled is never answered (it is already over)."""
        if not self.inbound or self.state != "offered" or self._inv_req is None or self.audio is None:
            log.info("answer() ignored on %s in state %s", self.call_id, self.state)
            return
        assert self._answer_sdp is not None
        self.state = "answered"
        self.final_status = 200
        self._start_media(self.audio)
        self._respond_invite(200, body=self._answer_sdp.serialize().encode(), content_type="application/sdp")
        if self._call is not None:
            self._call.state = pv_voip.CallState.ANSWERED
        self._emit(LegAnswered(self.audio.codec))
        self._spawn(self._retransmit_final())

    async def reject(self, sip_code: int, q850_cause: int | None = None) -> None:
        """Refuse an inbound call with a final response (+ Reason); LegEnded follows."""
        if not self.inbound or self.state != "offered":
            return
        if not 300 <= sip_code <= 699:
            raise ValueError("reject() needs a 3xx-6xx final response code")
        self.final_status = sip_code
        headers = [("Reason", reason_header(q850_cause))] if q850_cause else []
        self._respond_invite(sip_code, headers=headers)
        self._spawn(self._retransmit_final())
        self._end(LegEnded(from_sip(sip_code, q850_cause), sip_code, q850_cause, remote=False))

    async def hangup(self, q850_cause: int = 16) -> None:
        """BYE when answered, CANCEL while ringing (final response for an inbound call that rings);
        idempotent; LegEnded(remote=False) follows."""
        if self._ended or self.state in ("cancelling", "ended"):
            return
        if self.state == "idle":
            self._end(LegEnded(EndReason.HANGUP, remote=False))
        elif self.state == "offered":
            code = sip_for_cause(q850_cause) or 480
            await self.reject(code if code >= 300 else 480, q850_cause)
        elif self.state == "answered":
            self._send_bye(q850_cause)
            self._end(LegEnded(EndReason.HANGUP, None, q850_cause, remote=False))
        elif self.state in ("calling", "proceeding"):
            self.state = "cancelling"
            self._cancel_pending = True
            if self._got_provisional:
                self._send_cancel(q850_cause)  # RFC 3261 §9.1: only after a provisional response
            self._spawn(self._cancel_watchdog())

    def send_audio(self, pcm: bytes) -> None:
        """Queue one 20 ms PCM16 frame (320 bytes); never blocks; the oldest is dropped when full."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"send_audio needs {FRAME_BYTES} bytes (20 ms of 16-bit 8 kHz), got {len(pcm)}")
        if self.media is not None:
            self.media.write(bytes(pcm))

    def read_audio(self) -> bytes | None:
        """The next received 20 ms frame (320 bytes PCM16), or None when nothing is due."""
        if self.media is None:
            return None
        frame = self.media.read()
        return frame or None

    async def send_dtmf(self, digits: str) -> None:
        """Send `digits` as RFC 4733 telephone-events (100 ms each, 60 ms apart); returns when sent."""
        for d in digits:
            if d.upper() not in DTMF_DIGITS:
                raise ValueError(f"not a DTMF digit: {d!r}")
        if self.media is None or self.audio is None or self.audio.telephone_event_pt is None:
            raise RuntimeError("no telephone-event negotiated on this call")
        for fut in self.media.queue_dtmf(digits.upper()):
            await asyncio.wrap_future(fut)

    def stats(self) -> dict[str, Any]:
        """Media counters (tx/rx packets, drops, backlog, jitter buffer); still valid after LegEnded."""
        media = self.media or self._stopped_media
        return media.stats() if media else {}

    # -- internals: events ----------------------------------------------------------------------
    def _emit(self, ev: LegEvent) -> None:
        if self._ended:
            return
        if isinstance(ev, LegEnded):
            self._ended = True
        self.events.put_nowait(ev)

    def _dtmf_from_thread(self, digit: str) -> None:
        """Called on the RTP receiver thread: re-enter the loop (never touch asyncio here)."""
        self._trunk._call_soon(self._emit, LegDtmf(digit))

    def _end(self, ev: LegEnded) -> None:
        """Emit the one LegEnded, stop media, free the port; the leg lingers 64·T1 for stray
        retransmissions (ACK of our final response, 2xx retransmits) before it is forgotten."""
        if self.state == "ended" and self._ended:
            return
        self.state = "ended"
        self._emit(ev)
        if self._call is not None:
            self._call.state = pv_voip.CallState.ENDED
        self._trunk._release_leg(self)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._trunk._spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- internals: media -----------------------------------------------------------------------
    def _start_media(self, audio: NegotiatedAudio) -> None:
        self.audio = audio
        if self.media is None:
            assert self._sock is not None
            self.media = _MediaClient(self, self._sock, audio, self._cfg)
            self._sock = None  # the media engine owns it now (pyVoIP's RTPClients stay empty)
            self.media.start()
        else:
            self.media.update(audio)

    # -- internals: outbound ----------------------------------------------------------------------
    @property
    def _sent(self) -> SipRequest:
        """The INVITE as last sent (with its Via)."""
        if self._invite_sent is None:
            raise RuntimeError("no INVITE sent")
        return self._invite_sent

    def _send_invite(self) -> None:
        assert self._invite is not None
        self._branch = "z9hG4bK" + random_token(10)
        req = SipRequest(self._invite.method, self._invite.uri, self._invite.headers.copy(), self._invite.body)
        req.headers.set("CSeq", f"{self._cseq} INVITE")
        req.headers.add("Via", self._trunk.via(self._branch), first=True)
        self._invite_wire = req.serialise()
        self._invite_sent = req
        self._got_provisional = False
        self._trunk.send(self._invite_wire, self._trunk.server_addr)
        self._spawn(self._invite_timers(self._branch))

    async def _invite_timers(self, branch: str) -> None:
        """Timer A retransmits the INVITE (T1, 2·T1, ...); Timer B = 64·T1 without any response
        ends the call as 408 (RFC 3261 §17.1.1.2)."""
        t1 = self._cfg.t1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 64 * t1
        interval = t1
        while True:
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
            if branch != self._branch or self._got_provisional or self.final_status is not None or self._ended:
                return
            if loop.time() >= deadline:
                self._end(LegEnded(EndReason.TIMEOUT, 408, cause_for_sip(408), remote=True,
                                   detail="no response to INVITE (Timer B)"))
                return
            self._trunk.send(self._invite_wire, self._trunk.server_addr)
            interval *= 2

    def _on_response(self, resp: SipResponse) -> None:
        method = resp.cseq.method
        if method == "CANCEL":
            if resp.status >= 200:
                self._cancel_done.set()
            return
        if method == "BYE":
            if resp.status >= 200:
                self._bye_done.set()
            return
        if method != "INVITE" or self.inbound:
            return
        branch = resp.top_via.branch or ""
        if resp.status >= 300:
            self._on_final_error(resp, branch)
        elif resp.status >= 200:
            self._on_2xx(resp)
        elif branch == self._branch:
            self._on_provisional(resp)

    def _on_provisional(self, resp: SipResponse) -> None:
        self._got_provisional = True
        if self.state == "calling":
            self.state = "proceeding"
        if self._cancel_pending and not self._cancel_sent:
            self._send_cancel(16)
            return
        if resp.status == 100 or self._ended:
            return
        if resp.to_tag:
            self.remote_tag = resp.to_tag
        early = False
        if resp.status == 183 and _has_sdp(resp) and self._offer is not None:
            try:
                audio = negotiated_from_answer(resp.body, self._offer, supported=[c.upper() for c in self._cfg.codecs])
            except SdpError as exc:
                log.info("183 SDP unusable on %s: %s", self.call_id, exc)
            else:
                self._start_media(audio)  # early media (RFC 3960 gateway model)
                early = True
        elif self.media is not None:
            early = True
        if self._call is not None:
            self._call.state = pv_voip.CallState.RINGING
        key = (resp.status, early)
        if key != self._last_ringing:
            self._last_ringing = key
            self._emit(LegRinging(resp.status, early))

    def _on_2xx(self, resp: SipResponse) -> None:
        if self._ack_wire is not None:
            # A retransmitted 2xx: the TU re-sends the same ACK (RFC 3261 §13.2.2.4).
            self._trunk.send(self._ack_wire, self._dialog_dest())
            return
        self.final_status = resp.status
        self.remote_tag = resp.to_tag
        contacts = resp.contacts
        self._remote_target = contacts[0].uri if contacts else self._sent.uri
        self._route_set = list(reversed([str(r) for r in resp.record_routes]))  # §12.1.2
        self._ack_2xx(resp)
        if self.state == "cancelling" or self._ended:
            # The 200 crossed our CANCEL (RFC 3261 §9.1): ACK it, then BYE.
            self._send_bye(16)
            self._end(LegEnded(EndReason.CANCELLED, None, 16, remote=False, detail="200 OK crossed the CANCEL"))
            return
        audio = self.audio
        if _has_sdp(resp) and self._offer is not None:
            try:
                audio = negotiated_from_answer(resp.body, self._offer, supported=[c.upper() for c in self._cfg.codecs])
            except SdpError as exc:
                log.warning("2xx SDP unusable on %s: %s", self.call_id, exc)
                audio = None
        if audio is None:
            self._send_bye(65)
            self._end(LegEnded(EndReason.FAILED, None, 65, remote=False, detail="no usable SDP answer"))
            return
        self.state = "answered"
        self._start_media(audio)
        if self._call is not None:
            self._call.state = pv_voip.CallState.ANSWERED
        self._emit(LegAnswered(audio.codec))

    def _ack_2xx(self, resp: SipResponse) -> None:
        """ACK for a 2xx: a new transaction inside the dialog: the To-tag of the 2xx (pyVoIP sends
        a fresh random one, SIP.py:1565), a new branch, the INVITE's CSeq number (§13.2.2.4)."""
        assert self._invite_sent is not None and self._remote_target is not None
        h = self._sent.headers
        ack = new_request("ACK", self._remote_target, from_=h.get("From") or "", to=h.get("To") or "",
                          call_id=self.sip_call_id, cseq=self._cseq, headers=self._route_headers())
        ack.headers.set("To", str(resp.to))
        ack.headers.add("Via", self._trunk.via("z9hG4bK" + random_token(10)), first=True)
        self._ack_wire = ack.serialise()
        self._trunk.send(self._ack_wire, self._dialog_dest())

    def _ack_error(self, resp: SipResponse) -> None:
        """ACK for a 3xx-6xx: part of the INVITE transaction: same Request-URI, the INVITE's Via
        (same branch), the response's To (with its tag), CSeq number + ACK (RFC 3261 §17.1.1.3)."""
        inv = self._sent
        h = inv.headers
        ack = new_request("ACK", inv.uri, from_=h.get("From") or "", to=str(resp.to), call_id=self.sip_call_id,
                          cseq=resp.cseq.seq)
        ack.headers.add("Via", h.get("Via") or "", first=True)
        self._trunk.send(ack.serialise(), self._trunk.server_addr)

    def _on_final_error(self, resp: SipResponse, branch: str) -> None:
        if self._invite_sent is None:
            return
        if branch in self._final_branches or branch != self._branch:
            if branch in self._final_branches:
                self._ack_error(resp)  # retransmitted final: ACK again (Completed state, Timer D)
            return
        self._final_branches.add(branch)
        self._ack_error(resp)
        if self._ended:
            return
        if resp.status in (401, 407) and self.state != "cancelling" and self._auth_tries < 2:
            picked = _pick_challenge(resp)
            if picked is not None and (self._cfg.realm is None or picked[1].realm == self._cfg.realm):
                name, ch = picked
                self._auth_tries += 1
                assert self._invite is not None
                value = build_authorization(ch, method="INVITE", uri=str(self._invite.uri),
                                            username=self._cfg.username, password=self._cfg.password)
                self._invite.headers.remove("Authorization")
                self._invite.headers.remove("Proxy-Authorization")
                self._invite.headers.add(name, value)
                self._cseq += 1  # RFC 3261 §22.2: a new request with an incremented CSeq
                self.state = "calling"
                self._send_invite()
                return
        self.final_status = resp.status
        cause = q850_of(resp)
        if resp.status == 487 and self.state == "cancelling":
            self._end(LegEnded(EndReason.CANCELLED, 487, cause, remote=False))
            return
        q850 = cause if cause is not None else cause_for_sip(resp.status)
        self._end(LegEnded(from_sip(resp.status, q850), resp.status, q850, remote=True,
                           detail=f"{resp.status} {resp.reason}" + ("" if cause is not None else " (cause derived)")))

    def _send_cancel(self, q850_cause: int) -> None:
        """CANCEL: the INVITE's Request-URI, Call-ID, From, To, CSeq number and top Via (RFC 3261 §9.1)."""
        inv = self._sent
        h = inv.headers
        cancel = new_request("CANCEL", inv.uri, from_=h.get("From") or "", to=h.get("To") or "",
                             call_id=self.sip_call_id, cseq=self._cseq,
                             headers=[("Reason", reason_header(q850_cause))] if q850_cause != 16 else [])
        cancel.headers.add("Via", h.get("Via") or "", first=True)
        self._cancel_sent = True
        wire = cancel.serialise()
        self._trunk.send(wire, self._trunk.server_addr)
        self._spawn(self._retransmit_request(wire, self._trunk.server_addr, self._cancel_done))

    async def _cancel_watchdog(self) -> None:
        """After CANCEL the 487 should follow; don't make the app wait for ever if it doesn't."""
        await asyncio.sleep(self._cfg.cancel_timeout)
        if not self._ended:
            self._end(LegEnded(EndReason.CANCELLED, None, 16, remote=False, detail="no 487 after CANCEL"))

    # -- internals: dialog requests ---------------------------------------------------------------
    def _route_headers(self) -> list[tuple[str, str]]:
        return [("Route", r) for r in self._route_set]

    def _dialog_dest(self) -> tuple[str, int]:
        """Where in-dialog requests go (RFC 3261 §12.2.1.1, §8.1.2): the first Route if there is a
        route set, else the remote target; a non-IP host falls back to the trunk's server."""
        target: Uri | None = self._remote_target
        if self._route_set:
            with contextlib.suppress(SipError):
                target = parse_name_addr(self._route_set[0], "Route").uri
        if isinstance(target, SipUri) and _is_ip(target.host):
            return (target.host, target.port or target.default_port)
        return self._trunk.server_addr

    def _send_bye(self, q850_cause: int) -> None:
        """BYE to the remote target (not pyVoIP's `server` + copied Via, SIP.py:1517/1653)."""
        if self._remote_target is None:
            return
        if self.inbound:
            self._local_cseq += 1
            assert self._inv_req is not None
            from_ = str(self._inv_req.to.with_tag(self.local_tag))
            to = str(self._inv_req.from_)
            cseq = self._local_cseq
        else:
            h = self._sent.headers
            from_ = h.get("From") or ""
            to = str(parse_name_addr(h.get("To") or "", "To").with_tag(self.remote_tag or ""))
            self._cseq += 1  # §12.2.1.1: the INVITE's CSeq + 1
            cseq = self._cseq
        headers = self._route_headers() + [("Reason", reason_header(q850_cause)), ("User-Agent", self._cfg.user_agent)]
        bye = new_request("BYE", self._remote_target, from_=from_, to=to, call_id=self.sip_call_id, cseq=cseq,
                          headers=headers)
        bye.headers.add("Via", self._trunk.via("z9hG4bK" + random_token(10)), first=True)
        wire = bye.serialise()
        dest = self._dialog_dest()
        self._trunk.send(wire, dest)
        self._spawn(self._retransmit_request(wire, dest, self._bye_done))

    async def _retransmit_request(self, wire: bytes, dest: tuple[str, int], done: asyncio.Event) -> None:
        """Timer E/F for a non-INVITE request we sent (BYE, CANCEL), RFC 3261 §17.1.2.2."""
        interval = self._cfg.t1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 64 * self._cfg.t1
        while loop.time() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), min(interval, deadline - loop.time()))
            if done.is_set():
                return
            self._trunk.send(wire, dest)
            interval = min(interval * 2, T2)

    # -- internals: inbound -----------------------------------------------------------------------
    def _offer_inbound(self, req: SipRequest, src: tuple[str, int]) -> None:
        """Set up the server side of a new INVITE: 100, SDP answer ready, 180 (trunk decides)."""
        self._inv_req = req
        self._inv_src = src
        contacts = req.contacts
        self._remote_target = contacts[0].uri if contacts else req.from_.uri
        self._route_set = [str(r) for r in req.record_routes]  # §12.1.1: UAS keeps the order
        self.remote_tag = req.from_tag
        self.state = "offered"

    def _respond_invite(self, status: int, *, headers: list[tuple[str, str]] | None = None,
                        body: bytes = b"", content_type: str | None = None) -> None:
        assert self._inv_req is not None and self._inv_src is not None
        extra = list(headers or [])
        if 100 < status < 300:
            extra.append(("Contact", self._trunk.contact()))
        extra += [("Allow", ALLOW), ("User-Agent", self._cfg.user_agent)]
        resp = make_response(self._inv_req, status, to_tag=self.local_tag, headers=extra, body=body,
                             content_type=content_type)
        self._last_response = resp.serialise()
        self._trunk.respond_wire(self._inv_req, self._last_response, self._inv_src)

    async def _retransmit_final(self) -> None:
        """Timer G resends our final response until the ACK; Timer H (64·T1) gives up: an
        answered call without ACK is torn down with BYE (RFC 3261 §13.3.1.4, §17.2.1)."""
        t1 = self._cfg.t1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 64 * t1
        interval = t1
        while loop.time() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(interval, deadline - loop.time()))
            if self._acked.is_set():
                return
            if self._last_response is not None and self._inv_req is not None and self._inv_src is not None:
                self._trunk.respond_wire(self._inv_req, self._last_response, self._inv_src)
            interval = min(interval * 2, T2)
        if self.final_status == 200 and not self._ended:
            self._send_bye(41)
            self._end(LegEnded(EndReason.FAILED, None, 41, remote=True, detail="no ACK for our 200 OK (Timer H)"))

    def _on_request(self, req: SipRequest, src: tuple[str, int]) -> None:
        trunk = self._trunk
        method = req.method
        if method == "ACK":
            self._acked.set()
            return
        if method == "INVITE":
            if self._inv_req is not None and req.top_via.branch == self._inv_req.top_via.branch:
                if self._last_response is not None:  # retransmitted INVITE: repeat our last response
                    trunk.respond_wire(req, self._last_response, src)
                return
            self._on_reinvite(req, src)
            return
        if method == "CANCEL":
            self._on_cancel(req, src)
            return
        if method == "BYE":
            trunk.respond(req, 200, src)
            if self.state == "answered" and not self._ended:
                cause = q850_of(req)
                self._end(LegEnded(from_sip(0, cause), None, cause if cause is not None else 16, remote=True))
            return
        trunk.respond(req, 405 if method in KNOWN_METHODS else 501, src, headers=[("Allow", ALLOW)])

    def _on_cancel(self, req: SipRequest, src: tuple[str, int]) -> None:
        """CANCEL of the inbound INVITE: 200 for the CANCEL, 487 for the INVITE (RFC 3261 §9.2);
        once the INVITE has a final response the CANCEL changes nothing."""
        trunk = self._trunk
        if self._inv_req is None or req.top_via.branch != self._inv_req.top_via.branch:
            trunk.respond(req, 481, src)
            return
        trunk.respond(req, 200, src, to_tag=self.local_tag)
        if self.state != "offered":
            return
        self.final_status = 487
        self._respond_invite(487)
        self._spawn(self._retransmit_final())
        self._end(LegEnded(EndReason.CANCELLED, 487, q850_of(req), remote=True))

    def _on_reinvite(self, req: SipRequest, src: tuple[str, int]) -> None:
        """A re-INVITE in the dialog: answer its offer on the same port (RFC 3264 §8); pyVoIP
        would start a second pair of RTP threads (VoIP.py:267-296)."""
        trunk = self._trunk
        if self.state != "answered" or self.media is None:
            trunk.respond(req, 491 if self.state == "offered" else 481, src)
            return
        if not _has_sdp(req):
            trunk.respond(req, 488, src, to_tag=self.local_tag)
            return
        try:
            ans = answer_offer(req.body, address=self._cfg.local_host, port=self.media.inPort,
                               supported=[self.media.codec] + [c.upper() for c in self._cfg.codecs])
        except SdpError as exc:
            trunk.respond(req, 488, src, to_tag=self.local_tag, reason=str(exc)[:80])
            return
        self.media.update(ans.audio)
        self.audio = ans.audio
        trunk.respond(req, 200, src, to_tag=self.local_tag, body=ans.sdp.serialize().encode(),
                      content_type="application/sdp", headers=[("Contact", trunk.contact())])


