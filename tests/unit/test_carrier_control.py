"""bridge/carrier/control.py and metrics.py against a stand-in `Carrier`: the control file is
written 0600 with a 127.0.0.1 URL and a token and removed on stop (but never another carrier's),
/healthz and /metrics are open and everything else needs the bearer token, POST /call refuses
bad bodies with 400 and words before anything is placed, and `control_request` names what is
wrong (no carrier, a broken file, a URL off 127.0.0.1, a refusal, nobody listening). The
metrics are the carrier's own counters, read at scrape time.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.carrier.control import ControlError, ControlServer, control_file, control_request
from bridge.carrier.metrics import SIP_EVENTS, carrier_registry
from bridge.carrier.trunk import Carrier


@dataclass
class FakeRegistrar:
    per_user: dict[str, int] = field(default_factory=dict)

    def bindings(self, username: str, now: float) -> list[object]:
        return [object()] * self.per_user.get(username, 0)


@dataclass
class FakeCarrier:
    data_dir: Path
    host: str = "127.0.0.1"
    udp_port: int = 5070
    _calls: dict[str, object] = field(default_factory=dict)
    _out: dict[str, object] = field(default_factory=dict)
    ended: dict[tuple[str, str], int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {"answered": 0, "media_timeouts": 0, "cdr_written": 0})
    media_totals: dict[str, float] = field(default_factory=lambda: {
        "packets_sent": 0, "packets_received": 0, "packets_lost": 0, "on_time": 0, "send_ticks": 0,
        "skipped_ticks": 0})
    registrar: FakeRegistrar = field(default_factory=FakeRegistrar)
    originated: list[dict[str, Any]] = field(default_factory=list)
    fail_with: Exception | None = None
    result: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.cfg = SimpleNamespace(inbound=SimpleNamespace(caller_id="+8610100860"),
                                   trunks=[SimpleNamespace(username="jego"), SimpleNamespace(username="jego2")])

    def now(self) -> float:
        return 1000.0

    def status(self) -> dict[str, Any]:
        return {"calls": len(self._calls), "sip": f"{self.host}:{self.udp_port}"}

    async def originate(self, from_: str, to: str, *, play: str | None, duration: float | None,
                        ring_timeout: float | None) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        call = {"from": from_, "to": to, "play": play, "duration": duration, "ring_timeout": ring_timeout}
        self.originated.append(call)
        return self.result if self.result is not None else {"outcome": "answered", **call}


@pytest.fixture
def carrier(tmp_path: Path) -> FakeCarrier:
    return FakeCarrier(tmp_path / "data")


@pytest.fixture
async def server(carrier: FakeCarrier) -> Any:
    srv = ControlServer(cast(Carrier, carrier))
    await srv.start()
    yield srv
    await srv.stop()


def request(carrier: FakeCarrier, method: str, path: str, body: Any = None) -> Any:
    return asyncio.to_thread(control_request, carrier.data_dir, method, path, body, 10.0)


# --- the control file ------------------------------------------------------------------------------
async def test_the_control_file_says_where_and_is_private(carrier: FakeCarrier, server: ControlServer) -> None:
    path = control_file(carrier.data_dir)
    info = json.loads(path.read_text())
    assert info == {"url": server.url, "token": server.token, "pid": os.getpid(), "sip": "127.0.0.1:5070"}
    assert server.url.startswith("http://127.0.0.1:") and int(server.url.rsplit(":", 1)[1]) > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await server.stop()
    assert not path.exists()


async def test_stop_leaves_another_carriers_file_alone(carrier: FakeCarrier, server: ControlServer) -> None:
    path = control_file(carrier.data_dir)
    other = json.loads(path.read_text()) | {"token": "someone-else"}
    path.write_text(json.dumps(other))
    await server.stop()
    assert json.loads(path.read_text())["token"] == "someone-else"


# --- the HTTP API -----------------------------------------------------------------------------------
async def test_status_needs_the_token_and_gives_the_carriers_status(carrier: FakeCarrier,
                                                                     server: ControlServer) -> None:
    assert await request(carrier, "GET", "/status") == {"calls": 0, "sip": "127.0.0.1:5070"}
    path = control_file(carrier.data_dir)
    info = json.loads(path.read_text())
    path.write_text(json.dumps(info | {"token": info["token"] + "x"}))   # a wrong token
    with pytest.raises(ControlError, match="carrier refused: 401 unauthorised"):
        await request(carrier, "GET", "/status")
    with pytest.raises(ControlError, match="401"):
        await request(carrier, "POST", "/call", {"to": "+8613800138000"})
    assert carrier.originated == []


async def test_healthz_and_metrics_are_open(carrier: FakeCarrier, server: ControlServer) -> None:
    path = control_file(carrier.data_dir)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"token": "wrong"}))
    carrier._calls["c1"] = object()
    assert await request(carrier, "GET", "/healthz") == {"status": "ok", "calls": 1}


async def test_a_call_is_placed_with_the_default_caller_id(carrier: FakeCarrier, server: ControlServer) -> None:
    got = await request(carrier, "POST", "/call", {"to": "+8613800138000", "duration": 2, "ring_timeout": "5"})
    assert got["outcome"] == "answered"
    assert carrier.originated == [{"from": "+8610100860", "to": "+8613800138000", "play": None, "duration": 2.0,
                                   "ring_timeout": 5.0}]
    await request(carrier, "POST", "/call", {"from": "+8610000001", "to": "x"})
    assert carrier.originated[-1]["from"] == "+8610000001"


@pytest.mark.parametrize(("body", "words"), [
    ({}, "bad request"), ({"to": "x", "duration": 0}, "duration must be in (0, 3600]"),
    ({"to": "x", "duration": 3601}, "duration must be in (0, 3600]"), ({"to": "x", "duration": "long"}, "bad request"),
    ({"to": "x", "play": "/nonexistent.wav"}, "no such file: /nonexistent.wav"),
    (["to"], "the body must be a JSON object"), ("+86138", "the body must be a JSON object"),
])
async def test_a_bad_call_request_is_400_with_words_and_nothing_is_placed(carrier: FakeCarrier,
                                                                          server: ControlServer, body: Any,
                                                                          words: str) -> None:
    with pytest.raises(ControlError) as e:
        await request(carrier, "POST", "/call", body)
    assert str(e.value).startswith("carrier refused: 400") and words in str(e.value)
    assert carrier.originated == []


async def test_a_call_the_carrier_cannot_place_is_500_with_its_reason(carrier: FakeCarrier,
                                                                      server: ControlServer) -> None:
    carrier.fail_with = ValueError("no route to +999")
    with pytest.raises(ControlError, match="carrier refused: 500 no route to \\+999"):
        await request(carrier, "POST", "/call", {"to": "+999"})


# --- control_request on its own -------------------------------------------------------------------
def test_without_a_running_carrier_it_says_how_to_start_one(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no carrier is running .* start `jego carrier` or `jego serve`"):
        control_request(tmp_path, "GET", "/status")


@pytest.mark.parametrize(("content", "words"), [("{broken", "cannot read"),
                                                ('{"url": "http://10.0.0.1:80", "token": "t"}',
                                                 "control url must be on 127.0.0.1"),
                                                ('{"token": "t"}', "control url must be on 127.0.0.1")])
def test_a_broken_or_foreign_control_file_is_refused(tmp_path: Path, content: str, words: str) -> None:
    path = control_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ControlError, match=words):
        control_request(tmp_path, "GET", "/status")


def test_nobody_listening_is_cannot_reach(tmp_path: Path) -> None:
    path = control_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"url": "http://127.0.0.1:9", "token": "t"}')
    with pytest.raises(ControlError, match="cannot reach the carrier at http://127.0.0.1:9"):
        control_request(tmp_path, "GET", "/status", timeout=5)


# --- metrics --------------------------------------------------------------------------------------
def samples(carrier: FakeCarrier) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    text = generate_latest(carrier_registry(cast(Carrier, carrier))).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_the_metrics_are_the_carriers_own_counters_read_at_scrape(carrier: FakeCarrier) -> None:
    carrier._calls.update(a=1, b=2)
    carrier._out["c"] = 3
    carrier.ended[("in", "hangup")] = 4
    carrier.ended[("out", "busy")] = 1
    carrier.stats.update(answered=5, invites=9, challenges=2)
    carrier.registrar.per_user.update(jego=1, jego2=2)
    carrier.media_totals.update(packets_sent=100, packets_received=90, packets_lost=3, send_ticks=100, on_time=97,
                                skipped_ticks=1, impaired_dropped=2)
    got = samples(carrier)
    assert got["jego_carrier_calls_active", ()] == 2 and got["jego_carrier_calls_originating", ()] == 1
    assert got["jego_carrier_calls_ended_total", (("direction", "in"), ("outcome", "hangup"))] == 4
    assert got["jego_carrier_calls_ended_total", (("direction", "out"), ("outcome", "busy"))] == 1
    assert got["jego_carrier_calls_answered_total", ()] == 5
    assert got["jego_carrier_sip_events_total", (("event", "invites"),)] == 9
    assert got["jego_carrier_sip_events_total", (("event", "dropped"),)] == 0     # every kind exists
    assert {k[1][0][1] for k in got if k[0] == "jego_carrier_sip_events_total"} == set(SIP_EVENTS)
    assert got["jego_carrier_registrations", ()] == 3
    assert got["jego_carrier_rtp_packets_total", (("direction", "received"),)] == 90
    assert got["jego_carrier_rtp_lost_packets_total", ()] == 3
    assert got["jego_carrier_rtp_impaired_dropped_packets_total", ()] == 2
    assert got["jego_carrier_rtp_send_ticks_total", (("timing", "late"),)] == 3
    assert got["jego_carrier_rtp_send_ticks_total", (("timing", "skipped"),)] == 1
    carrier.stats["answered"] = 6                                      # read again at the next scrape
    assert samples(carrier)["jego_carrier_calls_answered_total", ()] == 6


async def test_metrics_are_served_without_the_token(carrier: FakeCarrier, server: ControlServer) -> None:
    import urllib.request

    def get() -> tuple[str, str]:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(server.url + "/metrics") as res:
            return res.headers["Content-Type"], res.read().decode()

    ctype, text = await asyncio.to_thread(get)
    assert ctype.startswith("text/plain") and "jego_carrier_calls_active 0.0" in text


# --- `jego carrier call` through the control channel --------------------------------------------------
async def carrier_call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from jego_call.cli.main import main

    code = await asyncio.to_thread(main, ["carrier", "call", *argv])   # it blocks: the server runs here
    out, err = capsys.readouterr()
    return code, out, err


async def test_carrier_call_prints_the_answer_and_exits_0(carrier: FakeCarrier, server: ControlServer,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    carrier.result = {"code": 200, "reason": "OK", "outcome": "hangup", "answered": True, "duration_s": 2.04,
                      "recording": "/tmp/r.wav"}
    code, out, err = await carrier_call(capsys, "+8613800138000", "+861065529988", "--duration", "2",
                                        "--data-dir", str(carrier.data_dir))
    assert (code, err) == (0, "") and out == "200 OK: hangup, 2.0 s, recording /tmp/r.wav\n"
    assert carrier.originated[-1]["duration"] == 2.0


async def test_carrier_call_not_answered_exits_1_with_the_cause(carrier: FakeCarrier, server: ControlServer,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    carrier.result = {"code": 486, "reason": "Busy Here", "cause": 17, "outcome": "busy", "answered": False}
    code, out, _ = await carrier_call(capsys, "+8613800138000", "+861065529988", "--data-dir",
                                      str(carrier.data_dir))
    assert code == 1 and out == "486 Busy Here (cause 17): busy\n"
    code, out, _ = await carrier_call(capsys, "+8613800138000", "+861065529988", "--json", "--data-dir",
                                      str(carrier.data_dir))
    assert code == 1 and json.loads(out)["code"] == 486


async def test_carrier_call_reports_a_carrier_error_and_exits_3(carrier: FakeCarrier, server: ControlServer,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    carrier.result = {"error": "the app's trunk account is not registered"}
    code, _, err = await carrier_call(capsys, "+8613800138000", "+861065529988", "--data-dir",
                                      str(carrier.data_dir))
    assert code == 3 and err == "jego carrier call: the app's trunk account is not registered\n"


def test_carrier_call_without_a_carrier_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jego_call.cli.main import main

    assert main(["carrier", "call", "+8613800138000", "+861065529988", "--data-dir", str(tmp_path)]) == 3
    assert "no carrier is running" in capsys.readouterr().err


def test_carrier_call_with_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jego_call.cli.main import main

    assert main(["carrier", "call", "+8613800138000", "+861065529988", "--play", str(tmp_path / "x.wav"),
                 "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"jego carrier call: no such file: {tmp_path / 'x.wav'}\n"
