"""The bridge supervisor's pure parts: restart back-off, worker names, the workers' specs, and
how jego serve merges its workers' /metrics (bridge/gateway/supervisor.py, service.py)."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from bridge.gateway.service import merge_families
from bridge.gateway.supervisor import restart_delay, worker_name, worker_specs
from jego_call.config import BridgeSection, Config


def test_restart_back_off_doubles_to_ten_seconds_and_resets_after_a_stable_run() -> None:
    assert [restart_delay(d, 1.0) for d in (0.0, 0.5, 1.0, 8.0, 10.0)] == [0.5, 1.0, 2.0, 10.0, 10.0]
    assert restart_delay(10.0, 31.0) == 0.5


def test_worker_names() -> None:
    assert worker_name("bridge-1", 0, 1) == "bridge-1"
    assert [worker_name("bridge-1", i, 3) for i in range(3)] == ["bridge-1", "bridge-2", "bridge-3"]
    assert [worker_name("pool", i, 2) for i in range(2)] == ["pool-1", "pool-2"]


def test_specs_keep_the_secret_off_the_command_line_and_space_fixed_ports() -> None:
    cfg = dataclasses.replace(Config(), bridge=BridgeSection(sip_port=5070, metrics_port=9100, workers=2))
    specs = worker_specs(cfg, "http://127.0.0.1:8080", "s3cret", 2, config_path="my.toml")
    assert [s.name for s in specs] == ["bridge-1", "bridge-2"]
    assert all("s3cret" not in " ".join(s.argv) for s in specs)
    assert [s.env["JEGO_BRIDGE_SECRET"] for s in specs] == ["s3cret", "s3cret"]
    assert [s.env["JEGO_BRIDGE_SIP_PORT"] for s in specs] == ["5070", "5071"]
    assert [s.metrics_port for s in specs] == [9100, 9101]
    assert specs[0].argv[-2:] == ["--config", "my.toml"]
    free = worker_specs(Config(), "http://x", "s", 2, config_path=None)
    assert [s.metrics_port for s in free] == [0, 0] and "JEGO_BRIDGE_SIP_PORT" not in free[0].env


def worker_text(name: str, calls: int) -> str:
    reg = CollectorRegistry()
    Gauge("jego_bridge_calls_in_use", "calls", ["worker"], registry=reg).labels(name).set(calls)
    Counter("jego_bridge_calls_ended", "ended", ["worker"], registry=reg).labels(name).inc(calls + 1)
    Gauge("process_open_fds", "fds", registry=reg).set(7)
    return generate_latest(reg).decode()


def test_serve_merges_its_workers_series_into_one_family_each() -> None:
    fams = {f.name: f for f in merge_families([worker_text("bridge-1", 2), worker_text("bridge-2", 3), "garbage{"])}
    assert set(fams) == {"jego_bridge_calls_in_use", "jego_bridge_calls_ended"}   # not the workers' process_*
    in_use = {s.labels["worker"]: s.value for s in fams["jego_bridge_calls_in_use"].samples}
    assert in_use == {"bridge-1": 2.0, "bridge-2": 3.0}
    ended = {s.labels["worker"]: s.value for s in fams["jego_bridge_calls_ended"].samples if s.name.endswith("_total")}
    assert ended == {"bridge-1": 3.0, "bridge-2": 4.0}
