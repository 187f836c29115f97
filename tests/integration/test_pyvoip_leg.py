"""bridge/gateway/pyvoip/ against strict peers on 127.0.0.1: sipp scenarios (tests/sipp/uas_*.xml,
uac_cancel.xml) that check what the leg sends, and small strict peers written here with our
bridge/sip and bridge/rtp cores. Every pyVoIP 1.6.8 defect the module mends has a test below
(the table at the top of bridge/gateway/pyvoip/ names them). Audio is judged by content.

Run alone in a private network namespace:
    unshare -n -- bash -c 'ip link set lo up && exec .venv/bin/python -m pytest tests/integration/test_pyvoip_leg.py -q'
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.carrier.media import RtpStream, measure_tone
from bridge.gateway.legs import LegAnswered, LegDtmf, LegEnded, LegEvent, LegRinging
from bridge.gateway.pyvoip import PyVoipLeg, PyVoipTrunk, TrunkConfig
from bridge.rtp import g711
from bridge.rtp.dtmf import DtmfReceiver, TelephoneEvent, dtmf_packets
from bridge.rtp.packet import RtpPacket, RtpParseError
from bridge.sip.auth import digest_response, parse_credentials
from bridge.sip.message import (
    SipRequest,
    SipResponse,
    make_response,
    new_request,
    parse_message,
    random_token,
)
from bridge.sip.sdp import NegotiatedAudio, answer_offer, build_offer
from jego_call.call.reasons import EndReason
from tests.helpers import until

ROOT = Path(__file__).resolve().parents[2]
SIPP_DIR = ROOT / "tests" / "sipp"
SIPP = shutil.which("sipp")
HOST = "127.0.0.1"

pytestmark = pytest.mark.timeout(60)
needs_sipp = pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed")


# ------------------------------------------------------------------------------------------------
# helpers

def free_udp_port(pair: bool = False) -> int:
    """A UDP port free on 127.0.0.1 right now (and port+2 as well when `pair`, for sipp -mp)."""
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
        s.close()
        if not pair:
            return port
        if port + 2 > 65535:
            continue
        try:
            for p in (port, port + 2):
                t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                t.bind((HOST, p))
                t.close()
        except OSError:
            continue
        return port
    raise RuntimeError("no free UDP port")


def pyvoip_threads() -> list[str]:
    """Threads the leg/trunk may start (pyVoIP's names); the loop's executor threads are not ours."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("SIP ", "RTP ", "Phone Call"))]


def sine(freq: float, dbfs: float, n: int, start: int = 0) -> np.ndarray:
    amp = 32767 * 10 ** (dbfs / 20)
    t = (np.arange(n) + start) / 8000
    return np.rint(amp * np.sin(2 * math.pi * freq * t)).astype(np.int16)


def active(x: np.ndarray, threshold_dbfs: float = -55.0, trim: int = 2) -> np.ndarray:
    """The samples between the first and last 20 ms frame above the threshold, `trim` frames in."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
    level = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) * math.sqrt(2) / 32767 + 1e-12)
    on = np.nonzero(level > threshold_dbfs)[0]
    if len(on) == 0:
        return x[:0]
    return x[(on[0] + trim) * 160 : (on[-1] + 1 - trim) * 160]


def snr_db(x: np.ndarray, freq: float) -> float:
    """SNR of a sine at `freq` in x: least-squares fit of the sine, residual = noise."""
    t = np.arange(len(x)) / 8000
    basis = np.stack([np.sin(2 * math.pi * freq * t), np.cos(2 * math.pi * freq * t), np.ones_like(t)], axis=1)
    y = x.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis @ coef
    noise = y - fit
    return 10 * math.log10(np.sum((fit - coef[2]) ** 2) / max(np.sum(noise**2), 1e-9))


@dataclass
class SippMessage:
    direction: str  # "received" / "sent" (from sipp's point of view)
    msg: SipRequest | SipResponse


def parse_sipp_log(path: Path) -> list[SippMessage]:
    """sipp's -trace_msg file as parsed messages (headers only: the body is not needed here)."""
    out: list[SippMessage] = []
    if not path.exists():
        return out
    text = path.read_text(errors="replace")
    for block in re.split(r"^-{20,}.*$", text, flags=re.M):
        lines = block.strip("\n").split("\n")
        if len(lines) < 3 or "message" not in lines[0]:
            continue
        direction = "received" if "received" in lines[0] else "sent"
        head: list[str] = []
        for line in lines[1:]:
            line = line.rstrip("\r")
            if not line and head:
                break
            if line and not line.lower().startswith(("content-length", "l:")):
                head.append(line)
        raw = ("\r\n".join(head) + "\r\nContent-Length: 0\r\n\r\n").encode()
        with contextlib.suppress(Exception):
            out.append(SippMessage(direction, parse_message(raw, validate=False)))
    return out


class Sipp:
    """One sipp process running a scenario from tests/sipp with -m 1, its message log kept."""

    def __init__(self, tmp: Path, scenario: str, *, remote: str | None = None, service: str | None = None,
                 keys: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.port = free_udp_port()
        self.media_port = free_udp_port(pair=True)
        self.log = tmp / f"{scenario}.msg.log"
        self.err = tmp / f"{scenario}.err.log"
        args = [SIPP or "sipp"] + ([remote] if remote else [])
        args += ["-sf", str(SIPP_DIR / scenario), "-i", HOST, "-mi", HOST, "-p", str(self.port),
                 "-mp", str(self.media_port), "-m", "1", "-nostdin", "-trace_msg", "-message_file", str(self.log),
                 "-trace_err", "-error_file", str(self.err), "-timeout", "30s", "-timeout_error"]
        if service:
            args += ["-s", service]
        for k, v in (keys or {}).items():
            args += ["-key", k, v]
        self.args = args
        self.cwd = cwd or tmp
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Sipp:
        self.proc = await asyncio.create_subprocess_exec(*self.args, cwd=self.cwd, stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.DEVNULL)
        def bound() -> bool:   # sipp has bound its SIP port: ours cannot
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((HOST, self.port))
                except OSError:
                    return True
                return False

        await until(bound, 5, f"sipp to bind {self.port}")
        return self

    async def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return -9

    def errors(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def messages(self) -> list[SippMessage]:
        return parse_sipp_log(self.log)

    def received(self, method: str) -> list[SipRequest]:
        return [m.msg for m in self.messages() if m.direction == "received" and isinstance(m.msg, SipRequest)
                and m.msg.method == method]

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class RtpPeer(asyncio.DatagramProtocol):
    """Our own RTP receiver/sender on 127.0.0.1: records (arrival time, raw datagram)."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.last_addr: tuple[str, int] | None = None

    @classmethod
    async def open(cls) -> RtpPeer:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, local_addr=(HOST, 0))
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.arrivals.append((time.monotonic(), data))
        self.last_addr = addr

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def packets(self, pt: int | None = None) -> list[tuple[float, RtpPacket]]:
        out = []
        for t, raw in self.arrivals:
            with contextlib.suppress(RtpParseError):
                p = RtpPacket.parse(raw)
                if pt is None or p.payload_type == pt:
                    out.append((t, p))
        return out

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class MiniUas(asyncio.DatagramProtocol):
    """A strict little UAS with bridge/sip: 100 + 200 (SDP answer pointing at `rtp`), records every
    request; answers BYE/OPTIONS 200; `bye()` sends a BYE into the dialog."""

    def __init__(self, rtp_port: int, codecs: tuple[str, ...]) -> None:
        self.rtp_port = rtp_port
        self.codecs = codecs
        self.requests: list[SipRequest] = []
        self.responses: list[SipResponse] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.invite: SipRequest | None = None
        self.leg_addr: tuple[str, int] | None = None
        self.leg_media: NegotiatedAudio | None = None
        self.tag = "miniuas" + random_token(3)
        self.acked = asyncio.Event()

    @classmethod
    async def open(cls, rtp_port: int, codecs: tuple[str, ...] = ("PCMU",)) -> MiniUas:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(rtp_port, codecs), local_addr=(HOST, 0))
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        msg = parse_message(data)  # strict: a malformed message from the leg fails the test
        if isinstance(msg, SipResponse):
            self.responses.append(msg)
            if msg.cseq.method == "INVITE" and 200 <= msg.status < 300:
                self._ack_reinvite(msg, addr)
            return
        self.requests.append(msg)
        if msg.method == "INVITE":
            if self.invite is not None and msg.top_via.branch == self.invite.top_via.branch:
                return
            self.invite, self.leg_addr = msg, addr
            self.transport.sendto(make_response(msg, 100).serialise(), addr)
            ans = answer_offer(msg.body, address=HOST, port=self.rtp_port, supported=self.codecs)
            self.leg_media = ans.audio
            ok = make_response(msg, 200, to_tag=self.tag, headers=[("Contact", f"<sip:uas@{HOST}:{self.port}>")],
                               body=ans.sdp.serialize().encode(), content_type="application/sdp")
            self.transport.sendto(ok.serialise(), addr)
        elif msg.method == "ACK":
            self.acked.set()
        elif msg.method in ("BYE", "OPTIONS", "CANCEL"):
            self.transport.sendto(make_response(msg, 200, to_tag=self.tag).serialise(), addr)

    def bye(self, cause: int = 16) -> None:
        assert self.invite is not None and self.transport is not None and self.leg_addr is not None
        inv = self.invite
        contact = inv.contacts[0].uri
        req = new_request("BYE", contact, from_=str(inv.to.with_tag(self.tag)), to=str(inv.from_),
                          call_id=inv.call_id, cseq=1, headers=[("Reason", f"Q.850;cause={cause}")])
        req.headers.add("Via", f"SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK{random_token(6)}", first=True)
        self.transport.sendto(req.serialise(), self.leg_addr)

    def _ack_reinvite(self, ok: SipResponse, addr: tuple[str, int]) -> None:
        """ACK the 2xx of our re-INVITE (RFC 3261 §13.2.2.4), each retransmission too."""
        assert self.transport is not None and self.invite is not None
        ack = new_request("ACK", ok.contacts[0].uri, from_=str(ok.from_), to=str(ok.to), call_id=ok.call_id,
                          cseq=ok.cseq.seq)
        ack.headers.add("Via", f"SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK{random_token(6)}", first=True)
        self.transport.sendto(ack.serialise(), addr)

    def reinvite(self, direction: str, cseq: int) -> None:
        """A re-INVITE from our side of the dialog with a new offer (hold: "sendonly")."""
        assert self.invite is not None and self.transport is not None and self.leg_addr is not None
        inv = self.invite
        offer = build_offer(HOST, self.rtp_port, codecs=self.codecs, direction=direction,  # type: ignore[arg-type]
                            session_id=1, session_version=cseq)
        req = new_request("INVITE", inv.contacts[0].uri, from_=str(inv.to.with_tag(self.tag)), to=str(inv.from_),
                          call_id=inv.call_id, cseq=cseq, contact=f"<sip:uas@{HOST}:{self.port}>",
                          body=offer.serialize().encode(), content_type="application/sdp")
        req.headers.add("Via", f"SIP/2.0/UDP {HOST}:{self.port};branch=z9hG4bK{random_token(6)}", first=True)
        self.transport.sendto(req.serialise(), self.leg_addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@contextlib.asynccontextmanager
async def running_trunk(server_port: int, **kw: Any) -> AsyncIterator[PyVoipTrunk]:
    """A started trunk (trunk mode unless register=True) whose stop() must leave no thread behind."""
    before = pyvoip_threads()
    cfg = replace(TrunkConfig(server_port=server_port, register=False), **kw)
    trunk = PyVoipTrunk(cfg)
    await trunk.start()
    try:
        yield trunk
    finally:
        await asyncio.wait_for(trunk.stop(), 15)
        assert pyvoip_threads() == before, f"threads left behind: {pyvoip_threads()}"


async def next_event(leg: PyVoipLeg, kind: type[Any], timeout: float = 5.0) -> Any:
    """Events until one of `kind` (earlier ones are kept in leg.seen); fails on LegEnded otherwise."""
    seen: list[LegEvent] = getattr(leg, "seen", [])
    leg.seen = seen  # type: ignore[attr-defined]
    while True:
        ev = await asyncio.wait_for(leg.events.get(), timeout)
        seen.append(ev)
        if isinstance(ev, kind):
            return ev
        assert not isinstance(ev, LegEnded), f"leg ended while waiting for {kind.__name__}: {ev}"


async def pump(leg: PyVoipLeg, seconds: float, source: Callable[[int], np.ndarray] | None = None,
               sink: list[np.ndarray] | None = None) -> int:
    """Write frames at a true 50/s (absolute clock) and/or collect read_audio frames."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    n = 0
    while n < int(seconds * 50):
        await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))   # pacing: the app's 20 ms clock
        if source is not None:
            leg.send_audio(source(n).tobytes())
        if sink is not None:
            while (frame := leg.read_audio()) is not None:
                sink.append(np.frombuffer(frame, dtype=np.int16))
        n += 1
    return n


@dataclass
class MediaCall:
    trunk: PyVoipTrunk
    leg: PyVoipLeg
    uas: MiniUas
    rtp: RtpPeer
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def leg_rtp(self) -> tuple[str, int]:
        assert self.uas.leg_media is not None and self.uas.leg_media.remote is not None
        return self.uas.leg_media.remote


@contextlib.asynccontextmanager
async def media_call(codecs: tuple[str, ...] = ("PCMU",), **kw: Any) -> AsyncIterator[MediaCall]:
    """An answered outbound call to MiniUas; the UAS's RTP goes to an RtpPeer we read."""
    rtp = await RtpPeer.open()
    uas = await MiniUas.open(rtp.port, codecs)
    try:
        async with running_trunk(uas.port, **kw) as trunk:
            leg = trunk.new_leg("media-call")
            await leg.dial("+8613800138000")
            await next_event(leg, LegAnswered)
            await asyncio.wait_for(uas.acked.wait(), 2)
            yield MediaCall(trunk, leg, uas, rtp)
    finally:
        uas.close()
        rtp.close()


def tone_pcap(path: Path, freq: float = 1000.0, dbfs: float = -10.0, seconds: float = 1.4) -> None:
    """A pcap (Ethernet/IPv4/UDP/RTP) of an A-law tone in 20 ms packets, for play_pcap_audio."""
    pcm = sine(freq, dbfs, int(seconds * 8000))
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(len(pcm) // 160):
        rtp = struct.pack("!BBHII", 0x80, 8, i, i * 160, 0x4A45474F) + g711.alaw_encode(pcm[i * 160:(i + 1) * 160])
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, bytes([127, 0, 0, 1]),
                         bytes([127, 0, 0, 1]))
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        ts = i * 0.02
        out.append(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


# ------------------------------------------------------------------------------------------------
# signalling against sipp

@needs_sipp
async def test_ack_to_tag_matches_200(tmp_path: Path) -> None:
    """pyVoIP SIP.py:1565 puts a random To-tag in the ACK; ours carries the 200's (RFC 3261 §13.2.2.4)."""
    rtp = await RtpPeer.open()
    sipp = await Sipp(tmp_path, "uas_answer_check_ack.xml",
                      keys={"rtp_host": HOST, "rtp_port": str(rtp.port), "answer_fmt": "0 101"}).start()
    try:
        async with running_trunk(sipp.port) as trunk:
            leg = trunk.new_leg("ack-tag")
            sip_port = trunk.local_port
            await leg.dial("+8613800138000")
            ringing = await next_event(leg, LegRinging)
            assert ringing == LegRinging(180, False)
            answered = await next_event(leg, LegAnswered)
            assert answered.codec == "PCMU" and leg.codec == "PCMU"
            await until(lambda: leg.stats()["tx_packets"] >= 10, 5, "the leg sending RTP")
            await leg.hangup()
            ended = await next_event(leg, LegEnded)
            assert ended == LegEnded(EndReason.HANGUP, None, 16, remote=False)
            assert leg.stats()["tx_packets"] >= 10  # counters survive the end of the call
            rc = await sipp.wait()
        assert rc == 0, sipp.errors()
        invite, = sipp.received("INVITE")
        ack, = sipp.received("ACK")
        bye, = sipp.received("BYE")
        assert ack.to_tag == "jegoUasTag200" and bye.to_tag == "jegoUasTag200"
        assert ack.cseq.seq == invite.cseq.seq and bye.cseq.seq == invite.cseq.seq + 1
        assert ack.top_via.branch != invite.top_via.branch  # a 2xx ACK is its own transaction
        assert str(ack.uri) == f"sip:uas@{HOST}:{sipp.port};transport=udp"  # the 200's Contact
        # our own address in Contact/SDP, never 0.0.0.0
        assert f"@{HOST}:{sip_port}" in (invite.headers.get("Contact") or "")
        # audio flowed to the answer's address
        assert len(rtp.packets(0)) >= 10
    finally:
        await sipp.close()
        rtp.close()


@needs_sipp
async def test_busy_486_is_acked_and_mapped(tmp_path: Path) -> None:
    """pyVoIP ignores 486 (no ACK, DIALING forever); ours ACKs it and ends busy / 486 / cause 17."""
    sipp = await Sipp(tmp_path, "uas_busy_486.xml").start()
    try:
        async with running_trunk(sipp.port) as trunk:
            leg = trunk.new_leg("busy")
            await leg.dial("+8613900000486")
            ended = await next_event(leg, LegEnded)
            assert (ended.reason, ended.sip_code, ended.q850_cause, ended.remote) == ("busy", 486, 17, True)
            rc = await sipp.wait()
        assert rc == 0, sipp.errors()
        invite, = sipp.received("INVITE")
        acks = sipp.received("ACK")
        assert acks and all(a.top_via.branch == invite.top_via.branch for a in acks)  # §17.1.1.3
        assert all(a.to_tag == "jegoUasTag486" and a.cseq.seq == invite.cseq.seq for a in acks)
    finally:
        await sipp.close()


@needs_sipp
async def test_bare_480_is_no_answer_by_its_code_alone(tmp_path: Path) -> None:
    """A 480 without a Reason header ends no_answer (from_sip(480), as the fake leg says), with
    the code's default cause 20 recorded as derived; only 480 + cause 20 means switched_off."""
    sipp = await Sipp(tmp_path, "uas_bare_480.xml").start()
    try:
        async with running_trunk(sipp.port) as trunk:
            leg = trunk.new_leg("bare480")
            await leg.dial("+8613900000480")
            ended = await next_event(leg, LegEnded)
            assert (ended.reason, ended.sip_code, ended.q850_cause, ended.remote) == ("no_answer", 480, 20, True)
            assert ended.detail.endswith("(cause derived)")
            rc = await sipp.wait()
        assert rc == 0, sipp.errors()
        assert all(a.to_tag == "jegoUasTag480" for a in sipp.received("ACK"))
    finally:
        await sipp.close()


@needs_sipp
async def test_407_challenge_is_answered(tmp_path: Path) -> None:
    """pyVoIP dead-locks on 407 holding recvLock; ours ACKs it and re-INVITEs with Proxy-Authorization."""
    rtp = await RtpPeer.open()
    sipp = await Sipp(tmp_path, "uas_auth_407.xml", keys={"rtp_host": HOST, "rtp_port": str(rtp.port)}).start()
    try:
        async with running_trunk(sipp.port) as trunk:
            leg = trunk.new_leg("auth")
            await leg.dial("+8613800138000")
            await next_event(leg, LegAnswered)
            # the SIP receive path is not blocked: an OPTIONS is answered meanwhile
            await leg.hangup()
            await next_event(leg, LegEnded)
            rc = await sipp.wait()
        assert rc == 0, sipp.errors()
        first, second = sipp.received("INVITE")
        assert first.headers.get("Proxy-Authorization") is None
        creds = second.headers.get("Proxy-Authorization") or ""
        assert 'username="jego"' in creds and 'realm="carrier.jego.test"' in creds
        parsed = parse_credentials(creds)  # sipp's verifyauth ignores Proxy-Authorization: check here
        assert parsed is not None and parsed.nonce == "4f1c2b6d9a8e7f30" and parsed.uri == str(second.uri)
        assert parsed.response == digest_response(
            algorithm=parsed.algorithm, username="jego", realm=parsed.realm, password="jego-trunk-secret",
            method="INVITE", uri=parsed.uri, nonce=parsed.nonce, qop=parsed.qop, nc=parsed.nc, cnonce=parsed.cnonce)
        assert second.cseq.seq == first.cseq.seq + 1 and second.call_id == first.call_id
        assert second.from_tag == first.from_tag and second.top_via.branch != first.top_via.branch
        ack407 = sipp.received("ACK")[0]
        assert ack407.top_via.branch == first.top_via.branch and ack407.to_tag == "jegoUasTag407"
    finally:
        await sipp.close()
        rtp.close()


@needs_sipp
async def test_early_media_183(tmp_path: Path) -> None:
    """pyVoIP ignores 183; ours emits LegRinging(183, early_media=True) and plays its audio."""
    tone_pcap(tmp_path / "tone.pcap", 1000.0, -10.0, 1.4)
    sipp = await Sipp(tmp_path, "uas_early_media.xml", cwd=tmp_path).start()
    try:
        async with running_trunk(sipp.port) as trunk:
            leg = trunk.new_leg("early")
            await leg.dial("+8613800138000")
            ringing = await next_event(leg, LegRinging)
            assert ringing == LegRinging(183, True)
            assert leg.codec == "PCMA"
            frames: list[np.ndarray] = []
            collector = asyncio.ensure_future(pump(leg, 1.55, sink=frames))
            answered = await next_event(leg, LegAnswered, timeout=5)
            collector.cancel()
            assert answered.codec == "PCMA"
            early = active(np.concatenate(frames))
            freq, level = measure_tone(early)
            assert len(early) >= 8000, f"only {len(early)} samples of early media"
            assert abs(freq - 1000) < 2 and abs(level + 10) < 0.3, (freq, level)
            assert snr_db(early, 1000.0) > 30
            await leg.hangup()
            await next_event(leg, LegEnded)
            rc = await sipp.wait()
        assert rc == 0, sipp.errors()
    finally:
        await sipp.close()


@needs_sipp
async def test_cancel_outbound_while_ringing(tmp_path: Path) -> None:
    """pyVoIP cannot cancel; ours sends CANCEL (INVITE's branch and CSeq), ACKs the 487."""
    sipp = await Sipp(tmp_path, "uas_ring_cancel.xml").start()
    try:
        async with running_trunk(sipp.port) as trunk:
            leg = trunk.new_leg("cancel")
            await leg.dial("+8613900000480")
            await next_event(leg, LegRinging)
            await leg.hangup()
            await leg.hangup()  # idempotent
            ended = await next_event(leg, LegEnded)
            assert (ended.reason, ended.sip_code, ended.remote) == ("cancelled", 487, False)
            rc = await sipp.wait()
        assert rc == 0, sipp.errors()
        invite, = sipp.received("INVITE")
        cancel, = sipp.received("CANCEL")
        assert cancel.top_via.branch == invite.top_via.branch and cancel.cseq.seq == invite.cseq.seq
        assert str(cancel.uri) == str(invite.uri) and cancel.to_tag is None  # §9.1: To as in the INVITE
        ack, = sipp.received("ACK")
        assert ack.top_via.branch == invite.top_via.branch and ack.to_tag == "jegoUasTagRC"
    finally:
        await sipp.close()


@needs_sipp
async def test_inbound_cancel_gets_487_and_never_answers(tmp_path: Path) -> None:
    """pyVoIP answers 200 to CANCEL, sends no 487 and answers the call anyway; ours: 200 + 487,
    and answer() after the CANCEL sends nothing (sipp fails on any 200 for the INVITE)."""
    legs: list[PyVoipLeg] = []
    answered_late = asyncio.Event()

    async def on_call(leg: Any, from_number: str, to_number: str) -> None:
        legs.append(leg)
        assert (from_number, to_number) == ("+8613900000001", "+8613800138000")
        ended = await next_event(leg, LegEnded)
        assert (ended.reason, ended.sip_code, ended.remote) == ("cancelled", 487, True)
        await leg.answer()  # too late: must be a no-op
        answered_late.set()

    async with running_trunk(free_udp_port()) as trunk:
        trunk.set_inbound_handler(on_call)
        sipp = await Sipp(tmp_path, "uac_cancel.xml", remote=f"{HOST}:{trunk.local_port}",
                          service="+8613800138000").start()
        try:
            rc = await sipp.wait()
            assert rc == 0, sipp.errors()
            await asyncio.wait_for(answered_late.wait(), 2)
            statuses = [m.msg.status for m in sipp.messages()
                        if m.direction == "received" and isinstance(m.msg, SipResponse)]
            assert 487 in statuses and statuses.count(200) == 1  # the 200 is the CANCEL's
            assert legs[0].state == "ended" and legs[0].read_audio() is None
        finally:
            await sipp.close()


@needs_sipp
async def test_register_digest(tmp_path: Path) -> None:
    """REGISTER with digest through our auth core, and a bounded un-REGISTER on stop()."""
    sipp = await Sipp(tmp_path, "uas_register.xml").start()
    try:
        async with running_trunk(sipp.port, register=True, register_timeout=5.0) as trunk:
            assert trunk.registered
        rc = await sipp.wait()
        assert rc == 0, sipp.errors()
        regs = sipp.received("REGISTER")
        assert len(regs) == 4
        assert regs[1].headers.get("Authorization") and regs[3].headers.get("Authorization")
        assert regs[3].headers.get("Expires") == "0"
        assert f"@{HOST}:" in (regs[0].headers.get("Contact") or "")
    finally:
        await sipp.close()


# ------------------------------------------------------------------------------------------------
# signalling against our own strict peers

async def test_trunk_mode_no_register_and_options_keepalive() -> None:
    """Trunk mode sends no REGISTER; OPTIONS gets 200 with Allow (pyVoIP drops OPTIONS); stop()
    does not wait for an un-REGISTER (pyVoIP waits up to 30 s)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((HOST, 0))
    server.settimeout(1.0)
    try:
        t0 = time.monotonic()
        async with running_trunk(server.getsockname()[1]) as trunk:
            assert trunk.registered
            opts = new_request("OPTIONS", f"sip:jego@{HOST}:{trunk.local_port}", from_=f"<sip:carrier@{HOST}>",
                               to=f"<sip:jego@{HOST}>")
            opts.headers.add("Via", f"SIP/2.0/UDP {HOST}:{server.getsockname()[1]};branch=z9hG4bKopt1;rport",
                             first=True)
            server.sendto(opts.serialise(), (HOST, trunk.local_port))
            data = await asyncio.to_thread(server.recv, 65535)
            resp = parse_message(data)
            assert isinstance(resp, SipResponse) and resp.status == 200
            assert "INVITE" in (resp.headers.get("Allow") or "") and resp.to_tag
            assert resp.top_via.branch == "z9hG4bKopt1"
        assert time.monotonic() - t0 < 3.0
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.recv(65535)  # nothing else was ever sent: no REGISTER, no un-REGISTER
    finally:
        server.close()


async def test_invite_timeout() -> None:
    """No response at all: Timer A retransmits the INVITE, Timer B (64·T1) ends it as 408."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((HOST, 0))
    server.setblocking(False)
    try:
        async with running_trunk(server.getsockname()[1], t1=0.05) as trunk:
            leg = trunk.new_leg("timeout")
            t0 = time.monotonic()
            await leg.dial("+8613800138000")
            ended = await next_event(leg, LegEnded, timeout=6)
            assert (ended.reason, ended.sip_code, ended.remote) == ("timeout", 408, True)
            assert 3.0 <= time.monotonic() - t0 < 5.0
        invites = []
        with contextlib.suppress(BlockingIOError):
            while True:
                invites.append(parse_message(server.recv(65535)))
        assert len(invites) >= 6 and len({m.top_via.branch for m in invites}) == 1
    finally:
        server.close()


async def test_inbound_call_answer_and_bye() -> None:
    """An inbound call: 100/180/200 to the Via (rport), and our BYE goes to the INVITE's Contact
    (pyVoIP sends it to `server` with the INVITE's Via, SIP.py:1517/1653), tags the right way round."""
    loop = asyncio.get_running_loop()
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # sends the INVITE
    uac.bind((HOST, 0))
    contact = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the INVITE's Contact
    contact.bind((HOST, 0))
    for s in (uac, contact):
        s.settimeout(3.0)
    rtp = await RtpPeer.open()
    got: list[tuple[PyVoipLeg, str, str]] = []

    async def on_call(leg: Any, from_number: str, to_number: str) -> None:
        got.append((leg, from_number, to_number))
        await leg.answer()

    try:
        async with running_trunk(free_udp_port()) as trunk:
            trunk.set_inbound_handler(on_call)
            offer = build_offer(HOST, rtp.port, codecs=("PCMA", "PCMU"))
            inv = new_request("INVITE", f"sip:+8613800138000@{HOST}:{trunk.local_port}",
                              from_="<sip:008613900000002@carrier.test>", to=f"<sip:+8613800138000@{HOST}>",
                              contact=f"<sip:carrier@{HOST}:{contact.getsockname()[1]}>",
                              body=offer.serialize().encode(), content_type="application/sdp")
            inv.headers.add("Via", f"SIP/2.0/UDP {HOST}:{uac.getsockname()[1]};branch=z9hG4bKinv1;rport", first=True)
            uac.sendto(inv.serialise(), (HOST, trunk.local_port))
            codes = []
            ok: SipResponse | None = None
            while ok is None:
                resp = parse_message(await loop.run_in_executor(None, uac.recv, 65535))
                assert isinstance(resp, SipResponse)
                codes.append(resp.status)
                if resp.status == 200:
                    ok = resp
            assert codes[0] == 100 and 180 in codes
            assert ok.to_tag and "a=rtpmap:8 PCMA/8000" in ok.body.decode()  # offerer's order
            assert f"c=IN IP4 {HOST}" in ok.body.decode()
            ack = new_request("ACK", ok.contacts[0].uri, from_=str(inv.from_), to=str(ok.to), call_id=inv.call_id,
                              cseq=1)
            ack.headers.add("Via", f"SIP/2.0/UDP {HOST}:{uac.getsockname()[1]};branch=z9hG4bKack1;rport", first=True)
            uac.sendto(ack.serialise(), (HOST, trunk.local_port))
            leg, from_number, to_number = got[0]
            assert (from_number, to_number) == ("+8613900000002", "+8613800138000")
            assert (await next_event(leg, LegAnswered)).codec == "PCMA"
            await until(lambda: len(rtp.packets(8)) >= 5, 5, "PCMA packets at the peer")
            await leg.hangup(17)
            ended = await next_event(leg, LegEnded)
            assert (ended.reason, ended.q850_cause, ended.remote) == ("hangup", 17, False)
            bye = parse_message(await loop.run_in_executor(None, contact.recv, 65535))
            assert isinstance(bye, SipRequest) and bye.method == "BYE"
            assert str(bye.uri) == f"sip:carrier@{HOST}:{contact.getsockname()[1]}"
            assert bye.from_tag == ok.to_tag and bye.to_tag == inv.from_tag and bye.call_id == inv.call_id
            assert "cause=17" in (bye.headers.get("Reason") or "")
            contact.sendto(make_response(bye, 200).serialise(), (HOST, trunk.local_port))
    finally:
        uac.close()
        contact.close()
        rtp.close()


def _uac_invite(uac: socket.socket, trunk_port: int, rtp_port: int) -> SipRequest:
    offer = build_offer(HOST, rtp_port, codecs=("PCMU",))
    inv = new_request("INVITE", f"sip:+8613800138000@{HOST}:{trunk_port}", from_="<sip:+8613900000003@carrier.test>",
                      to=f"<sip:+8613800138000@{HOST}>", contact=f"<sip:carrier@{HOST}:{uac.getsockname()[1]}>",
                      body=offer.serialize().encode(), content_type="application/sdp")
    inv.headers.add("Via", f"SIP/2.0/UDP {HOST}:{uac.getsockname()[1]};branch=z9hG4bK{random_token(6)};rport",
                    first=True)
    uac.sendto(inv.serialise(), (HOST, trunk_port))
    return inv


def _recv_until(uac: socket.socket, pred: Callable[[SipResponse], bool]) -> list[SipResponse]:
    out: list[SipResponse] = []
    while not out or not pred(out[-1]):
        msg = parse_message(uac.recv(65535))
        assert isinstance(msg, SipResponse)
        out.append(msg)
    return out


def _ack_final(uac: socket.socket, trunk_port: int, inv: SipRequest, final: SipResponse) -> None:
    """ACK for a 3xx-6xx (RFC 3261 §17.1.1.3): the INVITE's Via (branch), the response's To."""
    ack = new_request("ACK", inv.uri, from_=str(inv.from_), to=str(final.to), call_id=inv.call_id, cseq=1)
    ack.headers.add("Via", inv.headers.get("Via") or "", first=True)
    uac.sendto(ack.serialise(), (HOST, trunk_port))


async def _quiet(uac: socket.socket, seconds: float = 0.8) -> None:
    """Drain what was in flight, then assert nothing more arrives for `seconds`."""
    await asyncio.sleep(0.2)   # a negative check: what is in flight on loopback lands within this
    uac.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            uac.recv(65535)
    uac.settimeout(seconds)
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(uac.recv, 65535)
    uac.settimeout(2.0)


async def test_inbound_reject_and_no_handler() -> None:
    """Without a handler an INVITE gets 480; reject(486, 17) answers 486 + Reason. Both final
    responses are retransmitted (Timer G) until the ACK arrives (RFC 3261 §17.2.1)."""
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind((HOST, 0))
    uac.settimeout(2.0)
    legs: list[PyVoipLeg] = []

    async def on_call(leg: Any, from_number: str, to_number: str) -> None:
        legs.append(leg)
        await leg.reject(486, 17)

    try:
        async with running_trunk(free_udp_port(), t1=0.1) as trunk:
            port = trunk.local_port
            first = _uac_invite(uac, port, 40000)
            got = await asyncio.to_thread(_recv_until, uac, lambda r: r.status >= 200)
            unavailable = got[-1]
            assert unavailable.status == 480 and "cause=20" in (unavailable.headers.get("Reason") or "")
            again = await asyncio.to_thread(_recv_until, uac, lambda r: r.status >= 200)
            assert again[-1].status == 480 and again[-1].to_tag == unavailable.to_tag  # retransmitted
            _ack_final(uac, port, first, unavailable)
            await _quiet(uac)  # the ACK stopped the retransmissions

            trunk.set_inbound_handler(on_call)
            inv = _uac_invite(uac, port, 40000)
            got = await asyncio.to_thread(_recv_until, uac, lambda r: r.status >= 200)
            final = got[-1]
            assert final.status == 486 and "cause=17" in (final.headers.get("Reason") or "")
            again = await asyncio.to_thread(_recv_until, uac, lambda r: r.status >= 200)
            assert again[-1].status == 486 and again[-1].to_tag == final.to_tag  # retransmitted
            _ack_final(uac, port, inv, final)
            await _quiet(uac)  # the ACK stopped the retransmissions
            ended = await next_event(legs[0], LegEnded)
            assert (ended.reason, ended.sip_code, ended.q850_cause, ended.remote) == ("busy", 486, 17, False)
    finally:
        uac.close()


# ------------------------------------------------------------------------------------------------
# media

async def test_pcma_is_a_law() -> None:
    """pyVoIP sends μ-law bytes labelled PT 8 (RTP.py:460); ours encodes A-law."""
    async with media_call(codecs=("PCMA",)) as call:
        assert call.leg.codec == "PCMA"
        await pump(call.leg, 1.2, source=lambda n: sine(440.0, -10.0, 160, n * 160))
        pkts = [p for _, p in call.rtp.packets(8)]
        assert len(pkts) >= 50 and not call.rtp.packets(0)
        payload = b"".join(p.payload for p in pkts)
        as_alaw = g711.alaw_decode(payload)
        on = active(as_alaw)
        freq, level = measure_tone(on)
        assert len(on) > 5000 and abs(freq - 440) < 1 and abs(level + 10) < 0.3, (freq, level)
        assert snr_db(on, 440.0) > 30
        # the same bytes decoded as μ-law (what pyVoIP's PCMA really is) are not the tone
        assert snr_db(active(g711.ulaw_decode(payload)), 440.0) < 10


async def test_quiet_tone_is_16_bit() -> None:
    """A -40 dBFS tone through the leg keeps G.711's 16-bit quality (pyVoIP's 8-bit path: 3.7 dB)."""
    async with media_call(codecs=("PCMU",)) as call:
        # 1013 Hz: not a divisor of 8 kHz, so the quantisation error is noise-like
        await pump(call.leg, 1.2, source=lambda n: sine(1013.0, -40.0, 160, n * 160))
        payload = b"".join(p.payload for _, p in call.rtp.packets(0))
        tone = active(g711.ulaw_decode(payload), threshold_dbfs=-60.0)
        assert len(tone) > 5000
        ours = snr_db(tone, 1013.0)
        # pyVoIP's path for the same samples: 8-bit linear (audioop lin2lin 2->1) then μ-law
        ref = sine(1013.0, -40.0, 8000)
        eight_bit = (ref.astype(np.int32) >> 8 << 8).astype(np.int16)
        theirs = snr_db(g711.ulaw_decode(g711.ulaw_encode(eight_bit)).astype(np.float64), 1013.0)
        print(f"-40 dBFS 1013 Hz: SNR ours {ours:.1f} dB, pyVoIP 8-bit path {theirs:.1f} dB")
        assert ours >= 30 and ours - theirs >= 20


async def test_pacing_absolute_clock_and_bounded_backlog() -> None:
    """50.00 packets/s on an absolute clock (pyVoIP drifts to ~49.7) and no backlog growth when the
    app writes at a true 50 frames/s (pyVoIP's grows ~8 ms per second)."""
    async with media_call() as call:
        backlog: list[int] = []
        seconds = 6.0

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.25)   # a sampling cadence: the backlog over real time is the subject
                backlog.append(call.leg.stats()["tx_backlog"])

        watcher = asyncio.ensure_future(watch())
        start = len(call.rtp.arrivals)
        written = await pump(call.leg, seconds, source=lambda n: sine(700.0, -20.0, 160, n * 160))
        watcher.cancel()
        arrivals = [t for t, _ in call.rtp.arrivals[start + 10:]]
        rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        stats = call.leg.stats()
        print(f"pacing: {rate:.3f} packets/s over {arrivals[-1] - arrivals[0]:.1f} s; backlog samples "
              f"max {max(backlog)}; dropped {stats['tx_dropped']}; written {written}")
        assert abs(rate - 50.0) / 50.0 < 0.005, rate
        assert max(backlog) <= 3 and backlog[-1] <= 2, backlog
        assert stats["tx_dropped"] <= 2 and stats.get("tx_skipped_ticks", 0) == 0


async def test_sequence_wraps() -> None:
    """pyVoIP raises OverflowError at 65536 and sends a packet without its seq; ours wraps."""
    async with media_call(rtp_initial_sequence=65530) as call:
        await until(lambda: len(call.rtp.arrivals) >= 20, 5, "20 packets at the peer")
        raw = [r for _, r in call.rtp.arrivals]
    assert all(len(r) == 12 + 160 for r in raw[:20])
    seqs = [RtpPacket.parse(r).sequence_number for r in raw[:15]]
    assert seqs[:10] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3], seqs


