"""pyVoIP's SIPClient, VoIPPhone and VoIPCall, mended: socket, receive thread, registration."""


from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import selectors
import socket
import threading
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP import RTP as pv_rtp
from pyVoIP import SIP as pv_sip
from pyVoIP.VoIP import VoIP as pv_voip
from pyVoIP.VoIP.status import PhoneStatus

from bridge.sip.auth import authorize_retry
from bridge.sip.errors import SipError
from bridge.sip.message import SipRequest, new_request, random_token
from bridge.sip.uri import NameAddr, SipUri, parse_name_addr

from .common import ALLOW

if TYPE_CHECKING:
    from .trunk import PyVoipTrunk

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------------------
# signalling: pyVoIP's SIPClient / VoIPPhone / VoIPCall, mended

class _SipClient(pv_sip.SIPClient):
    """pyVoIP's SIPClient: owns the UDP socket, the "SIP Recieve" thread and the registration.

    Mended: binds port 0 and learns the real port; the receive thread blocks in a selector on the
    socket and a self-pipe (pyVoIP polls every 10 ms, SIP.py:850-857) and hands each datagram to
    the trunk's EndpointDriver on the event loop; REGISTER and its digest are a non-INVITE client
    transaction of the trunk's SipEndpoint (Timer E/F there), awaited on the loop; the refresh is a
    loop timer, not a threading.Timer; `stop` wakes the thread and joins it.
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
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self.wakeups = 0  # times the receive thread woke up (tests: none while the trunk is idle)
        self._reg_call_id = f"{random_token(12)}@{cfg.local_host}"
        self._reg_tag = random_token(6)
        self._reg_cseq = 0
        self._reg_lock = asyncio.Lock()
        self._refresh: asyncio.TimerHandle | None = None
        self._reg_task: asyncio.Task[bool] | None = None
        self.registered = False
        self.last_register_error: str | None = None
        self._closing = False  # set by deregister/stop: no more refreshes

    # -- socket and receive thread --------------------------------------------------------------
    # pyVoIP's start() registers before the receive thread exists, under recvLock (SIP.py:955-966).
    def start(self) -> None:
        """Bind the socket and start the receive thread (registration: `await register_async()`)."""
        if self.NSD:
            raise RuntimeError("Attempted to start already started SIPClient")
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((self.myIP, self.myPort))
        self.s.setblocking(False)  # the selector says when; a send never blocks the event loop
        self.myPort = self.s.getsockname()[1]
        self.out = self.s
        self._wake_r, self._wake_w = os.pipe()
        self.NSD = True
        self._recv_thread = threading.Thread(target=self.recv_loop, name="SIP Recieve", daemon=True)
        self._recv_thread.start()

    def stop(self) -> None:
        """Wake and join the receive thread, close the socket (blocking: call via to_thread).
        Un-REGISTER first with `await deregister_async()` on the loop."""
        self._closing = True
        if not self.NSD:
            return
        self.NSD = False
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._recv_thread is not None and self._recv_thread is not threading.current_thread():
            self._recv_thread.join(2.0)
        self._close_sockets()
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = None

    def recv_loop(self) -> None:
        """The "SIP Recieve" thread: sleeps in epoll (a selector, no timeout, no FD_SETSIZE limit)
        until a datagram or the stop signal on the self-pipe."""
        assert self._wake_r is not None, "start() first"
        with selectors.DefaultSelector() as sel:
            try:
                sel.register(self.s, selectors.EVENT_READ)
                wake = sel.register(self._wake_r, selectors.EVENT_READ)
            except (OSError, ValueError):  # stopped before we ran
                return
            while self.NSD:
                try:
                    ready = sel.select()  # no timeout: an idle trunk costs nothing
                except (OSError, ValueError):  # closed under us
                    break
                self.wakeups += 1
                if not self.NSD or any(key.fd == wake.fd for key, _ in ready):
                    break
                try:
                    self.recv()
                except Exception:  # noqa: BLE001 - one datagram must never end the receive thread
                    log.exception("SIP receive failed")

    def recv(self) -> None:
        """One datagram, whole (pyVoIP: recv(8192) truncates, SIP.py:861), to the trunk."""
        try:
            raw, addr = self.s.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
            log.debug("SIP receive: %s", exc)
            return
        self._trunk._datagram(raw, addr)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.out.sendto(data, addr)
        except OSError as exc:  # the transaction retransmits (UDP may lose it anyway)
            log.warning("SIP send to %s failed: %s", addr, exc)

    # -- registration (RFC 3261 §10.2), on the event loop ---------------------------------------
    def register(self) -> bool:
        raise NotImplementedError("registration runs on the event loop: await register_async()")

    def deregister(self) -> bool:
        raise NotImplementedError("un-registration runs on the event loop: await deregister_async()")

    async def register_async(self) -> bool:
        """REGISTER (digest on 401/407, Min-Expires on 423) and arm the refresh; False on failure
        (a retry is armed). Trunk mode (`register=False`) is registered at once."""
        cfg = self._trunk.config
        if not cfg.register:
            self.registered = True
            self.phone._status = PhoneStatus.REGISTERED
            return True
        if self._closing:
            return False
        async with self._reg_lock:
            self.phone._status = PhoneStatus.REGISTERING
            try:
                # register_timeout: how long we wait for this attempt (the transaction's own
                # Timer F is 64*T1); the TU's patience, not a protocol timer.
                expires = await asyncio.wait_for(self._register_once(cfg.register_expires), cfg.register_timeout)
            except (TimeoutError, pv_sip.InvalidAccountInfoError, SipError) as exc:
                self.last_register_error = str(exc) or "no final response to REGISTER"
                self.registered = False
                self.phone._status = PhoneStatus.FAILED
                log.warning("REGISTER failed: %s", self.last_register_error)
                self.registerFailures += 1
                self._arm_refresh(min(60, max(5, cfg.register_expires // 2)))
                return False
            self.registered = True
            self.registerFailures = 0
            self.phone._status = PhoneStatus.REGISTERED
            self.default_expires = expires
            self._arm_refresh(max(1, int(expires * 0.9) if expires < 60 else expires - 30))
            return True

    def _arm_refresh(self, delay: float) -> None:
        """The refresh is a loop timer (pyVoIP: a threading.Timer per refresh, never joined)."""
        self.cancel_refresh()
        if self.NSD and not self._closing:
            self._refresh = asyncio.get_running_loop().call_later(delay, self._refresh_due)

    def _refresh_due(self) -> None:
        self._refresh = None
        if self.NSD and not self._closing:
            self._reg_task = asyncio.ensure_future(self.register_async())

    def cancel_refresh(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None

    async def deregister_async(self) -> bool:
        """No more refreshes; REGISTER with Expires: 0, waiting at most `deregister_timeout`."""
        self._closing = True
        self.cancel_refresh()
        task, self._reg_task = self._reg_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        cfg = self._trunk.config
        if not (self.registered and cfg.register):
            self.registered = False
            return True
        self.phone._status = PhoneStatus.DEREGISTERING
        try:
            await asyncio.wait_for(self._register_once(0), cfg.deregister_timeout)
        except (TimeoutError, pv_sip.InvalidAccountInfoError, SipError) as exc:
            log.info("un-REGISTER: %s", exc or "no final response")
            return False
        finally:
            self.registered = False
            self.phone._status = PhoneStatus.INACTIVE
        return True

    def _register_request(self, expires: int) -> SipRequest:
        cfg = self._trunk.config
        self._reg_cseq += 1
        aor = SipUri("sip", cfg.username, cfg.server_host)
        uri = SipUri("sip", None, cfg.server_host, cfg.server_port)
        return new_request(
            "REGISTER", uri, from_=NameAddr(aor).with_tag(self._reg_tag), to=NameAddr(aor),
            call_id=self._reg_call_id, cseq=self._reg_cseq,
            contact=f"<sip:{cfg.username}@{cfg.local_host}:{self.myPort};transport=udp>",
            headers=[("Expires", str(expires)), ("Allow", ALLOW)],
        )

    async def _register_once(self, expires: int) -> int:
        """One registration with digest: REGISTER transactions on the trunk's endpoint until a
        final answer; returns the granted expiry (raises on failure)."""
        cfg = self._trunk.config
        req = self._register_request(expires)
        challenges = 0
        while True:
            resp = await self._trunk.transact(req, self._trunk.server_addr)
            if resp.status in (401, 407):
                challenges += 1
                retry = authorize_retry(req, resp, username=cfg.username, password=cfg.password,
                                        realm=cfg.realm) if challenges <= 2 else None
                if retry is None:
                    raise pv_sip.InvalidAccountInfoError(f"REGISTER rejected: {resp.status} {resp.reason}")
                req = retry
                self._reg_cseq = req.cseq.seq
                continue
            if resp.status == 423 and expires:  # Interval Too Brief: RFC 3261 §10.3 step 7
                expires = int(resp.headers.get("Min-Expires") or expires)
                again = self._register_request(expires)
                for name in ("Authorization", "Proxy-Authorization"):
                    for value in req.headers.get_all(name):
                        again.headers.add(name, value)
                req = again
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

    def start(self) -> None:
        """Bind SIP and start its receive thread (pyVoIP also registers here, blocking)."""
        try:
            self.sip.start()
            self.NSD = True
        except Exception:
            self._status = PhoneStatus.FAILED
            self.sip.stop()
            raise

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
        """Join the receive thread, close every socket (blocking). Un-REGISTER before, on the loop."""
        self.NSD = False
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


