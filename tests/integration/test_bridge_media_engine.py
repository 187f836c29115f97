"""The shared RTP engine through the whole bridge (jego dial -> jego serve -> SIP leg -> a peer):

- a strict UAS written here answers the bridge's INVITE with ``a=ptime:30`` and sends 30 ms
  G.711 packets of a tone; the app (``jego dial --record``) must hear all of it, judged by
  frequency, level, duration and continuity (pyVoIP's RTP client took one payload per 20 ms
  tick and lost a third);
- the same peer answers the leg's RTCP SRs with crafted RRs: their loss, jitter and LSR/DLSR
  reach the call record as ``phone.remote_loss``, ``jitter_ms`` and ``rtt_ms``;
- a separate ``jego bridge`` worker has the same threads with 1 call as with 6 (no thread
  per call on the SIP side).

Run alone in a private network namespace:
    unshare -n -- bash -c 'ip link set lo up && exec .venv/bin/python -m pytest tests/integration/test_bridge_media_engine.py -q'
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bridge.rtp import g711
from bridge.rtp.packet import RtpPacket
from bridge.rtp.rtcp import (
    ReceiverReport,
    ReportBlock,
    RtcpError,
    SenderReport,
    build_compound,
    ntp_middle,
    parse_compound,
)
from bridge.sip.message import SipRequest, SipResponse, make_response, parse_message
from bridge.sip.sdp import NegotiatedAudio, answer_offer
from jego_call.media import analysis
from tests.conftest import PASSWORD, ROOT, LiveServer, make_user, start_server, top_up
from tests.helpers import until

from .bridge_util import PLAIN, carrier_config, free_port
from .test_dial import DIAL, _env

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

HOST = "127.0.0.1"
TONE_HZ = 1000.0
TONE_DBFS = -10.0
TONE_S = 3.0
PTIME_MS = 30
PEER_LOSS = 7  # what the peer's RRs claim it lost of ours
PEER_JITTER = 160  # timestamp units: 20 ms
PEER_HOLD_S = 0.05  # the peer holds each SR this long before its RR (DLSR)


class PtimePeer(asyncio.DatagramProtocol):
    """A strict UAS (bridge/sip parses every message; a malformed one fails the test) that answers
    with ptime 30, sends 30 ms PCMU packets of a tone after the ACK, and answers each RTCP SR
    from the leg with an RR naming it (LSR) after ``PEER_HOLD_S`` (DLSR)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.rtp: socket.socket | None = None
        self.rtcp: socket.socket | None = None
        self.invite: SipRequest | None = None
        self.media: NegotiatedAudio | None = None
        self.acked = asyncio.Event()
        self.bye = asyncio.Event()
        self.sent_packets = 0
        self.srs: list[SenderReport] = []
        self.rtp_from_leg = 0
        self.tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls) -> PtimePeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=(HOST, 0))
        for _ in range(50):  # an RTP port with its RTCP port + 1
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.bind((HOST, 0))
            port = rtp.getsockname()[1]
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind((HOST, port + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            rtp.setblocking(False)
            rtcp.setblocking(False)
            peer.rtp, peer.rtcp = rtp, rtcp
            loop.add_reader(rtp.fileno(), peer._rtp_in)
            loop.add_reader(rtcp.fileno(), peer._rtcp_in)
            return peer
        raise RuntimeError("no RTP/RTCP port pair")

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None and self.rtp is not None
        if not data.strip():
            return
        msg = parse_message(data)
        if isinstance(msg, SipResponse):
            return
        if msg.method == "INVITE" and self.invite is None:
            self.invite = msg
            self.transport.sendto(make_response(msg, 100).serialise(), addr)
            ans = answer_offer(msg.body, address=HOST, port=self.rtp.getsockname()[1], supported=("PCMU",),
                               ptime=PTIME_MS)
            self.media = ans.audio
            ok = make_response(msg, 200, to_tag="ptimepeer", body=ans.sdp.serialize().encode(),
                               content_type="application/sdp", headers=[("Contact", f"<sip:peer@{HOST}:{self.port}>")])
            self.transport.sendto(ok.serialise(), addr)
        elif msg.method == "ACK":
            if not self.acked.is_set():
                self.acked.set()
                self.tasks.append(asyncio.ensure_future(self._send_tone()))
        elif msg.method == "BYE":
            self.transport.sendto(make_response(msg, 200, to_tag="ptimepeer").serialise(), addr)
            self.bye.set()
        elif msg.method in ("OPTIONS", "CANCEL"):
            self.transport.sendto(make_response(msg, 200, to_tag="ptimepeer").serialise(), addr)

    async def _send_tone(self) -> None:
        assert self.rtp is not None and self.media is not None and self.media.remote is not None
        loop = asyncio.get_running_loop()
        n = 8000 * PTIME_MS // 1000
        count = int(TONE_S * 1000 / PTIME_MS)
        t = np.arange(n * count) / 8000
        pcm = np.rint(32767 * 10 ** (TONE_DBFS / 20) * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16)
        # the leg's media runs (25 of its packets, 0.5 s of its clock) before the tone: the app joins meanwhile
        await until(lambda: self.rtp_from_leg >= 25, 10, "the leg's RTP")
        t0 = loop.time()
        for i in range(count):
            await asyncio.sleep(max(0.0, t0 + i * PTIME_MS / 1000 - loop.time()))   # pacing: 30 ms packets
            pkt = RtpPacket(0, 1000 + i, 50_000 + i * n, 0x30303030, g711.ulaw_encode(pcm[i * n:(i + 1) * n]),
                            marker=i == 0)
            self.rtp.sendto(pkt.serialize(), self.media.remote)
            self.sent_packets += 1

    def _rtp_in(self) -> None:
        assert self.rtp is not None
        while True:
            try:
                self.rtp.recvfrom(4096)
            except BlockingIOError:
                return
            self.rtp_from_leg += 1

    def _rtcp_in(self) -> None:
        assert self.rtcp is not None
        while True:
            try:
                data, addr = self.rtcp.recvfrom(4096)
            except BlockingIOError:
                return
            try:
                packets = parse_compound(data)  # strict: the leg's RTCP must be valid
            except RtcpError as exc:
                raise AssertionError(f"invalid RTCP from the leg: {exc}") from exc
            for p in packets:
                if isinstance(p, SenderReport):
                    self.srs.append(p)
                    asyncio.get_running_loop().call_later(PEER_HOLD_S, self._answer_sr, p, addr)

    def _answer_sr(self, sr: SenderReport, addr: tuple[str, int]) -> None:
        assert self.rtcp is not None
        block = ReportBlock(sr.ssrc, fraction_lost=0, cumulative_lost=PEER_LOSS, highest_seq=sr.packet_count,
                            jitter=PEER_JITTER, lsr=ntp_middle(sr.ntp), dlsr=int(PEER_HOLD_S * 65536))
        with_block = build_compound([ReceiverReport(0x30303030, (block,))])
        self.rtcp.sendto(with_block, addr)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for t in self.tasks:
            t.cancel()
        for s in (self.rtp, self.rtcp):
            if s is not None:
                loop.remove_reader(s.fileno())
                s.close()
        if self.transport is not None:
            self.transport.close()


def frame_levels(x: np.ndarray, rate: int) -> np.ndarray:
    """RMS level of each 20 ms frame in dBFS (full-scale square = 0, as analysis.level_dbfs)."""
    n = rate // 50
    fr = x[: len(x) // n * n].reshape(-1, n).astype(np.float64)
    levels: np.ndarray = 20 * np.log10(np.sqrt((fr**2).mean(axis=1)) + 1e-9)
    return levels


async def test_30ms_ptime_peer_is_heard_whole_through_the_bridge(tmp_path: Path) -> None:
    peer = await PtimePeer.open()
    server: LiveServer | None = None
    try:
        server = await asyncio.to_thread(
            start_server, tmp_path, ["--no-carrier"], JEGO_BRIDGE_TRUNK_PORT=str(peer.port),
            JEGO_BRIDGE_REGISTER="false", JEGO_BRIDGE_MEDIA_TIMEOUT_S="10")
        await asyncio.to_thread(make_user, server, "alice")
        await asyncio.to_thread(top_up, server, "alice")   # calls to phones are paid
        live = server
        await until(lambda: "connected to http" in live.log(), 10, "the bridge worker connected")
        out = tmp_path / "app.wav"
        proc = await asyncio.create_subprocess_exec(
            *DIAL, "call", "+8613800138000", "--server", server.url, "--user", "alice", "--password", PASSWORD,
            "--record", str(out), "--duration", "5", "--json", "--quiet", cwd=ROOT, env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        assert json.loads(stdout.decode().strip().splitlines()[-1])["outcome"] == "answered"
        await asyncio.wait_for(peer.bye.wait(), 10)
        assert peer.sent_packets == int(TONE_S * 1000 / PTIME_MS) and peer.rtp_from_leg > 100

        x, rate = analysis.read_wav(out)
        sent_level = TONE_DBFS - 10 * math.log10(2)  # a sine's RMS is 3 dB below its peak
        levels = frame_levels(x, rate)
        on = np.nonzero(levels > sent_level - 20)[0]
        assert len(on), "no tone reached the app"
        span = x[on[0] * rate // 50 : (on[-1] + 1) * rate // 50]
        # all of it, once: 3 s of tone (within the onset/offset frames), no dropout inside
        assert abs(len(span) / rate - TONE_S) < 0.1, len(span) / rate
        assert analysis.active_duration(x, rate) >= 0.97 * TONE_S
        inside = levels[on[0] + 2 : on[-1] - 1]
        assert inside.min() > sent_level - 4, f"dropouts in the tone: min frame level {inside.min():.1f} dBFS"
        steady = span[rate // 10 : -rate // 10]
        freq = analysis.dominant_frequency(steady, rate)
        level = analysis.level_dbfs(steady)
        assert abs(freq - TONE_HZ) <= 0.01 * TONE_HZ and abs(level - sent_level) <= 1.0, (freq, level)

        # RTCP: the leg sent valid SRs; the peer's RRs about them are in the call record
        assert peer.srs and all(sr.packet_count > 0 for sr in peer.srs)
        phone = await _phone_stats(server)
        assert phone["remote_loss"] == PEER_LOSS and phone["jitter_ms"] == 1000 * PEER_JITTER // 8000, phone
        assert 0 <= phone["rtt_ms"] < 100, phone  # loopback: the peer's hold is taken out by DLSR
    finally:
        peer.close()
        if server is not None:
            server.stop()


async def _phone_stats(server: LiveServer) -> dict[str, int]:
    """The call record's phone counters (`jego cdr --json`), once the gateway's report is in."""
    cmd = [sys.executable, "-m", "jego_call.cli.main", "cdr", "--json", "--phone", "--data-dir", str(server.data_dir)]
    last = ""

    async def phone_counters() -> dict[str, int] | None:
        nonlocal last
        res = await asyncio.to_thread(subprocess.run, cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
        last = res.stdout
        rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        if rows and rows[0].get("phone") and "rtt_ms" in rows[0]["phone"]:
            return dict(rows[0]["phone"])
        return None

    try:
        return await until(phone_counters, 20, "the phone's RTCP counters in the call record", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"no phone RTCP counters in the call record: {last}") from exc


# ------------------------------------------------------------------------------------------------
# threads of a worker: 1 call against 6

def native_threads() -> int:
    """Every thread of this process, native ones (FFmpeg, BLAS) included."""
    return len(list(Path("/proc/self/task").iterdir()))


def thread_census() -> tuple[collections.Counter[str], int]:
    """(Python threads by name without their number, native threads that are not Python's)."""
    names = collections.Counter(t.name.rstrip("0123456789_-") or t.name for t in threading.enumerate())
    return names, native_threads() - threading.active_count()


def rtp_sockets(low: int, high: int) -> int:
    """Our UDP sockets bound in [low, high] (the SIP legs' RTP and RTCP ports)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/self/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) > 9 and cols[9] in inodes and low <= int(cols[1].split(":")[1], 16) <= high:
            count += 1
    return count


async def census_with_calls(server: LiveServer, n: int) -> tuple[collections.Counter[str], int]:
    """`n` simultaneous `jego dial` calls (other processes) to an echoing number; our threads
    while every one of them is up (its RTP and RTCP sockets are open)."""
    dials = [await asyncio.create_subprocess_exec(
        *DIAL, "call", PLAIN, "--server", server.url, "--user", f"caller{i}", "--password", PASSWORD,
        "--duration", "14", "--json", "--quiet", "--play", "tone:700", cwd=ROOT, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for i in range(n)]
    # under load the callers' logins (argon2) spread their starts over seconds: each call lasts
    # long enough to overlap the others, and we wait until all are up (or one has ended)
    with contextlib.suppress(AssertionError):   # judged below, once the dialers have told how they ended
        await until(lambda: rtp_sockets(RTP_LOW, RTP_HIGH + 1) >= 2 * n
                    or any(d.returncode is not None for d in dials), 200, f"{n} calls' RTP sockets",
                    interval=0.1)   # each look reads /proc on the loop the worker runs on
    up = rtp_sockets(RTP_LOW, RTP_HIGH + 1)
    # Real time is the subject: a second of media on every call gives a per-call thread (pyVoIP's
    # way) the time to exist before the census is taken.
    await asyncio.sleep(1.0)
    census = thread_census()
    for d in dials:
        out, err = await asyncio.wait_for(d.communicate(), 60)
        res = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
        assert d.returncode == 0, {k: res.get(k) for k in ("outcome", "reason", "detail", "sip_code")}
    assert up >= 2 * n, f"only {up} RTP/RTCP sockets: not all {n} calls came up"
    return census


RTP_LOW, RTP_HIGH = 24000, 24999


@pytest.mark.timeout(300)  # seven `jego dial` processes and their argon2 logins on a shared 2-core box
async def test_worker_threads_do_not_grow_with_calls(tmp_path: Path) -> None:
    from bridge.gateway.pyvoip import PyVoipTrunk, TrunkConfig
    from bridge.gateway.worker import BridgeWorker
    from jego_call.media.endpoint import enable_loopback_candidates

    enable_loopback_candidates()  # as `jego bridge` does with [ice] loopback_candidates

    port = free_port()
    # the six callers log in at once: let the hasher take what it needs (the logins are not measured)
    env = {"JEGO_CARRIER_CONFIG": str(carrier_config(tmp_path, port)), "JEGO_AUTH_HASH_CPU_SHARE": "2.0",
           "JEGO_AUTH_HASH_WORKERS": "2"}
    server = await asyncio.to_thread(start_server, tmp_path, ["--no-bridge"], **env)
    worker: BridgeWorker | None = None
    try:
        for i in range(6):
            await asyncio.to_thread(make_user, server, f"caller{i}")
            await asyncio.to_thread(top_up, server, f"caller{i}")   # calls to phones are paid
        secret = (server.data_dir / "bridge.key").read_text().strip()
        trunk = PyVoipTrunk(TrunkConfig(server_port=port, rtp_port_low=RTP_LOW, rtp_port_high=RTP_HIGH))
        worker = BridgeWorker(server.url, secret, trunk, name="threads", max_calls=8)
        await worker.start()
        await worker.wait_ready(20)
        one_names, one_native = await census_with_calls(server, 1)
        six_names, six_native = await census_with_calls(server, 6)
        print(f"threads with 1 call: {dict(one_names)} + {one_native} native; with 6 calls: {dict(six_names)} + "
              f"{six_native} native")
        # the SIP legs' media runs on the shared engine: no thread per call (pyVoIP: 2 per call)
        assert not [n for n in six_names if n.startswith("RTP")], six_names
        # FFmpeg's per-resampler thread pools are off (transcode.single_threaded_ffmpeg)
        assert six_native <= one_native, (one_native, six_native)
        # the app legs are lean (bridge/net/webrtc.py): aiortc's receiver never starts (no
        # decoder thread) and nothing encodes in an executor, so no thread grows with calls
        # ("asyncio-waitpid" threads watch this test's own `jego dial` subprocesses)
        assert "audio-decoder" not in six_names, six_names
        ours_one = {k: v for k, v in one_names.items() if k != "asyncio-waitpid"}
        ours_six = {k: v for k, v in six_names.items() if k != "asyncio-waitpid"}
        assert ours_six == ours_one, (ours_one, ours_six)
    finally:
        if worker is not None:
            await worker.stop()
        server.stop()
