"""What the simulated carrier does for each dialled number: config, behaviour programmes, lookup.

Start with `bridge.carrier.config.load_carrier_config(path)` (or `parse_carrier_config(data)`) (config/carrier.toml, documented key by key there), then
for each INVITE: `number_from_uri(request_uri)` -> `behaviour_for(e164, cfg)` -> run the
`Behaviour.steps` in order (the trunk/media code does the I/O). `behaviour_for_uri` does both.

A behaviour is a small programme: zero or more provisional steps (`Ring`, `EarlyMedia`, `Wait`)
followed by exactly one terminal step (`Answer`, `Reject`, `NeverAnswer`, `NoResponse`, `Drop`).
Durations taken from [sip] (early media, ring timeout, no-response time) are resolved when the
config is loaded, so a Behaviour is self-contained. Pure: no I/O except reading the TOML file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from jego_call.call.reasons import EndReason, from_sip
from jego_call.errors import ConfigError
from jego_call.media.impair import ImpairmentSpec
from jego_call.numbering import NumberError, NumberInfo, classify, normalise
from jego_call.schema import build

from ..sip.causes import CAUSE_TEXT, cause_for_sip

# --------------------------------------------------------------------------------------------
# media sources


@dataclass(frozen=True, slots=True)
class Media:
    """A media source. Spec strings: "echo", "silence[:S]", "tone:HZ[:S]", "ringback[:S]",
    "announcement[:S]", "file:PATH". `seconds` None = until the next step / the call ends."""

    kind: str                        # echo | silence | tone | ringback | announcement | file
    seconds: float | None = None
    frequency_hz: float | None = None
    path: str | None = None

    @property
    def spec(self) -> str:
        parts = [self.kind]
        if self.kind == "file":
            return f"file:{self.path}"
        if self.frequency_hz is not None:
            parts.append(f"{self.frequency_hz:g}")
        if self.seconds is not None:
            parts.append(f"{self.seconds:g}")
        return ":".join(parts)


MEDIA_KINDS: Final = frozenset({"echo", "silence", "tone", "ringback", "announcement", "file"})


def parse_media(spec: str, key: str = "media") -> Media:
    """Parse a media spec string (see Media); raise ConfigError(key, ...) if it is wrong."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(key, f"expected a media spec string, got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind not in MEDIA_KINDS:
        raise ConfigError(key, f"unknown media {kind!r}; one of {', '.join(sorted(MEDIA_KINDS))}")
    if kind == "file":
        if not rest:
            raise ConfigError(key, "file: needs a path, e.g. file:tests/data/speech_en_48k.wav")
        return Media("file", path=rest)
    args = rest.split(":") if rest else []

    def num(s: str, what: str, lo: float, hi: float) -> float:
        try:
            v = float(s)
        except ValueError:
            raise ConfigError(key, f"{what} in {spec!r} is not a number") from None
        if not lo < v <= hi:
            raise ConfigError(key, f"{what} in {spec!r} must be in ({lo:g}, {hi:g}]")
        return v

    if kind == "tone":
        if not 1 <= len(args) <= 2:
            raise ConfigError(key, f"expected tone:HZ or tone:HZ:SECONDS, got {spec!r}")
        freq = num(args[0], "frequency", 0, 4000)  # G.711 is 8 kHz: Nyquist 4 kHz
        secs = num(args[1], "seconds", 0, 86400) if len(args) == 2 else None
        return Media("tone", seconds=secs, frequency_hz=freq)
    if len(args) > 1 or (kind == "echo" and args):
        raise ConfigError(key, f"too many ':' parts in {spec!r}")
    return Media(kind, seconds=num(args[0], "seconds", 0, 86400) if args else None)


