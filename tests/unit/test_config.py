"""Config: TOML defaults, environment overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jego_call.config import Config, load_config
from jego_call.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_file_matches_dataclass_defaults() -> None:
    assert load_config(None, environ={}) == Config()


def test_env_overrides() -> None:
    cfg = load_config(None, environ={"JEGO_HTTP_PORT": "9090", "JEGO_CALLS_RING_TIMEOUT_S": "12.5",
                                     "JEGO_ICE_SERVERS": '[{urls = ["stun:127.0.0.1:3478"]}]',
                                     "JEGO_CARRIER_ENABLED": "false", "OTHER": "x"})
    assert cfg.http.port == 9090 and cfg.calls.ring_timeout_s == 12.5 and cfg.carrier.enabled is False
    assert cfg.ice.servers == ({"urls": ["stun:127.0.0.1:3478"]},)
    with pytest.raises(dataclass_frozen_error()):
        cfg.http.port = 1  # type: ignore[misc]


def dataclass_frozen_error() -> type[Exception]:
    import dataclasses
    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[http]\nprot = 1\n", "http.prot"),
        ("[http]\nport = \"eighty\"\n", "http.port"),
        ("[calls]\nring_timeout_s = -1\n", "calls.ring_timeout_s"),
        ("[carrier]\nenabled = 1\n", "carrier.enabled"),
        ("[nope]\nx = 1\n", "nope"),
        ("http = 5\n", "http"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    assert info.value.key == key


@pytest.mark.parametrize("overrides", [{"http": 5}, {"http": [("port", 80)]}, {"http": "port=80"}])
def test_an_override_that_is_not_a_table_names_its_section(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides=overrides)  # type: ignore[arg-type]  # what a caller may pass
    assert info.value.key == "http"
    assert "expected a table [http]" in str(info.value)


def test_a_file_key_where_an_override_needs_a_table_names_its_section(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("http = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={}, overrides={"http": {"port": 80}})
    assert info.value.key == "http" and "got 5" in str(info.value)


def test_env_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"JEGO_HTTP_PORT": "x"})
    assert info.value.key == "http.port"
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"JEGO_HTTP_PROT": "1"})
    assert info.value.key == "http.prot"


def test_cli_reports_bad_config_in_one_line_with_status_2(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[signalling]\nheartbeat_s = \"often\"\n")
    res = subprocess.run([sys.executable, "-m", "jego_call.cli.main", "serve", "--config", str(p)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "signalling.heartbeat_s" in lines[0], res.stderr
    res = subprocess.run([sys.executable, "-m", "jego_call.cli.main", "serve", "--config", str(tmp_path / "none")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "no such file" in res.stderr


def test_bridge_impair_is_off_by_default_and_checked() -> None:
    assert load_config(None, environ={}).bridge.impair == ""
    cfg = load_config(None, environ={"JEGO_BRIDGE_IMPAIR": "loss=5,burst=2,jitter=30,delay=100,seed=1"})
    assert cfg.bridge.impair == "loss=5,burst=2,jitter=30,delay=100,seed=1"
    with pytest.raises(ConfigError, match="impair"):
        load_config(None, environ={"JEGO_BRIDGE_IMPAIR": "loss=bogus"})
    with pytest.raises(ConfigError, match="impair"):
        load_config(None, environ={"JEGO_BRIDGE_IMPAIR": "drop=5"})


@pytest.mark.parametrize(("overrides", "key"), [
    ({"cluster": {"redis_url": "http://127.0.0.1:6379"}}, "cluster.redis_url"),
    ({"cluster": {"node_id": "no spaces"}}, "cluster.node_id"),
    ({"cluster": {"key_prefix": ""}}, "cluster.key_prefix"),
    ({"cluster": {"heartbeat_s": 2.0, "node_ttl_s": 3.0}}, "cluster.node_ttl_s"),
    ({"cluster": {"op_timeout_s": 0}}, "cluster.op_timeout_s"),
    ({"ice": {"turn_urls": ["http://turn.example.org"], "turn_secret": "s"}}, "ice.turn_urls[0]"),
    ({"ice": {"turn_urls": ["turn:turn.example.org:3478"]}}, "ice.turn_secret"),
    ({"ice": {"turn_ttl_s": 30}}, "ice.turn_ttl_s"),
    ({"ice": {"transport_policy": "none"}}, "ice.transport_policy"),
])
def test_cluster_and_turn_settings_are_checked(overrides: dict[str, dict[str, object]], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={}, overrides=overrides)
    assert key in str(info.value)


def test_cluster_and_turn_settings_from_the_environment() -> None:
    cfg = load_config(None, environ={"JEGO_CLUSTER_REDIS_URL": "redis://127.0.0.1:6379/0",
                                     "JEGO_CLUSTER_NODE_ID": "node-2",
                                     "JEGO_ICE_TURN_URLS": '["turn:127.0.0.1:3478?transport=udp"]',
                                     "JEGO_ICE_TURN_SECRET": "s3cret", "JEGO_ICE_TRANSPORT_POLICY": "relay"})
    assert cfg.cluster.redis_url == "redis://127.0.0.1:6379/0" and cfg.cluster.node_id == "node-2"
    assert cfg.ice.turn_urls == ("turn:127.0.0.1:3478?transport=udp",) and cfg.ice.transport_policy == "relay"
    assert load_config(None, environ={}).cluster.redis_url == ""  # the embedded default: no cluster