async def test_send_dtmf_rfc4733() -> None:
    """pyVoIP cannot send DTMF; ours sends RFC 4733 events (marker, one timestamp per event,
    three end packets), and audio carries on after them; then a BYE from the far end ends the leg."""
    async with media_call() as call:
        te_pt = call.uas.leg_media.telephone_event_pt if call.uas.leg_media else None
        assert te_pt == 101
        await asyncio.wait_for(call.leg.send_dtmf("15#"), 3)

        def ends_then_audio() -> bool:   # the three events' end packets are in, and audio after them
            pkts = [p for _, p in call.rtp.packets()]
            ends = [p for p in pkts if p.payload_type == 101 and TelephoneEvent.parse(p.payload).end]
            return len(ends) >= 9 and pkts[-1].payload_type == 0
        await until(ends_then_audio, 5, "the DTMF end packets, then audio")
        rx = DtmfReceiver()
        by_ts: dict[int, list[RtpPacket]] = {}
        for _, p in call.rtp.packets(101):
            rx.receive(p.payload, p.timestamp, ssrc=p.ssrc, marker=p.marker)
            by_ts.setdefault(p.timestamp, []).append(p)
        assert rx.digits == ["1", "5", "#"]
        for pkts in by_ts.values():
            assert pkts[0].marker and not any(p.marker for p in pkts[1:])
            ends = [p for p in pkts if TelephoneEvent.parse(p.payload).end]
            assert len(ends) == 3 and TelephoneEvent.parse(ends[0].payload).duration == 800
        all_pkts = [p for _, p in call.rtp.packets()]
        seqs = [p.sequence_number for p in all_pkts]
        assert all((b - a) % 65536 == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        assert all_pkts[-1].payload_type == 0  # audio resumed
        call.uas.bye(16)
        ended = await next_event(call.leg, LegEnded)
        assert (ended.reason, ended.q850_cause, ended.remote) == ("hangup", 16, True)
        assert any(r.status == 200 and r.cseq.method == "BYE" for r in call.uas.responses)


async def test_bad_rtp_is_dropped_and_audio_continues() -> None:
    """0-byte, short, truncated and unknown-PT datagrams and RFC 4733 event 16 (which kill pyVoIP's
    receiver thread) are dropped; a DTMF digit and then a tone still come through."""
    async with media_call() as call:
        dest = call.leg_rtp
        peer = call.rtp
        bad = [
            b"",                                        # 0 bytes: pyVoIP's receiver dies
            b"\x80",
            bytes(11),
            bytes([0x8F, 0]) + bytes(10),               # CC=15, no CSRC list
            bytes([0xA0, 0]) + bytes(10) + b"\x00\xff",  # padding length 255 > payload
            RtpPacket(127, 1, 0, 9, b"x" * 160).serialize(),  # unknown PT
        ]
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # asyncio drops empty sendto()s
        for d in bad:
            raw.sendto(d, dest)
        raw.close()
        ssrc, ts = 0x1234, 8000
        seq = 100
        for item in dtmf_packets(16):                   # flash: IndexError in pyVoIP (RTP.py:554)
            peer.send(RtpPacket(101, seq, ts, ssrc, item.payload, item.marker).serialize(), dest)
            seq += 1
        ts += 1600
        for item in dtmf_packets("7"):
            peer.send(RtpPacket(101, seq, ts, ssrc, item.payload, item.marker).serialize(), dest)
            seq += 1
        dtmf = await next_event(call.leg, LegDtmf)
        assert dtmf == LegDtmf("7")
        assert not [e for e in getattr(call.leg, "seen", []) if isinstance(e, LegDtmf) and e.digit != "7"]

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        frames: list[np.ndarray] = []
        for n in range(60):                             # 1.2 s of 1 kHz at -12 dBFS, paced
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))   # pacing: 20 ms packets
            ts += 160
            pcm = sine(1000.0, -12.0, 160, n * 160)
            peer.send(RtpPacket(0, seq, ts, ssrc, g711.ulaw_encode(pcm)).serialize(), dest)
            seq += 1
            while (f := call.leg.read_audio()) is not None:
                frames.append(np.frombuffer(f, dtype=np.int16))
        await pump(call.leg, 0.2, sink=frames)
        tone = active(np.concatenate(frames))
        assert len(tone) > 6000
        freq, level = measure_tone(tone)
        assert abs(freq - 1000) < 2 and abs(level + 12) < 0.3 and snr_db(tone, 1000.0) > 30, (freq, level)
        stats = call.leg.stats()
        assert stats["rx_malformed"] >= 5 and stats["rx_dropped"] >= 1 and stats.get("rx_errors", 0) == 0
        # reception survived on the shared media engine: no per-call RTP thread at all
        assert not [t.name for t in threading.enumerate() if t.name.startswith("RTP ")]


