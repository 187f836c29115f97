"""Configuration: frozen dataclasses loaded once from TOML, overridable by environment.

Call `load_config(path)` once at start-up and pass the `Config` down; nothing reads the
environment or the file after that.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .billing.fraud_config import FraudConfig
from .errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "jego.toml"
ENV_PREFIX = "JEGO_"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class DataConfig:
    dir: str = "./data"
    media_dir: str = ""          # "": DIR/media; a directory every node shares (photos, voice, files)


@dataclass(frozen=True, slots=True)
class DbConfig:
    url: str = ""                # "": SQLite in DATA/jego.sqlite3; postgresql://user@host:5432/db
    pool_min: int = 1
    pool_max: int = 10
    connect_timeout_s: float = 2.0
    command_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    token_ttl_s: int = 604800
    min_password_length: int = 8
    # login and register doors (jego_call/limits.py; see config/jego.toml)
    login_source_burst: int = 30
    login_source_per_s: float = 1.0
    login_source_failures: int = 20
    login_source_failures_per_s: float = 0.1
    lockout_after: int = 5
    lockout_window_s: float = 900.0
    lockout_base_s: float = 60.0
    lockout_max_s: float = 3600.0
    register_source_burst: int = 50
    register_source_per_s: float = 0.03
    hash_workers: int = 1
    hash_cpu_share: float = 0.5
    hash_burst_s: float = 1.0
    hash_queue: int = 64
    hash_nice: int = 10


@dataclass(frozen=True, slots=True)
class IceConfig:
    servers: tuple[dict[str, Any], ...] = ()
    loopback_candidates: bool = True
    # TURN with ephemeral credentials (the TURN REST API scheme of coturn's use-auth-secret)
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = ""
    turn_ttl_s: int = 86400
    transport_policy: str = "all"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    redis_url: str = ""
    node_id: str = ""
    key_prefix: str = "jego"
    heartbeat_s: float = 1.0
    node_ttl_s: float = 5.0
    op_timeout_s: float = 2.0
    outbox_limit: int = 20000


@dataclass(frozen=True, slots=True)
class CallsConfig:
    ring_timeout_s: float = 45.0
    max_call_s: float = 14400.0
    default_region: str = "CN"
    group_max_participants: int = 8   # a group call's app participants and phones together
    group_max_video: int = 4          # members in a group call's browser video mesh


@dataclass(frozen=True, slots=True)
class SignallingConfig:
    heartbeat_s: float = 5.0
    auth_timeout_s: float = 10.0
    max_message_bytes: int = 65536
    max_frame_bytes: int = 1048576
    max_sessions_per_user: int = 8
    rate_per_s: float = 50.0
    rate_burst: int = 200
    # `jego serve`'s garbage collector (jego_call/signalling/gc_tuning.py)
    gc_freeze_s: float = 1.0           # freeze what is alive every this many seconds; 0 = Python's defaults
    gc_full_s: float = 3600.0          # unfreeze and collect everything this often (cycles); 0 = never
    gc_threshold: tuple[int, ...] = () # gc.set_threshold(...) values; () = Python's (700, 10, 10)


@dataclass(frozen=True, slots=True)
class MessagingConfig:
    max_text_chars: int = 4000
    max_file_bytes: int = 20 * 1024 * 1024
    max_photo_bytes: int = 10 * 1024 * 1024
    max_voice_s: float = 120.0
    page_size: int = 50


@dataclass(frozen=True, slots=True)
class CarrierSection:
    enabled: bool = True
    config: str = "config/carrier.toml"


@dataclass(frozen=True, slots=True)
class BridgeSection:
    enabled: bool = True
    workers: int | str = "auto"     # `jego serve`: this many `jego bridge` processes; "auto": one per core
    max_calls: int = 32             # per worker process: scripts/bench_bridge.py held 40 on time (config/jego.toml)
    secret: str = ""
    allow_international: bool = False
    server_url: str = ""
    name: str = "bridge-1"
    trunk_host: str = "127.0.0.1"
    trunk_port: int = 5060
    trunk_sources: tuple[str, ...] = ()  # addresses/networks that may send SIP (empty: trunk_host)
    username: str = "jego"
    password: str = "jego-trunk-secret"
    register: bool = True
    local_host: str = "127.0.0.1"
    sip_port: int = 0
    rtp_port_min: int = 20000
    rtp_port_max: int = 29999
    app_codec: str = "opus"
    opus_bitrate: int = 32000
    opus_complexity: int = 1
    impair: str = ""                # test and lab use: a seeded network on the app leg's receive path
    media_timeout_s: float = 30.0
    max_call_s: float = 7200.0
    session_expires_s: int = 1800
    did: dict[str, str] = field(default_factory=lambda: {"+8675512345678": "bob"})
    metrics_port: int = 0      # `jego bridge`: /metrics, /healthz, /readyz here (0: a free port)

    def __post_init__(self) -> None:
        for i, src in enumerate(self.trunk_sources):
            try:
                ipaddress.ip_network(src, strict=False)
            except ValueError:
                raise ConfigError(f"bridge.trunk_sources[{i}]",
                                  f"expected an IP address or network such as 10.1.2.0/24, got {src!r}") from None

    @property
    def worker_count(self) -> int:
        """How many worker processes `jego serve` starts: `workers`, or one per core for "auto"."""
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        return int(self.workers)


@dataclass(frozen=True, slots=True)
class BillingSection:
    enabled: bool = True
    rates: str = "config/rates.toml"
    warning_s: float = 60.0
    max_call_s: int = 7200
    heartbeat_s: float = 2.0
    history: int = 20
    low_balance: str = "5"   # an amount as a person writes it, in the rates' currency


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True       # Prometheus /metrics and the instrumentation behind it (jego_call/metrics.py)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"
    node: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    data: DataConfig = field(default_factory=DataConfig)
    db: DbConfig = field(default_factory=DbConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    signalling: SignallingConfig = field(default_factory=SignallingConfig)
    messaging: MessagingConfig = field(default_factory=MessagingConfig)
    carrier: CarrierSection = field(default_factory=CarrierSection)
    bridge: BridgeSection = field(default_factory=BridgeSection)
    billing: BillingSection = field(default_factory=BillingSection)
    fraud: FraudConfig = field(default_factory=FraudConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir)

    @property
    def media_dir(self) -> Path:
        """Uploaded media: `[data] media_dir`, else DATA/media."""
        return Path(self.data.media_dir) if self.data.media_dir else self.data_dir / "media"


_POSITIVE = {
    "calls.ring_timeout_s", "calls.max_call_s", "signalling.heartbeat_s", "signalling.auth_timeout_s",
    "signalling.max_message_bytes", "signalling.max_frame_bytes", "signalling.max_sessions_per_user",
    "signalling.rate_per_s", "signalling.rate_burst", "messaging.max_text_chars", "messaging.max_file_bytes",
    "messaging.max_photo_bytes", "messaging.max_voice_s", "messaging.page_size", "auth.token_ttl_s",
    "bridge.max_calls", "bridge.trunk_port", "bridge.rtp_port_min", "bridge.rtp_port_max", "bridge.opus_bitrate",
    "bridge.media_timeout_s", "bridge.max_call_s",
    "auth.login_source_burst", "auth.login_source_per_s", "auth.login_source_failures",
    "auth.login_source_failures_per_s", "auth.lockout_after", "auth.lockout_window_s", "auth.lockout_base_s",
    "auth.lockout_max_s", "auth.register_source_burst", "auth.register_source_per_s", "auth.hash_workers",
    "auth.hash_cpu_share", "auth.hash_burst_s", "auth.hash_queue",
    "billing.warning_s", "billing.max_call_s", "billing.heartbeat_s", "billing.history",
    "ice.turn_ttl_s", "cluster.heartbeat_s", "cluster.node_ttl_s", "cluster.op_timeout_s", "cluster.outbox_limit",
    "db.pool_min", "db.pool_max", "db.connect_timeout_s", "db.command_timeout_s",
}

_CHOICES = {"bridge.app_codec": ("opus", "pcmu", "pcma"), "log.format": ("text", "json"),
            "ice.transport_policy": ("all", "relay")}
NODE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "memory://")


def _check(cfg: Config) -> None:
    """Rules across keys, each naming its key (the types were checked by schema.build)."""
    _check_bridge(cfg)
    c = cfg.cluster
    if c.redis_url and not c.redis_url.startswith(REDIS_SCHEMES):
        raise ConfigError("cluster.redis_url", f"must start with {', '.join(REDIS_SCHEMES)}, got {c.redis_url!r}")
    if c.node_id and not NODE_ID_RE.match(c.node_id):
        raise ConfigError("cluster.node_id", "1 to 32 of A-Z a-z 0-9 _ -")
    if not NODE_ID_RE.match(c.key_prefix):
        raise ConfigError("cluster.key_prefix", "1 to 32 of A-Z a-z 0-9 _ -")
    if c.node_ttl_s < 2 * c.heartbeat_s:
        raise ConfigError("cluster.node_ttl_s", "must be at least twice cluster.heartbeat_s")
    _check_gc(cfg.signalling)
    ice = cfg.ice
    for i, url in enumerate(ice.turn_urls):
        if not url.startswith(("turn:", "turns:", "stun:")):
            raise ConfigError(f"ice.turn_urls[{i}]", f"must start with turn:, turns: or stun:, got {url!r}")
    if ice.turn_urls and not ice.turn_secret:
        raise ConfigError("ice.turn_secret", "is required with ice.turn_urls (coturn's static-auth-secret)")
    if ice.turn_ttl_s < 60:
        raise ConfigError("ice.turn_ttl_s", "must be at least 60 seconds")


def _check_gc(sc: SignallingConfig) -> None:
    if sc.gc_freeze_s < 0:
        raise ConfigError("signalling.gc_freeze_s", f"must be 0 (off) or a number of seconds, got {sc.gc_freeze_s}")
    if sc.gc_full_s < 0 or (0 < sc.gc_full_s < sc.gc_freeze_s):
        raise ConfigError("signalling.gc_full_s",
                          f"must be 0 (never) or at least signalling.gc_freeze_s, got {sc.gc_full_s}")
    t = sc.gc_threshold
    if len(t) > 3 or (t and (t[0] < 100 or any(v < 1 for v in t))):
        raise ConfigError("signalling.gc_threshold",
                          f"expected [] or 1 to 3 whole numbers, the first at least 100, got {list(t)}")


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build the frozen dataclass `cls` from a mapping (schema.build with this file's rules)."""
    return schema.build(cls, data, prefix, positive=_POSITIVE, choices=_CHOICES)


