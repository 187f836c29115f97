"""[pure] The WebSocket wire schema (docs/signalling.md) as frozen dataclasses.

Call `parse_frame(text, max_bytes)` on each text frame: it returns a typed message or raises
SignallingError with the wire code. Other features register their own types with `@message`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..call.reasons import GATEWAY_DECLINE_REASONS, EndReason
from ..errors import ErrorCode, SignallingError

PROTOCOL_VERSION = 1
CALL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
DTMF_RE = re.compile(r"^[0-9*#A-D]{1,32}$")
MAX_SDP = 60 * 1024
MAX_ID = 64
MAX_NESTING = 16

Parser = Callable[[dict[str, Any]], Any]
PARSERS: dict[str, Parser] = {}


def message(type_name: str) -> Callable[[Parser], Parser]:
    """Register a parser for messages of `type_name` (dict -> dataclass)."""

    def deco(fn: Parser) -> Parser:
        PARSERS[type_name] = fn
        return fn

    return deco


# -- field helpers --------------------------------------------------------------------------
def field_str(d: dict[str, Any], name: str, *, max_len: int, min_len: int = 1,
              pattern: re.Pattern[str] | None = None, optional: bool = False) -> Any:
    v = d.get(name)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be a string")
    if not (min_len <= len(v) <= max_len):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must have {min_len}-{max_len} characters")
    if pattern is not None and not pattern.match(v):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} has an invalid format")
    return v


def call_id(d: dict[str, Any]) -> str:
    return str(field_str(d, "call_id", max_len=64, min_len=8, pattern=CALL_ID_RE))


def _sdp(d: dict[str, Any]) -> str:
    sdp = str(field_str(d, "sdp", max_len=MAX_SDP))
    if not sdp.startswith("v=0"):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'sdp' is not an SDP description (must start v=0)")
    return sdp


# -- messages -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class GatewayAuth:
    secret: str
    name: str
    capacity: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Invite:
    call_id: str
    to: str
    media: tuple[str, ...]
    sdp: str
    from_: str | None = None  # only gateways name the caller (a phone number)


@dataclass(frozen=True, slots=True)
class Ringing:
    call_id: str
    sdp: str | None = None       # gateways: the answer, when early media starts
    sip_code: int | None = None  # gateways: 180 or 183


@dataclass(frozen=True, slots=True)
class Accept:
    call_id: str
    sdp: str | None  # users must send it; a gateway may have sent it with ringing


@dataclass(frozen=True, slots=True)
class Decline:
    call_id: str
    reason: EndReason  # users: declined or busy; gateways: any of GATEWAY_DECLINE_REASONS
    sip_code: int | None = None
    q850_cause: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    call_id: str


@dataclass(frozen=True, slots=True)
class Hangup:
    call_id: str
    sip_code: int | None = None
    q850_cause: int | None = None


@dataclass(frozen=True, slots=True)
class CallReport:
    call_id: str
    codec: str | None
    app: dict[str, int]
    phone: dict[str, int]
    mos: float | None = None        # the gateway's E-model score of the call (jego_call/quality.py)
    r_factor: float | None = None


@dataclass(frozen=True, slots=True)
class Ice:
    call_id: str
    candidate: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Dtmf:
    call_id: str
    digits: str


def field_num(d: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    """An optional number (int or float) in [lo, hi]."""
    v = d.get(name)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be a number {lo:g}-{hi:g}")
    return float(v)


def field_int(d: dict[str, Any], name: str, lo: int, hi: int, optional: bool = True) -> int | None:
    v = d.get(name)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be an integer {lo}-{hi}")
    return v


@message("auth")
def _auth(d: dict[str, Any]) -> Auth:
    return Auth(str(field_str(d, "token", max_len=512)))


@message("gateway_auth")
def _gateway_auth(d: dict[str, Any]) -> GatewayAuth:
    cap = field_int(d, "capacity", 1, 1000, optional=False)
    assert cap is not None
    return GatewayAuth(str(field_str(d, "secret", max_len=256)), str(field_str(d, "name", max_len=64)), cap)


@message("ping")
def _ping(d: dict[str, Any]) -> Ping:
    return Ping()


@message("invite")
def _invite(d: dict[str, Any]) -> Invite:
    media = d.get("media", ["audio"])
    if (not isinstance(media, list) or not media or len(media) > 2
            or any(m not in ("audio", "video") for m in media) or "audio" not in media
            or len(set(media)) != len(media)):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'media' must be [\"audio\"] or [\"audio\", \"video\"]")
    to = str(field_str(d, "to", max_len=64))
    from_ = field_str(d, "from", max_len=64, optional=True)
    return Invite(call_id(d), to.strip(), tuple(media), _sdp(d), from_)


def _optional_sdp(d: dict[str, Any]) -> str | None:
    return _sdp(d) if d.get("sdp") is not None else None


@message("ringing")
def _ringing(d: dict[str, Any]) -> Ringing:
    return Ringing(call_id(d), _optional_sdp(d), field_int(d, "sip_code", 100, 199))


@message("accept")
def _accept(d: dict[str, Any]) -> Accept:
    return Accept(call_id(d), _optional_sdp(d))


@message("decline")
def _decline(d: dict[str, Any]) -> Decline:
    raw = d.get("reason", "declined")
    reason = EndReason.parse(raw) if isinstance(raw, str) else None
    if reason is None or reason.value != raw or reason not in GATEWAY_DECLINE_REASONS:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'reason' must be 'declined' or 'busy'")
    return Decline(call_id(d), reason, field_int(d, "sip_code", 300, 699), field_int(d, "q850_cause", 0, 127),
                   field_str(d, "detail", max_len=200, optional=True))


@message("cancel")
def _cancel(d: dict[str, Any]) -> Cancel:
    return Cancel(call_id(d))


@message("hangup")
def _hangup(d: dict[str, Any]) -> Hangup:
    return Hangup(call_id(d), field_int(d, "sip_code", 100, 699), field_int(d, "q850_cause", 0, 127))


# call_report counters: RTP packets, and (phone side) what the far end's RTCP reported: round
# trip and interarrival jitter in ms, cumulative packets of ours it lost (RFC 3550 §6.4.1);
# (app side) lost 20 ms frames rebuilt from Opus in-band FEC, from RFC 2198 RED copies, and those
# concealed (PLC).
COUNTERS = ("packets_sent", "packets_received", "packets_lost", "rtt_ms", "jitter_ms", "remote_loss",
            "fec_recovered", "red_recovered", "concealed_frames")


def _counters(d: dict[str, Any], name: str) -> dict[str, int]:
    v = d.get(name) or {}
    if not isinstance(v, dict) or len(v) > 16:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be an object of counters")
    out: dict[str, int] = {}
    for k, n in v.items():
        if k not in COUNTERS or not isinstance(n, int) or isinstance(n, bool):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, f"{name}.{str(k)[:32]} is not a known counter")
        out[k] = n
    return out


@message("call_report")
def _call_report(d: dict[str, Any]) -> CallReport:
    return CallReport(call_id(d), field_str(d, "codec", max_len=16, optional=True), _counters(d, "app"),
                      _counters(d, "phone"), field_num(d, "mos", 1.0, 4.5), field_num(d, "r_factor", 0.0, 100.0))


@message("ice")
def _ice(d: dict[str, Any]) -> Ice:
    if "candidate" not in d:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'candidate' is required (null ends candidates)")
    cand = d["candidate"]
    if cand is not None:
        if not isinstance(cand, dict):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'candidate' must be an object or null")
        text = cand.get("candidate")
        mid = cand.get("sdpMid")
        index = cand.get("sdpMLineIndex")
        if not isinstance(text, str) or len(text) > 1024:
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "candidate.candidate must be a string of at most 1024")
        if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "candidate.sdpMid must be a short string or null")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 64):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "candidate.sdpMLineIndex must be an integer 0-63")
        cand = {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index}
    return Ice(call_id(d), cand)


@message("dtmf")
def _dtmf(d: dict[str, Any]) -> Dtmf:
    return Dtmf(call_id(d), str(field_str(d, "digits", max_len=32, pattern=DTMF_RE)))


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value, stopping early past `limit`."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        cur, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(cur, dict):
            stack.extend((v, depth + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, depth + 1) for v in cur)
    return deepest


def decode_frame(text: str, max_bytes: int) -> dict[str, Any]:
    """JSON text -> dict, enforcing the size limit and object shape."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise SignallingError(ErrorCode.MESSAGE_TOO_LARGE, f"message is larger than {max_bytes} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise SignallingError(ErrorCode.INVALID_JSON, "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise SignallingError(ErrorCode.INVALID_JSON, "message must be a JSON object")
    if _depth(obj, MAX_NESTING) > MAX_NESTING:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"message is nested deeper than {MAX_NESTING} levels")
    return obj


def message_ref(obj: dict[str, Any]) -> str | int | None:
    """The client's `id` for error replies, if it is a sane scalar."""
    ref = obj.get("id")
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int) or (isinstance(ref, str) and len(ref) <= MAX_ID):
        return ref
    return None


def parse_message(obj: dict[str, Any]) -> Any:
    """A decoded frame -> its typed message; SignallingError(unknown_type/invalid_message)."""
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'type' must be a string")
    parser = PARSERS.get(kind)
    if parser is None:
        raise SignallingError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    try:
        return parser(obj)
    except SignallingError as exc:
        if exc.call_id is None and isinstance(obj.get("call_id"), str) and CALL_ID_RE.match(obj["call_id"]):
            exc.call_id = obj["call_id"]
        raise


def parse_frame(text: str, max_bytes: int) -> Any:
    return parse_message(decode_frame(text, max_bytes))