async def test_threads_do_not_leak() -> None:
    """Two calls leave no thread behind (pyVoIP's Timers are never joined), and a call starts no
    thread of its own: its RTP runs on the shared media engine (pyVoIP starts two per call)."""
    before = pyvoip_threads()
    for _ in range(2):
        async with media_call() as call:
            names = pyvoip_threads()
            assert "SIP Recieve" in names and not [n for n in names if n.startswith("RTP ")]
            assert call.leg.stats()["tx_packets"] > 0  # media is running all the same
            await call.leg.hangup()
            await next_event(call.leg, LegEnded)
    assert pyvoip_threads() == before


# ------------------------------------------------------------------------------------------------
# against our simulated carrier (bridge/carrier): digest REGISTER and INVITE, codes and causes

async def test_against_the_simulated_carrier(tmp_path: Path) -> None:
    """Register with digest, call a number that answers (the default: 180, 183 ringback, answer +
    echo), one that is busy (183 announcement, 486 / 17) and CANCEL one that rings (+…480)."""
    from .carrier_util import running_carrier

    async with running_carrier(tmp_path / "carrier") as carrier:
        async with running_trunk(carrier.udp_port, register=True) as trunk:
            assert trunk.registered
            leg = trunk.new_leg("carrier-answer")
            await leg.dial("+8613800138000")
            answered = await next_event(leg, LegAnswered, timeout=8)
            assert answered.codec in ("PCMU", "PCMA")
            assert LegRinging(183, True) in leg.seen  # type: ignore[attr-defined]
            # the carrier echoes: a 1 kHz tone we send comes back through read_audio
            frames: list[np.ndarray] = []
            await pump(leg, 2.0, source=lambda n: sine(1000.0, -15.0, 160, n * 160), sink=frames)
            echo = np.concatenate(frames)[-8000:]  # the last second: no ringback left in it
            freq, level = measure_tone(echo)
            assert len(echo) == 8000 and abs(freq - 1000) < 2 and abs(level + 15) < 1.0, (freq, level)
            await leg.hangup()
            assert (await next_event(leg, LegEnded)).reason == "hangup"

            busy = trunk.new_leg("carrier-busy")
            await busy.dial("+8613900000486")
            ended = await next_event(busy, LegEnded, timeout=8)
            assert (ended.reason, ended.sip_code, ended.q850_cause, ended.remote) == ("busy", 486, 17, True)

            ringing = trunk.new_leg("carrier-cancel")
            await ringing.dial("+8613900000480")
            assert (await next_event(ringing, LegRinging, timeout=5)).sip_code == 180
            await ringing.hangup()
            ended = await next_event(ringing, LegEnded)
            assert (ended.reason, ended.sip_code, ended.remote) == ("cancelled", 487, False)
            await carrier.wait_idle(5)


