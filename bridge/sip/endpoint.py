"""SipEndpoint: the sans-I/O SIP user agent core (transactions + dialogs), shaped like aioquic.

Feed it:   receive_datagram(data, addr, now) / receive_stream_message(data, addr, now)
           handle_timer(now) when now >= get_timer()
Drain it:  datagrams_to_send(now), stream_messages_to_send(now), next_event()
Command:   send_request(req, dest, now) -> key;  respond(key, status, now) / send_response(key, resp, now)
           reject(key, SipError, now);  send_cancel(key, now);  send_ack(dialog, now)
           send_in_dialog(dialog, "BYE", now);  accept_stray_2xx(response, addr, now) -> dialog

Incoming requests are validated statelessly first (RFC 3261 §8.2: 400 with a reason saying what
is wrong, 505, 501/405 + Allow, 416, 420 + Unsupported, 415 + Accept, 513); the endpoint answers
those itself and emits RequestRejected. Responses always go to the packet's source address
(symmetric response routing, RFC 3581), never to the host named in Via. Garbage never raises.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .dialog import AckWait, Dialog, DialogId, DialogState
from .errors import (
    BadExtension,
    MethodNotAllowed,
    MethodNotImplemented,
    SipError,
    SipParseError,
    UnsupportedMediaType,
    UnsupportedUriScheme,
)
from .headers import MAGIC_COOKIE, Via
from .message import (
    KNOWN_METHODS,
    PartialMessage,
    SipRequest,
    SipResponse,
    error_response,
    make_response,
    parse_message,
    random_token,
)
from .transaction import (
    Addr,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    TimerConfig,
    TransactionKey,
    TxState,
    client_key,
    response_client_key,
    server_key,
)
from .uri import NameAddr, SipUri

UDP = "udp"
TCP = "tcp"

DEFAULT_ALLOW = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "INFO")


@dataclass(frozen=True)
class EndpointConfig:
    """What this UA accepts. `allow`: methods served (others known -> 405, unknown -> 501);
    `supported`: option tags we understand (Require with others -> 420); `uri_schemes`: Request-URI
    schemes served (others -> 416); `accept`: per method, the body types we read (others -> 415).
    """

    timers: TimerConfig = TimerConfig()
    allow: tuple[str, ...] = DEFAULT_ALLOW
    supported: tuple[str, ...] = ()
    uri_schemes: tuple[str, ...] = ("sip", "sips", "tel")
    accept: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "INVITE": ("application/sdp",), "UPDATE": ("application/sdp",), "PRACK": ("application/sdp",)})
    auto_trying: bool = True        # send 100 Trying for each new INVITE (§17.2.1)
    auto_ack: bool = True           # ACK 2xx responses to our INVITEs ourselves (§13.2.2.4)
    user_agent: str | None = "JegoCall"


# --- events ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestReceived:
    """A new request (retransmissions are absorbed). Answer with `respond(key, ...)`.
    `dialog` is set when it matches one of our dialogs; `in_dialog` tells a To-tag was present
    (then `dialog is None` means: answer 481 with `reject(key, CallDoesNotExist(), now)`)."""

    key: TransactionKey
    request: SipRequest
    addr: Addr
    transport: str = UDP
    dialog: DialogId | None = None

    @property
    def in_dialog(self) -> bool:
        return self.request.to_tag is not None


@dataclass(frozen=True)
class ResponseReceived:
    """A response to a request we sent (`key` from send_request); retransmissions absorbed."""

    key: TransactionKey
    response: SipResponse
    dialog: DialogId | None = None


@dataclass(frozen=True)
class UnmatchedResponse:
    """A well-formed response matching no client transaction (§18.1.2: passed to the core)."""

    response: SipResponse
    addr: Addr


@dataclass(frozen=True)
class TransactionTimeout:
    """Client: Timer B/F fired (no final response, treat as 408). Server INVITE: Timer H fired
    (no ACK for our 3xx-6xx)."""

    key: TransactionKey


@dataclass(frozen=True)
class CancelReceived:
    """A CANCEL matched INVITE `invite_key`; the endpoint already answered the CANCEL with 200.
    Answer the INVITE with `respond(invite_key, 487, now)` unless `final_sent`."""

    invite_key: TransactionKey
    cancel: SipRequest
    addr: Addr
    final_sent: bool = False


@dataclass(frozen=True)
class AckReceived:
    """The ACK for our 2xx to an INVITE arrived; 2xx retransmission has stopped."""

    dialog: DialogId
    request: SipRequest
    addr: Addr


@dataclass(frozen=True)
class AckTimeout:
    """No ACK for our 2xx within 64*T1 (§13.3.1.4): the session should be ended (send BYE)."""

    dialog: DialogId


@dataclass(frozen=True)
class BadAck:
    """An ACK that is not the one we wait for (`reason` says why, e.g. wrong To-tag). The 2xx
    keeps being retransmitted. `dialog` is the dialog it seemed meant for, if any."""

    dialog: DialogId | None
    request: SipRequest
    addr: Addr
    reason: str


@dataclass(frozen=True)
class RequestRejected:
    """The endpoint answered a request itself with `status` (validation failed)."""

    status: int
    reason: str
    addr: Addr
    request: SipRequest | None = None


@dataclass(frozen=True)
class MessageDropped:
    """Input dropped without an answer (unparseable, a response we cannot use, ...)."""

    addr: Addr
    reason: str


SipEvent = (RequestReceived | ResponseReceived | UnmatchedResponse | TransactionTimeout
            | CancelReceived | AckReceived | AckTimeout | BadAck | RequestRejected | MessageDropped)


class SipEndpoint:
    """A SIP UA core. See the module docstring for the call pattern; `now` is any monotonic clock."""

    def __init__(self, config: EndpointConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 5060) -> None:
        self.config = config or EndpointConfig()
        self.host = host
        self.port = port
        self._udp_out: deque[tuple[bytes, Addr]] = deque()
        self._tcp_out: deque[tuple[bytes, Addr]] = deque()
        self._events: deque[SipEvent] = deque()
        self._client: dict[TransactionKey, ClientTransaction] = {}
        self._server: dict[TransactionKey, ServerTransaction] = {}
        self._dialogs: dict[DialogId, Dialog] = {}
        self._ack_waits: dict[DialogId, AckWait] = {}
        self._pending_cancel: dict[TransactionKey, SipRequest] = {}
        self._acked_seq: dict[DialogId, int] = {}

    def set_local_address(self, host: str, port: int) -> None:
        """Where we are reachable (used in Via and the default Contact)."""
        self.host, self.port = host, port

    @property
    def contact(self) -> NameAddr:
        return NameAddr(SipUri("sip", None, self.host, self.port))

    # --- input ---------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """One UDP datagram from `addr`. Never raises."""
        self._receive(data, addr, now, UDP)

    def receive_stream_message(self, data: bytes, addr: Addr, now: float) -> None:
        """One complete message cut by a StreamFramer from the TCP connection with peer `addr`."""
        self._receive(data, addr, now, TCP)

    def _receive(self, data: bytes, addr: Addr, now: float, transport: str) -> None:
        try:
            try:
                msg = parse_message(data, stream=transport == TCP)
            except SipError as err:
                self._reject_unparsed(err, addr, transport)
                return
            if isinstance(msg, SipResponse):
                self._handle_response(msg, addr, now)
            else:
                self._handle_request(msg, addr, now, transport)
        except SipError as err:  # a header read lazily was malformed after all
            self._events.append(MessageDropped(addr, f"{err.status} {err.reason}"))
        except Exception as exc:  # noqa: BLE001 - garbage must never take the endpoint down
            self._events.append(MessageDropped(addr, f"internal error: {type(exc).__name__}: {exc}"))

    def _reject_unparsed(self, err: SipError, addr: Addr, transport: str) -> None:
        partial = err.partial
        if (isinstance(partial, PartialMessage) and partial.is_request and partial.method != "ACK"
                and partial.headers.get_all("Via")):
            self._queue(error_response(partial, err).serialise(), addr, transport)
            self._events.append(RequestRejected(err.status, err.reason, addr, None))
        else:
            # Responses and messages without a Via cannot be answered (§18.1.2, §8.1.3.3).
            self._events.append(MessageDropped(addr, f"{err.status} {err.reason}"))

    # --- output --------------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """UDP datagrams to send now, each with its destination."""
        out = list(self._udp_out)
        self._udp_out.clear()
        return out

    def stream_messages_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """Messages for TCP: write each on the connection with peer addr (open one if needed)."""
        out = list(self._tcp_out)
        self._tcp_out.clear()
        return out

    def next_event(self) -> SipEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """The earliest deadline at which handle_timer must be called, or None."""
        deadlines = [tx.deadline for tx in self._client.values() if tx.deadline is not None]
        deadlines += [tx.deadline for tx in self._server.values() if tx.deadline is not None]
        deadlines += [w.deadline for w in self._ack_waits.values()]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for ctx in list(self._client.values()):
            if ctx.deadline is not None and ctx.deadline <= now:
                ctx.handle_timer(now)
                self._flush_client(ctx, now)
        for stx in list(self._server.values()):
            if stx.deadline is not None and stx.deadline <= now:
                stx.handle_timer(now)
                self._flush_server(stx)
        for did, wait in list(self._ack_waits.items()):
            while wait.deadline <= now:
                what = wait.handle_timer(now)
                if what == "retransmit":
                    self._queue(wait.response, wait.addr, TCP if wait.reliable else UDP)
                elif what == "timeout":
                    del self._ack_waits[did]
                    self._events.append(AckTimeout(did))
                    break
        self._collect()

    def _queue(self, data: bytes, addr: Addr, transport: str) -> None:
        (self._tcp_out if transport == TCP else self._udp_out).append((data, addr))

    def _collect(self) -> None:
        for key in [k for k, ctx in self._client.items() if ctx.terminated]:
            del self._client[key]
        for key in [k for k, stx in self._server.items() if stx.terminated]:
            del self._server[key]

    # --- requests in ---------------------------------------------------------------------------

    def check_request(self, req: SipRequest) -> SipError | None:
        """The §8.2 checks after parsing, in RFC order; returns the error to answer or None."""
        cfg = self.config
        if req.method not in KNOWN_METHODS and req.method not in cfg.allow:
            return MethodNotImplemented(req.method, cfg.allow)  # §8.2.1, RFC 4475 esc02/mismatch02
        if req.method not in cfg.allow:
            return MethodNotAllowed(req.method, cfg.allow)
        if req.cseq.method != req.method:
            return SipParseError("CSeq method does not match the request method")  # RFC 4475 mismatch01
        if req.uri.scheme not in cfg.uri_schemes:
            return UnsupportedUriScheme(req.uri.scheme)  # §8.2.2.1
        if req.method != "CANCEL":
            unknown = [t for t in req.token_list("Require") if t not in cfg.supported]
            if unknown:
                return BadExtension(unknown)  # §8.2.2.3
        accepted = cfg.accept.get(req.method)
        if req.body and accepted is not None:
            ctype = req.content_type
            if ctype is None or ctype.mime not in accepted:
                return UnsupportedMediaType(accepted)  # §8.2.3
            encodings = [e.lower() for e in req.headers.get_all("Content-Encoding")]
            if any(e != "identity" for e in encodings):
                return UnsupportedMediaType(accepted, encoding=True)
        return None

    def _handle_request(self, req: SipRequest, addr: Addr, now: float, transport: str) -> None:
        if req.top_via.branch == MAGIC_COOKIE:
            # RFC 4475 §3.2.1 badbranch: no unique part, so no usable transaction key: stateless 400.
            err = SipParseError("Via branch is only the magic cookie")
            if req.method != "ACK":
                self._queue(error_response(req, err).serialise(), addr, transport)
            self._events.append(RequestRejected(err.status, err.reason, addr, req))
            return
        if req.method == "ACK":
            self._handle_ack(req, addr, now)
            return
        key = server_key(req)
        existing = self._server.get(key)
        if existing is not None:
            prev = existing.request
            if (prev.call_id, prev.cseq.seq, prev.from_tag) == (req.call_id, req.cseq.seq, req.from_tag):
                existing.receive_request(req, now)  # retransmission (§17.2.3)
                self._flush_server(existing)
                return
            # Same branch, different request: the client broke §8.1.1.7 (unique branch).
            err = SipParseError("Via branch already used by another request")
            self._queue(error_response(req, err).serialise(), addr, transport)
            self._events.append(RequestRejected(err.status, err.reason, addr, req))
            return
        # §18.2.1 / RFC 3581: record where the request really came from.
        via = req.top_via
        stamped = via
        if via.host != addr[0] or via.has_rport:
            stamped = stamped.with_param("received", addr[0])
        if via.has_rport:
            stamped = stamped.with_param("rport", str(addr[1]))
        if stamped != via:
            req.headers.set_first("Via", str(stamped))
        reliable = transport == TCP
        local_tag = random_token(6)
        tx: ServerTransaction
        if req.method == "INVITE":
            tx = InviteServerTransaction(key, req, addr, reliable, self.config.timers, local_tag)
        else:
            tx = NonInviteServerTransaction(key, req, addr, reliable, self.config.timers, local_tag, now)
        self._server[key] = tx
        error = self.check_request(req)
        if error is None and req.method == "CANCEL":
            self._handle_cancel(req, tx, addr)
            return
        dialog = self._dialogs.get(DialogId(req.call_id, req.to_tag, req.from_tag or "")) \
            if req.to_tag else None
        if error is None and dialog is not None:
            try:
                dialog.check_request(req)
            except SipError as err:
                error = err
        if error is not None:
            tx.send_response(error_response(req, error, to_tag=local_tag), now)
            self._flush_server(tx)
            self._events.append(RequestRejected(error.status, error.reason, addr, req))
            return
        if isinstance(tx, InviteServerTransaction) and self.config.auto_trying:
            tx.send_response(make_response(req, 100), now)
        self._flush_server(tx)
        self._events.append(RequestReceived(key, req, addr, transport, dialog.id if dialog else None))

    def _handle_cancel(self, req: SipRequest, tx: ServerTransaction, addr: Addr) -> None:
        """§9.2: find the INVITE by the CANCEL's key; 200 the CANCEL, tell the user; else 481."""
        invite_key = TransactionKey(tx.key.branch, "INVITE", tx.key.sent_by, True)
        invite = self._server.get(invite_key)
        if not isinstance(invite, InviteServerTransaction):
            err = SipError(481, "No transaction matches this CANCEL")
            tx.send_response(error_response(req, err, to_tag=tx.local_tag), 0.0)
            self._flush_server(tx)
            self._events.append(RequestRejected(err.status, err.reason, addr, req))
            return
        tx.send_response(make_response(req, 200, to_tag=invite.local_tag), 0.0)
        self._flush_server(tx)
        invite.cancelled = True
        self._events.append(CancelReceived(invite_key, req, addr, invite.final_sent))

    def _handle_ack(self, ack: SipRequest, addr: Addr, now: float) -> None:
        stx = self._server.get(server_key(ack))
        if isinstance(stx, InviteServerTransaction) and stx.state in (TxState.COMPLETED, TxState.CONFIRMED):
            stx.receive_ack(now)  # ACK for our non-2xx (§17.2.1): absorbed
            self._flush_server(stx)
            return
        call_id, remote_tag, to_tag = ack.call_id, ack.from_tag or "", ack.to_tag
        if to_tag is not None:
            did = DialogId(call_id, to_tag, remote_tag)
            dialog = self._dialogs.get(did)
            if dialog is not None:
                if did in self._ack_waits:
                    problem = dialog.check_ack(ack)
                    if problem is not None:
                        self._events.append(BadAck(did, ack, addr, problem))
                        return
                    del self._ack_waits[did]
                    self._events.append(AckReceived(did, ack, addr))
                return  # a retransmitted ACK for a dialog already confirmed
        for did in self._ack_waits:
            if did.call_id == call_id and did.remote_tag == remote_tag:
                self._events.append(BadAck(did, ack, addr, f"ACK To-tag {to_tag!r} does not match the "
                                                           f"2xx To-tag {did.local_tag!r}"))
                return
        self._events.append(BadAck(None, ack, addr, "ACK matches no transaction or dialog"))

    # --- responses in --------------------------------------------------------------------------

    def _handle_response(self, resp: SipResponse, addr: Addr, now: float) -> None:
        if len(resp.headers.get_all("Via")) != 1:
            # §8.1.3.3: a UAC discards responses with more than one Via (RFC 4475 bcast).
            self._events.append(MessageDropped(addr, "response with more than one Via"))
            return
        key = response_client_key(resp)
        tx = self._client.get(key)
        if tx is None:
            did = DialogId(resp.call_id, resp.from_tag or "", resp.to_tag or "")
            dialog = self._dialogs.get(did)
            if (dialog is not None and 200 <= resp.status < 300 and resp.cseq.method == "INVITE"
                    and self._acked_seq.get(did) == resp.cseq.seq and dialog.last_ack is not None):
                self._queue(dialog.last_ack, dialog.last_ack_addr or dialog.peer,
                            TCP if dialog.reliable else UDP)
                return  # 2xx retransmission after the transaction ended: ACK again (§13.2.2.4)
            self._events.append(UnmatchedResponse(resp, addr))
            return
        tx.receive_response(resp, now)
        self._flush_client(tx, now)

    def _flush_client(self, tx: ClientTransaction, now: float) -> None:
        transport = TCP if tx.reliable else UDP
        for data in tx.outgoing:
            self._queue(data, tx.addr, transport)
        tx.outgoing.clear()
        results, tx.results = tx.results, []
        for kind, resp in results:
            if kind == "timeout":
                self._pending_cancel.pop(tx.key, None)
                self._end_dialog_for(tx.request)
                if isinstance(tx, InviteClientTransaction):
                    self._drop_early_dialogs(tx.request)
                self._events.append(TransactionTimeout(tx.key))
                continue
            assert resp is not None
            did = self._client_dialog(tx, resp, now)
            if did is None and resp.to_tag:
                probe = DialogId(resp.call_id, resp.from_tag or "", resp.to_tag)
                did = probe if probe in self._dialogs else None
            if isinstance(tx, InviteClientTransaction) and resp.status < 200:
                pending = self._pending_cancel.pop(tx.key, None)
                if pending is not None:
                    self._start_client(pending, tx.addr, tx.reliable, now)
            if isinstance(tx, InviteClientTransaction) and 200 <= resp.status < 300 and did is not None:
                if self._acked_seq.get(did) == resp.cseq.seq:
                    dialog = self._dialogs[did]
                    if dialog.last_ack is not None:
                        self._queue(dialog.last_ack, dialog.last_ack_addr or dialog.peer, transport)
                    continue  # retransmitted 2xx: ACK re-sent, not reported again
                if self.config.auto_ack:
                    self.send_ack(did, now)
            if resp.status >= 200 and tx.request.method == "BYE":
                self._end_dialog_for(tx.request)
            self._events.append(ResponseReceived(tx.key, resp, did))

    def _client_dialog(self, tx: ClientTransaction, resp: SipResponse, now: float) -> DialogId | None:
        """Create/update the UAC dialog of an INVITE (§12.1.2); drop early ones on failure."""
        if not isinstance(tx, InviteClientTransaction):
            return None
        req = tx.request
        if resp.status >= 300:
            self._drop_early_dialogs(req)
            return None
        if resp.status == 100 or not resp.to_tag:
            return None
        did = DialogId(req.call_id, req.from_tag or "", resp.to_tag)
        dialog = self._dialogs.get(did)
        if dialog is None:
            self._dialogs[did] = Dialog.as_uac(req, resp, tx.addr, tx.reliable)
        else:
            dialog.update_from_response(resp)
        return did

    def _drop_early_dialogs(self, invite: SipRequest) -> None:
        """The INVITE failed or was given up: its early dialogs end with it (§12.3)."""
        prefix = (invite.call_id, invite.from_tag or "")
        for did in [d for d, dlg in self._dialogs.items()
                    if (d.call_id, d.local_tag) == prefix and dlg.state == DialogState.EARLY]:
            del self._dialogs[did]

    def _flush_server(self, tx: ServerTransaction) -> None:
        transport = TCP if tx.reliable else UDP
        for data in tx.outgoing:
            self._queue(data, tx.addr, transport)
        tx.outgoing.clear()
        results, tx.results = tx.results, []
        for kind, _ in results:
            if kind == "timeout":
                self._events.append(TransactionTimeout(tx.key))

    def _end_dialog_for(self, req: SipRequest) -> None:
        if req.to_tag:
            did = DialogId(req.call_id, req.from_tag or "", req.to_tag)
            self._dialogs.pop(did, None)
            self._ack_waits.pop(did, None)
            self._acked_seq.pop(did, None)

    # --- commands ------------------------------------------------------------------------------

    def send_request(self, request: SipRequest, dest: Addr, now: float, *, transport: str = UDP) -> TransactionKey:
        """Start a client transaction for `request` to `dest`; adds Via (fresh branch, rport),
        Max-Forwards and User-Agent if missing. Returns the key ResponseReceived events carry."""
        if request.method == "ACK":
            raise ValueError("ACK has no transaction: use send_ack(dialog, now)")
        branch = MAGIC_COOKIE + random_token(8)
        via = Via(transport.upper(), self.host, self.port, (("branch", branch), ("rport", None)))
        request.headers.add("Via", str(via), first=True)
        if "Max-Forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        if self.config.user_agent and "User-Agent" not in request.headers:
            request.headers.add("User-Agent", self.config.user_agent)
        return self._start_client(request, dest, transport == TCP, now)

    def _start_client(self, request: SipRequest, dest: Addr, reliable: bool, now: float) -> TransactionKey:
        key = client_key(request.top_via.branch or "", request.method)
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = InviteClientTransaction(key, request, dest, reliable, self.config.timers, now)
        else:
            tx = NonInviteClientTransaction(key, request, dest, reliable, self.config.timers, now)
        self._client[key] = tx
        self._flush_client(tx, now)
        return key

    def request_for(self, key: TransactionKey) -> SipRequest:
        """The request of a live transaction (server or client)."""
        tx = self._server.get(key) or self._client.get(key)
        if tx is None:
            raise KeyError(f"no live transaction {key}")
        return tx.request

    def send_response(self, key: TransactionKey, response: SipResponse, now: float) -> None:
        """Send `response` in server transaction `key` (to the request's source address). A To-tag is
        added if missing; 1xx-with-tag/2xx to INVITE create the dialog, 2xx start Timer G/H-style
        retransmission until the ACK (§13.3.1.4)."""
        tx = self._server.get(key)
        if tx is None:
            raise KeyError(f"no live server transaction {key}")
        req = tx.request
        if response.status > 100 and response.to_tag is None:
            response.headers.set("To", f"{response.headers.get('To')};tag={tx.local_tag}")
        if self.config.user_agent and "Server" not in response.headers:
            response.headers.add("Server", self.config.user_agent)
        tx.send_response(response, now)
        self._flush_server(tx)
        if req.method == "INVITE" and 100 < response.status < 300:
            did = DialogId(req.call_id, response.to_tag or "", req.from_tag or "")
            dialog = self._dialogs.get(did)
            if dialog is None:
                dialog = Dialog.as_uas(req, response, tx.addr, tx.reliable)
                self._dialogs[did] = dialog
            elif response.status >= 200:
                dialog.state = DialogState.CONFIRMED
                dialog.invite_seq = req.cseq.seq
            if response.status >= 200:
                self._ack_waits[did] = AckWait(response.serialise(), tx.addr, tx.reliable, now,
                                               self.config.timers)
        elif req.method == "INVITE" and response.status >= 300 and not req.to_tag:
            for did in [d for d, dlg in self._dialogs.items()
                        if d.call_id == req.call_id and d.local_tag == tx.local_tag
                        and dlg.state == DialogState.EARLY]:
                del self._dialogs[did]
        elif req.method == "BYE" and response.status >= 200 and req.to_tag:
            self.terminate_dialog(DialogId(req.call_id, req.to_tag, req.from_tag or ""))

    def respond(self, key: TransactionKey, status: int, now: float, reason: str | None = None, *,
                headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                content_type: str | None = None, contact: NameAddr | None = None) -> SipResponse:
        """Build and send the response to the request of `key`; returns it. 101-299 to INVITE get
        our Contact; 2xx to OPTIONS get Allow/Accept/Supported (§11.2)."""
        tx = self._server.get(key)
        if tx is None:
            raise KeyError(f"no live server transaction {key}")
        req = tx.request
        resp = make_response(req, status, reason, to_tag=tx.local_tag, headers=headers, body=body,
                             content_type=content_type)
        if contact is not None:
            resp.headers.set("Contact", str(contact))
        elif req.method in ("INVITE", "SUBSCRIBE", "REFER", "UPDATE") and 100 < status < 300:
            resp.headers.set("Contact", str(self.contact))
        if (status in (405, 501) or (req.method == "OPTIONS" and 200 <= status < 300)) \
                and "Allow" not in resp.headers:
            resp.headers.add("Allow", ", ".join(self.config.allow))
        if req.method == "OPTIONS" and 200 <= status < 300:
            if "Accept" not in resp.headers:
                resp.headers.add("Accept", "application/sdp")
            if self.config.supported and "Supported" not in resp.headers:
                resp.headers.add("Supported", ", ".join(self.config.supported))
        self.send_response(key, resp, now)
        return resp

    def reject(self, key: TransactionKey, error: SipError, now: float) -> SipResponse:
        """Answer the request of `key` with the response for `error` (e.g. CallDoesNotExist())."""
        tx = self._server.get(key)
        if tx is None:
            raise KeyError(f"no live server transaction {key}")
        resp = error_response(tx.request, error, to_tag=tx.local_tag)
        self.send_response(key, resp, now)
        return resp

    def send_cancel(self, invite_key: TransactionKey, now: float, *,
                    headers: Iterable[tuple[str, str]] = (),
                    give_up_after: float | None = None) -> TransactionKey | None:
        """CANCEL our pending INVITE (§9.1). Sent now if a provisional response arrived, else when
        one does. `headers` are added (e.g. Reason, RFC 3326). Without a final response to the
        INVITE within 64*T1 (or `give_up_after` s) its transaction is given up: TransactionTimeout
        for the INVITE's key. Returns the CANCEL's key, or None if the INVITE already has a final
        response."""
        tx = self._client.get(invite_key)
        if not isinstance(tx, InviteClientTransaction) or tx.state not in (TxState.CALLING, TxState.PROCEEDING):
            return None
        inv = tx.request
        cancel = SipRequest("CANCEL", inv.uri)
        cancel.headers.add("Via", inv.headers.get("Via") or "")
        for value in inv.headers.get_all("Route"):
            cancel.headers.add("Route", value)
        cancel.headers.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            cancel.headers.add(name, inv.headers.get(name) or "")
        cancel.headers.add("CSeq", f"{inv.cseq.seq} CANCEL")
        for name, value in headers:
            cancel.headers.add(name, value)
        if self.config.user_agent and "User-Agent" not in cancel.headers:
            cancel.headers.add("User-Agent", self.config.user_agent)
        tx.cancel_requested(now, give_up_after)
        key = client_key(invite_key.branch, "CANCEL")
        if tx.state == TxState.PROCEEDING:
            self._start_client(cancel, tx.addr, tx.reliable, now)
        else:
            self._pending_cancel[invite_key] = cancel
        return key

    def send_ack(self, dialog_id: DialogId, now: float, *, body: bytes = b"",
                 content_type: str | None = None, dest: Addr | None = None) -> None:
        """ACK the 2xx of our INVITE in `dialog_id` (only needed with auto_ack=False), to `dest` or
        the dialog's peer address. Retransmissions of that 2xx are then ACKed again, to the same
        address, by the endpoint (§13.2.2.4)."""
        dialog = self._dialogs[dialog_id]
        ack = dialog.create_ack(body=body, content_type=content_type)
        transport = TCP if dialog.reliable else UDP
        via = Via(transport.upper(), self.host, self.port, (("branch", MAGIC_COOKIE + random_token(8)),
                                                             ("rport", None)))
        ack.headers.add("Via", str(via), first=True)
        if self.config.user_agent and "User-Agent" not in ack.headers:
            ack.headers.add("User-Agent", self.config.user_agent)
        dialog.last_ack = ack.serialise()
        dialog.last_ack_addr = dest or dialog.peer
        self._acked_seq[dialog_id] = dialog.invite_seq
        self._queue(dialog.last_ack, dialog.last_ack_addr, transport)

    def accept_stray_2xx(self, response: SipResponse, addr: Addr, now: float, *,
                         dest: Addr | None = None, transport: str = UDP) -> DialogId | None:
        """A 2xx to one of our INVITEs that matched no transaction (an UnmatchedResponse, e.g. it
        crossed our CANCEL after the INVITE was given up): build its dialog from the response,
        ACK it (§13.2.2.4) to `dest` or `addr`, and return the dialog so the TU can end it with
        `send_in_dialog(dialog, "BYE", now)` (§15). None if `response` is no such 2xx."""
        if not (200 <= response.status < 300 and response.cseq.method == "INVITE"
                and response.to_tag and response.from_tag):
            return None
        did = DialogId(response.call_id, response.from_tag, response.to_tag)
        dialog = self._dialogs.get(did)
        if dialog is None:
            dialog = self._dialogs[did] = Dialog.from_2xx(response, addr, transport == TCP)
        if dialog.last_ack is None or self._acked_seq.get(did) != response.cseq.seq:
            dialog.state = DialogState.CONFIRMED
            dialog.invite_seq = response.cseq.seq
            self.send_ack(did, now, dest=dest)
        else:
            self._queue(dialog.last_ack, dialog.last_ack_addr or dialog.peer, TCP if dialog.reliable else UDP)
        return did

    def send_in_dialog(self, dialog_id: DialogId, method: str, now: float, *,
                       headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                       content_type: str | None = None, dest: Addr | None = None) -> TransactionKey:
        """Send BYE / re-INVITE / INFO ... in the dialog, to `dest` or the dialog's peer address."""
        dialog = self._dialogs[dialog_id]
        req = dialog.create_request(method, headers=headers, body=body, content_type=content_type)
        if method == "BYE":
            dialog.state = DialogState.TERMINATED
            self._ack_waits.pop(dialog_id, None)
        return self.send_request(req, dest or dialog.peer, now, transport=TCP if dialog.reliable else UDP)

    def dialog(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.get(dialog_id)

    @property
    def dialogs(self) -> dict[DialogId, Dialog]:
        return dict(self._dialogs)

    def terminate_dialog(self, dialog_id: DialogId) -> None:
        """Forget a dialog (e.g. after AckTimeout + BYE); stops 2xx retransmission."""
        self._dialogs.pop(dialog_id, None)
        self._ack_waits.pop(dialog_id, None)
        self._acked_seq.pop(dialog_id, None)
