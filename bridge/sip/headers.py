"""Header names and typed header values (RFC 3261 §7.3, §20, §25.1).

`Headers` is the case-insensitive, ordered, multi-valued map used by SipRequest/SipResponse.
`Via`, `CSeq` and the parse_* functions read single header values and raise SipParseError with a
reason naming the header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from .errors import SipParseError
from .uri import (
    TOKEN_CHARS,
    Params,
    drop_param,
    format_params,
    get_param,
    is_token,
    is_valid_host,
    read_params,
    set_param,
    skip_ws,
)

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7

# Compact forms (RFC 3261 §7.3.3 and the IANA registry).
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "n": "Identity-Info", "o": "Event", "r": "Refer-To",
    "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL_LIST = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length", "Content-Type",
    "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity", "Identity-Info",
    "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version", "Organization", "P-Asserted-Identity",
    "Path", "Priority", "Privacy", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require",
    "RAck", "Reason", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server", "Service-Route",
    "Session-Expires", "Subject", "Subscription-State", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
]
CANONICAL_NAMES: dict[str, str] = {name.lower(): name for name in _CANONICAL_LIST}

# Headers whose grammar is a comma-separated list: split into one value per element on parse.
LIST_HEADERS = frozenset(name.lower() for name in (
    "Via", "Contact", "Route", "Record-Route", "Path", "Service-Route", "Allow", "Supported",
    "Require", "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
    "Content-Encoding", "Content-Language", "Allow-Events", "Alert-Info", "Call-Info", "Error-Info",
    "In-Reply-To", "Warning", "Reason", "P-Asserted-Identity", "Accept-Contact", "Reject-Contact",
))

# Headers that may appear at most once (RFC 3261 §20 / §7.3.1): a second one is a 400 (RFC 4475 multi01).
SINGLE_HEADERS = frozenset(name.lower() for name in (
    "To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Content-Type", "Expires",
    "Date", "Min-Expires", "MIME-Version", "Retry-After", "Timestamp", "RSeq", "RAck", "Event",
    "Subscription-State", "Session-Expires", "Refer-To", "Referred-By",
))


def canonical_name(name: str) -> str:
    """Expand a compact form and canonicalise the case of a known header name."""
    lname = name.lower()
    if len(lname) == 1 and lname in COMPACT_FORMS:
        return COMPACT_FORMS[lname]
    return CANONICAL_NAMES.get(lname, name)


def split_list(value: str) -> list[str]:
    """Split a header value at top-level commas (not inside quotes or <...>); strip each part."""
    parts: list[str] = []
    start = 0
    in_quote = in_angle = False
    i = 0
    while i < len(value):
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quote or in_angle:
        return [value.strip()]  # unbalanced: keep whole, validation reports it
    parts.append(value[start:].strip())
    return parts


class Headers:
    """Ordered multi-map of header fields; names are matched case-insensitively.

    `get(name)` first value, `get_all(name)` every value (list headers are stored one element per
    entry), `add`, `set` (replace all), `remove`, iteration yields (name, value) in wire order.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == canonical_name(name).lower() for n, _ in self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and [(n.lower(), v) for n, v in self._items] == \
            [(n.lower(), v) for n, v in other._items]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = canonical_name(name).lower()
        for n, v in self._items:
            if n.lower() == lname:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        lname = canonical_name(name).lower()
        return [v for n, v in self._items if n.lower() == lname]

    def count(self, name: str) -> int:
        return len(self.get_all(name))

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append (or with first=True, insert before the first field of that name / at the top)."""
        cname = canonical_name(name)
        if first:
            lname = cname.lower()
            for idx, (n, _) in enumerate(self._items):
                if n.lower() == lname:
                    self._items.insert(idx, (cname, value))
                    return
            self._items.insert(0, (cname, value))
        else:
            self._items.append((cname, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field `name` by one with `value`, at the position of the first."""
        cname = canonical_name(name)
        lname = cname.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self._items:
            if n.lower() == lname:
                if not placed:
                    out.append((cname, value))
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.append((cname, value))
        self._items = out

    def set_first(self, name: str, value: str) -> None:
        """Replace only the first field `name` (e.g. the top Via)."""
        lname = canonical_name(name).lower()
        for idx, (n, _) in enumerate(self._items):
            if n.lower() == lname:
                self._items[idx] = (n, value)
                return
        self.add(name, value)

    def remove(self, name: str) -> None:
        lname = canonical_name(name).lower()
        self._items = [(n, v) for n, v in self._items if n.lower() != lname]

    def remove_first(self, name: str) -> None:
        lname = canonical_name(name).lower()
        for idx, (n, _) in enumerate(self._items):
            if n.lower() == lname:
                del self._items[idx]
                return


# --- Via (RFC 3261 §20.42, RFC 3581) -----------------------------------------------------------

_SENT_PROTOCOL_RE = re.compile(
    r"[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/]+)[ \t]*/[ \t]*([^ \t/;,]+)[ \t]+")


