"""The bridge's SIP user agent on the carrier trunk: pyVoIP 1.6.8, quarantined and mended here.

This is the ONLY module that imports pyVoIP. It implements `SipTrunk` (`PyVoipTrunk`) and `SipLeg`
(`PyVoipLeg`) from bridge/legs.py. Use::

    trunk = PyVoipTrunk(TrunkConfig(register=False))    # or register=True with digest credentials
    await trunk.start()                                 # bind, register, start receiving
    trunk.set_inbound_handler(on_call)                  # inbound INVITEs -> on_call(leg, from, to)
    leg = trunk.new_leg("call-1"); await leg.dial("+8613800138000")
    ev = await leg.events.get()                         # LegRinging / LegAnswered / LegDtmf / LegEnded
    leg.send_audio(pcm16_320_bytes); leg.read_audio()   # 16-bit PCM, 8 kHz, 20 ms frames
    await leg.hangup(); await trunk.stop()

pyVoIP stays the user agent that owns the SIP socket, its receive thread ("SIP Recieve"), the
registration state and refresh timer (`VoIPPhone`/`SIPClient` subclasses), the per-call objects
(`VoIPCall` subclass) and the media engine (`RTPClient`/`RTPPacketManager` subclasses). Its call
signalling is too broken to patch line by line (media-stack.md §1.7), so the INVITE dialogue is
taken over here with our sans-I/O core (bridge.sip.message/auth/sdp) and sent through pyVoIP's socket.

Defects of pyVoIP 1.6.8 (media-stack.md §1) -> how they are mended -> the test that proves it
(tests/integration/test_pyvoip_leg.py unless noted):

| defect (pyVoIP file:line)                          | mend                                                      | test |
|----------------------------------------------------|-----------------------------------------------------------|------|
| 8-bit read_audio/write_audio (RTP.py:476-507)       | `_MediaClient` takes G.711 payloads below it, bridge/rtp/g711 16-bit; `_Call.read_audio/write_audio` raise | test_quiet_tone_is_16_bit |
| ACK for 2xx has a random To-tag (SIP.py:1565)      | `PyVoipLeg._ack_2xx` copies the 2xx's To (RFC 3261 §13.2.2.4)   | test_ack_to_tag_matches_200 (sipp uas_answer_check_ack.xml) |
| 4xx-6xx to INVITE ignored, no ACK (SIP.py:911)     | ACK with the INVITE's branch + response To (§17.1.1.3); LegEnded(outcome, code, Reason cause) | test_busy_486_is_acked_and_mapped (sipp uas_busy_486.xml) |
| 407/401 on INVITE dead-locks recvLock (SIP.py:1614) | no lock held: ACK the challenge, re-INVITE with CSeq+1 and Proxy-Authorization (bridge/sip/auth) | test_407_challenge_is_answered (sipp uas_auth_407.xml) |
| PCMA sent as μ-law (RTP.py:460)                    | `_MediaClient.encode_packet` uses the negotiated codec's encoder | test_pcma_is_a_law |
| inbound CANCEL: no 487, call answered anyway (SIP.py:947, VoIP.py:522) | 200 to CANCEL + 487 to INVITE (§9.2); `answer()` after it is refused | test_inbound_cancel_gets_487_and_never_answers (sipp uac_cancel.xml) |
| relative-sleep pacing drifts; unbounded pmin/pmout (RTP.py:157-216, 382-419) | absolute clock t0 + n·20 ms; `_FrameBuffer` bounded deques; bounded JitterBuffer | test_pacing_absolute_clock_and_bounded_backlog |
| 0-byte RTP kills the receiver; DTMF event >= 16 IndexError (RTP.py:370, 554) | RtpPacket.parse drops malformed datagrams; DtmfReceiver for events | test_bad_rtp_is_dropped_and_audio_continues |
| no DTMF send (RTP.py:382)                          | RFC 4733 event packets from bridge/rtp/dtmf on the media clock | test_send_dtmf_rfc4733 |
| seq wrap OverflowError, packet without seq (RTP.py:389) | RtpSender masks seq/ts; `TrunkConfig.rtp_initial_sequence` for the test | test_sequence_wraps |
| 180/183 ignored, RTP only after 200 (SIP.py:906, VoIP.py:310) | LegRinging(180/183); 183 + SDP starts media: LegRinging(183, early_media=True), audio via read_audio | test_early_media_183 (sipp uas_early_media.xml) |
| always REGISTERs; deregister waits 30 s (SIP.py:963, 1658) | `register=False` = trunk mode; deregister bounded to `deregister_timeout` | test_trunk_mode_no_register_and_options_keepalive, test_register_digest (sipp uas_register.xml), test_against_the_simulated_carrier |
| myIP default 0.0.0.0 in Contact/SDP (VoIP.py:477) | `TrunkConfig.local_host` must be a unicast address (127.0.0.1 default) | tests/unit/test_pyvoip_leg_unit.py |
| OPTIONS dropped (__init__.py:33, SIP.py:867)       | 200 OK with Allow/Accept (RFC 3261 §11.2)                  | test_trunk_mode_no_register_and_options_keepalive |
| BYE we send goes to `server` with the INVITE's Via (SIP.py:1517, 1653) | BYE to the remote target / route set (§12.2.1.1) with our own Via | test_inbound_call_answer_and_bye |
| no CANCEL of our own INVITE (no API)               | `hangup()` while ringing sends CANCEL (§9.1), waits for 487 | test_cancel_outbound_while_ringing (sipp uas_ring_cancel.xml) |
| no Timer A/B, INVITE never times out (SIP.py)      | Timer A retransmits, Timer B = 64·T1 -> LegEnded("timeout", 408) | test_invite_timeout |
| recv(8192) truncates datagrams (SIP.py:861)        | recvfrom(65535) and our strict parser                      | (all SIP tests) |
| threads never joined (RTP.py:345-350, SIP.py:964)  | named threads joined by `stop()`                          | test_threads_do_not_leak |
| re-INVITE starts a 2nd pair of RTP threads (VoIP.py:267-296) | answer the new offer on the same media (hold = recvonly) | test_reinvite_hold_and_resume |
| no 200 retransmission / Timer H (SIP.py)           | Timer G resends our 200 until ACK; Timer H -> BYE + LegEnded("failed", 41) | test_inbound_200_without_ack_times_out |

Threading: pyVoIP's "SIP Recieve" thread reads and parses datagrams and hands each message to the
event loop with `loop.call_soon_threadsafe`; REGISTER responses go straight to the registering
thread. All dialog state lives on the event loop. Each call has an "RTP Receiver" thread (parse,
jitter buffer, DTMF) and an "RTP Transmitter" thread (absolute 20 ms clock: sends one packet and
plays out one received frame per tick). Blocking pyVoIP calls (start/register, stop/deregister,
joining RTP threads) run in `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ipaddress
import logging
import queue
import random
import select
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyVoIP.VoIP  # noqa: F401  # must come before pyVoIP.SIP (circular import, media-stack.md §1.1)
from pyVoIP import RTP as pv_rtp
from pyVoIP import SIP as pv_sip
from pyVoIP.VoIP import VoIP as pv_voip
from pyVoIP.VoIP.status import PhoneStatus

from bridge.causes import cause_for_sip, outcome_for, parse_reason_header, reason_header, sip_for_cause
from bridge.legs import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    InboundHandler,
    LegAnswered,
    LegDtmf,
    LegEnded,
    LegEvent,
    LegRinging,
)
from bridge.rtp import g711
from bridge.rtp.dtmf import DTMF_DIGITS, DtmfReceiver, dtmf_packets
from bridge.rtp.packet import RtpPacket, RtpParseError
from bridge.rtp.session import JitterBuffer, RtpSender
from bridge.sip.auth import ALGORITHMS, build_authorization, parse_challenge
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
    NegotiatedAudio,
    SdpError,
    SdpSession,
    answer_offer,
    build_offer,
    negotiated_from_answer,
)
from bridge.sip.uri import NameAddr, SipUri, Uri, parse_name_addr

__all__ = ["PyVoipLeg", "PyVoipTrunk", "TrunkConfig", "TrunkError"]

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
FRAME_S = 0.020
T2 = 4.0  # RFC 3261 §17.1.2.2: cap of the non-INVITE retransmit interval


class TrunkError(RuntimeError):
    """The trunk could not start (bind or registration failed)."""


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """How the bridge reaches the carrier trunk. Defaults match config/carrier.toml's account.

    `register=False` is trunk mode (IP-authenticated, no REGISTER). `local_port=0` picks a free
    port. `t1` is RFC 3261's T1: Timer B (no answer to the INVITE) is 64·T1.
    """

    server_host: str = "127.0.0.1"
    server_port: int = 5060
    username: str = "jego"
    password: str = "jego-trunk-secret"
    realm: str | None = None          # answer only challenges from this realm (None: any)
    local_host: str = "127.0.0.1"     # written into Via/Contact/SDP: never 0.0.0.0
    local_port: int = 0
    rtp_port_low: int = 16384
    rtp_port_high: int = 32767
    register: bool = True
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    register_expires: int = 300
    max_calls: int = 32
    dtmf_payload_type: int = 101
    caller_id: str | None = None      # default From user of outbound calls (None: username)
    t1: float = 0.5
    register_timeout: float = 8.0
    deregister_timeout: float = 2.0
    cancel_timeout: float = 8.0       # how long hangup() waits for the 487 after CANCEL
    jitter_prefetch: int = 3
    jitter_capacity: int = 16
    tx_queue_frames: int = 5          # send_audio backlog bound (oldest dropped)
    rx_queue_frames: int = 25         # read_audio backlog bound (oldest dropped)
    rtp_initial_sequence: int | None = None  # tests: first RTP sequence number (None: random)
    user_agent: str = "JegoCall-Bridge (pyVoIP 1.6.8)"

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.local_host)
        except ValueError:
            raise ValueError(f"local_host must be an IP address, got {self.local_host!r}") from None
        if ip.is_unspecified or ip.version != 4:
            raise ValueError("local_host must be a unicast IPv4 address (pyVoIP writes it into Contact and SDP)")
        if not self.codecs or any(c.upper() not in ("PCMU", "PCMA") for c in self.codecs):
            raise ValueError("codecs must be a non-empty subset of ('PCMU', 'PCMA')")
        if not 0 < self.rtp_port_low <= self.rtp_port_high <= 65535:
            raise ValueError("need 0 < rtp_port_low <= rtp_port_high <= 65535")
        if not 0 <= self.local_port <= 65535 or not 0 < self.server_port <= 65535:
            raise ValueError("SIP ports out of range")
        if not 96 <= self.dtmf_payload_type <= 127:
            raise ValueError("dtmf_payload_type must be dynamic (96..127)")
        if self.t1 <= 0 or self.max_calls < 1 or self.register_expires < 1:
            raise ValueError("t1, max_calls and register_expires must be positive")


# -------------------------------------------------------------------------------------------------
# helpers

def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _e164(user: str | None) -> str:
    """A number from a URI user part, E.164 where it can tell (+CC..., 00CC... -> +CC...)."""
    if not user:
        return ""
    user = user.split(";", 1)[0]
    if user.startswith("00") and user[2:].isdigit():
        return "+" + user[2:]
    return user


def _q850(msg: SipMessage) -> int | None:
    """The Q.850 cause of an RFC 3326 Reason header, if any."""
    for value in msg.headers.get_all("Reason"):
        for proto, cause, _text in parse_reason_header(value):
            if proto.upper() == "Q.850" and cause is not None:
                return cause
    return None


def _has_sdp(msg: SipMessage) -> bool:
    ctype = msg.headers.get("Content-Type") or ""
    return bool(msg.body) and ctype.split(";")[0].strip().lower() == "application/sdp"


def _pick_challenge(resp: SipResponse) -> tuple[str, Any] | None:
    """(credentials header name, challenge) for a 401/407: the first Digest challenge whose
    algorithm we support (RFC 8760 §2.4: the server lists its preference first)."""
    name, creds = ("Proxy-Authenticate", "Proxy-Authorization") if resp.status == 407 else (
        "WWW-Authenticate", "Authorization")
    for value in resp.headers.get_all(name):
        try:
            ch = parse_challenge(value)
        except SipError:
            continue
        if ch.algorithm.upper() in ALGORITHMS:
            return creds, ch
    return None


# -------------------------------------------------------------------------------------------------
# media: pyVoIP's RTPClient / RTPPacketManager, mended

class _FrameBuffer(pv_rtp.RTPPacketManager):
    """pyVoIP's RTPPacketManager with a bounded deque of 16-bit frames instead of a BytesIO of the
    whole call (RTP.py:157-216). `write` appends (oldest dropped when full), `read` pops or b""."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.frames: collections.deque[bytes] = collections.deque(maxlen=maxlen)
        self.dropped = 0

    def read(self, length: int = FRAME_BYTES) -> bytes:
        try:
            return self.frames.popleft()
        except IndexError:
            return b""

    def write(self, offset: int, data: bytes) -> None:
        del offset  # frames are in order; there is no byte-offset space to grow
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        self.frames.append(data)

    def rebuild(self, reset: bool, offset: int = 0, data: bytes = b"") -> None:
        self.frames.clear()

    def __len__(self) -> int:
        return len(self.frames)


