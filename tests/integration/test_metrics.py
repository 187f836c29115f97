"""Metrics, health and logs of a running system, judged by a real Prometheus (tests/servers.py).

One `jego serve` (JSON logs) with the simulated carrier, one `jego bridge` worker of its own
(JSON logs at DEBUG, `[bridge] metrics_port`), and a Prometheus scraping the server's /metrics,
the worker's and the carrier's control port every second. After a dialer call (alice -> bob,
app) and an app -> phone call, Prometheus's query API has the counts; every exposition parses
with prometheus_client's parser with HELP and TYPE on every metric; the JSON log lines parse,
each line logged during a call carries its call id, the end of each call has its summary line,
and none of the run's secrets (passwords, tokens, the gateway secret, the trunk password, digest
responses) is in any log.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSWORD, ROOT, LiveServer, http_json, make_user, start_server, top_up
from tests.helpers import wait_for
from tests.servers import PrometheusServer, prometheus_server

from .bridge_util import PLAIN, carrier_config, carrier_record, free_port
from .test_dial import Answerer, _env, dial

HOST = "127.0.0.1"
TRUNK_PASSWORD = "jego-trunk-secret"    # config/carrier.toml [[trunk]] and config/jego.toml [bridge]


@dataclass
class System:
    server: LiveServer
    bridge: subprocess.Popen[str]
    bridge_log: Path
    bridge_metrics: str        # host:port
    carrier_control: str       # host:port
    prom: PrometheusServer
    tmp: Path


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def wait_until(check: Any, what: str, timeout: float = 30.0) -> Any:
    """tests.helpers.wait_for, looking every 0.2 s (each look is a Prometheus query)."""
    return wait_for(check, timeout, what, interval=0.2)


def value(prom: PrometheusServer, expr: str) -> float | None:
    """The single value of `expr` now, or None when the vector is empty."""
    result = prom.query(expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    sip_port, control_port, metrics_port = free_port(), free_port(), free_port()
    ccfg = carrier_config(tmp_path, sip_port)
    text, n = re.subn(r"(?m)^\[control\]\nport = 0\b", f"[control]\nport = {control_port}", ccfg.read_text())
    assert n == 1
    ccfg.write_text(text)
    env = {"JEGO_CARRIER_CONFIG": str(ccfg), "JEGO_BRIDGE_TRUNK_PORT": str(sip_port), "JEGO_LOG_FORMAT": "json",
           "JEGO_LOG_NODE": "test-node"}
    server = start_server(tmp_path, ["--no-bridge"], **env)
    bridge_log = tmp_path / "bridge.log"
    bridge = subprocess.Popen(
        [sys.executable, "-m", "jego_call.cli.main", "bridge", "--server", server.url, "--data-dir",
         str(server.data_dir), "--max-calls", "2", "--name", "worker-a"],
        cwd=ROOT, env={**_env(), **env, "JEGO_BRIDGE_METRICS_PORT": str(metrics_port), "JEGO_LOG_LEVEL": "DEBUG"},
        stdout=open(bridge_log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115
    prom_cm = None
    try:
        wait_until(lambda: bridge.poll() is not None or "connected to http" in bridge_log.read_text(),
                   "the bridge to connect", 30)
        assert bridge.poll() is None, bridge_log.read_text()
        targets = [server.url.removeprefix("http://"), f"{HOST}:{metrics_port}", f"{HOST}:{control_port}"]
        prom_cm = prometheus_server(tmp_path, targets, interval_s=1.0)
        prom = prom_cm.__enter__()
        wait_until(prom.targets_up, "Prometheus to scrape all three targets", 30)
        yield System(server, bridge, bridge_log, f"{HOST}:{metrics_port}", f"{HOST}:{control_port}", prom, tmp_path)
    finally:
        if prom_cm is not None:
            prom_cm.__exit__(None, None, None)
        if bridge.poll() is None:
            bridge.send_signal(signal.SIGTERM)
            try:
                bridge.wait(15)
            except subprocess.TimeoutExpired:
                bridge.kill()
                bridge.wait(5)
        server.stop()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every log line of a JSON-logging process (print() lines of the CLIs are not logs)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # each one must parse
    return out


def test_prometheus_sees_calls_capacity_and_quality(system: System) -> None:
    s, prom = system.server, system.prom
    tokens = [make_user(s, name) for name in ("alice", "bob")]
    top_up(s, "alice")   # the phone call below is paid (issue 13)
    # 1. a dialer call: alice -> bob (bob's `jego dial answer` echoes)
    bob = Answerer(s, "bob", ["--echo", "--count", "1"], system.tmp)
    rc, app_call, err = dial(s, "bob", "--play", "tone:800:-12:3", "--duration", "4", "--json")
    assert rc == 0 and app_call is not None and app_call["outcome"] == "answered", err
    assert bob.wait() == 0
    # 2. an app -> phone call through the worker to the carrier
    rc, phone_call, err = dial(s, PLAIN, "--play", "tone:1000:-12:4", "--duration", "5", "--json")
    assert rc == 0 and phone_call is not None and phone_call["outcome"] == "answered", err
    assert carrier_record(s, PLAIN)["outcome"] == "hangup"
    for res in (app_call, phone_call):  # jego dial --json: its own E-model score of a clean call
        assert res["mos"] >= 4.1 and res["r_factor"] >= 80 and res["quality"] == "good", res

    def ended() -> bool:
        return value(prom, "sum(jego_calls_ended_total)") == 2 and \
            value(prom, "sum(jego_bridge_calls_ended_total)") == 1 and \
            value(prom, "sum(jego_call_mos_count)") == 2 and \
            value(prom, 'sum(jego_carrier_calls_ended_total{direction="in"})') == 1  # its scrape too
    wait_until(ended, "Prometheus to see both calls end", 30)
    # calls ended, by kind and outcome
    assert value(prom, 'jego_calls_ended_total{kind="app",outcome="hangup"}') == 1
    assert value(prom, 'jego_calls_ended_total{kind="phone_out",outcome="hangup"}') == 1
    assert value(prom, 'sum(jego_calls_ended_total{kind="phone_in"})') in (None, 0)
    assert value(prom, 'jego_bridge_calls_ended_total{worker="worker-a",kind="phone_out",outcome="hangup"}') == 1
    assert value(prom, 'jego_carrier_calls_ended_total{direction="in",outcome="hangup"}') == 1
    # set-up time: one histogram, two observations (one per kind)
    assert value(prom, "sum(jego_call_setup_seconds_count)") == 2
    assert value(prom, 'jego_call_setup_seconds_count{kind="app"}') == 1
    assert value(prom, 'jego_call_setup_seconds_count{kind="phone_out"}') == 1
    assert 0 < (value(prom, "sum(jego_call_setup_seconds_sum)") or 0) < 20
    # the worker's capacity and its use: went up to 1 during the phone call and back to 0
    assert value(prom, 'jego_bridge_capacity_calls{worker="worker-a"}') == 2
    assert value(prom, 'max_over_time(jego_bridge_calls_in_use{worker="worker-a"}[10m])') == 1
    assert value(prom, 'jego_bridge_calls_in_use{worker="worker-a"}') == 0
    assert value(prom, 'max_over_time(jego_gateway_calls{gateway="worker-a"}[10m])') == 1
    assert value(prom, 'jego_gateway_capacity_calls{gateway="worker-a"}') == 2
    # quality: both calls scored, all in the top buckets (clean loopback calls)
    assert value(prom, 'sum(jego_call_mos_bucket{le="4.0"})') == 0
    assert value(prom, 'jego_bridge_call_mos_count{worker="worker-a"}') == 1
    # RTP per leg, counted by the worker: ~5 s of 20 ms packets each way on both legs
    for leg in ("app", "phone"):
        for direction in ("sent", "received"):
            got = value(prom, f'jego_bridge_rtp_packets_total{{leg="{leg}",direction="{direction}"}}') or 0
            assert got > 150, (leg, direction, got)
    assert value(prom, 'jego_bridge_rtp_lost_packets_total{leg="phone",direction="received"}') == 0
    # sessions and messages exist as series; process metrics from the library's collectors
    assert value(prom, 'jego_websocket_sessions{role="gateway"}') == 1
    assert value(prom, 'jego_bridge_trunk_registered{worker="worker-a"}') == 1
    for job_target in (s.url.removeprefix("http://"), system.bridge_metrics, system.carrier_control):
        assert (value(prom, f'process_cpu_seconds_total{{instance="{job_target}"}}') or 0) > 0
        assert (value(prom, f'process_resident_memory_bytes{{instance="{job_target}"}}') or 0) > 1e6
    # the call records have the scores; jego cdr shows them
    status, body = http_json("POST", f"{s.url}/api/login", {"username": "alice", "password": PASSWORD})
    tokens.append(body["token"])
    status, body = http_json("GET", f"{s.url}/api/calls?limit=5", token=body["token"])
    records = {r["call_id"]: r for r in body["calls"]}
    for res in (app_call, phone_call):
        rec = records[res["call_id"]]
        assert rec["mos"] is not None and rec["mos"] >= 4.1 and rec["quality"] == "good", rec
    cdr = subprocess.run([sys.executable, "-m", "jego_call.cli.main", "cdr", "--data-dir", str(s.data_dir)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)
    assert cdr.returncode == 0, cdr.stderr
    header, *rows = cdr.stdout.splitlines()
    assert "mos" in header and "quality" in header
    assert len(rows) == 2 and all(re.search(r" 4\.\d\d good ", row) for row in rows), cdr.stdout

    # --- every endpoint's exposition parses, with HELP and TYPE on every metric --------------
    for target in (s.url.removeprefix("http://"), system.bridge_metrics, system.carrier_control):
        status, ctype, text = get(f"http://{target}/metrics")
        assert status == 200 and ctype.startswith("text/plain"), (target, status, ctype)
        families = list(text_string_to_metric_families(text))
        assert len(families) > 10
        helps = set(re.findall(r"(?m)^# HELP (\S+) ", text))
        types = dict(re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text))
        for fam in families:
            assert fam.documentation, fam.name
            assert fam.type in ("counter", "gauge", "histogram", "summary", "info", "untyped"), fam
        exposed = {m.group(1) for m in re.finditer(r"(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text)}
        for name in exposed:  # every sample belongs to a metric with HELP and TYPE
            base = next((n for n in types if name == n or name in
                         (f"{n}_total", f"{n}_created", f"{n}_bucket", f"{n}_count", f"{n}_sum")), None)
            assert base is not None and base in helps, (target, name)
        for name, kind in types.items():  # Prometheus naming
            if kind == "counter":
                assert re.search(rf"(?m)^{name}_total[{{ ]", text) or name.endswith("_total"), name
        assert "alice" not in text and "bob" not in text and "+86" not in text, target  # no user/number labels
    # health: liveness and readiness of the server and the worker
    assert get(f"{s.url}/healthz")[0] == 200
    status, _, body_text = get(f"{s.url}/readyz")
    assert status == 200 and json.loads(body_text)["checks"]["database"] == "ok"
    status, _, body_text = get(f"http://{system.bridge_metrics}/readyz")
    assert status == 200 and json.loads(body_text)["checks"] == {"trunk": "ok", "server": "ok"}
    assert get(f"http://{system.carrier_control}/healthz")[0] == 200
    assert get(f"http://{system.carrier_control}/status")[0] == 401  # the control API keeps its token

    # --- logs: JSON lines, call ids, summaries, no secrets -------------------------------------
    system.bridge.send_signal(signal.SIGTERM)
    assert system.bridge.wait(15) == 0
    s.stop()
    server_log, bridge_log = s.log(), system.bridge_log.read_text()
    server_lines, bridge_lines = json_lines(server_log), json_lines(bridge_log)
    assert len(server_lines) > 5 and len(bridge_lines) > 8
    for line in server_lines + bridge_lines:
        assert {"ts", "level", "logger", "msg", "node"} <= line.keys(), line
        assert line["node"] == "test-node"
    summaries = {ln["call_id"]: ln for ln in server_lines if ln.get("event") == "call_summary"}
    assert summaries.keys() == {app_call["call_id"], phone_call["call_id"]}
    app_sum, phone_sum = summaries[app_call["call_id"]], summaries[phone_call["call_id"]]
    assert (app_sum["kind"], app_sum["outcome"], app_sum["hung_up_by"]) == ("app", "hangup", "caller")
    assert (phone_sum["kind"], phone_sum["outcome"]) == ("phone_out", "hangup")
    for summary in (app_sum, phone_sum):
        assert summary["mos"] >= 4.1 and summary["duration_s"] > 3 and summary["quality"] == "good", summary
        assert all(key in summary for key in ("sip_code", "q850_cause", "codec", "r_factor"))
    [bridge_sum] = [ln for ln in bridge_lines if ln.get("event") == "call_summary"]
    assert bridge_sum["call_id"] == phone_call["call_id"] and bridge_sum["kind"] == "phone_out"
    assert bridge_sum["codec"] and "PCM" in bridge_sum["codec"] and bridge_sum["mos"] >= 4.1
    # every line the worker logged while the phone call ran carries that call's id
    first = next(i for i, ln in enumerate(bridge_lines) if ln.get("call_id") == phone_call["call_id"])
    last = max(i for i, ln in enumerate(bridge_lines) if ln.get("event") == "call_summary")
    during = bridge_lines[first:last + 1]
    assert len(during) > 5
    stray = [ln for ln in during if ln.get("call_id") != phone_call["call_id"]]
    assert not stray, stray[:5]
    # ... and so does every line the server logged while each call ran (they ran one at a time);
    # the simulated carrier in the same process (its loggers jego.carrier and bridge.carrier.*) tags
    # its lines with its own call's SIP Call-ID
    carrier_call_id = carrier_record(s, PLAIN)["call_id"]
    for call_id in summaries:
        first = next(i for i, ln in enumerate(server_lines) if ln.get("call_id") == call_id)
        last = next(i for i, ln in enumerate(server_lines) if ln.get("event") == "call_summary"
                    and ln["call_id"] == call_id)
        during = server_lines[first:last + 1]
        assert len(during) >= 4, during
        for ln in during:
            carrier = ln["logger"] == "jego.carrier" or ln["logger"].startswith("bridge.carrier.")
            assert ln.get("call_id") == (carrier_call_id if carrier else call_id), ln
    assert any(ln.get("call_id") == carrier_call_id and "ended" in ln["msg"] for ln in server_lines)
    # secrets of this run: never in any log line
    gateway_secret = (s.data_dir / "bridge.key").read_text().strip()
    secrets = [PASSWORD, gateway_secret, TRUNK_PASSWORD, *tokens]
    every_log = server_log + bridge_log + "".join(p.read_text() for p in system.tmp.glob("answer-*.err"))
    for secret in secrets:
        assert secret not in every_log, f"a secret ({secret[:3]}…) is in a log"
    assert not re.search(r'response="?[0-9a-f]{32}', every_log), "a digest response is in a log"
    assert "Authorization: Digest" not in every_log or "Authorization: ***" in every_log
