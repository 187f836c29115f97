"""Dialogs (RFC 3261 §12) and the UAS 2xx retransmission until ACK (§13.3.1.4), sans-I/O.

The endpoint creates dialogs for you (`Dialog.as_uas` when you send a 1xx-with-tag/2xx to an
INVITE, `Dialog.as_uac` when one arrives). Use `dialog.create_request("BYE")` (or
`SipEndpoint.send_in_dialog`) for in-dialog requests and `dialog.create_ack()` for the ACK of a 2xx.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from .errors import ServerInternalError
from .headers import Headers
from .message import SipRequest, SipResponse
from .transaction import Addr, TimerConfig
from .uri import NameAddr, SipUri, Uri, parse_name_addr


@dataclass(frozen=True)
class DialogId:
    """Call-ID, local tag, remote tag (§12): the key of a dialog at this UA."""

    call_id: str
    local_tag: str
    remote_tag: str

    def __str__(self) -> str:
        return f"{self.call_id};local={self.local_tag};remote={self.remote_tag}"


class DialogState(StrEnum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Dialog:
    """Dialog state (§12.1): CSeqs, remote target, route set, peer address.

    `create_request(method)` builds the next in-dialog request (§12.2.1.1); `check_request` applies
    the §12.2.2 CSeq rule to requests received in the dialog.
    """

    def __init__(self, id: DialogId, *, uac: bool, local_uri: NameAddr, remote_uri: NameAddr,
                 remote_target: Uri, route_set: list[str], local_seq: int, remote_seq: int | None,
                 invite_seq: int, peer: Addr, reliable: bool, state: DialogState) -> None:
        self.id = id
        self.uac = uac
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.invite_seq = invite_seq       # CSeq of the INVITE (or re-INVITE) being answered
        self.peer = peer                   # where in-dialog requests go unless told otherwise
        self.reliable = reliable
        self.state = state
        self.last_ack: bytes | None = None  # UAC: our ACK for the 2xx, re-sent on 2xx retransmission
        self.last_ack_addr: Addr | None = None  # where that ACK went (None: `peer`)

    @classmethod
    def as_uas(cls, request: SipRequest, response: SipResponse, peer: Addr, reliable: bool) -> Dialog:
        """§12.1.1: route set = Record-Route in order; remote target = Contact of the request."""
        local_tag = response.to_tag or ""
        remote_tag = request.from_tag or ""
        contacts = request.contacts
        target = contacts[0].uri if contacts else request.from_.uri  # RFC 2543 peers may omit Contact
        return cls(DialogId(request.call_id, local_tag, remote_tag), uac=False,
                   local_uri=response.to, remote_uri=request.from_, remote_target=target,
                   route_set=request.headers.get_all("Record-Route"), local_seq=0,
                   remote_seq=request.cseq.seq, invite_seq=request.cseq.seq, peer=peer,
                   reliable=reliable,
                   state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY)

    @classmethod
    def as_uac(cls, request: SipRequest, response: SipResponse, peer: Addr, reliable: bool) -> Dialog:
        """§12.1.2: route set = Record-Route reversed; remote target = Contact of the response."""
        contacts = response.contacts
        target = contacts[0].uri if contacts else request.uri
        return cls(DialogId(request.call_id, request.from_tag or "", response.to_tag or ""), uac=True,
                   local_uri=request.from_, remote_uri=response.to, remote_target=target,
                   route_set=list(reversed(response.headers.get_all("Record-Route"))),
                   local_seq=request.cseq.seq, remote_seq=None, invite_seq=request.cseq.seq,
                   peer=peer, reliable=reliable,
                   state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY)

    @classmethod
    def from_2xx(cls, response: SipResponse, peer: Addr, reliable: bool) -> Dialog:
        """§12.1.2 from a 2xx alone, when its INVITE is no longer known (a 2xx that crossed our
        CANCEL after the transaction was given up): From is ours, To/Contact/Record-Route theirs."""
        contacts = response.contacts
        target = contacts[0].uri if contacts else response.to.uri
        seq = response.cseq.seq
        return cls(DialogId(response.call_id, response.from_tag or "", response.to_tag or ""), uac=True,
                   local_uri=response.from_, remote_uri=response.to, remote_target=target,
                   route_set=list(reversed(response.headers.get_all("Record-Route"))),
                   local_seq=seq, remote_seq=None, invite_seq=seq, peer=peer, reliable=reliable,
                   state=DialogState.CONFIRMED)

    def update_from_response(self, response: SipResponse) -> None:
        """A later response in the dialog: 2xx confirms it; Contact refreshes the target (§12.2.1.2)."""
        if 200 <= response.status < 300:
            self.state = DialogState.CONFIRMED
        contacts = response.contacts
        if contacts and response.cseq.method in ("INVITE", "UPDATE"):
            self.remote_target = contacts[0].uri

    def check_request(self, request: SipRequest) -> None:
        """§12.2.2: a CSeq lower than the last one gets 500; re-INVITE/UPDATE Contact refreshes the target."""
        seq = request.cseq.seq
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and seq < self.remote_seq:
                raise ServerInternalError("CSeq lower than the previous request in this dialog")
            self.remote_seq = seq
        if request.method in ("INVITE", "UPDATE"):
            contacts = request.contacts
            if contacts:
                self.remote_target = contacts[0].uri

    def _base_request(self, method: str, seq: int) -> SipRequest:
        h = Headers()
        # §12.2.1.1 with §16.12.1.1: loose routing if the first route has ;lr, strict otherwise.
        routes = list(self.route_set)
        target: Uri = self.remote_target
        if routes:
            first = parse_name_addr(routes[0], "Route", require_brackets=True).uri
            if isinstance(first, SipUri) and first.param("lr") is None:
                target = replace(first, params=(), headers=())
                routes = routes[1:] + [f"<{self.remote_target}>"]
        for r in routes:
            h.add("Route", r)
        h.add("Max-Forwards", "70")
        h.add("From", str(self.local_uri.with_tag(self.id.local_tag)))
        remote = self.remote_uri.with_tag(self.id.remote_tag) if self.id.remote_tag else self.remote_uri
        h.add("To", str(remote))
        h.add("Call-ID", self.id.call_id)
        h.add("CSeq", f"{seq} {method}")
        return SipRequest(method, target, h)

    def create_request(self, method: str, *, headers: tuple[tuple[str, str], ...] = (),
                       body: bytes = b"", content_type: str | None = None) -> SipRequest:
        """The next in-dialog request (BYE, re-INVITE, INFO, ...): local CSeq + 1 (§12.2.1.1).
        The endpoint adds the Via when you pass it to `send_request`/`send_in_dialog`."""
        self.local_seq += 1
        req = self._base_request(method, self.local_seq)
        if method == "INVITE":
            self.invite_seq = self.local_seq
        for name, value in headers:
            req.headers.add(name, value)
        if body:
            req.body = body
            if content_type:
                req.headers.set("Content-Type", content_type)
        return req

    def create_ack(self, *, body: bytes = b"", content_type: str | None = None) -> SipRequest:
        """ACK for a 2xx (§13.2.2.4): CSeq number of the INVITE, To with the 2xx's tag."""
        req = self._base_request("ACK", self.invite_seq)
        if body:
            req.body = body
            if content_type:
                req.headers.set("Content-Type", content_type)
        return req

    def check_ack(self, ack: SipRequest) -> str | None:
        """What is wrong with an ACK offered to this dialog, or None if it is ours."""
        if ack.to_tag != self.id.local_tag:
            return f"ACK To-tag {ack.to_tag!r} does not match the 2xx To-tag {self.id.local_tag!r}"
        if ack.cseq.seq != self.invite_seq:
            return f"ACK CSeq {ack.cseq.seq} does not match the INVITE CSeq {self.invite_seq}"
        return None


class AckWait:
    """UAS side of §13.3.1.4: re-send the 2xx at T1, 2*T1 ... capped at T2 until the ACK, give up
    at 64*T1 (Timer H). Call `handle_timer(now)`; it returns "retransmit", "timeout" or None.
    """

    def __init__(self, response: bytes, addr: Addr, reliable: bool, now: float, timers: TimerConfig):
        self.response = response
        self.addr = addr
        self.reliable = reliable
        self._timers = timers
        self._interval = timers.t1
        self.next_retransmit: float | None = None if reliable else now + timers.t1
        self.give_up = now + 64 * timers.t1

    @property
    def deadline(self) -> float:
        return min(self.give_up, self.next_retransmit) if self.next_retransmit is not None else self.give_up

    def handle_timer(self, now: float) -> str | None:
        if now >= self.give_up:
            return "timeout"
        if self.next_retransmit is not None and now >= self.next_retransmit:
            self._interval = min(2 * self._interval, self._timers.t2)
            self.next_retransmit += self._interval
            return "retransmit"
        return None