ECHO: Final = Media("echo")
RINGBACK: Final = Media("ringback")   # Chinese ringback: 450 Hz, 1 s on / 4 s off
# What a Chinese carrier's recorded message says for each outcome (realism for the simulator).
ANNOUNCEMENTS_ZH: Final[dict[EndReason, str]] = {
    EndReason.BUSY: "您拨打的用户正忙，请稍后再拨",
    EndReason.NO_ANSWER: "您拨打的电话暂时无人接听，请稍后再拨",
    EndReason.TIMEOUT: "您拨打的电话暂时无法接通，请稍后再拨",
    EndReason.SWITCHED_OFF: "您拨打的电话已关机",
    EndReason.NOT_FOUND: "您拨打的号码是空号，请查证后再拨",
    EndReason.INVALID_NUMBER: "您拨打的号码有误，请查证后再拨",
    EndReason.NUMBER_CHANGED: "您拨打的号码已改号",
    EndReason.REJECTED: "您拨打的电话暂时无法接通",
    EndReason.DECLINED: "您拨打的用户暂时无法接听",
    EndReason.CONGESTION: "网络忙，请稍后再拨",
    EndReason.UNREACHABLE: "您拨打的电话暂时无法接通",
}
ANNOUNCEMENT: Final = Media("announcement")  # text: Behaviour.announcement_zh

# --------------------------------------------------------------------------------------------
# steps


@dataclass(frozen=True, slots=True)
class Ring:
    """Send `code` (180 Ringing, no SDP), then wait `seconds`."""
    code: int = 180
    seconds: float = 0.0
    op: str = field(default="ring", init=False)


@dataclass(frozen=True, slots=True)
class EarlyMedia:
    """Send `code` (183 Session Progress) with SDP and play `source` for `seconds` (RFC 3960)."""
    source: Media = RINGBACK
    seconds: float = 1.0
    code: int = 183
    op: str = field(default="early_media", init=False)


