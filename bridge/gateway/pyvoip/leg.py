"""PyVoipLeg: one SIP call on the trunk (the SipLeg protocol), a transaction user of the trunk's
SipEndpoint: every retransmission, timer, ACK of a non-2xx and CANCEL/487 matching is the
endpoint's (bridge/sip); the leg decides what the call does with each event."""


from __future__ import annotations

import asyncio
import logging
import socket
from enum import StrEnum
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
    refused,
)
from bridge.rtp.dtmf import DTMF_DIGITS
from bridge.sip.auth import authorize_retry
from bridge.sip.causes import cause_for_sip, q850_of, reason_header, sip_for_cause
from bridge.sip.dialog import DialogId
from bridge.sip.endpoint import (
    AckReceived,
    AckTimeout,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionTimeout,
)
from bridge.sip.errors import MethodNotAllowed, SipError
from bridge.sip.message import SipRequest, SipResponse, new_request, random_token
from bridge.sip.sdp import (
    NegotiatedAudio,
    SdpError,
    SdpSession,
    answer_offer,
    build_offer,
    negotiated_from_answer,
)
from bridge.sip.session_timer import (
    TOKEN as TIMER,
)
from bridge.sip.session_timer import (
    SessionExpires,
    format_session_expires,
    parse_min_se,
    parse_session_expires,
)
from bridge.sip.transaction import TransactionKey
from bridge.sip.uri import NameAddr, SipUri
from jego_call.call.machine import TableMachine
from jego_call.call.reasons import EndReason, from_sip

from .common import ALLOW, ALLOW_METHODS, _has_sdp
from .media import _MediaClient
from .phone import _Call

if TYPE_CHECKING:
    from .trunk import PyVoipTrunk

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------
# the leg's state: an Enum, an Enum of events and one transition table (an illegal move raises)

class LegState(StrEnum):
    IDLE = "idle"                # created, nothing sent
    CALLING = "calling"          # out: INVITE sent, no provisional yet (Timer A/B running)
    PROCEEDING = "proceeding"    # out: a provisional arrived (ringing, maybe early media)
    CANCELLING = "cancelling"    # out: we CANCELled; waiting for the 487 (or a crossing 2xx)
    OFFERED = "offered"          # in: INVITE received, 100/180 sent, the app decides
    ANSWERED = "answered"        # a 2xx: ACKed by us (out) or sent by us (in)
    ENDED = "ended"              # LegEnded emitted


class LegInput(StrEnum):
    DIAL = "dial"                # we sent the INVITE
    OFFER = "offer"              # an INVITE for us arrived
    PROVISIONAL = "provisional"  # 1xx to our INVITE
    CHALLENGE = "challenge"      # 401/407: a new INVITE with credentials went out
    CANCEL = "cancel"            # hangup() while ringing
    ANSWER = "answer"            # 2xx received (out) / sent (in)
    END = "end"                  # final non-2xx, BYE either way, CANCEL/487, timeouts, stop


_S, _E = LegState, LegInput
LEG_TRANSITIONS: dict[tuple[LegState, LegInput], LegState] = {
    (_S.IDLE, _E.DIAL): _S.CALLING,
    (_S.IDLE, _E.OFFER): _S.OFFERED,
    (_S.CALLING, _E.PROVISIONAL): _S.PROCEEDING,
    (_S.CALLING, _E.CHALLENGE): _S.CALLING,
    (_S.PROCEEDING, _E.CHALLENGE): _S.CALLING,
    (_S.CALLING, _E.CANCEL): _S.CANCELLING,
    (_S.PROCEEDING, _E.CANCEL): _S.CANCELLING,
    (_S.CALLING, _E.ANSWER): _S.ANSWERED,
    (_S.PROCEEDING, _E.ANSWER): _S.ANSWERED,
    (_S.OFFERED, _E.ANSWER): _S.ANSWERED,
    **{(s, _E.END): _S.ENDED for s in LegState if s is not _S.ENDED},
}


