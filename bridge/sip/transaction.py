"""RFC 3261 §17 transactions (with the RFC 6026 "Accepted" state), sans-I/O.

Each transaction is driven by the endpoint: it calls `receive_*`/`send_response`/`handle_timer`
with `now`, then drains `tx.outgoing` (bytes for the transaction's peer) and `tx.results`
(("response", SipResponse) | ("timeout", None)). `tx.deadline` is the next timer, or None.
Timers (RFC 3261 §17 and table 4): A/B/D (INVITE client, plus M from RFC 6026 and the §9.1
give-up after our CANCEL), E/F/K (non-INVITE client),
G/H/I (INVITE server, plus L from RFC 6026), J (non-INVITE server). No retransmissions over
reliable transports; D/I/J/K are zero there.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .headers import MAGIC_COOKIE, Headers
from .message import SipRequest, SipResponse

Addr = tuple[str, int]


@dataclass(frozen=True)
class TimerConfig:
    """RFC 3261 §17.1.1.1 timer values in seconds: T1 RTT estimate, T2 max interval, T4 max lifetime."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class TxState(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"      # RFC 6026 §7.1/7.2: after a 2xx to INVITE
    TERMINATED = "terminated"


@dataclass(frozen=True)
class TransactionKey:
    """Identifies a transaction (RFC 3261 §17.1.3, §17.2.3).

    `branch` is the top Via branch (or, for RFC 2543 peers without the magic cookie, a string
    built from Request-URI, From tag, Call-ID, CSeq number and top Via); `method` is the CSeq
    method with ACK folded into INVITE; `sent_by` is set on the server side only.
    """

    branch: str
    method: str
    sent_by: str = ""
    server: bool = False


def server_key(request: SipRequest) -> TransactionKey:
    """The server transaction a request belongs to (§17.2.3; ACK maps to its INVITE's)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return TransactionKey(branch, method, via.sent_by, True)
    # RFC 2543 fallback (§17.2.3): the To tag is left out so the ACK for a non-2xx matches.
    raw_via = " ".join((request.headers.get("Via") or "").split())
    legacy = "|".join(("2543", str(request.uri), request.from_tag or "", request.call_id,
                       str(request.cseq.seq), raw_via))
    return TransactionKey(legacy, method, "", True)


def client_key(branch: str, method: str) -> TransactionKey:
    return TransactionKey(branch, method, "", False)


def response_client_key(response: SipResponse) -> TransactionKey:
    """The client transaction a response belongs to (§17.1.3: top Via branch + CSeq method)."""
    return client_key(response.top_via.branch or "", response.cseq.method)


class Transaction:
    """Common state: the request, its peer address and transport, timers and output queues."""

    def __init__(self, key: TransactionKey, request: SipRequest, addr: Addr, reliable: bool,
                 timers: TimerConfig) -> None:
        self.key = key
        self.request = request
        self.addr = addr
        self.reliable = reliable
        self.timers = timers
        self.state = TxState.TRYING
        self.outgoing: list[bytes] = []
        self.results: list[tuple[str, SipResponse | None]] = []
        self._timers: dict[str, float] = {}
        self._interval = timers.t1

    @property
    def deadline(self) -> float | None:
        return min(self._timers.values()) if self._timers else None

    @property
    def terminated(self) -> bool:
        return self.state == TxState.TERMINATED

    def _terminate(self) -> None:
        self.state = TxState.TERMINATED
        self._timers.clear()

    def _set(self, name: str, at: float) -> None:
        self._timers[name] = at

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at `now` (in deadline order)."""
        while self._timers:
            name, at = min(self._timers.items(), key=lambda kv: kv[1])
            if at > now:
                return
            del self._timers[name]
            self._fire(name, at)

    def _fire(self, name: str, at: float) -> None:
        raise NotImplementedError


# --- client transactions (§17.1) ---------------------------------------------------------------