class _MediaClient(pv_rtp.RTPClient):
    """pyVoIP's RTPClient with the G.711 payloads taken below its 8-bit API.

    Receive: RFC 3550 parse (malformed datagrams dropped), bounded JitterBuffer, RFC 4733 DTMF.
    Send: absolute clock t0 + n·20 ms, RtpSender (wrapping seq/ts), RFC 4733 DTMF events.
    Call `write(pcm16)` / `read()` for 320-byte frames, `queue_dtmf`, `update(audio)`, `stop()`.
    """

    def __init__(self, leg: PyVoipLeg, sock: socket.socket, audio: NegotiatedAudio, cfg: TrunkConfig) -> None:
        assoc = {audio.payload_type: pv_rtp.PayloadType.PCMA if audio.codec == "PCMA" else pv_rtp.PayloadType.PCMU}
        if audio.telephone_event_pt is not None:
            assoc[audio.telephone_event_pt] = pv_rtp.PayloadType.EVENT
        host, port = audio.remote or ("", 0)
        mode = pv_rtp.TransmitType(audio.direction)
        super().__init__(assoc, cfg.local_host, sock.getsockname()[1], host, port, mode, dtmf=leg._dtmf_from_thread)
        self.sin = self.sout = sock
        self._tx = _FrameBuffer(cfg.tx_queue_frames)  # 16-bit frames to send
        self._rx = _FrameBuffer(cfg.rx_queue_frames)  # 16-bit frames received, played out
        self.pmout, self.pmin = self._tx, self._rx
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jb = JitterBuffer(capacity=cfg.jitter_capacity, prefetch=cfg.jitter_prefetch)
        self._dtmf_rx = DtmfReceiver()
        self._dtmf_jobs: collections.deque[tuple[str, concurrent.futures.Future[None]]] = collections.deque()
        self._dtmf_active: tuple[list[Any], int, int, concurrent.futures.Future[None]] | None = None
        self._dtmf_gap = 0
        self._fifo = np.zeros(0, dtype=np.int16)
        self._label = leg.call_id
        self.counters: collections.Counter[str] = collections.Counter()
        self.sender = RtpSender(audio.payload_type, sequence_number=cfg.rtp_initial_sequence)
        self.update(audio)

    # -- configuration ------------------------------------------------------------------------
    def update(self, audio: NegotiatedAudio) -> None:
        """Apply (re-)negotiated media: codec, payload types, remote address, direction."""
        with self._lock:
            self.audio = audio
            self.codec = audio.codec
            self.preference = pv_rtp.PayloadType.PCMA if audio.codec == "PCMA" else pv_rtp.PayloadType.PCMU
            self._decode = g711.decoder_for(audio.codec)
            self._encode = g711.encoder_for(audio.codec)
            self.sender.payload_type = audio.payload_type
            self.outIP, self.outPort = audio.remote or ("", 0)

    # -- threads ------------------------------------------------------------------------------
    def start(self) -> None:
        self.NSD = True
        self.sin.setblocking(False)
        for name, target in (("RTP Receiver", self.recv), ("RTP Transmitter", self.trans)):
            t = threading.Thread(target=target, name=f"{name} {self._label}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> None:
        """End both threads, join them and close the socket (blocking: call via to_thread)."""
        self.NSD = False
        self._wake.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(2.0)
        with contextlib.suppress(OSError):
            self.sin.close()
        with self._lock:
            job = self._dtmf_active
            self._dtmf_active = None
            jobs = list(self._dtmf_jobs)
            self._dtmf_jobs.clear()
        for fut in [j[1] for j in jobs] + ([job[3]] if job else []):
            if not fut.done():
                fut.set_exception(ConnectionError("media stopped"))

    # -- receive ------------------------------------------------------------------------------
    def recv(self) -> None:
        while self.NSD:
            try:
                ready, _, _ = select.select([self.sin], [], [], 0.05)
                if not ready:
                    continue
                packet, _addr = self.sin.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):  # closed under us by stop()
                if not self.NSD:
                    break
                time.sleep(0.01)
                continue
            try:
                self.parse_packet(packet)
            except Exception:  # never let one datagram end the receiver (pyVoIP RTP.py:370-380)
                self.counters["rx_errors"] += 1
                log.exception("RTP receive error on %s", self._label)

    def parse_packet(self, packet: bytes) -> None:
        try:
            pkt = RtpPacket.parse(packet)  # 0-byte, < 12 bytes, truncated CSRC/ext, bad padding
        except RtpParseError:
            self.counters["rx_malformed"] += 1
            return
        now = time.monotonic()
        audio = self.audio
        if audio.telephone_event_pt is not None and pkt.payload_type == audio.telephone_event_pt:
            self.counters["rx_dtmf_packets"] += 1
            with self._lock:
                self._jb.push(pkt, now, audio=False)
                ev = self._dtmf_rx.receive(pkt.payload, pkt.timestamp, ssrc=pkt.ssrc, marker=pkt.marker)
            if ev is not None and ev.is_digit and self.dtmf is not None:
                self.dtmf(ev.name)
            elif ev is not None:
                self.counters["rx_dtmf_other"] += 1  # flash (16) and others: no IndexError here
            return
        if pkt.payload_type != audio.payload_type or not pkt.payload or len(pkt.payload) > 1600:
            self.counters["rx_dropped"] += 1
            return
        self.counters["rx_packets"] += 1
        with self._lock:
            self._jb.push(pkt, now)

    # -- transmit + playout clock -------------------------------------------------------------
    def trans(self) -> None:
        t0 = time.monotonic()
        n = 0
        while self.NSD:
            due = t0 + n * FRAME_S  # absolute schedule: no drift (pyVoIP RTP.py:415-419 sleeps relative)
            delay = due - time.monotonic()
            if delay > 0 and self._wake.wait(delay):
                break
            if not self.NSD:
                break
            late = time.monotonic() - due
            if late > 0.2:
                # The thread was starved: skip the missed ticks instead of bursting them out;
                # the RTP timestamp still advances with real time (RFC 3550 §5.1).
                missed = int(late / FRAME_S)
                n += missed
                self.sender.skip(missed * FRAME_SAMPLES)
                self.counters["tx_skipped_ticks"] += missed
            try:
                self._tick(time.monotonic())
            except OSError:
                if not self.NSD:
                    break
                self.counters["tx_errors"] += 1
            except Exception:
                self.counters["tx_errors"] += 1
                log.exception("RTP transmit error on %s", self._label)
            n += 1

    def _tick(self, now: float) -> None:
        with self._lock:
            self._playout(now)
            packet = self._next_packet()
            dest = (self.outIP, self.outPort) if self.audio.send else None
        if packet is not None and dest is not None:
            self.sout.sendto(packet, dest)
            self.counters["tx_packets"] += 1

    def _playout(self, now: float) -> None:
        """One 20 ms frame from the jitter buffer into pmin (re-framed: ptime may not be 20)."""
        if len(self._fifo) < FRAME_SAMPLES:
            depth = self._jb.depth
            payload = self._jb.pop(now)
            if payload is not None:
                self._fifo = np.concatenate([self._fifo, self._decode(payload)])
            elif depth > 0:
                # A hole inside the stream: silence (pyVoIP fills holes with 0x00, full-scale clicks)
                self._fifo = np.concatenate([self._fifo, np.zeros(FRAME_SAMPLES, dtype=np.int16)])
        if len(self._fifo) >= FRAME_SAMPLES:
            frame, self._fifo = self._fifo[:FRAME_SAMPLES], self._fifo[FRAME_SAMPLES:]
            self._rx.write(0, frame.tobytes())
        if len(self._fifo) > 8 * FRAME_SAMPLES:  # bounded re-framing buffer
            self._fifo = self._fifo[-FRAME_SAMPLES:]

    def _next_packet(self) -> bytes | None:
        te_pt = self.audio.telephone_event_pt
        if self._dtmf_active is None and self._dtmf_gap > 0:
            self._dtmf_gap -= 1
        elif self._dtmf_active is None and self._dtmf_jobs and te_pt is not None:
            digit, fut = self._dtmf_jobs.popleft()
            self._dtmf_active = (dtmf_packets(digit), 0, self.sender.timestamp, fut)
        if self._dtmf_active is not None and te_pt is not None:
            # RFC 4733 §2.5.1: every packet of the event carries the event's start timestamp;
            # the media clock keeps running underneath so audio resumes in step.
            pkts, i, start_ts, fut = self._dtmf_active
            item = pkts[i]
            rtp = self.sender.event_packet(item.payload, te_pt, start_ts, item.marker)
            self.sender.skip(FRAME_SAMPLES)
            self._tx.read()  # the frame this tick would have carried is replaced by the event
            if i + 1 < len(pkts):
                self._dtmf_active = (pkts, i + 1, start_ts, fut)
            else:
                self._dtmf_active = None
                self._dtmf_gap = 3  # 60 ms of audio between digits
                if not fut.done():
                    fut.set_result(None)
            self.counters["tx_dtmf_packets"] += 1
            return rtp.serialize()
        frame = self._tx.read()
        if len(frame) != FRAME_BYTES:
            frame = bytes(FRAME_BYTES)  # nothing queued: send silence to keep the stream alive
            self.counters["tx_underruns"] += 1
        return self.encode_packet(frame)

    def encode_packet(self, payload: bytes) -> bytes:
        """PCM16 frame -> RTP packet in the negotiated codec (pyVoIP RTP.py:460 sends μ-law as PCMA)."""
        return self.sender.packet(self._encode(np.frombuffer(payload, dtype=np.int16)), FRAME_SAMPLES).serialize()

    # -- the application side -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self._tx.write(0, data)

    def read(self, length: int = FRAME_BYTES, blocking: bool = False) -> bytes:
        return self._rx.read(length)

    def queue_dtmf(self, digits: str) -> list[concurrent.futures.Future[None]]:
        futs: list[concurrent.futures.Future[None]] = []
        with self._lock:
            for d in digits:
                fut: concurrent.futures.Future[None] = concurrent.futures.Future()
                self._dtmf_jobs.append((d, fut))
                futs.append(fut)
        return futs

    @property
    def tx_backlog(self) -> int:
        return len(self._tx)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            jb = self._jb.stats()
        out: dict[str, Any] = dict(self.counters)
        out.update(tx_backlog=len(self._tx), tx_dropped=self._tx.dropped, rx_backlog=len(self._rx),
                   rx_dropped_frames=self._rx.dropped, jitter=jb, next_seq=self.sender.sequence_number)
        return out


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
            self._emit(LegEnded("congestion", 503, 34, remote=False, detail="max_calls reached"))
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
        key = outcome_for(sip_code, q850_cause).key
        self._end(LegEnded(key, sip_code, q850_cause, remote=False))

    async def hangup(self, q850_cause: int = 16) -> None:
        """BYE when answered, CANCEL while ringing (final response for an inbound call that rings);
        idempotent; LegEnded(remote=False) follows."""
        if self._ended or self.state in ("cancelling", "ended"):
            return
        if self.state == "idle":
            self._end(LegEnded("hangup", remote=False))
        elif self.state == "offered":
            code = sip_for_cause(q850_cause) or 480
            await self.reject(code if code >= 300 else 480, q850_cause)
        elif self.state == "answered":
            self._send_bye(q850_cause)
            self._end(LegEnded("hangup", None, q850_cause, remote=False))
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
            self._sock = None
            if self._call is not None:
                self._call.RTPClients.append(self.media)
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
                self._end(LegEnded("timeout", 408, cause_for_sip(408), remote=True,
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
            self._end(LegEnded("cancelled", None, 16, remote=False, detail="200 OK crossed the CANCEL"))
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
            self._end(LegEnded("incompatible_media", None, 65, remote=False, detail="no usable SDP answer"))
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
        cause = _q850(resp)
        if resp.status == 487 and self.state == "cancelling":
            self._end(LegEnded("cancelled", 487, cause, remote=False))
            return
        outcome = outcome_for(resp.status, cause)
        q850 = cause if cause is not None else cause_for_sip(resp.status)
        self._end(LegEnded(outcome.key, resp.status, q850, remote=True,
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
            self._end(LegEnded("cancelled", None, 16, remote=False, detail="no 487 after CANCEL"))

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
            self._end(LegEnded("failed", None, 41, remote=True, detail="no ACK for our 200 OK (Timer H)"))

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
                cause = _q850(req)
                key = outcome_for(0, cause).key if cause not in (None, 16) else "hangup"
                self._end(LegEnded(key, None, cause if cause is not None else 16, remote=True))
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
        self._end(LegEnded("cancelled", 487, _q850(req), remote=True))

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
            leg._end(LegEnded("hangup", None, 16, remote=False, detail="trunk stopped"))
        await asyncio.gather(*(asyncio.to_thread(m.stop) for m in medias))
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
        from_number = _e164(req.from_.uri.user if isinstance(req.from_.uri, SipUri) else None)
        to_number = _e164(req.to.uri.user if isinstance(req.to.uri, SipUri) else None)

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
        """Stop the leg's media (threads joined off the loop), free its port, and forget the leg
        after 64·T1 so late retransmissions are still recognised."""
        phone = self._phone
        media, leg.media = leg.media, None
        if media is not None:
            leg._stopped_media = media
            self._stops.append(asyncio.ensure_future(asyncio.to_thread(media.stop)))
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