async def test_rtcp_with_the_simulated_carrier(tmp_path: Path) -> None:
    """The leg and the carrier exchange RTCP SR/RR (RFC 3550 §6, RTCP on port + 1): what each
    far end reports (loss, jitter) and the round trip from LSR/DLSR are in both sides' stats."""
    from .carrier_util import running_carrier

    async with running_carrier(tmp_path / "carrier", sip={"rtcp_interval_s": 0.4}) as carrier:
        async with running_trunk(carrier.udp_port, register=True, rtcp_interval_s=0.4) as trunk:
            leg = trunk.new_leg("rtcp")
            await leg.dial("+8613800138000")
            await next_event(leg, LegAnswered, timeout=8)
            pumping = asyncio.ensure_future(pump(leg, 6.0, source=lambda n: sine(600.0, -15.0, 160, n * 160)))
            try:
                def carrier_streams() -> list[RtpStream]:
                    return [c.stream for c in carrier._calls.values() if c.stream is not None]

                def both_have_rtt() -> bool:
                    streams = carrier_streams()
                    return "rtt_ms" in leg.stats() and bool(streams) and streams[0].stats().rtt is not None
                with contextlib.suppress(AssertionError):   # judged below, with the counters
                    await until(both_have_rtt, 6, "round-trip times on both sides")
                stats, streams = leg.stats(), carrier_streams()
                assert stats["rtcp_sent"] >= 2 and stats["rtcp_received"] >= 2, stats
                assert 0 <= stats["rtt_ms"] < 50 and stats["remote_loss"] == 0 and stats["jitter_ms"] < 20, stats
                (stream,) = streams
                cst = stream.stats()
                assert cst.rtcp_received >= 2 and cst.rtt is not None and 0 <= cst.rtt < 0.05, cst
                assert cst.remote_packets_lost == 0 and cst.dropped_rtcp == 0, cst
            finally:
                pumping.cancel()
            await leg.hangup()
            await next_event(leg, LegEnded)