@dataclass(frozen=True, slots=True)
class Wait:
    """Send nothing for `seconds` (after 100 Trying)."""
    seconds: float = 0.0
    op: str = field(default="wait", init=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """200 OK with SDP; play `media` in order (the last one lasts until the call ends).
    If `hangup_after_s` is set the carrier sends BYE (Reason cause 16) that long after the ACK."""
    media: tuple[Media, ...] = (ECHO,)
    hangup_after_s: float | None = None
    op: str = field(default="answer", init=False)


@dataclass(frozen=True, slots=True)
class Reject:
    """Final response `code` with `Reason: Q.850;cause=q850;text="text"` and optional Retry-After."""
    code: int
    q850: int | None = None
    text: str = ""
    retry_after: int | None = None
    op: str = field(default="reject", init=False)


@dataclass(frozen=True, slots=True)
class NeverAnswer:
    """Let the phone ring for `seconds` (the ring timeout, counted from this step), then 480 with
    cause 19. It sends no 18x itself: put a Ring step before it (the presets do)."""
    seconds: float = 60.0
    code: int = 480
    q850: int = 19
    op: str = field(default="never_answer", init=False)


@dataclass(frozen=True, slots=True)
class NoResponse:
    """Paging fails: 100 Trying only, then after `seconds` 408 with cause 18."""
    seconds: float = 5.0
    code: int = 408
    q850: int = 18
    op: str = field(default="no_response", init=False)


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing at all, not even 100 Trying (the caller's Timer B fires)."""
    op: str = field(default="drop", init=False)


Step = Ring | EarlyMedia | Wait | Answer | Reject | NeverAnswer | NoResponse | Drop
PROVISIONAL_OPS: Final = ("ring", "early_media", "wait")
TERMINAL_OPS: Final = ("answer", "reject", "never_answer", "no_response", "drop")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """A programme for one call: `steps` run in order, the last one is terminal.

    `matched` says why it was chosen: 'number:+86…', 'prefix:+86…', 'kind:<kind>' or 'default'.
    """

    steps: tuple[Step, ...]
    name: str = ""
    description: str = ""
    matched: str = ""

    @property
    def final(self) -> Step:
        return self.steps[-1]

    @property
    def final_code(self) -> int | None:
        """200 for Answer, the final response code otherwise, None for Drop."""
        f = self.final
        if isinstance(f, Answer):
            return 200
        if isinstance(f, Drop):
            return None
        return f.code  # type: ignore[union-attr]

    @property
    def q850(self) -> int | None:
        f = self.final
        return f.q850 if isinstance(f, (Reject, NeverAnswer, NoResponse)) else None

    @property
    def announcement_zh(self) -> str:
        """What an 'announcement' media source says for this programme's outcome (may be '')."""
        code = self.final_code
        if code is None or code == 200:
            return ""
        return ANNOUNCEMENTS_ZH.get(from_sip(code, self.q850), "")


# --------------------------------------------------------------------------------------------
# config dataclasses


@dataclass(frozen=True, slots=True)
class SipConfig:
    host: str = "127.0.0.1"
    port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    realm: str = "carrier.jego.test"
    user_agent: str = "Jego-Carrier-Sim/0.1"
    ring_timeout_s: float = 60.0
    no_response_s: float = 5.0
    media_timeout_s: float = 30.0
    early_media_s: float = 1.0
    rtp_port_min: int = 31000
    rtp_port_max: int = 31999
    rtcp_interval_s: float = 5.0
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    dtmf_payload_type: int = 101
    nonce_ttl_s: float = 300.0
    max_auth_failures: int = 20
    auth_window_s: float = 60.0
    min_expires_s: int = 60
    max_expires_s: int = 3600
    min_se_s: int = 90            # RFC 4028 Min-SE: a smaller Session-Expires gets 422



@dataclass(frozen=True, slots=True)
class TrunkAccount:
    username: str = ""
    password: str = ""
    allowed_sources: tuple[str, ...] = ("127.0.0.1",)
    max_calls: int = 32

    def allows(self, source_ip: str) -> bool:
        """True if `source_ip` is inside one of `allowed_sources` (IPs or CIDR networks)."""
        try:
            ip = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_sources)


@dataclass(frozen=True, slots=True)
class InboundConfig:
    account: str = ""
    contact: str = ""
    caller_id: str = "+8613800138000"


@dataclass(frozen=True, slots=True)
class Unreachable:
    code: int = 404
    q850: int = 1
    text: str = ""
    announcement_s: float = 0.0


@dataclass(frozen=True, slots=True)
class UnreachableConfig:
    emergency: Unreachable = Unreachable(404, 1)
    short: Unreachable = Unreachable(404, 1)
    toll_free: Unreachable = Unreachable(403, 21)
    shared_cost: Unreachable = Unreachable(403, 21)
    foreign: Unreachable = Unreachable(403, 21)
    unallocated: Unreachable = Unreachable(404, 1, announcement_s=1.0)
    invalid: Unreachable = Unreachable(484, 28)
    incomplete: Unreachable = Unreachable(484, 28)


@dataclass(frozen=True, slots=True)
class CdrConfig:
    fsync: bool = False
    recordings: bool = True
    dir: str = ""


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """[media]: `impair` is a seeded network on the carrier's RTP receive path ("" = off),
    e.g. "loss=5,burst=2,jitter=30,delay=100,seed=1" (jego_call.media.impair). Lab use only.
    `record_hold`: beside each recording, how long each slot's frame waited in the carrier's
    receive buffer (media.HoldRecorder), so latency can be found at the wire."""

    impair: str = ""
    record_hold: bool = False

    @property
    def impairment(self) -> ImpairmentSpec | None:
        spec = ImpairmentSpec.parse(self.impair)
        return spec if spec.active else None


@dataclass(frozen=True, slots=True)
class ControlConfig:
    port: int = 0           # the control channel and /metrics on 127.0.0.1 (0: a free port)


@dataclass(frozen=True, slots=True)
class CarrierConfig:
    """Everything in config/carrier.toml. Build with `load_carrier_config` / `parse_carrier_config`."""

    sip: SipConfig = SipConfig()
    trunks: tuple[TrunkAccount, ...] = (TrunkAccount("jego", "jego-trunk-secret"),)
    inbound: InboundConfig = InboundConfig(account="jego")
    unreachable: UnreachableConfig = UnreachableConfig()
    cdr: CdrConfig = CdrConfig()
    control: ControlConfig = ControlConfig()
    media: MediaConfig = MediaConfig()
    default: Behaviour | None = None          # None: preset "answer" with [sip] durations
    numbers: Mapping[str, Behaviour] = field(default_factory=lambda: types.MappingProxyType({}))
    prefixes: Mapping[str, Behaviour] = field(default_factory=lambda: types.MappingProxyType({}))

    def trunk(self, username: str) -> TrunkAccount | None:
        return next((t for t in self.trunks if t.username == username), None)


# --------------------------------------------------------------------------------------------
# presets


def presets(sip: SipConfig) -> dict[str, Behaviour]:
    """Named programmes usable as `preset = "…"` in carrier.toml, with [sip] durations filled in."""
    em = sip.early_media_s
    ringback = EarlyMedia(RINGBACK, em)
    announce = EarlyMedia(ANNOUNCEMENT, em)
    table: dict[str, tuple[tuple[Step, ...], str]] = {
        "answer": ((Ring(), ringback, Answer((ECHO,))), "180, 183 + ringback, answer and echo"),
        "answer_tone": ((Ring(), ringback, Answer((Media("tone", 2.0, 440.0), ECHO))),
                        "answer, 2 s of 440 Hz, then echo"),
        "busy": ((announce, Reject(486, 17, CAUSE_TEXT[17])), "183 announcement, then 486 / cause 17"),
        "no_answer": ((Ring(), NeverAnswer(sip.ring_timeout_s)), "rings until the ring timeout, then 480 / 19"),
        "not_responding": ((NoResponse(sip.no_response_s),), "no answer from the handset: 408 / 18"),
        "unallocated": ((announce, Reject(404, 1, CAUSE_TEXT[1])), "183 announcement, then 404 / cause 1"),
        "congestion": ((Reject(503, 34, CAUSE_TEXT[34], retry_after=30),), "503 / 34, Retry-After 30"),
        "switched_off": ((Reject(480, 20, CAUSE_TEXT[20]),), "switched off: 480 / 20"),
        "invalid": ((Reject(484, 28, CAUSE_TEXT[28]),), "invalid or incomplete number: 484 / 28"),
        "rejected": ((Reject(403, 21, CAUSE_TEXT[21]),), "barred: 403 / 21"),
        "declined": ((Ring(), Reject(603, 21, CAUSE_TEXT[21])), "rings, then the callee declines: 603 / 21"),
        "out_of_order": ((Reject(502, 27, CAUSE_TEXT[27]),), "destination out of order: 502 / 27"),
        "drop": ((Drop(),), "never responds at all (the caller's Timer B fires)"),
    }
    return {k: Behaviour(steps, name=k, description=d) for k, (steps, d) in table.items()}


# --------------------------------------------------------------------------------------------
# loading


def _get(d: Mapping[str, Any], name: str, key: str, tp: type | tuple[type, ...], default: Any) -> Any:
    if name not in d:
        return default
    v = d[name]
    tps = tp if isinstance(tp, tuple) else (tp,)
    if (isinstance(v, bool) and bool not in tps) or not isinstance(v, tps):
        raise ConfigError(key, f"expected {_tpname(tp)}, got {v!r}")
    return v


def _tpname(tp: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    tps = tp if isinstance(tp, tuple) else (tp,)
    return " or ".join(names.get(t, t.__name__) for t in tps if t is not int or float not in tps)


def _code(d: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = _get(d, "code", f"{key}.code", int, default)
    if not lo <= v <= hi:
        raise ConfigError(f"{key}.code", f"must be {lo}..{hi}, got {v}")
    return int(v)


def _seconds(d: Mapping[str, Any], key: str, default: float, name: str = "seconds",
             positive: bool = False) -> float:
    v = _get(d, name, f"{key}.{name}", (int, float), default)
    if v < 0 or (positive and v == 0) or v > 86400:
        raise ConfigError(f"{key}.{name}", f"must be {'>' if positive else '>='} 0 and <= 86400, got {v}")
    return float(v)


def _q850(d: Mapping[str, Any], key: str, default: int | None) -> int | None:
    v = _get(d, "q850", f"{key}.q850", int, default)
    if v is not None and not 1 <= v <= 127:
        raise ConfigError(f"{key}.q850", f"a Q.850 cause is 1..127, got {v}")
    return None if v is None else int(v)


_STEP_KEYS: Final[dict[str, set[str]]] = {
    "ring": {"code", "seconds"},
    "early_media": {"code", "source", "seconds"},
    "wait": {"seconds"},
    "answer": {"media", "hangup_after_s"},
    "reject": {"code", "q850", "text", "retry_after"},
    "never_answer": {"seconds"},
    "no_response": {"seconds"},
    "drop": set(),
}


def parse_step(d: Any, key: str, sip: SipConfig) -> Step:
    """One `{ op = "…", … }` table from carrier.toml; `key` names it in errors."""
    if not isinstance(d, dict):
        raise ConfigError(key, f"expected a table like {{ op = \"ring\" }}, got {d!r}")
    op = d.get("op")
    if op not in _STEP_KEYS:
        raise ConfigError(f"{key}.op", f"expected one of {', '.join(_STEP_KEYS)}, got {op!r}")
    for k in d:
        if k != "op" and k not in _STEP_KEYS[op]:
            raise ConfigError(f"{key}.{k}", f"unknown key for op {op!r} (allowed: {sorted(_STEP_KEYS[op])})")
    if op == "ring":
        return Ring(_code(d, key, 180, 180, 182), _seconds(d, key, 0.0))
    if op == "early_media":
        src = parse_media(_get(d, "source", f"{key}.source", str, "ringback"), f"{key}.source")
        if src.kind == "echo":
            raise ConfigError(f"{key}.source", "early media cannot echo (no media flows from the caller yet)")
        return EarlyMedia(src, _seconds(d, key, sip.early_media_s), _code(d, key, 183, 180, 183))
    if op == "wait":
        return Wait(_seconds(d, key, 0.0))
    if op == "answer":
        specs = _get(d, "media", f"{key}.media", list, ["echo"])
        if not specs:
            raise ConfigError(f"{key}.media", "needs at least one media source")
        media = tuple(parse_media(s, f"{key}.media[{i}]") for i, s in enumerate(specs))
        hang = _seconds(d, key, 0.0, "hangup_after_s", positive=True) if "hangup_after_s" in d else None
        return Answer(media, hang)
    if op == "reject":
        if "code" not in d:
            raise ConfigError(f"{key}.code", "reject needs a code (400..699)")
        code = _code(d, key, 0, 400, 699)
        if code in (401, 407):
            raise ConfigError(f"{key}.code", "401/407 are authentication challenges, not outcomes")
        q = _q850(d, key, cause_for_sip(code))
        text = _get(d, "text", f"{key}.text", str, CAUSE_TEXT.get(q or 0, ""))
        if any(c in text for c in "\r\n"):
            raise ConfigError(f"{key}.text", "must not contain line breaks")
        ra = _get(d, "retry_after", f"{key}.retry_after", int, None)
        if ra is not None and not 0 < ra <= 86400:
            raise ConfigError(f"{key}.retry_after", f"must be 1..86400 seconds, got {ra}")
        return Reject(code, q, text, ra)
    if op == "never_answer":
        return NeverAnswer(_seconds(d, key, sip.ring_timeout_s, positive=True))
    if op == "no_response":
        return NoResponse(_seconds(d, key, sip.no_response_s, positive=True))
    return Drop()


def parse_behaviour(d: Any, key: str, sip: SipConfig, name: str = "") -> Behaviour:
    """A `{ preset = "…" }` or `{ steps = [ … ] }` table (plus optional description)."""
    if not isinstance(d, dict):
        raise ConfigError(key, f"expected a table with preset or steps, got {d!r}")
    for k in d:
        if k not in ("preset", "steps", "description"):
            raise ConfigError(f"{key}.{k}", "unknown key (allowed: preset, steps, description)")
    desc = _get(d, "description", f"{key}.description", str, "")
    if ("preset" in d) == ("steps" in d):
        raise ConfigError(key, "give exactly one of preset or steps")
    if "preset" in d:
        p = _get(d, "preset", f"{key}.preset", str, "")
        table = presets(sip)
        if p not in table:
            raise ConfigError(f"{key}.preset", f"unknown preset {p!r}; one of {', '.join(table)}")
        b = table[p]
        return replace(b, description=desc or b.description)
    raw = _get(d, "steps", f"{key}.steps", list, [])
    steps = tuple(parse_step(s, f"{key}.steps[{i}]", sip) for i, s in enumerate(raw))
    validate_steps(steps, f"{key}.steps")
    return Behaviour(steps, name=name, description=desc)


def validate_steps(steps: tuple[Step, ...], key: str = "steps") -> None:
    """Provisional steps first, exactly one terminal step last; raise ConfigError otherwise."""
    if not steps:
        raise ConfigError(key, "needs at least one step, ending with answer, reject, never_answer, "
                               "no_response or drop")
    for i, s in enumerate(steps):
        terminal = s.op in TERMINAL_OPS
        if terminal and i != len(steps) - 1:
            raise ConfigError(f"{key}[{i}]", f"{s.op} ends the call setup; it must be the last step")
        if not terminal and i == len(steps) - 1:
            raise ConfigError(f"{key}[{i}]", f"the last step must be one of {', '.join(TERMINAL_OPS)}, "
                                             f"not {s.op}")
    if isinstance(steps[-1], Drop) and len(steps) > 1:
        raise ConfigError(f"{key}[{len(steps) - 1}]", "drop sends nothing, so it must be the only step")


_NUMBER_KEY: Final = re.compile(r"\+\d{1,15}")


def _number_table(data: Any, section: str, sip: SipConfig, exact: bool) -> Mapping[str, Behaviour]:
    if not isinstance(data, dict):
        raise ConfigError(section, f"expected a table [{section}.\"+86…\"], got {data!r}")
    out: dict[str, Behaviour] = {}
    for num, entry in data.items():
        key = f'{section}."{num}"'
        if not _NUMBER_KEY.fullmatch(num):
            raise ConfigError(key, "must be + and 1..15 digits, e.g. \"+8613900000486\"")
        b = parse_behaviour(entry, key, sip)
        out[num] = replace(b, name=b.name or num, matched=f"{'number' if exact else 'prefix'}:{num}")
    return types.MappingProxyType(out)


def _validate_sip(s: SipConfig) -> None:
    try:
        ipaddress.ip_address(s.host)
    except ValueError:
        raise ConfigError("sip.host", f"expected an IP address, got {s.host!r}") from None
    if not 0 <= s.port <= 65535:
        raise ConfigError("sip.port", f"must be 0..65535 (0 = any free port), got {s.port}")
    if not s.transports or any(t not in ("udp", "tcp") for t in s.transports):
        raise ConfigError("sip.transports", f"expected a non-empty list of \"udp\"/\"tcp\", got {list(s.transports)}")
    if not s.realm or any(c in s.realm for c in '"\r\n'):
        raise ConfigError("sip.realm", "must be a non-empty string without quotes or line breaks")
    for name in ("ring_timeout_s", "no_response_s", "media_timeout_s", "auth_window_s", "nonce_ttl_s",
                 "rtcp_interval_s"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"sip.{name}", f"must be greater than 0, got {getattr(s, name)}")
    if s.min_se_s < 1:
        raise ConfigError("sip.min_se_s", f"must be at least 1 s (RFC 4028 says 90), got {s.min_se_s}")
    if s.early_media_s < 0:
        raise ConfigError("sip.early_media_s", f"must be >= 0, got {s.early_media_s}")
    for name in ("rtp_port_min", "rtp_port_max"):
        if not 1024 <= getattr(s, name) <= 65535:
            raise ConfigError(f"sip.{name}", f"must be 1024..65535, got {getattr(s, name)}")
    if s.rtp_port_min % 2:
        raise ConfigError("sip.rtp_port_min", f"RTP uses even ports, got {s.rtp_port_min}")
    if s.rtp_port_max <= s.rtp_port_min:
        raise ConfigError("sip.rtp_port_max", f"must be greater than sip.rtp_port_min ({s.rtp_port_min})")
    if not s.codecs or any(c not in ("PCMU", "PCMA") for c in s.codecs):
        raise ConfigError("sip.codecs", f"expected a non-empty list of \"PCMU\"/\"PCMA\", got {list(s.codecs)}")
    if not 96 <= s.dtmf_payload_type <= 127:
        raise ConfigError("sip.dtmf_payload_type", f"dynamic payload types are 96..127, got {s.dtmf_payload_type}")
    if s.max_auth_failures < 1:
        raise ConfigError("sip.max_auth_failures", f"must be at least 1, got {s.max_auth_failures}")
    if not 1 <= s.min_expires_s <= s.max_expires_s:
        raise ConfigError("sip.min_expires_s", "must be >= 1 and <= sip.max_expires_s")


def _parse_trunks(raw: Any) -> tuple[TrunkAccount, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("trunk", "expected at least one [[trunk]] table")
    out: list[TrunkAccount] = []
    for i, d in enumerate(raw):
        key = f"trunk[{i}]"
        if not isinstance(d, dict):
            raise ConfigError(key, f"expected a table, got {d!r}")
        t: TrunkAccount = build(TrunkAccount, d, f"{key}.")
        if not re.fullmatch(r"[A-Za-z0-9_.!~*'()&=+$,;?/-]{1,64}", t.username):
            raise ConfigError(f"{key}.username", f"expected 1..64 SIP user characters, got {t.username!r}")
        if any(o.username == t.username for o in out):
            raise ConfigError(f"{key}.username", f"duplicate trunk username {t.username!r}")
        if not t.password or any(c in t.password for c in "\r\n"):
            raise ConfigError(f"{key}.password", "must be a non-empty single-line string")
        for j, src in enumerate(t.allowed_sources):
            try:
                ipaddress.ip_network(src, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.allowed_sources[{j}]", f"not an IP address or network: {src!r}") from None
        if t.max_calls < 1:
            raise ConfigError(f"{key}.max_calls", f"must be at least 1, got {t.max_calls}")
        out.append(t)
    return tuple(out)


def _parse_unreachable(raw: Any) -> UnreachableConfig:
    if not isinstance(raw, dict):
        raise ConfigError("unreachable", f"expected a table, got {raw!r}")
    base = UnreachableConfig()
    values: dict[str, Unreachable] = {}
    for name, sub in raw.items():
        key = f"unreachable.{name}"
        if name not in UnreachableConfig.__dataclass_fields__:
            raise ConfigError(key, f"unknown kind (known: {', '.join(UnreachableConfig.__dataclass_fields__)})")
        if not isinstance(sub, dict):
            raise ConfigError(key, f"expected a table like {{ code = 404, q850 = 1 }}, got {sub!r}")
        # keys missing here keep this kind's own default, not Unreachable's
        values[name] = build(Unreachable, {**dataclasses.asdict(getattr(base, name)), **sub}, f"{key}.")
    cfg = replace(base, **values)
    for name in UnreachableConfig.__dataclass_fields__:
        u: Unreachable = getattr(cfg, name)
        key = f"unreachable.{name}"
        if not 400 <= u.code <= 699 or u.code in (401, 407):
            raise ConfigError(f"{key}.code", f"must be a final error response 400..699 (not 401/407), got {u.code}")
        if not 1 <= u.q850 <= 127:
            raise ConfigError(f"{key}.q850", f"a Q.850 cause is 1..127, got {u.q850}")
        if not 0 <= u.announcement_s <= 600:
            raise ConfigError(f"{key}.announcement_s", f"must be 0..600, got {u.announcement_s}")
        if any(c in u.text for c in "\r\n"):
            raise ConfigError(f"{key}.text", "must not contain line breaks")
    return cfg


def parse_carrier_config(data: Mapping[str, Any]) -> CarrierConfig:
    """Build and validate a CarrierConfig from parsed TOML; ConfigError names the wrong key."""
    known = {"sip", "trunk", "inbound", "unreachable", "cdr", "media", "control", "default", "numbers", "prefixes"}
    for k in data:
        if k not in known:
            raise ConfigError(k, f"unknown section (known: {', '.join(sorted(known))})")
    for sec in ("sip", "inbound", "cdr", "media", "control"):
        if sec in data and not isinstance(data[sec], dict):
            raise ConfigError(sec, f"expected a table [{sec}]")
    sip: SipConfig = build(SipConfig, data.get("sip", {}), "sip.")
    _validate_sip(sip)
    trunks = _parse_trunks(data["trunk"]) if "trunk" in data else CarrierConfig().trunks
    inbound: InboundConfig = build(InboundConfig, data.get("inbound", {}), "inbound.")
    if not inbound.account:
        inbound = replace(inbound, account=trunks[0].username)
    if not any(t.username == inbound.account for t in trunks):
        raise ConfigError("inbound.account", f"no [[trunk]] with username {inbound.account!r}")
    if inbound.contact and not re.fullmatch(r"sips?:\S+", inbound.contact):
        raise ConfigError("inbound.contact", f"expected a sip: URI or \"\", got {inbound.contact!r}")
    if not _NUMBER_KEY.fullmatch(inbound.caller_id):
        raise ConfigError("inbound.caller_id", f"expected an E.164 number, got {inbound.caller_id!r}")
    unreachable = _parse_unreachable(data.get("unreachable", {}))
    cdr: CdrConfig = build(CdrConfig, data.get("cdr", {}), "cdr.")
    control: ControlConfig = build(ControlConfig, data.get("control", {}), "control.")
    if not 0 <= control.port <= 65535:
        raise ConfigError("control.port", f"must be 0..65535 (0 = any free port), got {control.port}")
    media: MediaConfig = build(MediaConfig, data.get("media", {}), "media.")
    try:
        media.impairment  # noqa: B018 - validates the spec; the error names the key
    except ConfigError as exc:
        raise ConfigError("media.impair", f"{exc.key}: {exc.message}") from None
    default = parse_behaviour(data["default"], "default", sip, "default") if "default" in data else None
    numbers = _number_table(data.get("numbers", {}), "numbers", sip, True)
    prefixes = _number_table(data.get("prefixes", {}), "prefixes", sip, False)
    return CarrierConfig(sip=sip, trunks=trunks, inbound=inbound, unreachable=unreachable, cdr=cdr,
                         media=media, control=control, default=default, numbers=numbers, prefixes=prefixes)


# --------------------------------------------------------------------------------------------
# lookup


def _unreachable_behaviour(kind: str, u: Unreachable) -> Behaviour:
    steps: list[Step] = []
    if u.announcement_s > 0:
        steps.append(EarlyMedia(ANNOUNCEMENT, u.announcement_s))
    steps.append(Reject(u.code, u.q850, u.text or CAUSE_TEXT.get(u.q850, "")))
    return Behaviour(tuple(steps), name=kind, description=f"{kind}: {u.code} / cause {u.q850}",
                     matched=f"kind:{kind}")


def behaviour_for(e164: str, config: CarrierConfig, info: NumberInfo | None = None) -> Behaviour:
    """The programme for a dialled E.164 number: exact [numbers] entry > longest [prefixes]
    entry > classification ([unreachable].<kind>) > [default] (180, 183 ringback, answer, echo).

    Pass `info` if you already called `classify(e164)`.
    """
    b = config.numbers.get(e164)
    if b is not None:
        return b
    best = max((p for p in config.prefixes if e164.startswith(p)), key=len, default=None)
    if best is not None:
        return config.prefixes[best]
    info = info or classify(e164)
    if info.kind in UnreachableConfig.__dataclass_fields__:
        return _unreachable_behaviour(info.kind, getattr(config.unreachable, info.kind))
    if config.default is not None:
        return replace(config.default, matched="default")
    return replace(presets(config.sip)["answer"], matched="default")


_USER_PARAM: Final = re.compile(r";.*$")
_VISUAL: Final = re.compile(r"[\-.()\s]")


def number_from_uri(uri: str) -> str:
    """The dialled number in a Request-URI or To URI, as "+<digits>" for `behaviour_for`.

    Accepts sip:/sips:/tel: URIs, optionally in <…>, with +86…, 0086…, 86… or national user
    parts (013800138000, 13800138000, 110), visual separators, %-escapes and parameters such as
    ;user=phone or ;phone-context. Raises NumberError (answer 484 / cause 28) otherwise.
    """
    s = uri.strip()
    if s.startswith("<"):
        s = s[1:].split(">", 1)[0]
    scheme, sep, rest = s.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips", "tel"):
        raise NumberError("invalid", f"not a sip:, sips: or tel: URI: {uri!r}", uri)
    if scheme == "tel":
        user = rest
    else:
        if "@" not in rest:
            raise NumberError("invalid", f"no user part in {uri!r}", uri)
        user = rest.rsplit("@", 1)[0]
    user = urllib.parse.unquote(_USER_PARAM.sub("", user))
    user = _VISUAL.sub("", user)
    if not re.fullmatch(r"\+?\d+", user):
        raise NumberError("invalid", f"the user part {user!r} is not a telephone number", uri)
    if user.startswith("+"):
        return user
    if user.startswith("00"):
        return "+" + user[2:]
    if user.startswith("86") and len(user) >= 5:  # no Chinese national number starts with 86
        return "+" + user
    return normalise(user, "CN")


def behaviour_for_uri(uri: str, config: CarrierConfig) -> tuple[str, Behaviour]:
    """`number_from_uri` then `behaviour_for`; an unusable URI gets [unreachable].invalid (484/28).

    Returns (number or the raw user text, behaviour).
    """
    try:
        number = number_from_uri(uri)
    except NumberError as exc:
        kind = exc.kind if exc.kind in ("invalid", "incomplete") else "invalid"
        return uri, _unreachable_behaviour(kind, getattr(config.unreachable, kind))
    return number, behaviour_for(number, config)
