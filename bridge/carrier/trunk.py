"""The simulated Chinese carrier trunk: a SIP registrar and UAS (plus a UAC for PSTN -> app calls).

    carrier = Carrier(load_carrier_config(), data_dir=Path("data"))
    await carrier.start()          # carrier.udp_port / carrier.tcp_port; see service.py / cli.py
    ...                            # sipp, baresip or the bridge talk SIP to it
    result = await carrier.originate("+8613800138000", "+4915112345678", play=Path("hello.wav"))
    await carrier.stop()           # BYEs live calls, closes media, flushes call records

Protocol decisions live in small pure pieces that the tests drive directly: `CarrierCallMachine` (state.py: one call's
state, a TableMachine; an illegal move raises), `TrunkAuth` (registrar.py: digest with the
failure lockout, RFC 3261 §22), `Registrar` (bindings with expiry, RFC 3261 §10.3). `Carrier` is
the asyncio driver: it feeds a `SipEndpoint` through a `SipTransport`, runs each INVITE's
behaviour programme (bridge.carrier.scenarios) with timers, owns one `RtpStream` per call and
appends a `CallRecord` to cdr.jsonl when the call ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jego_call.call.reasons import EndReason, from_sip
from jego_call.log import call_context
from jego_call.numbering import NumberInfo, classify

from ..net.sip_transport import SipTransport
from ..sip.causes import CAUSE_TEXT, parse_reason_header, q850_of, reason_header
from ..sip.dialog import DialogId, DialogState
from ..sip.endpoint import (
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
from ..sip.errors import CallDoesNotExist, Forbidden, SipError
from ..sip.message import SipMessage, SipRequest, new_request
from ..sip.sdp import SdpError, SdpSession, answer_offer, build_offer, negotiated_from_answer
from ..sip.session_timer import (
    TOKEN as TIMER,
)
from ..sip.session_timer import (
    SessionExpires,
    format_session_expires,
    has_option,
    parse_session_expires,
)
from ..sip.transaction import Addr, TimerConfig, TransactionKey
from ..sip.uri import NameAddr, SipUri, parse_uri
from .cdr import CallRecord, CdrWriter, cdr_path
from .media import AudioSource, PcmPlayback, PortPool, RtpStream, Sequence, Silence, source_for
from .registrar import Registrar, TrunkAuth
from .scenarios import (
    Answer,
    Behaviour,
    CarrierConfig,
    Drop,
    EarlyMedia,
    Media,
    NeverAnswer,
    NoResponse,
    Reject,
    Ring,
    TrunkAccount,
    Wait,
    behaviour_for_uri,
)
from .state import CallEvent, CallState, CarrierCallMachine

log = logging.getLogger("jego.carrier")

ALLOW = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE")
SDP = "application/sdp"

# --------------------------------------------------------------------------------------------
# the driver

def safe_name(call_id: str) -> str:
    """A Call-ID as a file name: [A-Za-z0-9._@-] kept, the rest '_' (no '/', no leading dot)."""
    name = re.sub(r"[^A-Za-z0-9._@-]", "_", call_id)[:160]
    return ("_" + name[1:]) if name.startswith(".") else name or "_"


@dataclass(eq=False)
class Call:
    """A call at the trunk (UAS side); `fsm` holds its state."""

    key: TransactionKey
    request: SipRequest
    addr: Addr
    transport: str
    account: str
    number: str
    behaviour: Behaviour
    info: NumberInfo | None
    start_wall: float
    fsm: CarrierCallMachine = field(default_factory=CarrierCallMachine)
    dialog: DialogId | None = None
    stream: RtpStream | None = None
    local_sdp: SdpSession | None = None
    offerless: bool = False          # INVITE without SDP: our 200 is the offer, the ACK the answer
    recv_media: bool = True
    answer_wall: float | None = None
    answer_time: float | None = None  # loop clock
    sip_code: int = 0
    q850: int | None = None
    outcome: EndReason | None = None
    reason_text: str = ""            # the Q.850 Reason text of the peer's BYE/CANCEL (RFC 3326)
    bad_acks: int = 0
    recording: Path | None = None
    task: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    session: SessionExpires | None = None  # RFC 4028: agreed in our 2xx; the caller refreshes
    refreshed_at: float = 0.0              # loop clock of the 2xx or the last refresh
    refreshes: int = 0

    @property
    def call_id(self) -> str:
        return self.request.call_id


@dataclass(eq=False)
class OutCall:
    """A carrier-originated call (PSTN -> app): responses and the remote BYE arrive here."""

    key: TransactionKey
    call_id: str
    responses: asyncio.Queue[ResponseReceived | TransactionTimeout] = field(default_factory=asyncio.Queue)
    dialog: DialogId | None = None
    remote_bye: asyncio.Event = field(default_factory=asyncio.Event)
    bye_cause: int | None = None


class Carrier:
    """The trunk. `await start()`, then it serves until `await stop()`.

    `timers` sets RFC 3261 T1/T2/T4 (tests shorten T1 so Timer H = 64*T1 fires quickly);
    `host`/`port` override [sip].host/port. The local HTTP control channel used by `jego carrier
    call` is not the carrier's business: service.start_carrier adds a control.ControlServer.
    """

    def __init__(self, cfg: CarrierConfig, data_dir: str | Path = "data", *, host: str | None = None,
                 port: int | None = None, timers: TimerConfig | None = None) -> None:
        self.cfg = cfg
        self.host = host or cfg.sip.host
        self.port = cfg.sip.port if port is None else port
        self.data_dir = Path(data_dir)
        self.carrier_dir = Path(cfg.cdr.dir) if cfg.cdr.dir else self.data_dir / "carrier"
        self.recordings_dir = self.carrier_dir / "recordings"
        self.cdr = CdrWriter(cdr_path(self.data_dir, cfg.cdr.dir), fsync=cfg.cdr.fsync)
        self.timers = timers or TimerConfig()
        self.endpoint = SipEndpoint(EndpointConfig(timers=self.timers, allow=ALLOW, auto_trying=False,
                                                   user_agent=cfg.sip.user_agent), host=self.host,
                                    port=self.port)
        self.transport: SipTransport = SipTransport(self.endpoint, self.host, self.port, on_event=self._on_event,
                                                    udp="udp" in cfg.sip.transports,
                                                    tcp="tcp" in cfg.sip.transports)
        self.auth = TrunkAuth(cfg)
        self.registrar = Registrar(cfg.sip.min_expires_s, cfg.sip.max_expires_s)
        self.ports = PortPool(cfg.sip.rtp_port_min, cfg.sip.rtp_port_max + 1)
        self.stats: dict[str, int] = dict.fromkeys((
            "requests", "options", "registers", "invites", "challenges", "auth_failures", "auth_blocked",
            "calls", "answered", "bad_acks", "ack_timeouts", "media_timeouts", "session_expired", "cdr_written",
            "rejected_by_endpoint", "dropped"), 0)
        # RTP health summed over ended calls (bench_carrier.sh reads it from /status).
        self.media_totals: dict[str, float] = dict.fromkeys((
            "streams", "packets_sent", "packets_received", "packets_lost", "send_ticks", "on_time",
            "skipped_ticks", "max_lateness", "impaired_dropped"), 0)
        # calls ended, by direction ("in": to the carrier's numbers, "out": originated) and
        # outcome (EndReason value): bridge/carrier/metrics.py exports them
        self.ended: collections.Counter[tuple[str, str]] = collections.Counter()
        self._calls: dict[TransactionKey, Call] = {}
        self._by_dialog: dict[DialogId, Call] = {}
        self._out: dict[TransactionKey, OutCall] = {}
        self._out_by_dialog: dict[DialogId, OutCall] = {}
        self._active_per_account: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lingering: set[asyncio.Task[Any]] = set()  # dialogs kept a while after the call
        self._kick_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.started = False

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind SIP (the `[sip] transports`: UDP and/or TCP, same port). A transport not listed is
        not opened (its port property is 0)."""
        self._loop = asyncio.get_running_loop()
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        await self.transport.start()
        self.started = True
        listening = [f"{name}:{self.host}:{port}" for name, port in (("udp", self.udp_port), ("tcp", self.tcp_port))
                     if port]
        log.info("carrier listening on %s (realm %s)", " ".join(listening), self.cfg.sip.realm)

    @property
    def udp_port(self) -> int:
        return self.transport.udp_port

    @property
    def tcp_port(self) -> int:
        return self.transport.tcp_port

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no call is live and every call record is written."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._calls or self._tasks:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"carrier still busy: {len(self._calls)} calls, {len(self._tasks)} tasks")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """End every call (BYE for answered ones, 503 for ringing ones), write their records,
        close media and sockets."""
        for call in list(self._calls.values()):
            if call.fsm.state in (CallState.ANSWERED, CallState.CONFIRMED):
                self._hangup(call, 16, EndReason.HANGUP)
            else:
                self._final(call, 503, 41, "Carrier shutting down")
        with contextlib.suppress(TimeoutError):
            await self.wait_idle(5.0)
        for task in list(self._tasks) + list(self._lingering):
            task.cancel()
        await asyncio.sleep(0.05)  # let the BYEs leave
        if self.started:
            await self.transport.close()
            self.started = False

    # --- plumbing ------------------------------------------------------------------------------

    def now(self) -> float:
        return self.transport.now()

    def _kick(self) -> None:
        """Flush the endpoint soon (sends queued messages, delivers events, re-arms the timer)."""
        if not self._kick_pending and self._loop is not None:
            self._kick_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._kick_pending = False
        if self.started:
            self.transport.flush()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_event(self, event: SipEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # noqa: BLE001 - a bug in one call must not stop the trunk
            log.exception("carrier: error handling %s", type(event).__name__)
        self._kick()

    def _dispatch(self, event: SipEvent) -> None:
        if isinstance(event, RequestReceived):
            self.stats["requests"] += 1
            self._on_request(event)
        elif isinstance(event, CancelReceived):
            self._on_cancel(event)
        elif isinstance(event, AckReceived):
            self._on_ack(event)
        elif isinstance(event, BadAck):
            self._on_bad_ack(event)
        elif isinstance(event, AckTimeout):
            self._on_ack_timeout(event)
        elif isinstance(event, ResponseReceived):
            out = self._out.get(event.key)
            if out is not None:
                out.responses.put_nowait(event)
        elif isinstance(event, TransactionTimeout):
            out = self._out.get(event.key)
            if out is not None:
                out.responses.put_nowait(event)
        elif isinstance(event, RequestRejected):
            self.stats["rejected_by_endpoint"] += 1
            log.info("carrier: %s answered %s %s", event.addr, event.status, event.reason)
        elif isinstance(event, (MessageDropped, UnmatchedResponse)):
            self.stats["dropped"] += 1
            log.debug("carrier: dropped from %s: %s", event.addr,
                      getattr(event, "reason", "unmatched response"))

    def _respond(self, key: TransactionKey, status: int, reason: str | None = None, *,
                 headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                 content_type: str | None = None) -> str | None:
        """Send a response; returns its To-tag (None if the transaction is gone)."""
        try:
            resp = self.endpoint.respond(key, status, self.now(), reason, headers=headers, body=body,
                                         content_type=content_type)
        except (KeyError, ValueError) as exc:
            log.debug("carrier: cannot send %s: %s", status, exc)
            return None
        self._kick()
        return resp.to_tag

    def _reject(self, key: TransactionKey, error: SipError) -> None:
        try:
            self.endpoint.reject(key, error, self.now())
        except (KeyError, ValueError) as exc:
            log.debug("carrier: cannot send %s: %s", error.status, exc)
        self._kick()

    # --- requests ------------------------------------------------------------------------------

    def _on_request(self, ev: RequestReceived) -> None:
        req = ev.request
        method = req.method
        if method == "OPTIONS":
            # Keep-alives and probes: always answered, in or out of a dialog, without auth.
            self.stats["options"] += 1
            self._respond(ev.key, 200, headers=(("Accept-Language", "en, zh"),))
            return
        if ev.in_dialog:
            self._on_in_dialog(ev)
            return
        if method == "REGISTER":
            self._on_register(ev)
        elif method == "INVITE":
            self._on_invite(ev)
        elif method == "BYE":
            self._reject(ev.key, CallDoesNotExist())  # a BYE without To-tag matches no dialog
        else:
            self._reject(ev.key, SipError(405, None, headers=[("Allow", ", ".join(ALLOW))]))

    def _authenticate(self, ev: RequestReceived) -> TrunkAccount | None:
        decision = self.auth.check(ev.request, ev.addr[0], self.now())
        if decision.account is not None:
            return decision.account
        assert decision.error is not None
        if decision.counted_failure:
            self.stats["auth_failures"] += 1
        if decision.error.status == 403:
            self.stats["auth_blocked"] += 1
            log.warning("carrier: 403 to %s %s from %s: %s", ev.request.method,
                        ev.request.call_id, ev.addr[0], decision.error.reason)
        else:
            self.stats["challenges"] += 1
        self._reject(ev.key, decision.error)
        return None

    def _on_register(self, ev: RequestReceived) -> None:
        self.stats["registers"] += 1
        account = self._authenticate(ev)
        if account is None:
            return
        req = ev.request
        to_user = req.to.uri.user if isinstance(req.to.uri, SipUri) else None
        if to_user is not None and to_user != account.username:
            self._reject(ev.key, Forbidden(f"{account.username} may not register {to_user}"))
            return
        now = self.now()
        try:
            bindings = self.registrar.register(account.username, req, ev.addr, ev.transport, now)
        except SipError as err:
            self._reject(ev.key, err)
            return
        headers = tuple(("Contact", f"<{b.contact}>;expires={b.expires_in(now)}") for b in bindings)
        headers += (("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),)
        self._respond(ev.key, 200, headers=headers)
        log.info("carrier: %s registered %s from %s:%s", account.username,
                 ", ".join(b.contact for b in bindings) or "(none)", *ev.addr)

    def _on_invite(self, ev: RequestReceived) -> None:
        self.stats["invites"] += 1
        req = ev.request
        # RFC 3261 §17.2.1: 100 Trying at once so the caller stops retransmitting (we switched
        # the endpoint's automatic 100 off only so the "drop" behaviour can send nothing at all).
        number, behaviour = behaviour_for_uri(str(req.uri), self.cfg)
        if not isinstance(behaviour.final, Drop):
            self._respond(ev.key, 100)
        account = self._authenticate(ev)
        if account is None:
            return
        active = self._active_per_account.get(account.username, 0)
        if active >= account.max_calls:
            log.warning("carrier: %s is at max_calls=%s: 503", account.username, account.max_calls)
            self._reject(ev.key, SipError(503, None, 34, headers=[("Retry-After", "5")]))
            return
        try:
            session = self._session_of(req)
        except SipError as err:  # a malformed Session-Expires (400) or one below Min-SE (422)
            self._reject(ev.key, err)
            return
        info = classify(number) if number.startswith("+") else None
        call = Call(ev.key, req, ev.addr, ev.transport, account.username, number, behaviour, info,
                    time.time())
        call.session = session
        call.offerless = not req.body
        self._calls[ev.key] = call
        self._active_per_account[account.username] = active + 1
        self._idle.clear()
        self.stats["calls"] += 1
        with call_context(call_id=req.call_id):  # the carrier's lines about a call carry its SIP Call-ID
            log.info("carrier: INVITE %s -> %s (%s, %s) call-id %s", _user(req.from_), number,
                     info.kind if info else "invalid", behaviour.matched or behaviour.name, req.call_id)
            call.task = self._spawn(self._programme(call), f"carrier-call-{req.call_id}")

    def _session_of(self, req: SipRequest) -> SessionExpires | None:
        """RFC 4028 §9: the session interval we agree to, when the caller supports timers (we then
        leave the refreshing to it, refresher=uac). Raises 422 below Min-SE (§8.1.1)."""
        se = parse_session_expires(req.headers.get("Session-Expires") or req.headers.get("x"))
        if se is None or not has_option(req.headers.get_all("Supported") + req.headers.get_all("k")):
            return None
        min_se = self.cfg.sip.min_se_s
        if se.seconds < min_se:
            raise SipError(422, None, headers=[("Min-SE", str(min_se))])
        return SessionExpires(se.seconds, "uac")

    def _session_headers(self, call: Call) -> tuple[tuple[str, str], ...]:
        if call.session is None:
            return ()
        return (("Session-Expires", format_session_expires(call.session.seconds, "uac")), ("Require", TIMER))

    def _refreshed(self, call: Call, req: SipRequest) -> None:
        """A re-INVITE or UPDATE in the dialog refreshes the session (§10); it may change it."""
        if call.session is None:
            return
        try:
            se = parse_session_expires(req.headers.get("Session-Expires") or req.headers.get("x"))
        except SipError:
            se = None
        if se is not None and se.seconds >= self.cfg.sip.min_se_s:
            call.session = SessionExpires(se.seconds, "uac")
        call.refreshed_at = self.now()
        call.refreshes += 1

    def _on_in_dialog(self, ev: RequestReceived) -> None:
        req = ev.request
        out = self._out_by_dialog.get(ev.dialog) if ev.dialog else None
        if out is not None:
            if req.method == "BYE":
                self._respond(ev.key, 200)
                out.bye_cause = q850_of(req)
                out.remote_bye.set()
            else:
                self._respond(ev.key, 200)
            return
        call = self._by_dialog.get(ev.dialog) if ev.dialog else None
        if call is None:
            self._reject(ev.key, CallDoesNotExist())  # RFC 3261 §12.2.2
            return
        if req.method == "BYE":
            self._respond(ev.key, 200)
            cause = q850_of(req) or 16
            call.reason_text = _reason_text(req)
            if call.fsm.state in (CallState.SETUP, CallState.EARLY):
                # BYE in an early dialog (§15.1.2 permits it from the caller): end the INVITE too.
                self._respond(call.key, 487, headers=(("Reason", reason_header(cause)),))
                self._end(call, 487, cause, EndReason.CANCELLED)
            else:
                self._end(call, 200, cause, EndReason.HANGUP)
        elif req.method == "INVITE":
            self._refreshed(call, req)
            self._on_reinvite(call, ev)
        elif req.method == "UPDATE":
            # RFC 3311 without SDP: a session refresh (RFC 4028 §7.4), answered 200 with the interval.
            self._refreshed(call, req)
            self._respond(ev.key, 200, headers=self._session_headers(call))
        elif req.method == "INFO":
            log.info("carrier: INFO in %s: %s", call.call_id, req.body[:200].decode("utf-8", "replace"))
            self._respond(ev.key, 200)
        else:
            self._reject(ev.key, SipError(405, None, headers=[("Allow", ", ".join(ALLOW))]))

    def _on_reinvite(self, call: Call, ev: RequestReceived) -> None:
        """Hold/resume/codec change (RFC 3264 §8): answer from the same port, new o= version."""
        stream = call.stream
        if stream is None or call.local_sdp is None or call.fsm.state != CallState.CONFIRMED:
            self._reject(ev.key, SipError(491 if call.fsm.state == CallState.ANSWERED else 488))
            return
        version = call.local_sdp.origin.session_version + 1
        if not ev.request.body:
            offer = build_offer(self.host, stream.local_port, codecs=self.cfg.sip.codecs,
                                telephone_event_pt=self.cfg.sip.dtmf_payload_type,
                                session_id=call.local_sdp.origin.session_id, session_version=version)
            call.local_sdp = offer
            call.offerless = True
            self._respond(ev.key, 200, body=offer.serialize().encode(), content_type=SDP)
            return
        try:
            ans = answer_offer(ev.request.body, address=self.host, port=stream.local_port,
                               supported=self.cfg.sip.codecs, session_id=call.local_sdp.origin.session_id,
                               session_version=version)
        except SdpError as err:
            self._reject(ev.key, err)
            return
        stream.apply_answer(ev.request.body, ans)  # rtcp-mux kept if offered again (RFC 5761 §5.1.3)
        call.recv_media = ans.audio.recv
        call.local_sdp = ans.sdp
        self._respond(ev.key, 200, body=ans.sdp.serialize().encode(), content_type=SDP,
                      headers=self._session_headers(call))

    def _on_cancel(self, ev: CancelReceived) -> None:
        call = self._calls.get(ev.invite_key)
        if call is None or ev.final_sent:
            return
        cause = q850_of(ev.cancel)
        self._respond(call.key, 487)  # RFC 3261 §9.2
        self._end(call, 487, cause, EndReason.CANCELLED)

    def _on_ack(self, ev: AckReceived) -> None:
        call = self._by_dialog.get(ev.dialog)
        if call is None:
            return
        if call.fsm.state == CallState.ANSWERED:
            call.fsm.apply(CallEvent.ACK)
            call.acked.set()
            if call.recv_media or call.session is not None:
                call.watchdog = self._spawn(self._media_watchdog(call), f"carrier-watch-{call.call_id}")
        if call.offerless and ev.request.body and call.stream is not None and call.local_sdp is not None:
            try:
                audio = negotiated_from_answer(ev.request.body, call.local_sdp, supported=self.cfg.sip.codecs)
            except SdpError as err:
                log.warning("carrier: bad SDP answer in ACK of %s: %s", call.call_id, err)
                self._hangup(call, 65, EndReason.FAILED)
                return
            call.stream.configure(audio)
            call.recv_media = audio.recv
            call.offerless = False

    def _on_bad_ack(self, ev: BadAck) -> None:
        """RFC 3261 §13.3.1.4 / §17.2.3: an ACK that is not for our 2xx does not stop its
        retransmission. Logged and counted so a broken user agent is visible."""
        call = self._by_dialog.get(ev.dialog) if ev.dialog else None
        if call is None:
            # e.g. the ACK of a 400 the endpoint sent statelessly: nothing waits for it.
            log.debug("carrier: stray ACK from %s:%s: %s", ev.addr[0], ev.addr[1], ev.reason)
            return
        self.stats["bad_acks"] += 1
        call.bad_acks += 1
        log.warning("carrier: bad ACK from %s:%s for %s: %s", ev.addr[0], ev.addr[1],
                    call.call_id, ev.reason)

    def _on_ack_timeout(self, ev: AckTimeout) -> None:
        """Timer H for a 2xx (64*T1, §13.3.1.4): no ACK, so the session is ended with a BYE."""
        call = self._by_dialog.get(ev.dialog)
        if call is None or call.fsm.ended:
            return
        self.stats["ack_timeouts"] += 1
        log.warning("carrier: no ACK for the 200 of %s within 64*T1 (%s bad ACKs): BYE",
                    call.call_id, call.bad_acks)
        self._hangup(call, 102, EndReason.ACK_TIMEOUT)

    # --- the behaviour programme ---------------------------------------------------------------

    async def _programme(self, call: Call) -> None:
        steps = call.behaviour.steps
        try:
            for step in steps:
                if call.fsm.ended:
                    return
                if isinstance(step, Ring):
                    self._provisional(call, step.code)
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, EarlyMedia):
                    if call.offerless:  # no offer to answer in a 183 (no PRACK here): plain 180
                        self._provisional(call, 180)
                    else:
                        if not await self._ensure_stream(call):
                            return
                        assert call.stream is not None and call.local_sdp is not None
                        self._provisional(call, step.code, sdp=True)
                        if step.source.kind == "announcement" and call.behaviour.announcement_zh:
                            log.info("carrier: %s announcement: %s", call.call_id, call.behaviour.announcement_zh)
                        call.stream.play(_source(step.source))
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Wait):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Answer):
                    await self._answer(call, step)
                elif isinstance(step, Reject):
                    text = step.text or CAUSE_TEXT.get(step.q850 or 0, "")
                    extra = (("Retry-After", str(step.retry_after)),) if step.retry_after else ()
                    self._final(call, step.code, step.q850, text, extra)
                elif isinstance(step, NeverAnswer):
                    await asyncio.sleep(step.seconds)
                    self._final(call, step.code, step.q850)
                elif isinstance(step, NoResponse):
                    await asyncio.sleep(step.seconds)
                    self._final(call, step.code, step.q850)
                elif isinstance(step, Drop):
                    # Nothing at all; after the caller's Timer B (64*T1) a 408 frees the transaction.
                    await asyncio.sleep(64 * self.timers.t1 + 1.0)
                    self._final(call, 408, 102)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("carrier: programme of %s failed", call.call_id)
            if not call.fsm.ended:
                if call.fsm.state in (CallState.ANSWERED, CallState.CONFIRMED):
                    self._hangup(call, 41, EndReason.FAILED)
                else:
                    self._final(call, 500, 41)

    def _provisional(self, call: Call, code: int, *, sdp: bool = False) -> None:
        if call.fsm.ended or call.fsm.state not in (CallState.SETUP, CallState.EARLY):
            return
        body = call.local_sdp.serialize().encode() if sdp and call.local_sdp is not None else b""
        tag = self._respond(call.key, code, body=body, content_type=SDP if body else None)
        if tag is not None:
            self._bind_dialog(call, tag)
            call.fsm.apply(CallEvent.RING)

    def _bind_dialog(self, call: Call, tag: str) -> None:
        did = DialogId(call.call_id, tag, call.request.from_tag or "")
        if call.dialog is None:
            call.dialog = did
            self._by_dialog[did] = call

    async def _ensure_stream(self, call: Call) -> bool:
        """Bind the call's RTP port and answer its offer (or build our offer for a late-offer
        INVITE). On a bad offer answer 488/400 (with Warning) and return False."""
        if call.stream is not None:
            return True
        record = self.recordings_dir / f"{safe_name(call.call_id)}.wav" if self.cfg.cdr.recordings else None
        sip = self.cfg.sip
        try:
            if call.offerless:
                stream = await RtpStream.create(host=self.host, port_pool=self.ports, record_path=record,
                                                rtcp_interval=sip.rtcp_interval_s, latch=True,
                                                impair=self.cfg.media.impairment, record_hold=self.cfg.media.record_hold,
                                                telephone_event_pt=sip.dtmf_payload_type)
                call.local_sdp = build_offer(self.host, stream.local_port, codecs=sip.codecs,
                                             telephone_event_pt=sip.dtmf_payload_type)
            else:
                stream, ans = await RtpStream.answer(call.request.body, host=self.host, supported=sip.codecs,
                                                     start=False, port_pool=self.ports, record_path=record,
                                                     rtcp_interval=sip.rtcp_interval_s, latch=True,
                                                     impair=self.cfg.media.impairment, record_hold=self.cfg.media.record_hold)
                call.local_sdp = ans.sdp
                call.recv_media = ans.audio.recv
        except SdpError as err:
            if not call.fsm.ended:
                self._final_error(call, err)
            return False
        except OSError as exc:
            log.error("carrier: no RTP port for %s: %s", call.call_id, exc)
            if not call.fsm.ended:
                self._final(call, 503, 47)
            return False
        if call.fsm.ended:  # cancelled while we were binding
            await stream.close()
            return False
        call.stream = stream
        call.recording = record
        if not call.offerless:
            stream.start()
        return True

    async def _answer(self, call: Call, step: Answer) -> None:
        if not await self._ensure_stream(call):
            return
        assert call.stream is not None and call.local_sdp is not None
        tag = self._respond(call.key, 200, body=call.local_sdp.serialize().encode(), content_type=SDP,
                            headers=self._session_headers(call))
        if tag is None:
            return
        self._bind_dialog(call, tag)
        call.fsm.apply(CallEvent.ANSWER)
        call.answer_wall = time.time()
        call.answer_time = call.refreshed_at = self.now()
        call.sip_code = 200
        self.stats["answered"] += 1
        if call.offerless:
            call.stream.start()
        call.stream.play(Sequence(*(_source(m) for m in step.media)))
        if step.hangup_after_s is not None:
            await call.acked.wait()
            await asyncio.sleep(step.hangup_after_s)
            if call.fsm.state == CallState.CONFIRMED:
                self._hangup(call, 16, EndReason.HANGUP)

    async def _media_watchdog(self, call: Call) -> None:
        """BYE when no RTP arrived for media_timeout_s on an answered call (cause 41), or when the
        caller let its session timer run out (RFC 4028 §10: cause 102, recovery on timer expiry)."""
        limit = self.cfg.sip.media_timeout_s
        period = min(1.0, limit / 4)
        if call.session is not None:
            period = min(period, call.session.seconds / 10)
        try:
            while call.fsm.state == CallState.CONFIRMED and call.stream is not None:
                await asyncio.sleep(period)
                session = call.session
                if session is not None and self.now() - call.refreshed_at > session.expires_after:
                    self.stats["session_expired"] += 1
                    log.warning("carrier: session of %s not refreshed within %.0f s (RFC 4028): BYE",
                                call.call_id, session.expires_after)
                    self._hangup(call, 102, EndReason.CONNECTION_LOST)
                    return
                if call.recv_media and call.stream.inactive_for() > limit:
                    self.stats["media_timeouts"] += 1
                    log.warning("carrier: no RTP on %s for %.1f s: BYE", call.call_id, limit)
                    self._hangup(call, 41, EndReason.MEDIA_TIMEOUT)
                    return
        except asyncio.CancelledError:
            pass

    # --- ending calls ----------------------------------------------------------------------------

    def _final(self, call: Call, code: int, q850: int | None, text: str | None = None,
               extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Final non-2xx response with an RFC 3326 Reason, then end the call."""
        if call.fsm.ended or call.fsm.state not in (CallState.SETUP, CallState.EARLY):
            return
        headers = extra
        if q850 is not None:
            headers = (("Reason", reason_header(q850, text or None)),) + headers
        self._respond(call.key, code, headers=headers)
        self._end(call, code, q850)

    def _final_error(self, call: Call, err: SipError) -> None:
        self._reject(call.key, err)
        self._end(call, err.status, err.q850)

    def _hangup(self, call: Call, cause: int, outcome: EndReason) -> None:
        """BYE with `Reason: Q.850;cause=…` on an answered call, then end it."""
        if call.fsm.ended or call.dialog is None:
            return
        dialog = self.endpoint.dialog(call.dialog)
        if dialog is not None and dialog.state != DialogState.TERMINATED:
            try:
                self.endpoint.send_in_dialog(call.dialog, "BYE", self.now(),
                                             headers=(("Reason", reason_header(cause)),))
            except (KeyError, ValueError) as exc:
                log.debug("carrier: BYE for %s failed: %s", call.call_id, exc)
            self._kick()
        self._end(call, 200, cause, outcome)

    def _end(self, call: Call, code: int, q850: int | None, outcome: EndReason | None = None) -> None:
        if call.fsm.ended:
            return
        call.fsm.apply(CallEvent.END)
        call.sip_code = 200 if call.fsm.answered else code
        call.q850 = q850
        call.outcome = outcome or from_sip(call.sip_code, q850)
        self._calls.pop(call.key, None)
        left = self._active_per_account.get(call.account, 1) - 1
        self._active_per_account[call.account] = max(0, left)
        current = asyncio.current_task()
        for task in (call.task, call.watchdog):
            if task is not None and task is not current and not task.done():
                task.cancel()
        with call_context(call_id=call.call_id):
            self._spawn(self._finish(call), f"carrier-finish-{call.call_id}")

    async def _finish(self, call: Call) -> None:
        """Close media, write the call record; forget the dialog a little later (late ACK/BYE
        retransmissions still match it meanwhile)."""
        end = time.time()
        dtmf = ""
        codec = None
        if call.stream is not None:
            dtmf = "".join(call.stream.dtmf_digits)
            codec = call.stream.codec
            await call.stream.close()
            self._add_media_stats(call.stream)
        info = call.info
        area = f"{info.area_code} {info.city}".strip() if info is not None and info.area_code else None
        answer = call.answer_wall if call.answer_wall is not None else None
        start = min(call.start_wall, end)
        if answer is not None:
            answer = min(max(answer, start), end)
        record = CallRecord.make(
            call_id=call.call_id, from_=_user(call.request.from_), to=call.number, start=start, end=end,
            answer=answer, sip_code=call.sip_code, q850_cause=call.q850,
            number_type=info.kind if info is not None else call.behaviour.name,
            operator=info.operator if info is not None else None, area=area, codec=codec, dtmf=dtmf,
            recording=call.recording if call.stream is not None else None, outcome=str(call.outcome or ""),
            behaviour=call.behaviour.matched or call.behaviour.name, reason_text=call.reason_text)
        self.ended["in", EndReason.parse(str(call.outcome or "")).value] += 1
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.cdr.append, record)
            self.stats["cdr_written"] += 1
        except OSError as exc:
            log.error("carrier: cannot write the call record of %s: %s", call.call_id, exc)
        log.info("carrier: call %s ended: %s %s cause %s, %.1f s, dtmf %r%s", call.call_id, call.sip_code,
                 call.outcome, call.q850, record.duration_s, dtmf,
                 f", {call.bad_acks} bad ACKs" if call.bad_acks else "")
        if call.dialog is not None:
            task = asyncio.ensure_future(self._forget(call.dialog, call))
            self._lingering.add(task)
            task.add_done_callback(self._lingering.discard)

    def _add_media_stats(self, stream: RtpStream) -> None:
        st = stream.stats()
        t = self.media_totals
        t["streams"] += 1
        t["packets_sent"] += st.packets_sent
        t["packets_received"] += st.packets_received
        t["packets_lost"] += st.packets_lost
        t["send_ticks"] += st.ticks - st.skipped_ticks
        t["on_time"] += st.on_time
        t["skipped_ticks"] += st.skipped_ticks
        t["max_lateness"] = max(t["max_lateness"], st.max_lateness)
        t["impaired_dropped"] += st.impaired_dropped

    async def _forget(self, did: DialogId, call: Call) -> None:
        await asyncio.sleep(64 * self.timers.t1 if call.fsm.answered else 1.0)
        if self._by_dialog.get(did) is call:
            del self._by_dialog[did]
        dialog = self.endpoint.dialog(did)
        if dialog is not None and dialog.state == DialogState.TERMINATED:
            self.endpoint.terminate_dialog(did)

    # --- carrier-originated calls (PSTN -> app) --------------------------------------------------

    def inbound_target(self) -> tuple[SipUri, Addr, str] | None:
        """Where a call to the app goes: [inbound].contact, else the latest REGISTER Contact of
        [inbound].account (sent to the address that REGISTER came from). None if unknown."""
        contact = self.cfg.inbound.contact
        if contact:
            uri = parse_uri(contact)
            if not isinstance(uri, SipUri):
                return None
            transport = (uri.param("transport") or "udp").lower()
            return uri, (uri.host, uri.port or 5060), transport
        binding = self.registrar.latest(self.cfg.inbound.account, self.now())
        if binding is None:
            return None
        uri = parse_uri(binding.contact)
        if not isinstance(uri, SipUri):
            return None
        return uri, binding.addr, binding.transport

    async def originate(self, from_number: str, to_number: str, *, play: str | Path | None = None,
                        duration: float | None = None, ring_timeout: float | None = None,
                        on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Call the app from a Chinese number: INVITE (no digest: the carrier is trusted) to the
        inbound target, From = `from_number`, To = `to_number` (the DID). Plays `play` (a WAV)
        once answered, records what comes back, hangs up after `duration` seconds (default: the
        file's length + 1 s, or 5 s) unless the app hangs up first. Returns a result dict:
        code, reason, cause, outcome, answered, duration_s, recording, call_id, dtmf, error."""
        target = self.inbound_target()
        result: dict[str, Any] = {"code": 0, "reason": "", "cause": None, "outcome": EndReason.FAILED,
                                  "answered": False, "duration_s": 0.0, "recording": None, "call_id": None,
                                  "dtmf": "", "from": from_number, "to": to_number, "error": None}
        if target is None:
            result["error"] = (f"no registration for trunk account {self.cfg.inbound.account!r} "
                               "and no [inbound].contact: register the bridge first")
            return result
        source = PcmPlayback.from_wav(play) if play else None
        if duration is None:
            duration = (len(source.samples) / 8000 + 1.0) if source is not None else 5.0
        uri, dest, transport = target
        sip = self.cfg.sip
        call_id = secrets.token_hex(12)
        record = self.recordings_dir / f"{safe_name(call_id)}.wav" if self.cfg.cdr.recordings else None
        stream = await RtpStream.create(host=self.host, port_pool=self.ports, record_path=record,
                                        rtcp_interval=sip.rtcp_interval_s, latch=True,
                                        impair=self.cfg.media.impairment, record_hold=self.cfg.media.record_hold,
                                        telephone_event_pt=sip.dtmf_payload_type)
        offer = build_offer(self.host, stream.local_port, codecs=sip.codecs,
                            telephone_event_pt=sip.dtmf_payload_type)
        realm = sip.realm
        req = new_request(
            "INVITE", uri, from_=NameAddr(SipUri("sip", from_number, realm), None),
            to=NameAddr(SipUri("sip", to_number, realm), None), call_id=call_id,
            contact=self.endpoint.contact, body=offer.serialize().encode(), content_type=SDP,
            headers=(("P-Asserted-Identity", f"<tel:{from_number}>"), ("Allow", ", ".join(ALLOW))))
        start_wall = time.time()
        key = self.endpoint.send_request(req, dest, self.now(), transport=transport)
        out = OutCall(key, call_id)
        self._out[key] = out
        self._kick()
        result["call_id"] = call_id
        answer_wall: float | None = None
        ring_timeout = sip.ring_timeout_s if ring_timeout is None else ring_timeout
        deadline = self.now() + ring_timeout
        cancelled = False
        media_started = False
        try:
            while True:
                timeout = max(0.0, deadline - self.now()) if not cancelled else 64 * self.timers.t1
                try:
                    ev = await asyncio.wait_for(out.responses.get(), timeout)
                except TimeoutError:
                    if cancelled:
                        result.update(code=408, reason="No response to CANCEL", outcome=EndReason.TIMEOUT)
                        break
                    cancelled = True
                    self.endpoint.send_cancel(key, self.now())
                    self._kick()
                    continue
                if isinstance(ev, TransactionTimeout):
                    result.update(code=408, reason="Request Timeout", cause=102, outcome=EndReason.TIMEOUT)
                    break
                resp = ev.response
                if on_progress is not None:
                    on_progress(resp.status)
                if resp.status < 200:
                    if resp.body and not media_started and resp.status == 183:
                        with contextlib.suppress(SdpError):
                            stream.configure(negotiated_from_answer(resp.body, offer, supported=sip.codecs))
                            stream.start()
                            media_started = True
                    continue
                cause = q850_of(resp)
                result.update(code=resp.status, reason=resp.reason, cause=cause)
                if resp.status >= 300:
                    result["outcome"] = EndReason.NO_ANSWER if cancelled else from_sip(resp.status, cause)
                    break
                # 2xx: the endpoint ACKed it (auto_ack). Media on, play, wait, BYE.
                out.dialog = ev.dialog
                if ev.dialog is not None:
                    self._out_by_dialog[ev.dialog] = out
                answer_wall = time.time()
                result["answered"] = True
                try:
                    stream.configure(negotiated_from_answer(resp.body, offer, supported=sip.codecs))
                except SdpError as err:
                    result.update(outcome=EndReason.FAILED, error=str(err))
                    self._bye_out(out, 65)
                    break
                if not media_started:
                    stream.start()
                    media_started = True
                stream.play(source if source is not None else Silence())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(out.remote_bye.wait(), duration)
                if out.remote_bye.is_set():
                    result.update(outcome=EndReason.HANGUP, cause=out.bye_cause or 16, hung_up_by="app")
                else:
                    self._bye_out(out, 16)
                    result.update(outcome=EndReason.HANGUP, cause=16, hung_up_by="carrier")
                break
        finally:
            self._out.pop(key, None)
            if out.dialog is not None:
                self._out_by_dialog.pop(out.dialog, None)
            result["dtmf"] = "".join(stream.dtmf_digits)
            codec = stream.codec if result["answered"] else None
            await stream.close()
        end_wall = time.time()
        if answer_wall is not None:
            result["duration_s"] = round(end_wall - answer_wall, 3)
        if record is not None and media_started:
            result["recording"] = str(record)
        info = classify(from_number) if from_number.startswith("+") else None
        rec = CallRecord.make(
            call_id=call_id, from_=from_number, to=to_number, start=start_wall, end=end_wall,
            answer=answer_wall, sip_code=result["code"], q850_cause=result["cause"],
            number_type=info.kind if info else "invalid", operator=info.operator if info else None,
            area=f"{info.area_code} {info.city}" if info and info.area_code else None, codec=codec,
            dtmf=result["dtmf"], recording=result["recording"], outcome=result["outcome"], behaviour="inbound")
        self.ended["out", EndReason.parse(str(result["outcome"] or "")).value] += 1
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().run_in_executor(None, self.cdr.append, rec)
        return result

    def _bye_out(self, out: OutCall, cause: int) -> None:
        if out.dialog is None or self.endpoint.dialog(out.dialog) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.endpoint.send_in_dialog(out.dialog, "BYE", self.now(),
                                         headers=(("Reason", reason_header(cause)),))
        self._kick()

    def status(self) -> dict[str, Any]:
        """A snapshot for the control channel and logs."""
        now = self.now()
        return {
            "sip": {"host": self.host, "udp_port": self.udp_port, "tcp_port": self.tcp_port,
                    "realm": self.cfg.sip.realm},
            "calls": len(self._calls),
            "registrations": [
                {"account": b.account, "contact": b.contact, "source": f"{b.addr[0]}:{b.addr[1]}",
                 "transport": b.transport, "expires_in": b.expires_in(now)}
                for t in self.cfg.trunks for b in self.registrar.bindings(t.username, now)],
            "stats": dict(self.stats),
            "media": {**self.media_totals, "on_time_share": (
                self.media_totals["on_time"] / self.media_totals["send_ticks"]
                if self.media_totals["send_ticks"] else 1.0)},
            "cdr": str(self.cdr.path),
            # which receive buffer holds what, per call in progress (bridge/rtp/media.py buffers())
            "buffers": [c.stream.session.buffers() for c in self._calls.values() if c.stream is not None],
        }


def _source(media: Media) -> AudioSource:
    return source_for(media)   # scenarios.Media is frozen: MediaSpec's members are read-only


def _user(na: NameAddr) -> str:
    uri = na.uri
    if isinstance(uri, SipUri) and uri.user:
        return uri.user
    return str(uri)


def _reason_text(msg: SipMessage) -> str:
    """The text of a message's first Q.850 Reason (RFC 3326), e.g. "credit_exhausted"."""
    for value in msg.headers.get_all("Reason"):
        for proto, _cause, text in parse_reason_header(value):
            if proto.upper() == "Q.850" and text:
                return text[:100]
    return ""