async def test_reinvite_hold_and_resume() -> None:
    """A re-INVITE (hold, then resume) is answered on the same media: recvonly while held, so we
    stop sending; no second pair of RTP threads (pyVoIP starts one per re-INVITE: 100 packets/s)."""
    async with media_call() as call:
        threads = pyvoip_threads()
        call.uas.reinvite("sendonly", 2)

        def final_to_2() -> list[SipResponse]:
            return [r for r in call.uas.responses if r.cseq.seq == 2 and r.cseq.method == "INVITE" and r.status >= 200]
        ok = await until(final_to_2, 5, "the answer to the hold re-INVITE")
        assert ok and ok[0].status == 200 and "a=recvonly" in ok[0].body.decode()
        n = len(call.rtp.arrivals)
        await asyncio.sleep(0.5)   # a negative over real time: nothing sent, and T1 (0.5 s) passes
        assert len(call.rtp.arrivals) - n <= 1  # held: nothing sent
        oks = [r for r in call.uas.responses if r.cseq.seq == 2 and r.status == 200]
        assert len(oks) == 1  # our ACK stopped its retransmission (T1 = 0.5 s passed)
        call.uas.reinvite("sendrecv", 3)
        held_at = len(call.rtp.arrivals)
        await until(lambda: len(call.rtp.arrivals) > held_at + 2, 5, "media again after the resume")
        n = len(call.rtp.arrivals)
        await asyncio.sleep(1.0)   # a rate over real time is the subject: 50/s, not 100/s
        assert 45 <= len(call.rtp.arrivals) - n <= 55  # resumed at 50/s, not 100/s
        assert pyvoip_threads() == threads


