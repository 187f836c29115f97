"""The lean WebRTC audio leg: aiortc negotiates, the per-packet path is ours, on the media engine.

aiortc keeps what it is good at: the SDP offer/answer, ICE (aioice), DTLS and the SRTP keys
it derives (RFC 5764). It never starts its own RTP sender or receiver here (no encoder, no
decoder thread, no RTCP tasks): once DTLS is up, every datagram whose first byte says RTP or
RTCP (RFC 7983 §7) is taken off the ICE pair's socket before aioice sees it, unprotected with
the pylibsrtp sessions DTLS keyed (bridge/net/srtp.py), and handed to a
``bridge.rtp.media.RtpSession`` on the process's ``MediaEngine`` (bridge/net/media.py): one
timer for every leg, no thread or task per call. The session decodes Opus straight to 8 kHz
(bridge/net/opus.py) or G.711, plays out by RTP timestamp, and once per 20 ms slot trades
frames with an ``AudioPort`` (``exchange(rx, live) -> tx``): the bridge's SIP leg, a
conference mixer, a benchmark's speech. What the session sends (RTP, RTCP SR/RR + SDES, BYE,
all rtcp-mux) is protected and written straight to the ICE pair's socket. STUN (consent
freshness, RFC 7675) and DTLS still go to aiortc.

    leg = WebRtcLeg(port, codecs=("opus", "PCMU", "PCMA"), on_state=print)
    answer = await leg.accept_offer(offer_sdp)       # or: offer = await leg.create_offer(); ...
    await leg.set_answer(answer_sdp)                 #      ... then set_answer
    await leg.add_ice_candidate(cand)                # trickled candidates ({"candidate": ...})
    await leg.wait_connected(10)                     # media flows from here on
    leg.stats()                                      # packets, loss, jitter, RTT, SRTP refusals
    await leg.close()                                # RTCP BYE, then DTLS/ICE closed

Browsers need nothing else for audio: aiortc's answer negotiates no transport-cc and no REMB
for an audio m-line (no ``a=rtcp-fb`` and no transport-wide-cc extension), so the browser
sends at its configured Opus rate and asks for no bandwidth feedback; its statistics
(remote-inbound-rtp: RTT and loss, remote-outbound-rtp) come from our RR/SR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeGuard

from aioice.ice import StunProtocol
from aioice.turn import TurnTransport
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.sdp import candidate_from_sdp

from jego_call.media.impair import ImpairmentSpec
from jego_call.media.netimpair import ImpairedReceiver

from ..rtp.codec import AudioCodec, G711Codec
from ..rtp.media import AudioPort, MediaEvent, MediaFormat, RemoteBye, ReportReceived, RtpSession
from .media import MediaEngine, RtpEndpoint
from .opus import OpusCodec
from .srtp import SrtpGuard

log = logging.getLogger(__name__)

Addr = tuple[str, int]
StateHandler = Callable[[str], None]

__all__ = ["RED_LOSSY", "WebRtcError", "WebRtcLeg", "add_red", "ice_servers", "narrowband_opus", "red_payload_type"]

CODEC_NAMES = {"opus": "opus", "pcmu": "PCMU", "pcma": "PCMA"}


class WebRtcError(Exception):
    """The leg could not be negotiated or connected (bad SDP, ICE/DTLS failure, timeout)."""


def ice_servers(servers: Iterable[dict[str, Any]]) -> list[RTCIceServer]:
    """`[{"urls": [...], "username"?, "credential"?}]` (config or auth_ok) -> RTCIceServer."""
    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in servers]


def narrowband_opus(sdp: str, max_average_bitrate: int = 32000, fec: bool = True) -> str:
    """Our SDP with RFC 7587 §6.1 Opus parameters: ``maxplaybackrate=8000;sprop-maxcapturerate=8000``
    (we play out at 8 kHz, the phone network's band, and send from 8 kHz, so the far end's
    encoder may spend its whole bitrate below 4 kHz: browsers do, narrowband Opus),
    ``useinbandfec=1`` (we decode in-band FEC: the far end should send it when it sees loss)
    and ``maxaveragebitrate`` (what narrowband speech needs to score as G.711 alone:
    docs/benchmarks.md "Opus at 8 kHz")."""
    lines = sdp.split("\r\n")
    pts = [ln.split(":", 1)[1].split(" ", 1)[0] for ln in lines if ln.lower().startswith("a=rtpmap:")
           and " opus/48000" in ln.lower()]
    extra = (f"maxplaybackrate=8000;sprop-maxcapturerate=8000;useinbandfec={1 if fec else 0};"
             f"maxaveragebitrate={max_average_bitrate}")
    for pt in pts:
        fmtp = f"a=fmtp:{pt} "
        at = next((i for i, ln in enumerate(lines) if ln.startswith(fmtp)), None)
        if at is not None:
            have = {kv.split("=", 1)[0].strip().lower() for kv in lines[at][len(fmtp):].split(";")}
            add = [kv for kv in extra.split(";") if kv.split("=", 1)[0] not in have]
            if add:
                lines[at] += ";" + ";".join(add)
        else:
            rtpmap = next(i for i, ln in enumerate(lines) if ln.startswith(f"a=rtpmap:{pt} "))
            lines.insert(rtpmap + 1, fmtp + extra)
    return "\r\n".join(lines)


def remote_wants_fec(sdp: str, payload_type: int) -> bool:
    """RFC 7587 §6.1: the far end's ``useinbandfec=1`` on the Opus payload type we send."""
    m = re.search(rf"(?m)^a=fmtp:{payload_type} ([^\r\n]*)", sdp)
    return bool(m and re.search(r"(?:^|;)\s*useinbandfec=1\b", m.group(1)))