class InviteClientTransaction(Transaction):
    """§17.1.1: Calling -> Proceeding -> Completed (non-2xx, ACK sent here) / Accepted (2xx)."""

    def __init__(self, key: TransactionKey, request: SipRequest, addr: Addr, reliable: bool,
                 timers: TimerConfig, now: float) -> None:
        super().__init__(key, request, addr, reliable, timers)
        self.state = TxState.CALLING
        self._wire = request.serialise()
        self.outgoing.append(self._wire)
        self.ack: bytes | None = None
        self.last_provisional: SipResponse | None = None
        if not reliable:
            self._set("A", now + timers.t1)
        self._set("B", now + 64 * timers.t1)

    def _fire(self, name: str, at: float) -> None:
        if name == "A" and self.state == TxState.CALLING:
            self.outgoing.append(self._wire)
            self._interval *= 2
            self._set("A", at + self._interval)
        elif name == "B" and self.state == TxState.CALLING:
            self.results.append(("timeout", None))
            self._terminate()
        elif name == "cancel" and self.state in (TxState.CALLING, TxState.PROCEEDING):
            self.results.append(("timeout", None))  # §9.1: no final response after our CANCEL
            self._terminate()
        elif name in ("D", "M"):
            self._terminate()

    def cancel_requested(self, now: float, give_up_after: float | None = None) -> None:
        """Our TU CANCELs this INVITE: without a final response within 64*T1 (or `give_up_after`
        seconds) the transaction is given up and the TU told ("timeout"), RFC 3261 §9.1."""
        if self.state in (TxState.CALLING, TxState.PROCEEDING):
            wait = 64 * self.timers.t1 if give_up_after is None else give_up_after
            self._set("cancel", now + wait)

    def receive_response(self, response: SipResponse, now: float) -> None:
        code = response.status
        if self.state in (TxState.CALLING, TxState.PROCEEDING):
            self._timers.pop("A", None)
            if code < 200:
                self.state = TxState.PROCEEDING
                self._timers.pop("B", None)
                self.last_provisional = response
                self.results.append(("response", response))
            elif code < 300:
                self.state = TxState.ACCEPTED  # RFC 6026 §8.4: Timer M = 64*T1
                self._timers.clear()
                self._set("M", now + 64 * self.timers.t1)
                self.results.append(("response", response))
            else:
                self.state = TxState.COMPLETED
                self._timers.clear()
                self.ack = build_non2xx_ack(self.request, response).serialise()
                self.outgoing.append(self.ack)
                self._set("D", now + (0.0 if self.reliable else 32.0))
                self.results.append(("response", response))
        elif self.state == TxState.COMPLETED and code >= 300 and self.ack is not None:
            self.outgoing.append(self.ack)  # retransmitted final: ACK again, TU not told
        elif self.state == TxState.ACCEPTED and 200 <= code < 300:
            self.results.append(("response", response))  # TU re-sends its ACK (§13.2.2.4)


def build_non2xx_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """ACK for a 3xx-6xx (§17.1.1.3): same Request-URI, Call-ID, From, CSeq number, top Via and
    Route as the INVITE; To from the response (with its tag)."""
    h = Headers()
    h.add("Via", request.headers.get("Via") or "")
    for value in request.headers.get_all("Route"):
        h.add("Route", value)
    h.add("Max-Forwards", "70")
    h.add("From", request.headers.get("From") or "")
    h.add("To", response.headers.get("To") or request.headers.get("To") or "")
    h.add("Call-ID", request.headers.get("Call-ID") or "")
    h.add("CSeq", f"{request.cseq.seq} ACK")
    return SipRequest("ACK", request.uri, h)


class NonInviteClientTransaction(Transaction):
    """§17.1.2: Trying -> Proceeding -> Completed; Timer E capped at T2, F = 64*T1, K = T4."""

    def __init__(self, key: TransactionKey, request: SipRequest, addr: Addr, reliable: bool,
                 timers: TimerConfig, now: float) -> None:
        super().__init__(key, request, addr, reliable, timers)
        self._wire = request.serialise()
        self.outgoing.append(self._wire)
        if not reliable:
            self._set("E", now + timers.t1)
        self._set("F", now + 64 * timers.t1)

    def _fire(self, name: str, at: float) -> None:
        if name == "E" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            self.outgoing.append(self._wire)
            if self.state == TxState.TRYING:
                self._interval = min(2 * self._interval, self.timers.t2)
            else:
                self._interval = self.timers.t2
            self._set("E", at + self._interval)
        elif name == "F" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            self.results.append(("timeout", None))
            self._terminate()
        elif name == "K":
            self._terminate()

    def receive_response(self, response: SipResponse, now: float) -> None:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return  # Completed: retransmissions absorbed
        if response.status < 200:
            self.state = TxState.PROCEEDING
        else:
            self.state = TxState.COMPLETED
            self._timers.clear()
            self._set("K", now + (0.0 if self.reliable else self.timers.t4))
        self.results.append(("response", response))