class LegMachine(TableMachine[LegState, LegInput]):
    """One SIP leg's state; `apply(event)` is the only way to change it."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("sip leg", LEG_TRANSITIONS, LegState.IDLE, LegState.ENDED)


# -------------------------------------------------------------------------------------------------
# the leg

class PyVoipLeg:
    """One SIP call on the trunk (the SipLeg protocol). Outbound: `dial`; inbound: the trunk's
    handler gets it, then `answer` or `reject`. Read `events` until LegEnded; `hangup` any time."""

    def __init__(self, trunk: PyVoipTrunk, call_id: str, *, inbound: bool = False) -> None:
        self.call_id = call_id
        self.events: asyncio.Queue[LegEvent] = asyncio.Queue()
        self.inbound = inbound
        self.sm = LegMachine()
        self.sip_call_id = call_id if inbound else f"{random_token(12)}@{trunk.config.local_host}"
        self.local_tag = random_token(6)
        self.remote_tag: str | None = None
        self.dialog: DialogId | None = None  # the endpoint's dialog of this call (early or confirmed)
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
        self._last_ringing: tuple[int, bool] | None = None
        # outbound: the INVITE client transaction(s) (RFC 3261 §17.1.1), one more per digest retry
        self._invite: SipRequest | None = None
        self._invite_key: TransactionKey | None = None
        self._invite_keys: list[TransactionKey] = []
        self._auth_tries = 0
        # inbound: the INVITE server transaction (RFC 3261 §17.2.1)
        self._inv_req: SipRequest | None = None
        self._server_key: TransactionKey | None = None
        self.acked = False
        self._bye_done = asyncio.Event()
        self._stored_dialog: str | None = None  # its key in the trunk's dialog store, once answered
        # RFC 4028: the interval asked for, the one agreed in the 2xx, and our next refresh
        self._session_ask = int(self._cfg.session_expires_s)
        self.session: SessionExpires | None = None
        self.session_refreshes = 0
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._session_retries = 0

    # -- SipLeg API ---------------------------------------------------------------------------
    @property
    def state(self) -> LegState:
        """idle calling proceeding cancelling answered ended | offered (inbound): see LegState."""
        return self.sm.state

    @property
    def codec(self) -> str | None:
        """The negotiated G.711 codec once known ("PCMU"/"PCMA")."""
        return self.audio.codec if self.audio else None

    async def dial(self, number: str, caller_id: str | None = None) -> None:
        """Send the INVITE to `number` (the endpoint retransmits it, Timer A/B; digest and the
        18x/2xx/4xx dialogue follow as events on the loop); returns once sent. Then read `events`."""
        if self.state != "idle" or self.inbound:
            raise RuntimeError(f"dial() on a leg in state {self.state}")
        trunk = self._trunk
        cfg = self._cfg
        if trunk.active_calls() >= cfg.max_calls:
            self.sm.apply(_E.END)
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
        headers = [("Allow", ALLOW)]
        if self._session_ask > 0:  # RFC 4028 §7.1: we support timers and offer to refresh
            headers += [("Supported", TIMER), ("Session-Expires", format_session_expires(self._session_ask, "uac"))]
            if self._session_ask < 90:
                headers.append(("Min-SE", str(self._session_ask)))
        invite = new_request(
            "INVITE", ruri, from_=from_, to=to, call_id=self.sip_call_id, cseq=1,
            contact=trunk.contact(), headers=headers,
            body=self._offer.serialize().encode(), content_type="application/sdp")
        self.sm.apply(_E.DIAL)
        self._send_invite(invite)

    async def answer(self) -> None:
        """Answer an inbound call: 200 OK with our SDP answer (the endpoint retransmits it until
        the ACK), media starts; LegAnswered follows. A call the caller CANCELled is never answered."""
        if not self.inbound or self.state != "offered" or self._server_key is None or self.audio is None:
            log.info("answer() ignored on %s in state %s", self.call_id, self.state)
            return
        assert self._answer_sdp is not None
        self.sm.apply(_E.ANSWER)
        self.final_status = 200
        self._start_media(self.audio)
        self._respond_invite(200, body=self._answer_sdp.serialize().encode(), content_type="application/sdp")
        if self._call is not None:
            self._call.state = pv_voip.CallState.ANSWERED
        self._trunk.remember_dialog(self)
        self._emit(LegAnswered(self.audio.codec))

    async def reject(self, sip_code: int, q850_cause: int | None = None) -> None:
        """Refuse an inbound call with a final response (+ Reason), retransmitted by the endpoint
        until the ACK (Timer G/H); LegEnded follows."""
        if not self.inbound or self.state != "offered":
            return
        if not 300 <= sip_code <= 699:
            raise ValueError("reject() needs a 3xx-6xx final response code")
        self.final_status = sip_code
        headers = [("Reason", reason_header(q850_cause))] if q850_cause else []
        self._respond_invite(sip_code, headers=headers)
        self._end(LegEnded(from_sip(sip_code, q850_cause), sip_code, q850_cause, remote=False))

    async def hangup(self, q850_cause: int = 16, reason: str | None = None) -> None:
        """BYE when answered, CANCEL while ringing (final response for an inbound call that rings);
        idempotent; LegEnded(remote=False) follows. `reason`: the BYE's Reason text (RFC 3326),
        e.g. "credit_exhausted" (default: Q.850's words for the cause)."""
        if self._ended or self.state in ("cancelling", "ended"):
            return
        if self.state == "idle":
            self._end(LegEnded(EndReason.HANGUP, remote=False))
        elif self.state == "offered":
            code = sip_for_cause(q850_cause) or 480
            await self.reject(code if code >= 300 else 480, q850_cause)
        elif self.state == "answered":
            self._send_bye(q850_cause, reason)
            self._end(LegEnded(EndReason.HANGUP, None, q850_cause, remote=False))
        elif self.state in ("calling", "proceeding"):
            self.sm.apply(_E.CANCEL)
            self._send_cancel(q850_cause)

    def send_audio(self, pcm: bytes) -> None:
        """Queue one 20 ms PCM16 frame (320 bytes); never blocks; the oldest is dropped when full."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"send_audio needs {FRAME_BYTES} bytes (20 ms of 16-bit 8 kHz), got {len(pcm)}")
        if self.media is not None:
            self.media.write(bytes(pcm))

    def serve_media(self) -> None:
        """Called from the app leg's 20 ms slot after `send_audio`: our RTP sends that frame in
        the same slot, and `read_audio` then has this slot's received frame (the media engine)."""
        if self.media is not None:
            self.media.serve()

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
        """Emit the one LegEnded, stop media, free the port, forget the leg. Late retransmissions
        for the call are answered by the endpoint's transactions and dialogs, not by the leg."""
        if self.sm.ended and self._ended:
            return
        if not self.sm.ended:
            self.sm.apply(_E.END)
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        self._emit(ev)
        if self._call is not None:
            self._call.state = pv_voip.CallState.ENDED
        self._trunk._release_leg(self)

    # -- internals: media (the only places media starts; it stops in PyVoipTrunk._release_leg) ---
    def _start_media(self, audio: NegotiatedAudio) -> None:
        self.audio = audio
        if self.media is None:
            assert self._sock is not None
            self.media = _MediaClient(self, self._sock, audio, self._cfg)
            self._sock = None  # the media engine owns it now (pyVoIP's RTPClients stay empty)
            self.media.start()
        else:
            self.media.update(audio)

    # -- internals: outbound (UAC) ----------------------------------------------------------------
    def _send_invite(self, invite: SipRequest) -> None:
        """A new INVITE client transaction on the endpoint (it adds Via, retransmits: Timer A/B)."""
        self._invite = invite
        self._invite_key = self._trunk.request(invite, self._trunk.server_addr, self._on_invite_result)
        self._invite_keys.append(self._invite_key)

    def _on_invite_result(self, ev: ResponseReceived | TransactionTimeout) -> None:
        if isinstance(ev, TransactionTimeout):
            if ev.key != self._invite_key or self._ended:
                return
            if self.state == "cancelling":  # §9.1: no final response after our CANCEL
                self._end(LegEnded(EndReason.CANCELLED, None, 16, remote=False, detail="no 487 after CANCEL"))
            else:
                self._end(LegEnded(EndReason.TIMEOUT, 408, cause_for_sip(408), remote=True,
                                   detail="no response to INVITE (Timer B)"))
            return
        resp = ev.response
        if 200 <= resp.status < 300:
            self._on_2xx(resp, ev.dialog)
        elif ev.key != self._invite_key:
            return  # the challenged INVITE's transaction: its ACK is the endpoint's business
        elif resp.status >= 300:
            self._on_final_error(resp)
        else:
            self._on_provisional(resp, ev.dialog)

    def _on_provisional(self, resp: SipResponse, dialog: DialogId | None) -> None:
        if self.state == "calling":
            self.sm.apply(_E.PROVISIONAL)
        if resp.status == 100 or self._ended or self.state == "cancelling":
            return  # a CANCEL waiting for this provisional went out with it (the endpoint's)
        if resp.to_tag:
            self.remote_tag = resp.to_tag
            self.dialog = dialog
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

    def _on_2xx(self, resp: SipResponse, dialog: DialogId | None) -> None:
        """A 2xx: the TU ACKs it itself (RFC 3261 §13.2.2.4: the 2xx's To-tag, a new branch, the
        INVITE's CSeq, to the remote target); the endpoint re-ACKs its retransmissions."""
        if dialog is None:
            log.warning("2xx without To-tag on %s: cannot ACK it", self.call_id)
            return
        trunk = self._trunk
        if self.state == "answered" or self._ended or self.state == "cancelling":
            # A second 2xx (another fork) or a 2xx that crossed our CANCEL (§9.1): ACK, then BYE.
            trunk.end_dialog(dialog, 16, ack=True)
            if self.state == "cancelling" and not self._ended:
                self.final_status = resp.status
                self._end(LegEnded(EndReason.CANCELLED, None, 16, remote=False, detail="200 OK crossed the CANCEL"))
            return
        trunk.endpoint.send_ack(dialog, trunk.now(), dest=trunk.dialog_dest(dialog))
        trunk.flush()
        self.final_status = resp.status
        self.remote_tag = resp.to_tag
        self.dialog = dialog
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
        self.sm.apply(_E.ANSWER)
        self._start_media(audio)
        if self._call is not None:
            self._call.state = pv_voip.CallState.ANSWERED
        trunk.remember_dialog(self)
        self._agree_session(resp)
        self._emit(LegAnswered(audio.codec))

    def _on_final_error(self, resp: SipResponse) -> None:
        """3xx-6xx (already ACKed by the transaction, §17.1.1.3): a digest challenge gets a new
        INVITE with CSeq+1 and (Proxy-)Authorization (§22.2); anything else ends the leg."""
        if self._ended:
            return
        if resp.status in (401, 407) and self.sm.can(_E.CHALLENGE) and self._auth_tries < 2 \
                and self._invite is not None:
            retry = authorize_retry(self._invite, resp, username=self._cfg.username,
                                    password=self._cfg.password, realm=self._cfg.realm)
            if retry is not None:
                self._auth_tries += 1
                self.sm.apply(_E.CHALLENGE)
                self._send_invite(retry)
                return
        if resp.status == 422 and self.sm.can(_E.CHALLENGE) and self._session_retries < 2 \
                and self._invite is not None:
            retry = self._with_larger_session(self._invite, resp)
            if retry is not None:
                self._session_retries += 1
                self.sm.apply(_E.CHALLENGE)  # a retry of the INVITE, as for a digest challenge
                self._send_invite(retry)
                return
        self.final_status = resp.status
        cause = q850_of(resp)
        if resp.status == 487 and self.state == "cancelling":
            self._end(LegEnded(EndReason.CANCELLED, 487, cause, remote=False))
            return
        self._end(refused(resp.status, cause,
                          detail=f"{resp.status} {resp.reason}" + ("" if cause is not None else " (cause derived)")))

    # -- internals: RFC 4028 session timers -----------------------------------------------------
    def _with_larger_session(self, invite: SipRequest, resp: SipResponse) -> SipRequest | None:
        """§7.2 / §8.1.1: after 422, the same INVITE (CSeq + 1, new branch) with the Session-Expires
        the peer's Min-SE asks for."""
        min_se = parse_min_se(resp.headers.get("Min-SE"))
        if min_se is None or min_se <= self._session_ask:
            return None
        self._session_ask = min_se
        headers = invite.headers.copy()
        headers.remove("Via")
        headers.set("CSeq", f"{invite.cseq.seq + 1} INVITE")
        headers.set("Session-Expires", format_session_expires(min_se, "uac"))
        headers.set("Min-SE", str(min_se))
        return SipRequest("INVITE", invite.uri, headers, invite.body)

    def _agree_session(self, resp: SipResponse) -> None:
        """The 2xx says whether the session has a timer and who refreshes it (§7.2): when it is
        us, refresh with UPDATE at half the interval (§10)."""
        try:
            se = parse_session_expires(resp.headers.get("Session-Expires") or resp.headers.get("x"))
        except SipError as exc:
            log.warning("bad Session-Expires in the 2xx of %s: %s", self.call_id, exc)
            se = None
        self.session = se
        if se is not None and se.refresher in ("uac", None) and not self._ended:
            loop = asyncio.get_running_loop()
            if self._refresh_timer is not None:
                self._refresh_timer.cancel()
            self._refresh_timer = loop.call_later(se.refresh_after, self._refresh_session)

    def _refresh_session(self) -> None:
        """UPDATE without a body (RFC 3311; RFC 4028 §7.4): refreshes the session and keeps its interval."""
        self._refresh_timer = None
        if self._ended or self.dialog is None or self.session is None or self.state != "answered":
            return
        trunk = self._trunk
        if trunk.endpoint.dialog(self.dialog) is None:
            return
        headers = (("Supported", TIMER), ("Session-Expires", format_session_expires(self.session.seconds, "uac")))
        key = trunk.endpoint.send_in_dialog(self.dialog, "UPDATE", trunk.now(), headers=headers,
                                            dest=trunk.dialog_dest(self.dialog))
        trunk.flush()
        trunk.own(key, self._on_refresh_result)

    def _on_refresh_result(self, ev: ResponseReceived | TransactionTimeout) -> None:
        if self._ended:
            return
        if isinstance(ev, TransactionTimeout) or ev.response.status in (408, 481):
            # §10: the session is gone at the far end (or unreachable): end it.
            detail = "no answer to the session refresh" if isinstance(ev, TransactionTimeout) \
                else f"session refresh got {ev.response.status}"
            self._send_bye(102)
            self._end(LegEnded(EndReason.CONNECTION_LOST, None, 102, remote=True, detail=detail))
            return
        resp = ev.response
        if resp.status < 200:
            return
        if resp.status < 300:
            self.session_refreshes += 1
            self._agree_session(resp)
        else:  # e.g. 405/501 from a peer without UPDATE: keep the old interval and try again later
            log.info("session refresh of %s got %s: retrying at the next half interval", self.call_id, resp.status)
            if self.session is not None:
                self._refresh_timer = asyncio.get_running_loop().call_later(self.session.refresh_after,
                                                                            self._refresh_session)

    def _send_cancel(self, q850_cause: int) -> None:
        """CANCEL (§9.1) through the endpoint: sent once a provisional arrived; the INVITE is given
        up `cancel_timeout` later if no final response comes (TransactionTimeout)."""
        trunk = self._trunk
        key = None
        if self._invite_key is not None:
            headers = [("Reason", reason_header(q850_cause))] if q850_cause != 16 else []
            key = trunk.endpoint.send_cancel(self._invite_key, trunk.now(), headers=headers,
                                             give_up_after=self._cfg.cancel_timeout)
            trunk.flush()
        if key is None and not self._ended:  # the INVITE is already over
            self._end(LegEnded(EndReason.CANCELLED, None, q850_cause, remote=False, detail="INVITE already over"))

    # -- internals: dialog requests ---------------------------------------------------------------
    def _send_bye(self, q850_cause: int, reason: str | None = None) -> None:
        """BYE in the dialog to its remote target (not pyVoIP's `server` + copied Via, SIP.py:1517/1653);
        the endpoint retransmits it (Timer E/F)."""
        if self.dialog is None:
            return
        key = self._trunk.end_dialog(self.dialog, q850_cause, text=reason)
        if key is None:
            self._bye_done.set()
            return
        self._trunk.own(key, self._on_bye_result)

    def _on_bye_result(self, ev: ResponseReceived | TransactionTimeout) -> None:
        if isinstance(ev, TransactionTimeout) or ev.response.status >= 200:
            self._bye_done.set()

    # -- internals: inbound (UAS) -----------------------------------------------------------------
    def _offer_inbound(self, ev: RequestReceived) -> None:
        """The server side of a new INVITE (the endpoint sent 100 Trying): the SDP answer is ready."""
        self._inv_req = ev.request
        self._server_key = ev.key
        self.remote_tag = ev.request.from_tag
        self.sm.apply(_E.OFFER)

    def _respond_invite(self, status: int, *, headers: list[tuple[str, str]] | None = None,
                        body: bytes = b"", content_type: str | None = None) -> None:
        """Answer our INVITE server transaction; 1xx/2xx with our tag make the endpoint's dialog."""
        assert self._server_key is not None and self._inv_req is not None
        trunk = self._trunk
        resp = trunk.respond(self._server_key, status, headers=list(headers or []) + [("Allow", ALLOW)],
                             body=body, content_type=content_type,
                             contact=trunk.contact() if 100 < status < 300 else None)
        if resp is not None and resp.to_tag and status > 100:
            self.local_tag = resp.to_tag
            if status < 300:
                self.dialog = DialogId(self._inv_req.call_id, resp.to_tag, self._inv_req.from_tag or "")

    def _on_ack(self, ev: AckReceived) -> None:
        if ev.dialog == self.dialog:
            self.acked = True  # 2xx retransmission has stopped (the endpoint's)

    def _on_ack_timeout(self, ev: AckTimeout) -> None:
        """No ACK for our 2xx within 64·T1 (§13.3.1.4): BYE, the call has failed (cause 41)."""
        if ev.dialog != self.dialog or self._ended:
            return
        self._send_bye(41)
        self._end(LegEnded(EndReason.FAILED, None, 41, remote=True, detail="no ACK for our 200 OK (Timer H)"))

    def _on_cancel(self, ev: CancelReceived) -> None:
        """CANCEL of the inbound INVITE: the endpoint answered it 200; the INVITE gets 487 (§9.2).
        Once the INVITE has a final response the CANCEL changes nothing."""
        if ev.invite_key != self._server_key or ev.final_sent or self.state != "offered":
            return
        self.final_status = 487
        self._respond_invite(487)
        self._end(LegEnded(EndReason.CANCELLED, 487, q850_of(ev.cancel), remote=True))

    def _on_request(self, ev: RequestReceived) -> None:
        """A request in this call's dialog (OPTIONS is answered by the trunk)."""
        trunk = self._trunk
        req = ev.request
        if req.method == "INVITE":
            self._on_reinvite(ev)
        elif req.method == "BYE":
            trunk.respond(ev.key, 200)
            cause = q850_of(req)
            if self.state == "answered" and not self._ended:
                self._end(LegEnded(from_sip(0, cause), None, cause if cause is not None else 16, remote=True))
            elif self.state == "offered" and self._server_key is not None:
                # The caller may BYE an early dialog (§15): the INVITE ends with 487.
                self.final_status = 487
                self._respond_invite(487)
                self._end(LegEnded(EndReason.CANCELLED, 487, cause, remote=True))
        else:
            trunk.reject(ev.key, MethodNotAllowed(req.method, ALLOW_METHODS))

    def _on_reinvite(self, ev: RequestReceived) -> None:
        """A re-INVITE in the dialog: answer its offer on the same port (RFC 3264 §8); the endpoint
        retransmits our 200 until its ACK. pyVoIP would start a second pair of RTP threads
        (VoIP.py:267-296)."""
        trunk = self._trunk
        req = ev.request
        if self.state == "offered":
            # §14.2: an INVITE in a dialog whose first INVITE has no final response yet
            trunk.respond(ev.key, 500, headers=[("Retry-After", "1")])
            return
        if self.state != "answered" or self.media is None:
            trunk.respond(ev.key, 491)  # §14.1: our own INVITE is still pending
            return
        if not _has_sdp(req):
            trunk.respond(ev.key, 488)
            return
        try:
            ans = answer_offer(req.body, address=self._cfg.local_host, port=self.media.inPort,
                               supported=[self.media.codec] + [c.upper() for c in self._cfg.codecs])
        except SdpError as exc:
            trunk.respond(ev.key, 488, str(exc)[:80])
            return
        self.media.update(ans.audio)
        self.audio = ans.audio
        trunk.respond(ev.key, 200, body=ans.sdp.serialize().encode(), content_type="application/sdp",
                      contact=trunk.contact())