def _parse_env_value(key: str, raw: str, tp: Any) -> Any:
    if tp is bool:
        low = raw.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(key, f"expected true or false, got {raw!r}")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(key, f"expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(key, f"expected a number, got {raw!r}") from None
    if tp is str:
        return raw
    if isinstance(tp, types.UnionType) and set(typing.get_args(tp)) == {int, str}:
        try:
            return int(raw)
        except ValueError:
            return raw
    # lists and tables: TOML syntax, e.g. JEGO_ICE_SERVERS='[{urls=["stun:host"]}]'
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(key, f"not a TOML value: {exc}") from None


def env_overrides(cls: type, environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Map JEGO_<SECTION>_<KEY> variables onto {section: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    sections = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for name in sections:
            if not rest.startswith(name + "_"):
                continue
            key = rest[len(name) + 1:]
            sub = hints[name]
            sub_hints = typing.get_type_hints(sub)
            if key not in sub_hints:
                raise ConfigError(f"{name}.{key}", f"unknown key (from environment variable {var})")
            out.setdefault(name, {})[key] = _parse_env_value(f"{name}.{key}", raw, sub_hints[key])
            break
    return out


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Load `path` (default config/jego.toml), apply JEGO_* variables, then `overrides`."""
    environ = os.environ if environ is None else environ
    p = Path(path) if path is not None else DEFAULT_CONFIG
    data: dict[str, Any] = {}
    if path is not None or p.exists():
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"no such file: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(p), f"invalid TOML: {exc}") from None
    for layer in (env_overrides(Config, environ), overrides or {}):
        for section, values in layer.items():
            if not isinstance(values, Mapping):  # overrides={"http": 5}: a key, not a table
                raise ConfigError(section, f"expected a table [{section}], got {values!r}")
            current = data.setdefault(section, {})
            if not isinstance(current, dict):
                raise ConfigError(section, f"expected a table [{section}], got {current!r}")
            current.update(values)
    cfg: Config = build(Config, data)
    _check(cfg)
    return cfg


def _check_bridge(cfg: Config) -> None:
    """[bridge] rules one key's type cannot say."""
    workers = cfg.bridge.workers
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError("bridge.workers", f'expected "auto" or a whole number of processes >= 1, got {workers!r}')
    if cfg.bridge.impair:
        from .media.impair import ImpairmentSpec  # pure; ConfigError names the key

        ImpairmentSpec.parse(cfg.bridge.impair)
    if not 0 <= cfg.bridge.opus_complexity <= 10:
        raise ConfigError("bridge.opus_complexity", f"must be 0 to 10, got {cfg.bridge.opus_complexity}")