def _opus_pt(sdp: str) -> int | None:
    m = re.search(r"(?mi)^a=rtpmap:(\d+) opus/48000", sdp)
    return int(m.group(1)) if m else None


def red_payload_type(sdp: str, opus_pt: int | None = None) -> int | None:
    """RFC 2198 redundancy for Opus in ``sdp``: the payload type of ``red/48000/2`` whose fmtp
    names only the Opus payload type (Chromium: ``a=fmtp:63 111/111``), else None."""
    opus = opus_pt if opus_pt is not None else _opus_pt(sdp)
    if opus is None:
        return None
    for m in re.finditer(r"(?mi)^a=rtpmap:(\d+) red/48000/2\s*$", sdp):
        pt = m.group(1)
        f = re.search(rf"(?m)^a=fmtp:{pt} ([\d/]+)\s*$", sdp)
        if f and {int(x) for x in f.group(1).split("/") if x} == {opus}:
            return int(pt)
    return None


def red_is_first(sdp: str, red_pt: int) -> bool:
    """The far end lists RED first on its m=audio line: it is what it wants us to send."""
    m = re.search(r"(?m)^m=audio \S+ \S+ (\d+)", sdp)
    return bool(m and int(m.group(1)) == red_pt)


def add_red(sdp: str, red_pt: int, opus_pt: int, *, first: bool) -> str:
    """Our SDP with ``red/48000/2`` (fmtp ``opus/opus``, RFC 2198 §5) on the audio m-line: first
    (an answer: the far end sends RED) or right after Opus (an offer: the answerer chooses)."""
    lines = sdp.split("\r\n")
    for i, ln in enumerate(lines):
        if ln.startswith("m=audio "):
            head, fmts = ln.split(" ")[:3], [f for f in ln.split(" ")[3:] if f != str(red_pt)]
            at = 0 if first else (fmts.index(str(opus_pt)) + 1 if str(opus_pt) in fmts else len(fmts))
            fmts.insert(at, str(red_pt))
            lines[i] = " ".join(head + fmts)
            break
    else:
        return sdp
    after = max((i for i, ln in enumerate(lines) if ln.startswith((f"a=rtpmap:{opus_pt} ", f"a=fmtp:{opus_pt} "))),
                default=None)
    if after is None:
        return sdp
    lines[after + 1:after + 1] = [f"a=rtpmap:{red_pt} red/48000/2", f"a=fmtp:{red_pt} {opus_pt}/{opus_pt}"]
    return "\r\n".join(lines)


