"""Helpers for the carrier tests: an in-process carrier on free ports, a sipp runner, a small
Python SIP user agent (our own SipEndpoint as the UAC), pcap payload extraction and audio judges.

Everything binds 127.0.0.1 only; sipp always gets -i/-mi 127.0.0.1 and explicit free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import random
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.carrier.cdr import CallRecord, read_records
from bridge.carrier.config import load_carrier_config
from bridge.carrier.service import start_carrier
from bridge.carrier.trunk import Carrier
from bridge.net.sip_transport import SipTransport
from bridge.rtp import g711
from bridge.sip.auth import build_authorization, parse_challenge
from bridge.sip.dialog import DialogId
from bridge.sip.endpoint import (
    EndpointConfig,
    RequestReceived,
    ResponseReceived,
    SipEndpoint,
    SipEvent,
    TransactionTimeout,
)
from bridge.sip.message import SipRequest, SipResponse, new_request, random_token
from bridge.sip.transaction import TimerConfig, TransactionKey
from bridge.sip.uri import NameAddr, SipUri
from tests.helpers import until

ROOT = Path(__file__).resolve().parents[2]
SIPP = shutil.which("sipp")
SIPP_DIR = ROOT / "tests" / "sipp"
PCAP_DIR = Path("/usr/share/sip-tester")
SPEECH_PCAP = SIPP_DIR / "speech_pcma_20ms.pcap"
USER, PASSWORD = "jego", "jego-trunk-secret"
HOST = "127.0.0.1"


def free_port(span: int = 1) -> int:
    """A port p with p..p+span-1 free for UDP and TCP on 127.0.0.1 (even when span > 1)."""
    for _ in range(200):
        p = random.randrange(20000, 60000, 2)
        socks: list[socket.socket] = []
        try:
            for q in range(p, p + span):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((HOST, q))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port")


@contextlib.asynccontextmanager
async def running_carrier(data_dir: Path, *, sip: dict[str, Any] | None = None, max_calls: int | None = None,
                          t1: float | None = None, control: bool = False,
                          media: dict[str, Any] | None = None) -> AsyncIterator[Carrier]:
    """A Carrier from config/carrier.toml on 127.0.0.1, port 0, with [sip] (and [media]) overrides."""
    overrides: dict[str, dict[str, Any]] = {"sip": {"port": 0, **(sip or {})}}
    if media:
        overrides["media"] = media
    cfg = load_carrier_config(overrides=overrides)
    if max_calls is not None:
        cfg = dataclasses.replace(cfg, trunks=tuple(dataclasses.replace(t, max_calls=max_calls)
                                                    for t in cfg.trunks))
    service = await start_carrier(cfg, data_dir, control=control, host=HOST, port=0,
                                  timers=TimerConfig(t1=t1) if t1 else None)
    try:
        yield service.carrier
    finally:
        await service.stop()


async def wait_records(carrier: Carrier, n: int, timeout: float = 15.0) -> list[CallRecord]:
    """Wait until cdr.jsonl holds at least n records (and the carrier is idle); return them."""
    def enough() -> list[CallRecord] | None:
        records = read_records(carrier.cdr.path)
        return records if len(records) >= n else None

    try:
        return await until(enough, timeout, f"{n} call records", interval=0.05)
    except AssertionError as exc:
        got = len(read_records(carrier.cdr.path))
        raise AssertionError(f"{got} call records after {timeout} s, expected {n}") from exc


# --------------------------------------------------------------------------------------------
# sipp


@dataclass
class SippRun:
    rc: int
    output: str
    stats: dict[str, str]
    messages: str
    errors: str


async def run_sipp(carrier: Carrier, scenario: str, service: str, workdir: Path, *extra: str,
                   calls: int = 1, rate: float | None = None, limit: int = 1, timeout: float = 90.0,
                   password: str = PASSWORD, trace_msg: bool = False) -> SippRun:
    """Run tests/sipp/<scenario> against `carrier` (UDP) and collect exit code, final stats
    (the last -trace_stat CSV row) and, with trace_msg, the message log."""
    assert SIPP is not None
    tag = f"{Path(scenario).stem}-{random_token(3)}"
    stat_file = workdir / f"{tag}.csv"
    msg_file = workdir / f"{tag}.msg"
    err_file = workdir / f"{tag}.err"
    args = [SIPP, f"{HOST}:{carrier.udp_port}", "-sf", str(SIPP_DIR / scenario), "-s", service,
            "-i", HOST, "-mi", HOST, "-p", str(free_port()), "-mp", str(free_port(4)),
            "-au", USER, "-ap", password, "-m", str(calls), "-l", str(limit), "-nostdin",
            "-trace_err", "-error_file", str(err_file), "-trace_stat", "-stf", str(stat_file), "-fd", "60"]
    if rate is not None:
        args += ["-r", f"{rate:g}"]
    if trace_msg:
        args += ["-trace_msg", "-message_file", str(msg_file)]
    args += list(extra)
    # cwd = the repository root: scenarios name their pcap files relative to it.
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, cwd=ROOT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"sipp {scenario} did not finish within {timeout} s") from None
    stats: dict[str, str] = {}
    if stat_file.exists():
        rows = list(csv.reader(io.StringIO(stat_file.read_text()), delimiter=";"))
        if len(rows) >= 2:
            stats = dict(zip(rows[0], rows[-1], strict=False))
    return SippRun(proc.returncode or 0, out.decode(errors="replace"), stats,
                   msg_file.read_text(errors="replace") if msg_file.exists() else "",
                   err_file.read_text(errors="replace") if err_file.exists() else "")


# --------------------------------------------------------------------------------------------
# a Python UA on our own SIP stack


class Uac:
    """A minimal UA: `register()`, `invite(number, sdp)`, `options()`, raw requests; answers
    401/407 challenges with the trunk credentials. `events` not consumed yet stay in a backlog."""

    def __init__(self, carrier_port: int, *, username: str = USER, password: str = PASSWORD,
                 transport: str = "udp", auto_ack: bool = True, t1: float = 0.5) -> None:
        self.username, self.password, self.transport = username, password, transport
        self.ep = SipEndpoint(EndpointConfig(auto_ack=auto_ack, timers=TimerConfig(t1=t1),
                                             allow=("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS")),
                              host=HOST, port=0)
        self.tr = SipTransport(self.ep, HOST, 0)
        self.dest = (HOST, carrier_port)
        self.backlog: list[SipEvent] = []
        self.from_tag = random_token(4)
        self.last_dialog: DialogId | None = None

    async def __aenter__(self) -> Uac:
        await self.tr.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tr.close()

    def now(self) -> float:
        return self.tr.now()

    async def next(self, pred: Callable[[SipEvent], bool], timeout: float = 5.0) -> SipEvent:
        for i, ev in enumerate(self.backlog):
            if pred(ev):
                return self.backlog.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no matching SIP event within {timeout} s; backlog {self.backlog}")
            try:
                ev = await asyncio.wait_for(self.tr.events.get(), left)
            except TimeoutError:
                continue
            if pred(ev):
                return ev
            self.backlog.append(ev)

    async def response(self, key: TransactionKey, timeout: float = 5.0) -> SipResponse:
        ev = await self.next(lambda e: isinstance(e, (ResponseReceived, TransactionTimeout)) and e.key == key,
                             timeout)
        if isinstance(ev, TransactionTimeout):
            raise AssertionError("transaction timed out")
        assert isinstance(ev, ResponseReceived)
        if ev.dialog is not None:
            self.last_dialog = ev.dialog
        return ev.response

    async def final(self, key: TransactionKey, timeout: float = 10.0) -> tuple[SipResponse, list[SipResponse]]:
        prov: list[SipResponse] = []
        while True:
            resp = await self.response(key, timeout)
            if resp.status >= 200:
                return resp, prov
            prov.append(resp)

    def send(self, req: SipRequest) -> TransactionKey:
        key = self.ep.send_request(req, self.dest, self.now(), transport=self.transport)
        self.tr.flush()
        return key

    def build(self, method: str, uri: str, *, call_id: str, cseq: int, to: str | None = None,
              headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> SipRequest:
        me = NameAddr(SipUri("sip", self.username, HOST, self.tr.udp_port))
        return new_request(method, uri, from_=me.with_tag(self.from_tag), to=to or f"<{uri}>", call_id=call_id,
                           cseq=cseq, contact=NameAddr(SipUri("sip", self.username, HOST, self.tr.udp_port)),
                           headers=headers, body=body, content_type="application/sdp" if body else None)

    async def authed(self, method: str, uri: str, *, to: str | None = None, password: str | None = None,
                     headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                     stop: Callable[[SipResponse], bool] | None = None,
                     call_id: str | None = None) -> tuple[SipResponse, list[SipResponse], SipRequest, TransactionKey]:
        """Send, answer one 401/407, return (response, provisionals, request, key). `stop` ends
        the wait early on a provisional response (e.g. the first 180)."""
        call_id = call_id or random_token(8)
        cseq = 1
        creds: tuple[tuple[str, str], ...] = ()
        while True:
            req = self.build(method, uri, call_id=call_id, cseq=cseq, to=to, headers=headers + creds, body=body)
            key = self.send(req)
            prov: list[SipResponse] = []
            while True:
                resp = await self.response(key, 15.0)
                if resp.status >= 200 or (stop is not None and stop(resp)):
                    break
                prov.append(resp)
            if resp.status in (401, 407) and not creds:
                name = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
                value = build_authorization(parse_challenge(resp.headers.get(name) or ""), method=method,
                                            uri=uri, username=self.username,
                                            password=self.password if password is None else password)
                creds = (("Authorization" if resp.status == 401 else "Proxy-Authorization", value),)
                cseq += 1
                continue
            return resp, prov, req, key

    async def register(self, expires: int = 300, password: str | None = None) -> SipResponse:
        resp, _, _, _ = await self.authed("REGISTER", f"sip:{HOST}:{self.dest[1]}",
                                          to=f"<sip:{self.username}@{HOST}:{self.dest[1]}>",
                                          headers=(("Expires", str(expires)),), password=password)
        return resp

    def invite_uri(self, number: str) -> str:
        return f"sip:{number}@{HOST}:{self.dest[1]};user=phone"

    def answer(self, ev: RequestReceived, status: int, *, body: bytes = b"") -> None:
        self.ep.respond(ev.key, status, self.now(), body=body, content_type="application/sdp" if body else None)
        self.tr.flush()

    def bye(self, dialog: DialogId) -> TransactionKey:
        key = self.ep.send_in_dialog(dialog, "BYE", self.now())
        self.tr.flush()
        return key

    async def incoming(self, method: str, timeout: float = 10.0) -> RequestReceived:
        ev = await self.next(lambda e: isinstance(e, RequestReceived) and e.request.method == method, timeout)
        assert isinstance(ev, RequestReceived)
        return ev


# --------------------------------------------------------------------------------------------
# audio


def pcap_rtp(path: Path, payload_type: int | None = None) -> list[bytes]:
    """RTP payloads (in file order) of the UDP packets in a classic libpcap file."""
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {1: 14, 113: 16, 101: 0, 0: 4}.get(linktype, 14)
    out: list[bytes] = []
    pos = 24
    while pos + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[pos:pos + 16])[2]
        pkt = data[pos + 16: pos + 16 + incl]
        pos += 16 + incl
        ip = pkt[link_len:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4:]
        rtp = udp[8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            continue
        pt = rtp[1] & 0x7F
        if payload_type is not None and pt != payload_type:
            continue
        out.append(rtp[12 + 4 * (rtp[0] & 0x0F):])
    return out


def pcap_audio(path: Path, codec: str = "PCMA") -> np.ndarray:
    """The decoded audio of a G.711 pcap (PT 8 for PCMA, 0 for PCMU) as int16 at 8 kHz."""
    pt = 8 if codec == "PCMA" else 0
    decode = g711.decoder_for(codec)
    return np.concatenate([decode(p) for p in pcap_rtp(path, pt)])


def best_correlation(reference: np.ndarray, recording: np.ndarray) -> float:
    """Max normalised cross-correlation of `reference` found anywhere in `recording` (0..1)."""
    ref = reference.astype(np.float64)
    rec = recording.astype(np.float64)
    if len(rec) < len(ref):
        rec = np.pad(rec, (0, len(ref) - len(rec)))
    n = 1 << int(np.ceil(np.log2(len(rec) + len(ref))))
    corr = np.fft.irfft(np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n)), n)[: len(rec) - len(ref) + 1]
    energy = np.convolve(rec**2, np.ones(len(ref)), mode="valid")
    denom = np.sqrt(np.maximum(energy, 1e-6 * float(np.sum(ref**2))) * float(np.sum(ref**2))) + 1e-9
    return float(np.max(corr / denom))


def segment(samples: np.ndarray, start_s: float, end_s: float, rate: int = 8000) -> np.ndarray:
    return samples[int(start_s * rate): int(end_s * rate)]