# --- server transactions (§17.2) ---------------------------------------------------------------

class InviteServerTransaction(Transaction):
    """§17.2.1: Proceeding -> Completed (3xx-6xx; G/H) -> Confirmed (ACK; I), or Accepted (2xx; L)."""

    def __init__(self, key: TransactionKey, request: SipRequest, addr: Addr, reliable: bool,
                 timers: TimerConfig, local_tag: str) -> None:
        super().__init__(key, request, addr, reliable, timers)
        self.state = TxState.PROCEEDING
        self.local_tag = local_tag
        self.last_response: SipResponse | None = None
        self._last_wire: bytes | None = None
        self.cancelled = False

    @property
    def final_sent(self) -> bool:
        return self.last_response is not None and self.last_response.status >= 200

    def receive_request(self, request: SipRequest, now: float) -> None:
        """A retransmitted INVITE: repeat the last response (§17.2.1); absorbed otherwise."""
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED) and self._last_wire is not None:
            self.outgoing.append(self._last_wire)

    def receive_ack(self, now: float) -> bool:
        """An ACK for our non-2xx: Completed -> Confirmed. True if absorbed here."""
        if self.state == TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self._timers.clear()
            self._set("I", now + (0.0 if self.reliable else self.timers.t4))
            return True
        return self.state == TxState.CONFIRMED

    def send_response(self, response: SipResponse, now: float) -> None:
        if self.state != TxState.PROCEEDING:
            raise ValueError(f"INVITE server transaction is {self.state}: cannot send {response.status}")
        self.last_response = response
        self._last_wire = response.serialise()
        self.outgoing.append(self._last_wire)
        if response.status < 200:
            return
        if response.status < 300:
            self.state = TxState.ACCEPTED  # RFC 6026 §7.1: absorb INVITE retransmissions for Timer L
            self._set("L", now + 64 * self.timers.t1)
        else:
            self.state = TxState.COMPLETED
            if not self.reliable:
                self._set("G", now + self.timers.t1)
            self._set("H", now + 64 * self.timers.t1)

    def _fire(self, name: str, at: float) -> None:
        if name == "G" and self.state == TxState.COMPLETED and self._last_wire is not None:
            self.outgoing.append(self._last_wire)
            self._interval = min(2 * self._interval, self.timers.t2)
            self._set("G", at + self._interval)
        elif name == "H" and self.state == TxState.COMPLETED:
            self.results.append(("timeout", None))  # no ACK for our non-2xx final response
            self._terminate()
        elif name in ("I", "L"):
            self._terminate()


class NonInviteServerTransaction(Transaction):
    """§17.2.2: Trying -> Proceeding -> Completed (Timer J = 64*T1 over UDP) -> Terminated.

    If the TU never sends a final response, the transaction is dropped after 64*T1 + T4 (the
    client gave up at Timer F): not in RFC 3261, it bounds memory against a silent TU.
    """

    def __init__(self, key: TransactionKey, request: SipRequest, addr: Addr, reliable: bool,
                 timers: TimerConfig, local_tag: str, now: float) -> None:
        super().__init__(key, request, addr, reliable, timers)
        self.local_tag = local_tag
        self.last_response: SipResponse | None = None
        self._last_wire: bytes | None = None
        self._set("abandon", now + 64 * timers.t1 + timers.t4)

    @property
    def final_sent(self) -> bool:
        return self.last_response is not None and self.last_response.status >= 200

    def receive_request(self, request: SipRequest, now: float) -> None:
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED) and self._last_wire is not None:
            self.outgoing.append(self._last_wire)

    def send_response(self, response: SipResponse, now: float) -> None:
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            raise ValueError(f"server transaction is {self.state}: cannot send {response.status}")
        self.last_response = response
        self._last_wire = response.serialise()
        self.outgoing.append(self._last_wire)
        if response.status < 200:
            self.state = TxState.PROCEEDING
        else:
            self.state = TxState.COMPLETED
            self._timers.clear()
            self._set("J", now + (0.0 if self.reliable else 64 * self.timers.t1))

    def _fire(self, name: str, at: float) -> None:
        if name in ("J", "abandon"):
            self._terminate()


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