RED_LOSSY = 0.03  # the far end's reported loss (estimate) from which RED is sent red_lossy_distance deep


def fec_loss_percent(fraction_lost: float) -> int:
    """The loss our encoder plans FEC for, from the far end's RR (0: FEC off; capped at 25 %)."""
    return 0 if fraction_lost <= 0 else max(1, min(25, round(fraction_lost * 100)))


async def _idle(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for aiortc's RTCRtpSender.send / RTCRtpReceiver.receive: nothing of theirs runs."""
    return None


def _is_socket_transport(transport: object) -> TypeGuard[asyncio.DatagramTransport]:
    """A datagram transport on a socket of ours, whose protocol can be swapped: asyncio's, or
    uvloop's UDPTransport (which is not an asyncio.DatagramTransport subclass: checking that
    alone left every packet of a uvloop worker on aioice's path, a STUN parse that fails first).
    Not aioice's TurnTransport (a relayed candidate: its datagrams come through aioice)."""
    if isinstance(transport, TurnTransport):
        return False
    return isinstance(transport, asyncio.DatagramTransport) or (
        callable(getattr(transport, "set_protocol", None)) and callable(getattr(transport, "sendto", None)))


class _Tap(asyncio.DatagramProtocol):
    """The ICE socket's protocol while the leg lives: RTP/RTCP (first byte 128-191, RFC 7983 §7)
    to the leg, everything else (STUN 0-3, DTLS 20-63) to aioice's own protocol."""

    def __init__(self, leg: WebRtcLeg, inner: StunProtocol) -> None:
        self.leg = leg
        self.inner = inner
        self._srtp = leg._on_srtp
        self._other = inner.datagram_received

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if data and 127 < data[0] < 192:
            self._srtp(data)
        else:
            self._other(data, addr)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class WebRtcLeg:
    """One WebRTC audio leg on the shared media engine; see the module docstring.

    - ``port``: the application side, asked once per 20 ms slot (``AudioPort``).
    - ``codecs``: what we accept, in order of preference ("opus", "PCMU", "PCMA"); the first
      the far end also offers is sent and expected.
    - ``opus_bitrate``/``opus_complexity``: our Opus encoder (docs/benchmarks.md "Opus at 8 kHz").
    - ``on_state``: called with aiortc's connectionState (new, connecting, connected, failed,
      closed) on every change; media runs from "connected" on.
    - ``sequence_number``/``ssrc``: our first RTP sequence number / SSRC (random by default).
    - ``jitter_adaptive``/``jitter_capacity``: the receive path's playout delay follows the
      measured jitter and comes back down after a burst; ``capacity`` frames is its ceiling
      (bridge.rtp.session.JitterBuffer). ``jitter_speech``: speech-aware playout (the bridge's
      app leg): a 2-frame loss cover for the first 3 s, and drops for latency taken in pauses
      (JitterBuffer.START_COVER, QUIET_RUN).
    - ``impair``: a seeded network (loss, bursts, delay, jitter; jego_call/media/impair.py) on
      the SRTP/SRTCP this leg receives, below SRTP as a real network would; test and lab use
      only (`[bridge] impair`), logged as a warning when on.
    - ``ice_transport_policy``: "all", or "relay" (TURN relay candidates only; auth_ok says which).
    - ``fec``: ask the far end for Opus in-band FEC (``useinbandfec=1``) and send it when the
      far end asks and reports loss (False: neither; lost frames are only concealed).
    - ``red``: RFC 2198 redundancy for Opus (``red/48000/2``, fmtp ``111/111``). Answering an
      offer that has it, we list it first (the far end, e.g. Chromium, sends each frame with
      the ones before it) and fill lost frames from the copies; offering, we add it after Opus
      and, when the answer lists it first, send it ``red_distance`` frames deep, or
      ``red_lossy_distance`` while the far end's RTCP reports loss of ``RED_LOSSY`` or more
      (bursty loss makes runs of 4 and more: 2 copies + FEC rebuild 3 frames, 3 copies 4;
      docs/benchmarks.md "Loss and jitter on the lean leg").
    - ``codec_factory``: makes the codec for the negotiated encoding name ("opus", "PCMU",
      "PCMA") instead of ours (scripts/bench_bridge.py's caller: pre-encoded speech).
    """

    def __init__(self, port: AudioPort, *, codecs: Sequence[str] = ("opus", "PCMU", "PCMA"),
                 ice: Iterable[dict[str, Any]] = (), opus_bitrate: int = 32000, opus_complexity: int = 1,
                 on_state: StateHandler | None = None, engine: MediaEngine | None = None, name: str = "",
                 sequence_number: int | None = None, rtcp_interval: float = 1.0, jitter_prefetch: int = 3,
                 jitter_adaptive: bool = True, jitter_capacity: int = 16, jitter_speech: bool = False,
                 on_time_tolerance: float = 0.010, max_burst: int = 3,
                 codec_factory: Callable[[str], AudioCodec] | None = None,
                 impair: ImpairmentSpec | None = None, fec: bool = True, ice_transport_policy: str = "all",
                 red: bool = True, red_distance: int = 2, red_lossy_distance: int = 3) -> None:
        wanted = [CODEC_NAMES.get(c.lower()) for c in codecs]
        if not wanted or None in wanted:
            raise ValueError(f"codecs must be among opus, PCMU, PCMA: {list(codecs)}")
        self.port = port
        self.codecs = [c for c in wanted if c]
        self.opus_bitrate = opus_bitrate
        self.opus_complexity = opus_complexity
        self.on_state = on_state
        self.name = name
        self.sequence_number = sequence_number
        self.rtcp_interval = rtcp_interval
        self.jitter_prefetch = jitter_prefetch
        self.jitter_adaptive = jitter_adaptive
        self.jitter_speech = jitter_speech
        self.jitter_capacity = jitter_capacity
        self.on_time_tolerance = on_time_tolerance
        self.max_burst = max_burst
        self.codec_factory = codec_factory
        self.fec = fec
        self.red = red
        self.red_distance = red_distance
        self.red_lossy_distance = red_lossy_distance
        self.red_pt: int | None = None  # negotiated RED payload type (None: plain Opus only)
        self.red_send = False  # the far end wants RED from us (listed first in its answer)
        self._red_offered: int | None = None
        self.impair = impair if impair is not None and impair.active else None
        self._impaired: ImpairedReceiver | None = None
        self._engine = engine
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(ice),
                                                     iceTransportPolicy=RTCIceTransportPolicy(ice_transport_policy)))
        self.pc.on("connectionstatechange", self._on_pc_state)
        self.connected = asyncio.Event()
        self.connected_at: float | None = None
        self.codec: AudioCodec | None = None
        self.session: RtpSession | None = None
        self.srtp: SrtpGuard | None = None
        self.remote_bye = False
        self.remote_fec = False  # the far end asked for in-band FEC (useinbandfec=1)
        self.fec_loss_percent = 0  # what our encoder plans FEC for now (from the far end's RR)
        self._loss_estimate = 0.0  # the far end's fraction lost (RTCP RR), decaying gently when it reports none
        self.n = {"tx_packets": 0, "tx_bytes": 0, "tx_dropped": 0, "rx_datagrams": 0, "rx_bytes": 0,
                  "rx_before_keys": 0}
        self._t: RTCRtpTransceiver | None = None
        self._ep: RtpEndpoint | None = None
        self._conn: Any = None  # aioice Connection
        self._pair: Any = None
        self._sendto: Callable[[bytes, Addr], None] | None = None
        self._remote: Addr = ("0.0.0.0", 9)
        self._taps: list[tuple[Any, StunProtocol]] = []
        self._closed = False

    # --- negotiation ---------------------------------------------------------------------
    @property
    def state(self) -> str:
        """aiortc's connectionState: new, connecting, connected, failed, closed."""
        return str(self.pc.connectionState)

    def _transceiver(self) -> RTCRtpTransceiver:
        if self._t is None:
            t = self.pc.addTransceiver("audio", direction="sendrecv")
            caps = RTCRtpSender.getCapabilities("audio").codecs
            t.setCodecPreferences([c for name in self.codecs for c in caps if c.mimeType.lower() == f"audio/{name.lower()}"])
            self._t = t
        self._silence_aiortc()
        return self._t

    def _silence_aiortc(self) -> None:
        """aiortc's own RTP sender and receiver never start (no encoder, no decoder thread, no
        RTCP task): their start methods become no-ops on every transceiver."""
        for t in self.pc.getTransceivers():
            for part, method in ((t.sender, "send"), (t.receiver, "receive")):
                if getattr(part, method) is not _idle:
                    setattr(part, method, _idle)
            if t is not self._t and t.direction != "inactive":
                t.direction = "inactive"  # audio only: a video m-line is answered inactive

    async def create_offer(self) -> str:
        """Gather candidates and return our offer SDP; then `set_answer`."""
        self._transceiver()
        offer = await self.pc.createOffer()
        sdp = narrowband_opus(offer.sdp, self.opus_bitrate, self.fec)
        opus = _opus_pt(sdp)
        if self.red and opus is not None:
            used = {int(x) for x in re.findall(r"(?m)^a=rtpmap:(\d+) ", sdp)}
            free = next((pt for pt in (63, *range(96, 128)) if pt not in used), None)
            if free is not None:
                sdp = add_red(sdp, free, opus, first=False)
                self._red_offered = free
        await self.pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._install_taps()
        return str(self.pc.localDescription.sdp)

    async def accept_offer(self, sdp: str) -> str:
        """Apply the far end's offer and return our answer SDP."""
        self._transceiver()
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError, AssertionError, OperationError ...
            raise WebRtcError(f"bad offer SDP: {exc}") from exc
        self._silence_aiortc()
        answer = await self.pc.createAnswer()
        out = narrowband_opus(answer.sdp, self.opus_bitrate, self.fec)
        opus = _opus_pt(out)
        red = red_payload_type(sdp, opus) if self.red and opus is not None else None
        if red is not None and opus is not None and re.search(rf"(?m)^m=audio \S+ \S+ {opus}\b", out):
            out = add_red(out, red, opus, first=True)  # Opus is what we send; RED, what we ask for
            self.red_pt = red
            log.debug("%s: the far end sends RED (pt %d) for Opus (pt %d)", self.name or "webrtc leg", red, opus)
        await self.pc.setLocalDescription(RTCSessionDescription(sdp=out, type="answer"))
        self._install_taps()
        return str(self.pc.localDescription.sdp)

    async def set_answer(self, sdp: str) -> None:
        """Apply the far end's answer to our offer; ICE and DTLS start."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            raise WebRtcError(f"bad answer SDP: {exc}") from exc
        self._silence_aiortc()
        if self._red_offered is not None:
            red = red_payload_type(sdp)
            if red is not None:
                self.red_pt = red
                self.red_send = red_is_first(sdp, red)

    async def add_ice_candidate(self, candidate: dict[str, Any] | None) -> None:
        """A trickled remote candidate (`ice.candidate` object); None or "" ends them."""
        text = str((candidate or {}).get("candidate") or "")
        if not text:
            await self.pc.addIceCandidate(None)
            return
        text = text.removeprefix("candidate:")
        try:
            c = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as exc:
            raise WebRtcError(f"bad ICE candidate {text!r}") from exc
        assert candidate is not None
        c.sdpMid = candidate.get("sdpMid")
        c.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pc.addIceCandidate(c)

    async def wait_connected(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Until media runs; WebRtcError when the connection fails, closes or times out."""
        try:
            async with asyncio.timeout(timeout):
                while not self.connected.is_set():
                    if self.state in ("failed", "closed"):
                        raise WebRtcError(f"media connection {self.state}")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await self.connected.wait()
        except TimeoutError:
            raise WebRtcError(f"media not connected after {timeout:g} s") from None

    # --- taking over the datagrams ---------------------------------------------------------
    def _ice(self) -> Any:
        assert self._t is not None
        return self._t.receiver.transport.transport._connection

    def _install_taps(self) -> None:
        """Put a _Tap in front of every local candidate's socket (gathered by now)."""
        conn = self._conn = self._ice()
        for proto in list(conn._protocols):
            transport = getattr(proto, "transport", None)
            # A relayed candidate's StunProtocol sits on aioice's TurnTransport, not on a socket.
            if type(proto) is not StunProtocol or not _is_socket_transport(transport) \
                    or any(p is proto for _, p in self._taps):
                continue
            transport.set_protocol(_Tap(self, proto))
            self._taps.append((transport, proto))
        if len(self._taps) < len(conn._protocols) and not getattr(conn, "_jego_tap", False):
            # relayed candidates (TURN) deliver through aioice: catch SRTP there instead
            original = conn.data_received

            def data_received(data: bytes, component: int) -> None:
                if data and 127 < data[0] < 192:
                    self._on_srtp(data)
                else:
                    original(data, component)

            conn.data_received = data_received
            conn._jego_tap = True

    def _on_pc_state(self) -> None:
        state = self.state
        if state == "connected" and self.session is None and not self._closed:
            try:
                self._start_media()
            except Exception:
                log.exception("%s: starting media failed", self.name or "webrtc leg")
        if state in ("failed", "closed"):
            self._stop_media()
        if self.on_state is not None:
            self.on_state(state)

    def _start_media(self) -> None:
        t = self._t
        assert t is not None
        dtls = t.receiver.transport
        if dtls._tx_srtp is None or dtls._rx_srtp is None:
            raise WebRtcError("DTLS gave no SRTP keys")
        self._install_taps()  # candidates of a later gathering, if any
        self.srtp = SrtpGuard(dtls._tx_srtp, dtls._rx_srtp)
        negotiated = t._codecs[0]
        name = negotiated.mimeType.split("/", 1)[1]
        codec: AudioCodec
        if self.codec_factory is not None:
            codec = self.codec_factory(name)
        elif name.lower() == "opus":
            codec = OpusCodec(self.opus_bitrate, self.opus_complexity)
        else:
            codec = G711Codec(name)
        self.codec = codec
        self._pick_pair()
        pt = int(negotiated.payloadType or 0)
        remote = self.pc.remoteDescription
        self.remote_fec = isinstance(codec, OpusCodec) and remote is not None and remote_wants_fec(str(remote.sdp), pt)
        red_pt = self.red_pt if name.lower() == "opus" else None  # RED carries Opus only (fmtp opus/opus)
        fmt = MediaFormat(codec=codec.name, payload_type=pt, telephone_event_pt=None,
                          remote=self._remote, rtcp_mux=True, red_pt=red_pt,
                          red_distance=self.red_distance if self.red_send and red_pt is not None else 0)
        cname = getattr(self.pc, "_RTCPeerConnection__cname", None)
        self.session = RtpSession(
            fmt, self.port, codec=codec, ssrc=t.sender._ssrc, sequence_number=self.sequence_number,
            rtcp_interval=self.rtcp_interval, cname=cname, jitter_prefetch=self.jitter_prefetch,
            jitter_adaptive=self.jitter_adaptive, jitter_capacity=self.jitter_capacity, jitter_speech=self.jitter_speech,
            on_time_tolerance=self.on_time_tolerance, max_burst=self.max_burst,
        )  # fmt: skip
        engine = self._engine or MediaEngine.get()
        self._engine = engine
        self._ep = engine.attach(self.session, send=self._send, on_events=self._on_events)
        engine.start(self._ep)
        self.connected_at = time.monotonic()
        self.connected.set()
        log.debug("%s: media on the engine (%s/%d, ssrc %08x)", self.name, codec.name, pt, t.sender._ssrc)

    def _pick_pair(self) -> None:
        """The nominated pair of component 1 (aioice may re-nominate: checked per packet)."""
        pair = self._conn._nominated.get(1) if self._conn is not None else None
        self._pair = pair
        if pair is None:
            self._sendto = None
            return
        self._remote = pair.remote_addr
        transport = getattr(pair.protocol, "transport", None)
        if type(pair.protocol) is StunProtocol and transport is not None:
            self._sendto = transport.sendto
        else:  # TURN: aioice's coroutine (rare: relayed calls only)
            proto = pair.protocol

            def via_aioice(data: bytes, addr: Addr) -> None:
                asyncio.ensure_future(proto.send_data(data, addr))

            self._sendto = via_aioice

    # --- the per-packet path ------------------------------------------------------------------
    def _on_srtp(self, data: bytes) -> None:
        if self.impair is not None:
            if self._impaired is None:
                self._impaired = ImpairedReceiver(self.impair, self._on_network, asyncio.get_running_loop())
                log.warning("%s: media impairment ON (%s): test and lab use only", self.name or "webrtc leg",
                            self.impair)
            self._impaired.data_received(data, 1)
            return
        self._on_network(data, 1)

    def _on_network(self, data: bytes, _component: int) -> None:
        """An SRTP/SRTCP datagram as the network delivered it: unprotect, then the session."""
        ep, srtp = self._ep, self.srtp
        n = self.n
        if ep is None or srtp is None:
            n["rx_before_keys"] += 1
            return
        n["rx_datagrams"] += 1
        n["rx_bytes"] += len(data)
        plain = srtp.unprotect(data)
        if plain is not None:
            ep.engine.receive(ep, plain, self._remote)

    def _send(self, data: bytes, addr: Addr, via_rtcp: bool) -> None:
        srtp = self.srtp
        if srtp is None or self._closed:
            return
        if self._conn is not None and self._conn._nominated.get(1) is not self._pair:
            self._pick_pair()
        sendto = self._sendto
        if sendto is None:
            self.n["tx_dropped"] += 1
            return
        wire = srtp.protect(data)
        try:
            sendto(wire, self._remote)
        except OSError:
            self.n["tx_dropped"] += 1
            return
        self.n["tx_packets"] += 1
        self.n["tx_bytes"] += len(wire)

    def _on_events(self, events: list[MediaEvent]) -> None:
        """The session's events (the engine calls this): RTCP reports steer FEC and RED depth."""
        for ev in events:
            if isinstance(ev, ReportReceived):
                # RFC 3550 §6.4.1 fraction lost; a report without loss lowers the estimate gently
                # (one calm second must not switch FEC off or RED back to its normal depth)
                self._loss_estimate = max(ev.stats.fraction_lost, self._loss_estimate * 0.7)
                self._adapt_fec()
                self._adapt_red()
            elif isinstance(ev, RemoteBye):
                self.remote_bye = True
                log.debug("%s: RTCP BYE from the far end", self.name)

    def _adapt_fec(self) -> None:
        """RFC 7587 §3.3 / RFC 6716 §2.1.7: with a far end that decodes FEC, our encoder adds
        it sized to the loss the far end reports (off again some seconds after it reports none)."""
        codec = self.codec
        if not self.fec or not self.remote_fec or not isinstance(codec, OpusCodec):
            return
        want = fec_loss_percent(self._loss_estimate if self._loss_estimate >= 0.005 else 0.0)
        if want != self.fec_loss_percent:
            codec.encoder.configure(loss_percent=want)
            self.fec_loss_percent = want

    def _adapt_red(self) -> None:
        """RFC 2198 depth from the far end's loss: ``red_lossy_distance`` copies from ``RED_LOSSY``
        on (loss in bursts leaves runs that ``red_distance`` copies cannot bridge), else
        ``red_distance``; only while we send RED. The encoder keeps its history (no gap)."""
        s = self.session
        if s is None or not s.fmt.red_distance:
            return
        want = self.red_lossy_distance if self._loss_estimate >= RED_LOSSY else self.red_distance
        if want != s.fmt.red_distance:
            s.set_red_distance(want)
            log.debug("%s: RED %d deep (far end loss %.1f %%)", self.name or "webrtc leg", want,
                      self._loss_estimate * 100)

    # --- results ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for the call report: packets sent/received/lost, jitter and RTT (our RTCP),
        frames on time, what SRTP refused and why, the codec."""
        s = self.session
        out: dict[str, Any] = {"codec": self.codec.name if self.codec else None, "packets_sent": 0,
                               "packets_received": 0, "packets_lost": 0, **self.n}
        if s is not None:
            jb = s.playout.jitter.stats()
            ticks = s.n["send_ticks"] + s.n["skipped"]
            out.update(packets_sent=s.sender.packets_sent, packets_received=s.n["rx_audio"], packets_lost=jb.lost,
                       jitter_ms=round(jb.jitter * 1000, 2), frames_on_time=round(s.n["on_time"] / ticks, 4) if ticks else 1.0,
                       max_late_ms=round(s.max_lateness * 1000, 1), rtcp_sent=s.n["rtcp_sent"],
                       rtcp_received=s.n["rtcp_received"], concealed_ms=s.playout.concealed_samples // 8,
                       tx_underruns=s.n["tx_underruns"], malformed=s.n["malformed"], unknown_pt=s.n["unknown_pt"],
                       late_frames=max(0, ticks - s.n["on_time"]), fec_recovered=s.playout.recovered_frames, concealed_frames=s.playout.concealed_frames,
                       red_recovered=s.playout.red_recovered_frames, red_received=s.n["rx_red"],
                       red_sent=bool(s.fmt.red_distance), red_distance=s.fmt.red_distance, stretched=jb.stretched,
                       fec_sent_for_loss=self.fec_loss_percent, latency_dropped=jb.latency_dropped,
                       late_dropped=jb.late + jb.overflow_dropped, playout_target_ms=s.playout.jitter.target * 20)
            if s.rtt is not None:
                out["rtt_ms"] = round(s.rtt * 1000, 1)
            if s.remote_stats is not None:
                out["remote_packets_lost"] = s.remote_stats.cumulative_lost
        if self.srtp is not None:
            out["srtp"] = dict(self.srtp.n)
        if self._impaired is not None:
            c = self._impaired.counters
            out["impaired"] = {k: getattr(c, k) for k in ("received", "dropped", "delivered", "reordered", "loss_runs")}
        return out

    # --- teardown -----------------------------------------------------------------------------
    def _stop_media(self) -> None:
        if self._impaired is not None:
            self._impaired.close()
        ep, self._ep = self._ep, None
        if ep is not None and self._engine is not None:
            self._engine.close(ep)  # the last RTCP (BYE) goes out while the pair is still up
        codec = self.codec
        if isinstance(codec, OpusCodec):
            codec.close()

    async def close(self) -> None:
        """RTCP BYE, stop the media, close DTLS and ICE. Idempotent."""
        if self._closed:
            return
        self._stop_media()
        self._closed = True
        await self.pc.close()
