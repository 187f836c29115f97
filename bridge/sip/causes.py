"""The one Q.850 helper: SIP status <-> Q.850 cause, and the RFC 3326 Reason header.

The carrier puts `reason_header(cause)` on its final responses and BYEs; the bridge reads the
cause of a response or BYE with `q850_of(message)` (falling back to `cause_for_sip(code)`), then
`jego_call.call.reasons.from_sip(code, cause)` tells the user what happened. Pure, stdlib only.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .message import SipMessage

__all__ = [
    "CAUSE_TEXT",
    "cause_for_sip",
    "parse_reason_header",
    "q850_of",
    "reason_header",
    "sip_for_cause",
]

# ITU-T Q.850 cause values used here, with their standard names.
CAUSE_TEXT: Final[dict[int, str]] = {
    1: "Unallocated (unassigned) number",
    2: "No route to specified transit network",
    3: "No route to destination",
    16: "Normal call clearing",
    17: "User busy",
    18: "No user responding",
    19: "No answer from user (user alerted)",
    20: "Subscriber absent",
    21: "Call rejected",
    22: "Number changed",
    27: "Destination out of order",
    28: "Invalid number format (address incomplete)",
    31: "Normal, unspecified",
    34: "No circuit/channel available",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    47: "Resource unavailable, unspecified",
    50: "Requested facility not subscribed",
    58: "Bearer capability not presently available",
    65: "Bearer capability not implemented",
    79: "Service or option not implemented, unspecified",
    88: "Incompatible destination",
    102: "Recovery on timer expiry",
    111: "Protocol error, unspecified",
    127: "Interworking, unspecified",
}


# Q.850 cause → SIP final response (RFC 3398 §8.2.6.1; 16 ends with a BYE, hence 0).
_SIP_FOR_CAUSE: Final[dict[int, int]] = {
    1: 404, 2: 404, 3: 404, 16: 0, 17: 486, 18: 408, 19: 480, 20: 480, 21: 403, 22: 410,
    27: 502, 28: 484, 31: 480, 34: 503, 38: 503, 41: 503, 42: 503, 47: 503, 58: 503,
    65: 488, 79: 501, 88: 503, 102: 504, 111: 500, 127: 500,
}

# SIP final response → Q.850 cause when no Reason header came with it (RFC 3398 §7.2.4.1,
# with the Oracle SBC defaults carrier.md quotes: 480 → 20, 503 → 41, 408/504 → 102).
_CAUSE_FOR_SIP: Final[dict[int, int]] = {
    400: 41, 401: 21, 402: 21, 403: 21, 404: 1, 405: 63, 406: 79, 407: 21, 408: 102, 410: 22,
    413: 127, 414: 127, 415: 79, 416: 127, 420: 127, 480: 20, 481: 41, 482: 25, 483: 25,
    484: 28, 485: 1, 486: 17, 487: 127, 488: 127, 500: 41, 501: 79, 502: 38, 503: 41, 504: 102,
    505: 127, 513: 127, 600: 17, 603: 21, 604: 1, 606: 58,
}

def sip_for_cause(cause: int) -> int:
    """The SIP final response for a Q.850 cause (0 = clear with BYE); unknown causes → 500."""
    return _SIP_FOR_CAUSE.get(cause, 500)


def cause_for_sip(code: int) -> int:
    """The Q.850 cause for a SIP final response that came without a Reason header."""
    if code in _CAUSE_FOR_SIP:
        return _CAUSE_FOR_SIP[code]
    return 31 if 400 <= code < 500 else 41 if 500 <= code < 600 else 21 if code >= 600 else 16


def _quote(text: str) -> str:
    text = "".join(ch for ch in text if ch >= " " and ch != "\x7f")  # no CR/LF/control chars
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def reason_header(cause: int, text: str | None = None) -> str:
    """The RFC 3326 Reason value, e.g. `Q.850;cause=17;text="User busy"` (text defaults to Q.850's)."""
    if not isinstance(cause, int) or isinstance(cause, bool) or not 0 < cause < 128:
        raise ValueError(f"Q.850 cause must be 1..127, got {cause!r}")
    if text is None:
        text = CAUSE_TEXT.get(cause, "")
    return f"Q.850;cause={cause}" + (f";text={_quote(text)}" if text else "")


_REASON_RE: Final = re.compile(
    r'\s*(?P<proto>[A-Za-z0-9.\-]+)\s*(?P<params>(?:;\s*[A-Za-z0-9\-]+\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,\s]+)\s*)*)')


def parse_reason_header(value: str) -> list[tuple[str, int | None, str]]:
    """Parse a Reason header value into [(protocol, cause, text)], e.g. [("Q.850", 17, "User busy")].

    Several comma-separated reasons are allowed (RFC 3326); malformed parts are skipped.
    """
    out: list[tuple[str, int | None, str]] = []
    pos = 0
    while pos < len(value):
        m = _REASON_RE.match(value, pos)
        if not m or not m.group(0).strip():
            nxt = value.find(",", pos)
            if nxt < 0:
                break
            pos = nxt + 1
            continue
        cause: int | None = None
        text = ""
        for pm in re.finditer(r';\s*([A-Za-z0-9\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]+)', m.group("params")):
            name, raw = pm.group(1).lower(), pm.group(2)
            if name == "cause" and raw.isdigit() and len(raw) <= 3:
                cause = int(raw)
            elif name == "text":
                text = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        out.append((m.group("proto"), cause, text))
        pos = m.end()
        rest = value[pos:].lstrip()
        if not rest.startswith(","):
            break
        pos = len(value) - len(rest) + 1
    return out


def q850_of(message: SipMessage) -> int | None:
    """The Q.850 cause of a message's RFC 3326 Reason header(s), if any (the first Q.850 one)."""
    for value in message.headers.get_all("Reason"):
        for proto, cause, _text in parse_reason_header(value):
            if proto.upper() == "Q.850" and cause is not None:
                return cause
    return None
