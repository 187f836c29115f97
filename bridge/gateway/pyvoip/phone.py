"""pyVoIP's SIPClient, VoIPPhone and VoIPCall, mended: socket, receive thread, registration."""


from __future__ import annotations

import contextlib
import logging
import queue
import random
import socket
import threading
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP import RTP as pv_rtp
from pyVoIP import SIP as pv_sip
from pyVoIP.VoIP import VoIP as pv_voip
from pyVoIP.VoIP.status import PhoneStatus

from bridge.sip.auth import build_authorization
from bridge.sip.errors import SipError
from bridge.sip.headers import Via
from bridge.sip.message import (
    SipRequest,
    SipResponse,
    new_request,
    random_token,
)
from bridge.sip.uri import NameAddr, SipUri, parse_name_addr

from .common import ALLOW, T2, TrunkError, _pick_challenge

if TYPE_CHECKING:
    from .trunk import PyVoipTrunk

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------
# signalling: pyVoIP's SIPClient / VoIPPhone / VoIPCall, mended

class _SipClient(pv_sip.SIPClient):
    """pyVoIP's SIPClient: owns the UDP socket, the "SIP Recieve" thread and the registration.

    Mended: binds port 0 and learns the real port; `recv` reads whole datagrams, parses them with
    bridge.sip and hands them to the trunk; `register` does digest with bridge.sip.auth (or
    nothing in trunk mode); `deregister` is bounded; `stop` joins its threads.
    """

    def __init__(self, trunk: PyVoipTrunk, phone: _Phone) -> None:
        cfg = trunk.config
        super().__init__(cfg.server_host, cfg.server_port, cfg.username, cfg.password, phone=phone,
                         myIP=cfg.local_host, myPort=cfg.local_port, callCallback=None,
                         fatalCallback=None)
        self._trunk = trunk
        self.default_expires = cfg.register_expires
        self.register_timeout = int(cfg.register_timeout)
        self._recv_thread: threading.Thread | None = None
        self._reg_responses: queue.Queue[SipResponse] = queue.Queue()
        self._reg_call_id = f"{random_token(12)}@{cfg.local_host}"
        self._reg_tag = random_token(6)
        self._reg_cseq = 0
        self._reg_mutex = threading.Lock()
        self.registered = False
        self.last_register_error: str | None = None
        self._closing = False  # set by stop(): a refresh REGISTER in flight gives up

    # pyVoIP's start() registers before the receive thread exists, under recvLock (SIP.py:955-966).
    def start(self) -> None:
        if self.NSD:
            raise RuntimeError("Attempted to start already started SIPClient")
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((self.myIP, self.myPort))
        self.myPort = self.s.getsockname()[1]
        self.out = self.s
        self.NSD = True
        self._recv_thread = threading.Thread(target=self.recv_loop, name="SIP Recieve", daemon=True)
        self._recv_thread.start()
        if not self.register():
            raise TrunkError(f"registration failed: {self.last_register_error}")

    def stop(self) -> None:
        if not self.NSD:
            return
        self._closing = True
        if self.registerThread is not None:
            self.registerThread.cancel()
            if self.registerThread is not threading.current_thread():
                self.registerThread.join(self._trunk.config.register_timeout + 1)
        if self.registered and self._trunk.config.register:
            self.deregister()
        self.NSD = False
        if self._recv_thread is not None and self._recv_thread is not threading.current_thread():
            self._recv_thread.join(2.0)
        self._close_sockets()

    def recv(self) -> None:
        # Called by pyVoIP's recv_loop with recvLock held and the socket non-blocking.
        try:
            raw, addr = self.s.recvfrom(65535)  # pyVoIP: recv(8192) truncates (SIP.py:861)
        except BlockingIOError:
            raise
        except OSError:
            if self.NSD:
                time.sleep(0.01)
            return
        self._trunk._datagram(raw, addr)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.out.sendto(data, addr)
        except OSError as exc:
            log.warning("SIP send to %s failed: %s", addr, exc)

    # -- registration (RFC 3261 §10.2) ----------------------------------------------------------
    def register(self) -> bool:
        cfg = self._trunk.config
        if not cfg.register:
            self.registered = True
            self.phone._status = PhoneStatus.REGISTERED
            return True
        if self._closing:
            return False
        self.phone._status = PhoneStatus.REGISTERING
        try:
            expires = self._register_once(cfg.register_expires)
        except (TimeoutError, pv_sip.InvalidAccountInfoError, SipError) as exc:
            self.last_register_error = str(exc)
            self.registered = False
            self.phone._status = PhoneStatus.FAILED
            log.warning("REGISTER failed: %s", exc)
            if self.NSD and self.registerFailures < 1_000_000:
                self.registerFailures += 1
                self._start_refresh(min(60, max(5, cfg.register_expires // 2)))
            return False
        self.registered = True
        self.registerFailures = 0
        self.phone._status = PhoneStatus.REGISTERED
        self.default_expires = expires
        self._start_refresh(max(1, int(expires * 0.9) if expires < 60 else expires - 30))
        return True

    def _start_refresh(self, delay: int) -> None:
        if self.NSD:
            self.registerThread = threading.Timer(delay, self.register)
            self.registerThread.name = f"SIP Register CSeq: {self._reg_cseq + 1}"
            self.registerThread.daemon = True
            self.registerThread.start()

    def deregister(self) -> bool:
        try:
            self._register_once(0, timeout=self._trunk.config.deregister_timeout)
        except (TimeoutError, pv_sip.InvalidAccountInfoError, SipError) as exc:
            log.info("un-REGISTER: %s", exc)
            return False
        finally:
            self.registered = False
            self.phone._status = PhoneStatus.INACTIVE
        return True

    def _register_request(self, expires: int, auth: tuple[str, str] | None) -> tuple[SipRequest, bytes]:
        cfg = self._trunk.config
        self._reg_cseq += 1
        aor = SipUri("sip", cfg.username, cfg.server_host)
        uri = SipUri("sip", None, cfg.server_host, cfg.server_port)
        req = new_request(
            "REGISTER", uri, from_=NameAddr(aor).with_tag(self._reg_tag), to=NameAddr(aor),
            call_id=self._reg_call_id, cseq=self._reg_cseq,
            contact=f"<sip:{cfg.username}@{cfg.local_host}:{self.myPort};transport=udp>",
            headers=[("Expires", str(expires)), ("Allow", ALLOW), ("User-Agent", cfg.user_agent)],
        )
        if auth is not None:
            req.headers.add(auth[0], auth[1])
        via = Via("UDP", cfg.local_host, self.myPort, (("branch", "z9hG4bK" + random_token(10)), ("rport", None)))
        req.headers.add("Via", str(via), first=True)
        return req, req.serialise()

    def _register_once(self, expires: int, timeout: float | None = None) -> int:
        """One REGISTER transaction with digest; returns the granted expiry (raises on failure)."""
        cfg = self._trunk.config
        deadline = time.monotonic() + (timeout if timeout is not None else cfg.register_timeout)
        auth: tuple[str, str] | None = None
        challenges = 0
        with self._reg_mutex:
            while True:
                req, data = self._register_request(expires, auth)
                resp = self._transaction(req, data, deadline)
                if resp.status in (401, 407):
                    picked = _pick_challenge(resp)
                    challenges += 1
                    if picked is None or challenges > 2:
                        raise pv_sip.InvalidAccountInfoError(f"REGISTER rejected: {resp.status} {resp.reason}")
                    name, ch = picked
                    if cfg.realm is not None and ch.realm != cfg.realm:
                        raise pv_sip.InvalidAccountInfoError(f"unexpected realm {ch.realm!r}")
                    auth = (name, build_authorization(ch, method="REGISTER", uri=str(req.uri),
                                                      username=cfg.username, password=cfg.password))
                    continue
                if resp.status == 423 and expires:  # Interval Too Brief: RFC 3261 §10.3 step 7
                    expires = int(resp.headers.get("Min-Expires") or expires)
                    continue
                if 200 <= resp.status < 300:
                    granted = expires
                    for c in resp.headers.get_all("Contact"):
                        with contextlib.suppress(SipError, ValueError):
                            na = parse_name_addr(c.split(",")[0], "Contact")
                            if na.param("expires"):
                                granted = int(na.param("expires") or expires)
                    if resp.headers.get("Expires"):
                        with contextlib.suppress(ValueError):
                            granted = int(resp.headers.get("Expires") or granted)
                    return granted
                raise pv_sip.InvalidAccountInfoError(f"REGISTER rejected: {resp.status} {resp.reason}")

    def _transaction(self, req: SipRequest, data: bytes, deadline: float) -> SipResponse:
        """Non-INVITE client transaction over UDP: Timer E retransmits, final response returned."""
        cfg = self._trunk.config
        dest = (cfg.server_host, cfg.server_port)
        interval = cfg.t1
        self.send(data, dest)
        next_tx = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if now >= deadline or not self.NSD or (self._closing and req.headers.get("Expires") != "0"):
                raise TimeoutError("no final response to REGISTER")
            try:
                resp = self._reg_responses.get(timeout=max(0.0, min(next_tx, deadline) - now))
            except queue.Empty:
                if time.monotonic() >= next_tx:
                    interval = min(interval * 2, T2)
                    next_tx = time.monotonic() + interval
                    self.send(data, dest)
                continue
            if resp.cseq.seq != req.cseq.seq or resp.status < 200:
                if resp.status < 200:
                    interval = T2
                continue
            return resp


class _Phone(pv_voip.VoIPPhone):
    """pyVoIP's VoIPPhone with our SIPClient, RTP ports that are probed by binding them, and no
    8-bit/blocking call API (`call` deadlocks on 407: use PyVoipLeg.dial)."""

    def __init__(self, trunk: PyVoipTrunk) -> None:
        cfg = trunk.config
        super().__init__(cfg.server_host, cfg.server_port, cfg.username, cfg.password, myIP=cfg.local_host,
                         callCallback=None, sipPort=cfg.local_port, rtpPortLow=cfg.rtp_port_low,
                         rtpPortHigh=cfg.rtp_port_high)
        self.sip: _SipClient = _SipClient(trunk, self)
        self._sockets: dict[int, socket.socket] = {}

    def call(self, number: str) -> pv_voip.VoIPCall:
        raise NotImplementedError("pyVoIP's call() blocks on recvLock and ignores 4xx; use PyVoipLeg.dial")

    def callback(self, request: pv_sip.SIPMessage) -> None:
        """Unused: the trunk routes every message itself (see PyVoipTrunk._on_message)."""

    def request_port(self, blocking: bool = True) -> int:
        """A free RTP port of the range, probed by binding it (pyVoIP never checks, VoIP.py:703)."""
        with self.portsLock:
            low, high = self.rtpPortLow, self.rtpPortHigh
            span = high - low + 1
            candidates = random.sample(range(low, high + 1), min(span, 64))
            if span > 64:
                candidates += list(range(low, high + 1))
            for port in candidates:
                if port in self.assignedPorts:
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.bind((self.myIP, port))
                except OSError:
                    sock.close()
                    continue
                self.assignedPorts.append(port)
                self._sockets[port] = sock
                return port
        raise pv_voip.NoPortsAvailableError("No ports were available to be assigned")

    def take_socket(self, port: int) -> socket.socket:
        return self._sockets.pop(port)

    def release_port(self, port: int) -> None:
        with self.portsLock:
            if port in self.assignedPorts:
                self.assignedPorts.remove(port)
            sock = self._sockets.pop(port, None)
        if sock is not None:
            sock.close()

    def release_ports(self, call: pv_voip.VoIPCall | None = None) -> None:
        ports = list(call.assignedPorts) if call is not None else []
        for port in ports:
            self.release_port(port)

    def stop(self, failed: bool = False) -> None:
        self._status = PhoneStatus.DEREGISTERING
        self.sip.stop()
        with self.portsLock:
            socks = list(self._sockets.values())
            self._sockets.clear()
            self.assignedPorts.clear()
        for s in socks:
            s.close()
        self.calls.clear()
        self._status = PhoneStatus.FAILED if failed else PhoneStatus.INACTIVE


class _Call(pv_voip.VoIPCall):
    """pyVoIP's VoIPCall as the per-call record (state, RTP clients, port); signalling and audio
    go through PyVoipLeg. Its 8-bit audio API is disabled."""

    def __init__(self, phone: _Phone, call_id: str, port: int, state: pv_voip.CallState) -> None:
        request: Any = SimpleNamespace(headers={"Call-ID": call_id})  # all VoIPCall reads of it
        ms: Any = {port: {0: pv_rtp.PayloadType.PCMU}}
        super().__init__(phone, pv_voip.CallState.DIALING, request, random.randint(1, 100000), phone.myIP,
                         ms=ms, sendmode="sendrecv")
        self.state = state

    def __del__(self) -> None:  # pyVoIP releases ports in __del__; the leg does it explicitly
        pass

    def read_audio(self, length: int = 160, blocking: bool = True) -> bytes:
        raise NotImplementedError("pyVoIP's 8-bit audio is disabled: use PyVoipLeg.read_audio (16-bit)")

    def write_audio(self, data: bytes) -> None:
        raise NotImplementedError("pyVoIP's 8-bit audio is disabled: use PyVoipLeg.send_audio (16-bit)")

    def answer(self) -> None:
        raise NotImplementedError("use PyVoipLeg.answer")

    def hangup(self) -> None:
        raise NotImplementedError("use PyVoipLeg.hangup")