async def test_inbound_200_without_ack_times_out() -> None:
    """Our 200 OK is retransmitted (Timer G) and, with no ACK by Timer H (64·T1), the call is
    torn down with a BYE to the Contact (RFC 3261 §13.3.1.4)."""
    uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uac.bind((HOST, 0))
    uac.settimeout(5.0)
    legs: list[PyVoipLeg] = []

    async def on_call(leg: Any, from_number: str, to_number: str) -> None:
        legs.append(leg)
        await leg.answer()

    try:
        async with running_trunk(free_udp_port(), t1=0.05) as trunk:
            trunk.set_inbound_handler(on_call)
            inv = _uac_invite(uac, trunk.local_port, 40000)
            oks = 0
            bye: SipRequest | None = None
            t0 = time.monotonic()
            while bye is None:
                msg = parse_message(await asyncio.to_thread(uac.recv, 65535))
                if isinstance(msg, SipResponse):
                    oks += msg.status == 200
                elif msg.method == "BYE":
                    bye = msg
            assert 2.5 < time.monotonic() - t0 < 4.5 and oks >= 5
            assert bye.call_id == inv.call_id and bye.to_tag == inv.from_tag
            assert (await next_event(legs[0], LegAnswered)).codec == "PCMU"
            ended = await next_event(legs[0], LegEnded)
            assert (ended.reason, ended.q850_cause) == ("failed", 41)
    finally:
        uac.close()


