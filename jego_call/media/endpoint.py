"""`MediaEndpoint`: one aiortc RTCPeerConnection per call leg.

Typical caller leg::

    enable_loopback_candidates()                      # if cfg.ice.loopback_candidates
    ep = MediaEndpoint(ice_servers=auth_ok["ice_servers"], source=ToneSource(1000),
                       sinks=[WavRecorder("out.wav"), Analyser()])
    offer = await ep.create_offer()                   # -> invite.sdp
    await ep.set_answer(accept["sdp"])                # <- accept.sdp
    await ep.wait_connected(10)
    print(await ep.stats()); await ep.close()

Callee leg: `answer = await ep.accept_offer(invite["sdp"])`, then `wait_connected`.
Force G.711 on a leg with `codecs=["PCMU"]` (applied before setRemoteDescription, so it
works on the answer too). Candidates are gathered completely into the SDP (aiortc does not
trickle); `add_ice_candidate` takes a peer's trickled candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from .codecs import install_codecs
from .impair import ImpairmentSpec
from .netimpair import PeerImpairment, impair_peer_connection
from .receive import LossBuffer, ReceiveCounters, install_receive_path
from .sinks import Mp4Recorder, Sink
from .tracks import PacedAudioTrack, SilenceSource

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_original_get_host_addresses = aioice.ice.get_host_addresses
_loopback_only = False


def _get_host_addresses_with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _loopback_only:
        return [LOOPBACK] if use_ipv4 else []
    addresses = _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    if use_ipv4 and LOOPBACK not in addresses:
        addresses.append(LOOPBACK)
    return addresses


def enable_loopback_candidates(only: bool = False) -> None:
    """Make aioice offer a 127.0.0.1 host candidate (it skips loopback by default).

    Adds 127.0.0.1 to the host addresses (so inside a network namespace where `lo` is the only
    interface, it is the only candidate); with `only=True` offers nothing but 127.0.0.1.
    Process-wide and idempotent; call it when `cfg.ice.loopback_candidates` is true.
    """
    global _loopback_only
    _loopback_only = only
    aioice.ice.get_host_addresses = _get_host_addresses_with_loopback


def disable_loopback_candidates() -> None:
    """Undo `enable_loopback_candidates` (aioice's own host address list again)."""
    global _loopback_only
    _loopback_only = False
    aioice.ice.get_host_addresses = _original_get_host_addresses


def with_fec(sdp: str, fec: bool) -> str:
    """Our SDP with ``useinbandfec`` (RFC 7587 §6.1) set on every Opus payload type."""
    lines = sdp.split("\r\n")
    value = "1" if fec else "0"
    for pt in re.findall(r"(?m)^a=rtpmap:(\d+) opus/48000", sdp):
        at = next((i for i, ln in enumerate(lines) if ln.startswith(f"a=fmtp:{pt} ")), None)
        if at is None:
            rtpmap = next(i for i, ln in enumerate(lines) if ln.startswith(f"a=rtpmap:{pt} "))
            lines.insert(rtpmap + 1, f"a=fmtp:{pt} useinbandfec={value}")
        elif "useinbandfec=" in lines[at]:
            lines[at] = re.sub(r"useinbandfec=\d", f"useinbandfec={value}", lines[at])
        else:
            lines[at] += f";useinbandfec={value}"
    return "\r\n".join(lines)


def ice_servers_from_config(servers: Iterable[dict[str, Any]]) -> list[RTCIceServer]:
    """Turn `[{"urls": [...], "username"?, "credential"?}]` (config or auth_ok) into RTCIceServer."""
    out = []
    for s in servers:
        out.append(RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")))
    return out


class MediaError(Exception):
    """The media leg could not be set up or failed (bad SDP, ICE/DTLS failure, timeout)."""


class MediaEndpoint:
    """One call leg. Owns the peer connection, the pumps that feed sinks, and the sinks.

    - `source`: outgoing audio track (default: silence). `video_source`: outgoing video or None.
    - `sinks`: audio sinks (`handle(frame)`/`close()`), e.g. WavRecorder, Analyser, EchoTrack.
    - `video_sinks`: video sinks, e.g. VideoFrameCounter. `recorder`: optional Mp4Recorder.
    - `codecs`: audio codec names in preference order, e.g. ["PCMU"] or ["PCMA"]; None: aiortc's
      (Opus first). `opus_bitrate`: bits/s of our mono Opus encoder (process-wide).
    - `ice_servers`: list of dicts as in `auth_ok.ice_servers`; empty means host candidates only
      (never aiortc's default Google STUN).
    - `ice_transport_policy`: "all", or "relay" (TURN relay candidates only; auth_ok says which).
    - `impair`: a seeded network on the receive path (loss, delay, jitter; media/impair.py), for
      reproducing what a user on a bad network hears; `stats()["impairment"]` says what it did.
    - `fec`: our SDP asks for Opus in-band FEC (`useinbandfec=1`, RFC 7587 §6.1) and the receive
      path rebuilds a lost frame from the next packet's FEC; False: `useinbandfec=0`, lost frames
      are only concealed (media/receive.py). `stats()["loss"]`: recovered, concealed, lost frames.
    - `send_fec_loss`: our Opus encoder adds in-band FEC planned for that loss % when the far end
      asks for it (process-wide like `opus_bitrate`; 0, the default: none; aiortc's encoder
      cannot follow the far end's RTCP as a browser does, so it is a fixed plan).
    """

    def __init__(self, *, source: MediaStreamTrack | None = None,
                 video_source: MediaStreamTrack | None = None,
                 sinks: Sequence[Sink] = (), video_sinks: Sequence[Sink] = (),
                 recorder: Mp4Recorder | None = None,
                 ice_servers: Iterable[dict[str, Any]] = (), codecs: Sequence[str] | None = None,
                 opus_bitrate: int = 32000, name: str = "", impair: ImpairmentSpec | None = None,
                 ice_transport_policy: str = "all", fec: bool = True, send_fec_loss: int = 0) -> None:
        install_codecs(opus_bitrate=opus_bitrate, opus_fec_loss=send_fec_loss)
        self.fec = fec
        self.loss = ReceiveCounters(fec=fec)
        self.impair = impair
        self.impairment: PeerImpairment | None = None
        self.name = name
        self.source: MediaStreamTrack = source if source is not None else SilenceSource()
        self.video_source = video_source
        self.sinks = list(sinks)
        self.video_sinks = list(video_sinks)
        self.recorder = recorder
        self.codecs = [c.upper() for c in codecs] if codecs else None
        self.configuration = RTCConfiguration(iceServers=ice_servers_from_config(ice_servers),
                                              iceTransportPolicy=RTCIceTransportPolicy(ice_transport_policy))
        self.pc = RTCPeerConnection(self.configuration)
        self._pumps: list[asyncio.Task[None]] = []
        self._state_changed = asyncio.Event()
        self._closed = False
        self._prev: dict[str, float] = {}
        self.connected_at: float | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # --- negotiation -------------------------------------------------------------------
    @property
    def state(self) -> str:
        """aiortc's connectionState: new, connecting, connected, failed, closed."""
        return str(self.pc.connectionState)

    def _prefer(self, transceiver: RTCRtpTransceiver) -> None:
        if transceiver.kind != "audio" or not self.codecs:
            return
        caps = RTCRtpSender.getCapabilities("audio").codecs
        wanted = [c for name in self.codecs for c in caps if c.mimeType.upper() == f"AUDIO/{name}"]
        if not wanted:
            raise MediaError(f"unknown audio codec(s): {', '.join(self.codecs)}")
        transceiver.setCodecPreferences(wanted)

    def _add_local_tracks(self, audio: bool, video: bool) -> None:
        if audio:
            self._prefer(self.pc.addTransceiver(self.source, direction="sendrecv"))
        if video:
            if self.video_source is not None:
                self.pc.addTransceiver(self.video_source, direction="sendrecv")
            else:
                self.pc.addTransceiver("video", direction="recvonly")

    async def create_offer(self, audio: bool = True, video: bool = False) -> str:
        """Gather candidates and return the offer SDP (send it as `invite.sdp`); then `set_answer`."""
        self._add_local_tracks(audio, video)
        self._install_receive_path()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(RTCSessionDescription(sdp=with_fec(offer.sdp, self.fec), type="offer"))
        self._install_impairment()
        return str(self.pc.localDescription.sdp)

    def _install_receive_path(self) -> None:
        """Our jitter buffer and Opus decoder (FEC, PLC) on every audio receiver (media/receive.py)."""
        for t in self.pc.getTransceivers():
            if t.kind == "audio" and not isinstance(getattr(t.receiver, "_RTCRtpReceiver__jitter_buffer", None),
                                                    LossBuffer):
                install_receive_path(t.receiver, self.loss)

    def _install_impairment(self) -> None:
        if self.impair is not None and self.impair.active:
            self.impairment = impair_peer_connection(self.pc, self.impair, self.impairment)

    async def set_answer(self, sdp: str) -> None:
        """Apply the remote answer (`accept.sdp`); then `wait_connected`."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, AssertionError) as exc:
            raise MediaError(f"bad answer SDP: {exc}") from exc
        self._note_max_playback(sdp)

    def _note_max_playback(self, sdp: str) -> None:
        """RFC 7587 §6.1: a far end that plays Opus out at most at `maxplaybackrate` (the phone
        bridge: 8000) gets our encoder band-limited to it (`codecs.get_encoder` reads it)."""
        rates: dict[int, int] = {}
        for m in re.finditer(r"a=fmtp:(\d+) [^\r\n]*maxplaybackrate=(\d+)", sdp):
            rates[int(m.group(1))] = int(m.group(2))
        fec = {int(m.group(1)) for m in re.finditer(r"a=fmtp:(\d+) [^\r\n]*useinbandfec=1", sdp)}
        for t in self.pc.getTransceivers():
            for codec in getattr(t, "_codecs", None) or []:
                if codec.mimeType.lower() == "audio/opus" and codec.payloadType in rates:
                    setattr(codec, "remote_max_playback_rate", rates[codec.payloadType])  # noqa: B010 (aiortc's codec has no such field)
                if codec.mimeType.lower() == "audio/opus":
                    setattr(codec, "remote_fec", codec.payloadType in fec)  # noqa: B010 (codecs.get_encoder reads it)

    async def accept_offer(self, sdp: str) -> str:
        """Apply a remote offer and return our answer SDP (send it as `accept.sdp`)."""
        if "m=audio" in sdp:
            # created before setRemoteDescription so codec preferences shape the answer
            self._prefer(self.pc.addTransceiver(self.source, direction="sendrecv"))
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, AssertionError) as exc:
            raise MediaError(f"bad offer SDP: {exc}") from exc
        self._note_max_playback(sdp)
        if self.video_source is not None and any(t.kind == "video" for t in self.pc.getTransceivers()):
            self.pc.addTrack(self.video_source)
        self._install_receive_path()
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(RTCSessionDescription(sdp=with_fec(answer.sdp, self.fec), type="answer"))
        self._install_impairment()
        return str(self.pc.localDescription.sdp)

    async def add_ice_candidate(self, candidate: dict[str, Any] | None) -> None:
        """Add a trickled remote candidate (`ice.candidate` object), or None for end-of-candidates."""
        if candidate is None:
            await self.pc.addIceCandidate(None)
            return
        text = str(candidate.get("candidate") or "")
        if not text:  # browsers send an empty candidate as end-of-candidates
            await self.pc.addIceCandidate(None)
            return
        if text.startswith("candidate:"):
            text = text[len("candidate:"):]
        try:
            c = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as exc:
            raise MediaError(f"bad ICE candidate {text!r}") from exc
        c.sdpMid = candidate.get("sdpMid")
        c.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pc.addIceCandidate(c)

    async def wait_connected(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Wait until ICE and DTLS are up; raise MediaError on failure, close or timeout."""
        deadline = time.monotonic() + timeout
        while self.state != "connected":
            if self.state in ("failed", "closed"):
                raise MediaError(f"media connection {self.state}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise MediaError(f"media not connected after {timeout:g} s")
            self._state_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), left)
        if self.recorder is not None:
            await self.recorder.start()

    def _on_state(self) -> None:
        if self.state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
        self._state_changed.set()

    # --- incoming media ----------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        sinks = self.sinks if track.kind == "audio" else self.video_sinks
        if self.recorder is not None:
            self.recorder.track_for(track.kind)
            sinks = [*sinks, self.recorder]
        self._pumps.append(asyncio.ensure_future(self._pump(track, sinks)))

    async def _pump(self, track: MediaStreamTrack, sinks: list[Sink]) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for sink in sinks:
                try:
                    sink.handle(frame)
                except Exception:  # a broken sink must not stop the others
                    log.exception("%s: sink %r failed", self.name, sink)
                    sinks = [s for s in sinks if s is not sink]

    # --- stats -------------------------------------------------------------------------
    def negotiated_codec(self, kind: str = "audio") -> str | None:
        """The codec we send for `kind` ("opus", "PCMU", ...), once negotiated."""
        for t in self.pc.getTransceivers():
            codecs = getattr(t, "_codecs", None)
            if t.kind == kind and codecs:
                return str(codecs[0].mimeType.split("/", 1)[1])
        return None

    async def stats(self) -> dict[str, Any]:
        """Audio stats from getStats: packets sent/received/lost, jitter_ms, rtt_ms (from RTCP),
        bytes_sent (RTP payload), wire_bytes_sent/received (UDP payload of the transport: RTP
        and SRTP headers, RTCP; with BUNDLE this includes video), bitrate_send/recv_kbps (wire) and
        payload_send_kbps since the previous call, codec, frames_on_time; `video` likewise."""
        out: dict[str, Any] = {}
        now = time.monotonic()
        for t in self.pc.getTransceivers():
            if t.kind in out:
                continue
            codecs = getattr(t, "_codecs", None) or []
            clock = codecs[0].clockRate if codecs else 48000
            s: dict[str, Any] = {"codec": codecs[0].mimeType.split("/", 1)[1] if codecs else None,
                                 "packets_sent": 0, "bytes_sent": 0, "packets_received": 0,
                                 "packets_lost": 0, "remote_packets_lost": None, "jitter_ms": None,
                                 "rtt_ms": None}
            wire_sent = wire_received = 0
            reports = await asyncio.gather(t.sender.getStats(), t.receiver.getStats())
            for report in reports:
                for st in report.values():
                    if st.type == "outbound-rtp":
                        s["packets_sent"] = st.packetsSent
                        s["bytes_sent"] = st.bytesSent
                    elif st.type == "inbound-rtp":
                        s["packets_received"] = st.packetsReceived
                        s["packets_lost"] = max(0, st.packetsLost)
                        s["jitter_ms"] = round(st.jitter * 1000 / clock, 2)
                    elif st.type == "remote-inbound-rtp":
                        if st.roundTripTime is not None:
                            s["rtt_ms"] = round(st.roundTripTime * 1000, 1)
                        s["remote_packets_lost"] = st.packetsLost
                    elif st.type == "transport":
                        wire_sent, wire_received = st.bytesSent, st.bytesReceived
            s["wire_bytes_sent"] = wire_sent
            s["wire_bytes_received"] = wire_received
            prev_t = self._prev.get("t")
            for key, src in (("bitrate_send_kbps", "wire_bytes_sent"), ("bitrate_recv_kbps", "wire_bytes_received"),
                             ("payload_send_kbps", "bytes_sent")):
                prev_b = self._prev.get(f"{t.kind}.{src}")
                rate = None
                if prev_t is not None and prev_b is not None and now > prev_t:
                    rate = round((s[src] - prev_b) * 8 / (now - prev_t) / 1000, 1)
                s[key] = rate
                self._prev[f"{t.kind}.{src}"] = s[src]
            out[t.kind] = s
        self._prev["t"] = now
        audio: dict[str, Any] = out.pop("audio", {})
        if "video" in out:
            audio["video"] = out["video"]
        if isinstance(self.source, PacedAudioTrack):
            audio["frames_on_time"] = round(self.source.pacing.on_time_ratio, 4)
        if self.impairment is not None:
            audio["impairment"] = {"spec": str(self.impair), **self.impairment.counters}
        if audio:
            audio["loss"] = {"fec": self.fec, **self.loss.as_dict()}
        return audio

    # --- teardown ----------------------------------------------------------------------
    async def close(self) -> None:
        """Close the peer connection, stop the pumps and the sources, close the sinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.impairment is not None:
            self.impairment.close()
        await self.pc.close()
        for task in self._pumps:
            task.cancel()
        for task in self._pumps:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.source.stop()
        if self.video_source is not None:
            self.video_source.stop()
        if self.recorder is not None:
            with contextlib.suppress(Exception):
                await self.recorder.stop()
        for sink in [*self.sinks, *self.video_sinks]:
            try:
                sink.close()
            except Exception:
                log.exception("%s: closing sink %r failed", self.name, sink)