@dataclass(frozen=True)
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...`."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP"
    version: str = "2.0"

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch") or None

    @property
    def received(self) -> str | None:
        return get_param(self.params, "received") or None

    @property
    def rport(self) -> int | None:
        value = get_param(self.params, "rport")
        return int(value) if value else None

    @property
    def has_rport(self) -> bool:
        return get_param(self.params, "rport") is not None

    @property
    def sent_by(self) -> str:
        """host[:port] lower-cased, port defaulted (for transaction matching, RFC 3261 §17.2.3)."""
        default = 5061 if self.transport.upper() == "TLS" else 5060
        return f"{self.host.lower()}:{self.port or default}"

    @property
    def is_rfc3261_branch(self) -> bool:
        b = self.branch
        return bool(b) and b.startswith(MAGIC_COOKIE)  # type: ignore[union-attr]

    def with_param(self, name: str, value: str | None = None) -> Via:
        return replace(self, params=set_param(self.params, name, value))

    def without_param(self, name: str) -> Via:
        return replace(self, params=drop_param(self.params, name))

    def __str__(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.version}/{self.transport} {hostport}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    """Parse one Via value (the header is already split at commas). Raises SipParseError."""
    m = _SENT_PROTOCOL_RE.match(value)
    if not m or not all(is_token(g) for g in m.groups()):
        raise SipParseError("Via: invalid sent-protocol")
    protocol, version, transport = m.groups()
    i = m.end()
    if i < len(value) and value[i] == "[":
        end = value.find("]", i)
        if end < 0:
            raise SipParseError("Via: unterminated IPv6 reference")
        host = value[i:end + 1]
        i = end + 1
    else:
        start = i
        while i < len(value) and (value[i] in TOKEN_CHARS):
            i += 1
        host = value[start:i]
    if not is_valid_host(host):
        raise SipParseError(f"Via: invalid sent-by host {host[:60]!r}")
    port = None
    j = skip_ws(value, i)
    if j < len(value) and value[j] == ":":
        j = skip_ws(value, j + 1)
        start = j
        while j < len(value) and value[j].isdigit() and value[j].isascii():
            j += 1
        digits = value[start:j]
        if not digits or len(digits) > 5 or int(digits) > 65535:
            raise SipParseError("Via: invalid port")
        port = int(digits)
        i = j
    params, i = read_params(value, i, "Via")
    if i < len(value):
        raise SipParseError("Via: unexpected ','")
    for name, pval in params:
        lname = name.lower()
        if lname == "branch" and not pval:
            raise SipParseError("Via: empty branch")
        if lname == "received" and (not pval or not (is_valid_host(pval) or is_valid_host(f"[{pval}]"))):
            raise SipParseError("Via: invalid received")
        if lname == "rport" and pval is not None and (not pval.isdigit() or int(pval) > 65535):
            raise SipParseError("Via: invalid rport")
        if lname == "ttl" and (not pval or not pval.isdigit() or int(pval) > 255):
            raise SipParseError("Via: invalid ttl")
    return Via(transport.upper(), host, port, params, protocol, version)


# --- CSeq, numbers, tokens ---------------------------------------------------------------------

@dataclass(frozen=True)
class CSeq:
    """CSeq: sequence number (< 2**31, RFC 3261 §8.1.1.5) and method."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


MAX_CSEQ = 2**31 - 1


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii() or not is_token(parts[1]):
        raise SipParseError("CSeq: must be a number and a method")
    if len(parts[0]) > 10 or int(parts[0]) > MAX_CSEQ:
        raise SipParseError("CSeq: sequence number out of range")
    return CSeq(int(parts[0]), parts[1])


def parse_uint(value: str, what: str, maximum: int) -> int:
    """1*DIGIT in 0..maximum (e.g. Max-Forwards 0..255, Content-Length, Expires)."""
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise SipParseError(f"{what}: not a number")
    if len(text.lstrip("0")) > len(str(maximum)) or int(text) > maximum:
        raise SipParseError(f"{what}: out of range")
    return int(text)


def parse_token_list(values: Iterable[str], what: str) -> list[str]:
    """Option-tag / method lists (Require, Supported, Allow ...): each element must be a token.

    An empty header value is an empty list (RFC 3261 §25.1: `Supported = "Supported" HCOLON
    [option-tag *(COMMA option-tag)]`; baresip sends "Supported: ").
    """
    out = []
    for v in values:
        if v == "":
            continue
        if not is_token(v):
            raise SipParseError(f"{what}: invalid token {v[:40]!r}")
        out.append(v)
    return out


_CALL_ID_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(rf"{_CALL_ID_WORD}(?:@{_CALL_ID_WORD})?")


def check_call_id(value: str) -> str:
    """Call-ID = word [ "@" word ] (RFC 3261 §25.1)."""
    if not _CALL_ID_RE.fullmatch(value):
        raise SipParseError("Call-ID: invalid")
    return value


@dataclass(frozen=True)
class MediaType:
    """Content-Type / Accept element: `type/subtype;params` (lower-cased type and subtype)."""

    type: str
    subtype: str
    params: Params = ()

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return self.mime + format_params(self.params)


def parse_media_type(value: str, what: str = "Content-Type") -> MediaType:
    m = re.match(r"[ \t]*([^ \t/;]+)[ \t]*/[ \t]*([^ \t/;]+)", value)
    if not m or not is_token(m.group(1)) or not is_token(m.group(2)):
        raise SipParseError(f"{what}: invalid media type")
    params, i = read_params(value, m.end(), what)
    if i < len(value):
        raise SipParseError(f"{what}: unexpected ','")
    return MediaType(m.group(1).lower(), m.group(2).lower(), params)


_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d{2}:\d{2}:\d{2} GMT")


def check_date(value: str) -> str:
    """SIP-date is rfc1123-date and the only time zone allowed is "GMT" (RFC 3261 §20.17)."""
    if not _DATE_RE.fullmatch(value.strip()):
        raise SipParseError("Date: must be an RFC 1123 date in GMT")
    return value