# ------------------------------------------------------------------------------------------------
# one SIP stack: the leg is a transaction user of bridge/sip's SipEndpoint

class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP SIP peer for the tests below: every parsed message goes into a queue."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[SipRequest | SipResponse, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> RawPeer:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, local_addr=(HOST, 0))
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inbox.put_nowait((parse_message(data), addr))  # strict: a malformed message fails

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, msg: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(msg.serialise(), addr)

    async def next(self, pred: Callable[[SipRequest | SipResponse], bool],
                   timeout: float = 3.0) -> tuple[SipRequest | SipResponse, tuple[str, int]]:
        """The next message matching `pred` (others are skipped, e.g. retransmissions)."""
        async def wait() -> tuple[SipRequest | SipResponse, tuple[str, int]]:
            while True:
                msg, addr = await self.inbox.get()
                if pred(msg):
                    return msg, addr
        return await asyncio.wait_for(wait(), timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def is_request(method: str) -> Callable[[SipRequest | SipResponse], bool]:
    return lambda m: isinstance(m, SipRequest) and m.method == method


async def _ringing_call(trunk: PyVoipTrunk, uas: RawPeer, tag: str) -> tuple[PyVoipLeg, SipRequest, tuple[str, int]]:
    """Dial through `uas` and ring (180 with `tag`); returns the leg, the INVITE and where it came from."""
    leg = trunk.new_leg(f"raw-{tag}")
    await leg.dial("+8613800138000")
    inv, src = await uas.next(is_request("INVITE"))
    assert isinstance(inv, SipRequest)
    uas.send(make_response(inv, 180, to_tag=tag), src)
    assert (await next_event(leg, LegRinging)).sip_code == 180
    return leg, inv, src


def _ok(inv: SipRequest, tag: str, contact_port: int) -> SipResponse:
    ans = answer_offer(inv.body, address=HOST, port=40002, supported=("PCMU",))
    return make_response(inv, 200, to_tag=tag, headers=[("Contact", f"<sip:uas@{HOST}:{contact_port}>")],
                         body=ans.sdp.serialize().encode(), content_type="application/sdp")


async def test_200_crossing_cancel_is_acked_then_byed() -> None:
    """RFC 3261 §9.1: a 200 OK that crosses our CANCEL is ACKed (the 200's To-tag, the INVITE's
    CSeq) and then BYEd at its Contact; the leg ends as cancelled; a retransmitted 200 is ACKed
    again with the same ACK."""
    uas, contact = await RawPeer.open(), await RawPeer.open()
    try:
        async with running_trunk(uas.port, t1=0.1) as trunk:
            leg, inv, src = await _ringing_call(trunk, uas, "cross1")
            await leg.hangup()
            cancel, _ = await uas.next(is_request("CANCEL"))
            assert isinstance(cancel, SipRequest) and cancel.top_via.branch == inv.top_via.branch
            ok = _ok(inv, "cross1", contact.port)
            uas.send(ok, src)  # the callee answered before the CANCEL reached it
            uas.send(make_response(cancel, 200, to_tag="cross1"), src)
            ack, _ = await contact.next(is_request("ACK"))
            bye, bye_src = await contact.next(is_request("BYE"))
            assert isinstance(ack, SipRequest) and isinstance(bye, SipRequest)
            assert ack.to_tag == "cross1" and ack.cseq.seq == inv.cseq.seq and ack.from_tag == inv.from_tag
            assert str(ack.uri) == f"sip:uas@{HOST}:{contact.port}"
            assert bye.to_tag == "cross1" and bye.cseq.seq == inv.cseq.seq + 1
            ended = await next_event(leg, LegEnded)
            assert (ended.reason, ended.remote) == ("cancelled", False) and "crossed" in ended.detail
            uas.send(ok, src)  # the 200 again (our ACK "lost"): the endpoint ACKs it again
            again, _ = await contact.next(is_request("ACK"))
            assert again.serialise() == ack.serialise()
            contact.send(make_response(bye, 200), bye_src)
    finally:
        uas.close()
        contact.close()


async def test_late_200_after_cancel_gave_up_is_acked_and_byed() -> None:
    """No 487 after our CANCEL: the INVITE is given up after `cancel_timeout` (RFC 3261 §9.1,
    by the endpoint's transaction, not a sleep). A 200 arriving later matches no transaction:
    the trunk still ACKs it and BYEs it, so the far end keeps no half-open call."""
    uas, contact = await RawPeer.open(), await RawPeer.open()
    try:
        async with running_trunk(uas.port, t1=0.1, cancel_timeout=0.4) as trunk:
            leg, inv, src = await _ringing_call(trunk, uas, "late1")
            await leg.hangup()
            await uas.next(is_request("CANCEL"))  # never answered: no 200, no 487
            ended = await next_event(leg, LegEnded, timeout=3)
            assert (ended.reason, ended.sip_code, ended.remote) == ("cancelled", None, False)
            assert "no 487" in ended.detail and trunk.active_calls() == 0
            uas.send(_ok(inv, "late1", contact.port), src)
            ack, _ = await contact.next(is_request("ACK"))
            bye, bye_src = await contact.next(is_request("BYE"))
            assert isinstance(ack, SipRequest) and isinstance(bye, SipRequest)
            assert ack.to_tag == "late1" and ack.cseq.seq == inv.cseq.seq and ack.call_id == inv.call_id
            assert bye.to_tag == "late1" and bye.from_tag == inv.from_tag and bye.cseq.seq == inv.cseq.seq + 1
            contact.send(make_response(bye, 200), bye_src)
    finally:
        uas.close()
        contact.close()


async def test_requests_outside_our_dialogs_get_481_405_501() -> None:
    """The endpoint's stateless checks and the trunk: BYE / re-INVITE for an unknown dialog 481,
    CANCEL matching nothing 481, a known method we do not serve 405 + Allow, an unknown one 501,
    OPTIONS 200 (RFC 3261 §8.2.1, §12.2.2, §9.2, §11.2)."""
    peer = await RawPeer.open()
    try:
        async with running_trunk(peer.port) as trunk:
            dest = (HOST, trunk.local_port)
            cases = [("BYE", "stale", 481), ("INVITE", "stale", 481), ("CANCEL", "", 481),
                     ("SUBSCRIBE", "", 405), ("INFO", "", 405), ("FOO", "", 501), ("OPTIONS", "", 200)]
            for method, to_tag, want in cases:
                req = new_request(method, f"sip:jego@{HOST}:{trunk.local_port}", from_=f"<sip:peer@{HOST}>",
                                  to=f"<sip:jego@{HOST}>" + (f";tag={to_tag}" if to_tag else ""))
                req.headers.add("Via", f"SIP/2.0/UDP {HOST}:{peer.port};branch=z9hG4bK{random_token(6)};rport",
                                first=True)
                peer.send(req, dest)

                def final_to(m: SipRequest | SipResponse, r: SipRequest = req) -> bool:
                    return isinstance(m, SipResponse) and m.call_id == r.call_id and m.status >= 200
                resp, _ = await peer.next(final_to)
                assert isinstance(resp, SipResponse), method
                assert resp.status == want, (method, resp.status)
                if want in (405, 200):
                    assert "INVITE" in (resp.headers.get("Allow") or ""), method
    finally:
        peer.close()


async def test_idle_receive_thread_sleeps() -> None:
    """pyVoIP's SIP receive loop polls every 10 ms (SIP.py:850-857: ~100 wake-ups a second, ~20 ms
    CPU/s idle); ours blocks in epoll (a selector) on the socket and a self-pipe: not one wake-up while idle,
    one per datagram (docs/benchmarks.md has the CPU figure, scripts/bench_trunk_idle.py)."""
    peer = await RawPeer.open()
    try:
        async with running_trunk(peer.port) as trunk:
            sip = trunk.phone.sip
            await asyncio.sleep(0.1)   # the start's own datagrams are handled
            before = sip.wakeups
            await asyncio.sleep(1.0)   # a negative over real time: idle, not one wake-up
            assert sip.wakeups == before
            opts = new_request("OPTIONS", f"sip:jego@{HOST}:{trunk.local_port}", from_=f"<sip:peer@{HOST}>",
                               to=f"<sip:jego@{HOST}>")
            opts.headers.add("Via", f"SIP/2.0/UDP {HOST}:{peer.port};branch=z9hG4bKidle1;rport", first=True)
            peer.send(opts, (HOST, trunk.local_port))
            resp, _ = await peer.next(lambda m: isinstance(m, SipResponse))
            assert isinstance(resp, SipResponse) and resp.status == 200
            assert sip.wakeups == before + 1
    finally:
        peer.close()


async def test_register_refresh_is_a_loop_timer() -> None:
    """The binding is refreshed before it expires (RFC 3261 §10.2.4): a new REGISTER with the same
    Call-ID and From tag and CSeq + 1, armed as an event-loop timer (pyVoIP starts a threading.Timer
    "SIP Register" per refresh); stop() un-REGISTERs (Expires: 0) through the same endpoint."""
    registrar = await RawPeer.open()
    seen: list[tuple[float, SipRequest]] = []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        while True:
            req, src = await registrar.next(is_request("REGISTER"), timeout=30)
            assert isinstance(req, SipRequest)
            seen.append((loop.time(), req))
            expires = req.headers.get("Expires") or "2"
            registrar.send(make_response(req, 200, to_tag="reg", headers=[
                ("Contact", f"{req.headers.get('Contact')};expires={min(int(expires), 2)}")]), src)

    server = asyncio.ensure_future(serve())
    try:
        async with running_trunk(registrar.port, register=True, register_expires=2) as trunk:
            assert trunk.registered
            await until(lambda: len(seen) >= 2, 5, "the refreshing REGISTER")
            assert len(seen) >= 2 and trunk.registered
            assert not [t for t in threading.enumerate() if t.name.startswith("SIP Register")]
            (t0, first), (t1, second) = seen[0], seen[1]
            assert second.call_id == first.call_id and second.from_tag == first.from_tag
            assert second.cseq.seq == first.cseq.seq + 1 and second.top_via.branch != first.top_via.branch
            assert t1 - t0 < 2.0  # before the 2 s binding expired
        last = seen[-1][1]
        assert last.headers.get("Expires") == "0" and last.cseq.seq > second.cseq.seq
    finally:
        server.cancel()
        registrar.close()
