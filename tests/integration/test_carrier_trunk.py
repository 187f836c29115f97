"""The carrier driven by our own SIP stack as the caller: digest challenges and the lockout,
OPTIONS keep-alives, 481, numbering and Reason causes, max_calls, a tone-then-echo call judged by
content with DTMF in the CDR, early-media announcements, a bad ACK, the media-inactivity BYE,
calls from the carrier to a registered UA (`jego carrier call`), and the carrier in `jego serve`."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.carrier.cdr import read_records
from bridge.carrier.media import Echo, RtpStream, Tone, load_wav, measure_tone
from bridge.sip.causes import parse_reason_header
from bridge.sip.endpoint import ResponseReceived
from bridge.sip.message import random_token
from bridge.sip.sdp import build_offer, negotiated_from_answer

from ..conftest import ROOT, start_server
from .carrier_util import HOST, Uac, running_carrier, segment, wait_records

pytestmark = pytest.mark.timeout(90)


def cause_of(resp: object) -> int | None:
    for value in resp.headers.get_all("Reason"):  # type: ignore[attr-defined]
        for proto, cause, _ in parse_reason_header(value):
            if proto == "Q.850":
                return cause
    return None


async def test_register_and_invite_are_challenged(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data") as carrier, Uac(carrier.udp_port) as ua:
        key = ua.send(ua.build("REGISTER", f"sip:{HOST}:{carrier.udp_port}", call_id="r1", cseq=1,
                               to=f"<sip:jego@{HOST}>", headers=(("Expires", "300"),)))
        resp = await ua.response(key)
        assert resp.status == 401
        assert re.match(r'Digest realm="carrier.jego.test", nonce="[0-9a-f]{60}", algorithm=MD5, qop="auth"',
                        resp.headers.get("WWW-Authenticate") or "")
        ok = await ua.register(expires=300)
        assert ok.status == 200
        contact = ok.headers.get("Contact") or ""
        assert f"sip:jego@{HOST}:{ua.tr.udp_port}" in contact and re.search(r"expires=(29\d|300)\b", contact)
        [binding] = carrier.status()["registrations"]
        assert binding["account"] == "jego" and binding["source"] == f"{HOST}:{ua.tr.udp_port}"

        too_short = await ua.register(expires=10)
        assert too_short.status == 423 and too_short.headers.get("Min-Expires") == "60"

        key = ua.send(ua.build("INVITE", ua.invite_uri("+8613800138000"), call_id="i1", cseq=1))
        resp, _ = await ua.final(key)
        assert resp.status == 407 and (resp.headers.get("Proxy-Authenticate") or "").startswith("Digest ")

        unregister = await ua.register(expires=0)
        assert unregister.status == 200 and carrier.status()["registrations"] == []


async def test_twenty_failures_lock_the_source_out(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", sip={"auth_window_s": 3.0}) as carrier, \
            Uac(carrier.udp_port) as ua:
        codes = [(await ua.register(password="wrong-password")).status for _ in range(20)]
        assert codes == [401] * 19 + [403]
        good = await ua.register()  # the right password no longer helps ...
        assert good.status == 403 and good.headers.get("WWW-Authenticate") is None
        key = ua.send(ua.build("INVITE", ua.invite_uri("+8613800138000"), call_id="x", cseq=1))
        resp, _ = await ua.final(key)
        assert resp.status == 403 and resp.headers.get("Proxy-Authenticate") is None
        key = ua.send(ua.build("OPTIONS", f"sip:{HOST}:{carrier.udp_port}", call_id="o", cseq=1))
        assert (await ua.response(key)).status == 200  # ... but keep-alives are still answered
        assert carrier.stats["auth_failures"] >= 20
        await asyncio.sleep(3.1)  # the window passes: real time is what lifts the ban
        assert (await ua.register()).status == 200


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_options_keepalive_and_481(tmp_path: Path, transport: str) -> None:
    async with running_carrier(tmp_path / "data") as carrier, Uac(carrier.udp_port, transport=transport) as ua:
        uri = f"sip:{HOST}:{carrier.udp_port}"
        key = ua.send(ua.build("OPTIONS", uri, call_id="ka", cseq=1))
        resp = await ua.response(key)
        assert resp.status == 200 and "INVITE" in (resp.headers.get("Allow") or "")
        key = ua.send(ua.build("BYE", ua.invite_uri("+8613800138000"), call_id="nope", cseq=2,
                               to=f"<{ua.invite_uri('+8613800138000')}>;tag=unknown"))
        assert (await ua.response(key)).status == 481
        key = ua.send(ua.build("BYE", ua.invite_uri("+8613800138000"), call_id="nope2", cseq=2))
        assert (await ua.response(key)).status == 481
        assert (await ua.register()).status == 200
        assert carrier.status()["registrations"][0]["transport"] == transport


@pytest.mark.parametrize(("user", "code", "cause", "number"), [
    ("+8613900000503", 503, 34, "+8613900000503"),
    ("008613900000503", 503, 34, "+8613900000503"),
    ("8613900000503", 503, 34, "+8613900000503"),
    ("+8613900000408", 408, 18, "+8613900000408"),
    ("+86110", 404, 1, "+86110"),
    ("119", 404, 1, "+86119"),
    ("+86120", 404, 1, "+86120"),
    ("+86122", 404, 1, "+86122"),
    ("+868008123456", 403, 21, "+868008123456"),
    ("+864008123456", 403, 21, "+864008123456"),
    ("+441234567890", 403, 21, "+441234567890"),
    ("+86138", 484, 28, "+86138"),
    ("12ab", 484, 28, None),
    ("+862612345678", 484, 28, "+862612345678"),
])
async def test_numbers_get_the_configured_code_and_cause(tmp_path: Path, user: str, code: int, cause: int,
                                                         number: str | None) -> None:
    async with running_carrier(tmp_path / "data", sip={"no_response_s": 0.5}) as carrier, \
            Uac(carrier.udp_port) as ua:
        resp, _, _, _ = await ua.authed("INVITE", ua.invite_uri(user), body=offer_body())
        assert (resp.status, cause_of(resp)) == (code, cause)
        if code == 503:
            assert resp.headers.get("Retry-After") == "30"
        [rec] = await wait_records(carrier, 1)
    assert (rec.sip_code, rec.q850_cause) == (code, cause)
    if number is not None:
        assert rec.to == number


def offer_body(port: int = 40000, codecs: tuple[str, ...] = ("PCMU", "PCMA")) -> bytes:
    return build_offer(HOST, port, codecs=codecs).serialize().encode()


async def test_max_calls_per_trunk(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", max_calls=1) as carrier, Uac(carrier.udp_port) as ua:
        first, _, _, key = await ua.authed("INVITE", ua.invite_uri("+8613900000480"), body=offer_body(),
                                           stop=lambda r: r.status == 180)
        assert first.status == 180
        second, _, _, _ = await ua.authed("INVITE", ua.invite_uri("+8613800138000"), body=offer_body())
        assert (second.status, cause_of(second)) == (503, 34)
        ua.ep.send_cancel(key, ua.now())
        ua.tr.flush()
        final, _ = await ua.final(key)
        assert final.status == 487
        third, _, _, _ = await ua.authed("INVITE", ua.invite_uri("+8613900000486"), body=offer_body())
        assert third.status == 486  # the slot is free again


async def test_tone_then_echo_with_dtmf_and_call_record(tmp_path: Path) -> None:
    """+861065529988: 2 s of 440 Hz after answering, then it echoes our 1000 Hz tone."""
    async with running_carrier(tmp_path / "data") as carrier, Uac(carrier.udp_port) as ua:
        stream = await RtpStream.create(host=HOST, record_path=tmp_path / "caller.wav")
        offer = build_offer(HOST, stream.local_port, codecs=("PCMU", "PCMA"))
        resp, prov, _, _ = await ua.authed("INVITE", ua.invite_uri("+861065529988"),
                                           body=offer.serialize().encode())
        assert resp.status == 200
        assert [p.status for p in prov] == [100, 180, 183] and prov[2].body  # 183 carries SDP
        assert ua.last_dialog is not None
        stream.configure(negotiated_from_answer(resp.body, offer))
        stream.start()
        # the number's scenario speaks first (440 Hz to 1.7 s); our tone follows: the recording is
        # judged at those offsets, so the schedule in real time is the subject
        await asyncio.sleep(2.2)
        await stream.play(Tone(1000.0, -10.0, 2.0))
        await stream.send_dtmf("12#")
        key = ua.bye(ua.last_dialog)
        assert (await ua.response(key)).status == 200
        await stream.close()
        [rec] = await wait_records(carrier, 1)

    heard, _ = load_wav(tmp_path / "caller.wav")
    f440, level440 = measure_tone(segment(heard, 0.3, 1.7))
    assert abs(f440 - 440) < 5 and -13 < level440 < -7
    f1k, level1k = measure_tone(segment(heard, 2.7, 3.9))  # our tone, echoed
    assert abs(f1k - 1000) < 5 and -13 < level1k < -7
    assert (rec.to, rec.number_type, rec.area, rec.codec) == ("+861065529988", "fixed", "10 Beijing", "PCMU")
    assert (rec.sip_code, rec.q850_cause, rec.outcome, rec.dtmf) == (200, 16, "hangup", "12#")
    assert rec.recording is not None
    carrier_heard, _ = load_wav(rec.recording)
    # The carrier's recording starts at the 183; our tone began about 1 s + 2.2 s later.
    loud = np.flatnonzero(np.abs(carrier_heard) > 3000)
    assert len(loud) > 8000
    f, level = measure_tone(carrier_heard[loud[0] + 800: loud[0] + 8800])
    assert abs(f - 1000) < 5 and -13 < level < -7


async def test_busy_plays_the_announcement_as_early_media(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data") as carrier, Uac(carrier.udp_port) as ua:
        stream = await RtpStream.create(host=HOST, record_path=tmp_path / "early.wav")
        offer = build_offer(HOST, stream.local_port)
        resp, _, _, key = await ua.authed("INVITE", ua.invite_uri("+8613900000486"),
                                          body=offer.serialize().encode(), stop=lambda r: r.status == 183)
        assert resp.status == 183 and resp.body
        stream.configure(negotiated_from_answer(resp.body, offer))
        stream.start()
        final, _ = await ua.final(key)
        assert (final.status, cause_of(final)) == (486, 17)
        await stream.close()
    heard, _ = load_wav(tmp_path / "early.wav")
    # ITU-T E.180 special information tone: 950, 1400, 1800 Hz, 330 ms each.
    loud = np.flatnonzero(np.abs(heard) > 2000)
    assert len(loud) > 0.6 * 8000, "no announcement heard"
    start = loud[0]
    freqs = [measure_tone(heard[start + i * 2880 + 400: start + i * 2880 + 2400])[0] for i in range(3)]
    assert [round(f / 50) * 50 for f in freqs] == [950, 1400, 1800]


async def test_bad_ack_is_counted_and_200_keeps_coming(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", t1=0.1) as carrier, \
            Uac(carrier.udp_port, auto_ack=False) as ua:
        resp, _, req, key = await ua.authed("INVITE", ua.invite_uri("+8613800138000"), body=offer_body())
        assert resp.status == 200 and ua.last_dialog is not None
        did = ua.last_dialog
        ack = ua.ep.dialog(did).create_ack()  # type: ignore[union-attr]
        ack.headers.set("To", re.sub(r"tag=[^;>]+", "tag=wrongtag", ack.headers.get("To") or ""))
        ack.headers.add("Via", f"SIP/2.0/UDP {HOST}:{ua.tr.udp_port};branch=z9hG4bK{random_token(6)}",
                        first=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            s.sendto(ack.serialise(), (HOST, carrier.udp_port))
        retransmitted = 0
        for _ in range(3):
            ev = await ua.next(lambda e: isinstance(e, ResponseReceived) and e.key == key, 3.0)
            assert isinstance(ev, ResponseReceived) and ev.response.status == 200
            retransmitted += 1
        assert carrier.stats["bad_acks"] >= 1 and retransmitted == 3
        ua.ep.send_ack(did, ua.now())  # the right ACK stops it
        ua.tr.flush()
        await asyncio.sleep(1.0)   # a negative: no ACK timeout fires while time passes
        assert carrier.stats["ack_timeouts"] == 0
        ua.bye(did)
        [rec] = await wait_records(carrier, 1)
    assert rec.outcome == "hangup"


async def test_media_inactivity_sends_bye(tmp_path: Path) -> None:
    async with running_carrier(tmp_path / "data", sip={"media_timeout_s": 1.0}) as carrier, \
            Uac(carrier.udp_port) as ua:
        resp, _, _, _ = await ua.authed("INVITE", ua.invite_uri("+8613800138000"), body=offer_body())
        assert resp.status == 200  # and we never send RTP
        bye = await ua.incoming("BYE", timeout=5.0)
        assert cause_of(bye.request) == 41
        ua.answer(bye, 200)
        [rec] = await wait_records(carrier, 1)
    assert (rec.outcome, rec.q850_cause, rec.sip_code) == ("media_timeout", 41, 200)
    assert carrier.stats["media_timeouts"] == 1


def write_tone_wav(path: Path, freq: float, seconds: float) -> None:
    t = np.arange(int(8000 * seconds)) / 8000
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())


async def test_jego_carrier_call_reaches_the_registered_ua(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tone = tmp_path / "tone.wav"
    write_tone_wav(tone, 700.0, 2.0)
    async with running_carrier(data, control=True) as carrier, Uac(carrier.udp_port) as ua:
        assert (await ua.register()).status == 200
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jego_call.cli.main", "carrier", "call", "+8613800138000", "+4915112345678",
            "--play", str(tone), "--duration", "3", "--json", "--data-dir", str(data),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        invite = await ua.incoming("INVITE", timeout=15.0)
        req = invite.request
        assert req.from_.uri.user == "+8613800138000" and req.to.uri.user == "+4915112345678"  # type: ignore[union-attr]
        assert req.headers.get("Proxy-Authorization") is None and invite.addr[1] == carrier.udp_port
        stream, ans = await RtpStream.answer(req.body, host=HOST, record_path=tmp_path / "app.wav")
        stream.play(Echo())
        ua.answer(invite, 180)
        ua.answer(invite, 200, body=ans.sdp.serialize().encode())
        bye = await ua.incoming("BYE", timeout=10.0)
        ua.answer(bye, 200)
        await stream.close()
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        result = json.loads(out)
        assert (result["code"], result["answered"], result["outcome"]) == (200, True, "hangup")
        assert 2.5 < result["duration_s"] < 4.5
        records = await wait_records(carrier, 1)
    app_heard, _ = load_wav(tmp_path / "app.wav")
    loud = np.flatnonzero(np.abs(app_heard) > 3000)
    f, _ = measure_tone(app_heard[loud[0] + 800: loud[0] + 8800])
    assert abs(f - 700) < 5  # the app heard the file ...
    carrier_heard, _ = load_wav(result["recording"])
    loud = np.flatnonzero(np.abs(carrier_heard) > 3000)
    f, _ = measure_tone(carrier_heard[loud[0] + 800: loud[0] + 8800])
    assert abs(f - 700) < 5  # ... and the carrier recorded its echo
    assert records[0].behaviour == "inbound" and records[0].from_ == "+8613800138000"


async def test_jego_carrier_call_without_carrier_or_registration(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jego_call.cli.main", "carrier", "call", "+8613800138000", "+4915112345678",
        "--data-dir", str(tmp_path / "nothing"), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    _, err = await proc.communicate()
    assert proc.returncode == 3 and b"no carrier is running" in err
    async with running_carrier(tmp_path / "data", control=True):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jego_call.cli.main", "carrier", "call", "+8613800138000", "+4915112345678",
            "--data-dir", str(tmp_path / "data"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        _, err = await proc.communicate()
    assert proc.returncode == 3 and b"register the bridge first" in err


def test_jego_serve_runs_the_carrier(tmp_path: Path) -> None:
    conf = tmp_path / "carrier.toml"
    conf.write_text((ROOT / "config" / "carrier.toml").read_text().replace("port = 5060 ", "port = 0 ", 1))
    server = start_server(tmp_path, ["--no-bridge"], JEGO_CARRIER_CONFIG=str(conf))
    try:
        m = re.search(r"Simulated carrier: SIP udp/tcp 127\.0\.0\.1:(\d+)", server.log())
        assert m, server.log()
        port = int(m.group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            s.settimeout(5)
            me = s.getsockname()[1]
            s.sendto((f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bKserve1\r\n"
                      f"From: <sip:probe@{HOST}>;tag=1\r\nTo: <sip:{HOST}>\r\nCall-ID: serve-probe\r\n"
                      "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), (HOST, port))
            assert s.recv(4096).startswith(b"SIP/2.0 200 ")
        assert (server.data_dir / "carrier" / "control.json").exists()
    finally:
        assert server.stop() == 0
    assert not (server.data_dir / "carrier" / "control.json").exists()
    assert read_records(server.data_dir / "carrier" / "cdr.jsonl") == []
