"""SIP/SIPS/tel URIs and name-addr values (RFC 3261 §19.1, §25.1; RFC 3966 for tel).

`parse_uri(text)` gives a `SipUri` (sip, sips, tel) or an `AbsoluteUri` (any other scheme, kept
opaque so the endpoint can answer 416). `parse_name_addr(text)` reads From/To/Contact/Route values.
Both raise `SipParseError` with a reason naming what is wrong; `str()` formats them back.
User, password, parameter and header parts are stored unescaped and re-escaped on output.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from .errors import SipParseError

# --- character classes (RFC 3261 §25.1) -------------------------------------------------------

ALPHANUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
MARK = frozenset("-_.!~*'()")
UNRESERVED = ALPHANUM | MARK
TOKEN_CHARS = ALPHANUM | frozenset("-.!%*_+`'~")
USER_CHARS = UNRESERVED | frozenset("&=+$,;?/")
PASSWORD_CHARS = UNRESERVED | frozenset("&=+$,")
PARAM_CHARS = UNRESERVED | frozenset("[]/:&+$")
HNAME_CHARS = UNRESERVED | frozenset("[]/?:+$")
URIC_CHARS = UNRESERVED | frozenset(";/?:@&=+$,[]")  # absoluteURI (RFC 2396 uric)
_HEX = frozenset("0123456789abcdefABCDEF")
_WS = " \t"

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?")
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")

SIP_SCHEMES = ("sip", "sips")


def is_token(text: str) -> bool:
    """True if `text` is a non-empty RFC 3261 token."""
    return bool(text) and all(c in TOKEN_CHARS for c in text)


def _valid_escaped(text: str, allowed: frozenset[str]) -> bool:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%":
            if i + 2 >= n or text[i + 1] not in _HEX or text[i + 2] not in _HEX:
                return False
            i += 3
            continue
        if c not in allowed:
            return False
        i += 1
    return True


def unescape(text: str) -> str:
    """Decode %HH escapes (UTF-8; undecodable bytes survive as surrogates for round trips)."""
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%" and i + 2 < len(text) and text[i + 1] in _HEX and text[i + 2] in _HEX:
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += c.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def escape(text: str, allowed: frozenset[str]) -> str:
    """Percent-encode every character of `text` outside `allowed` (and '%' itself)."""
    out = []
    for c in text:
        if c in allowed and c != "%":
            out.append(c)
        else:
            out.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
    return "".join(out)


def is_valid_host(host: str) -> bool:
    """hostname / IPv4address / IPv6reference (RFC 3261 §25.1)."""
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    if _IPV4_RE.fullmatch(host):
        return all(int(part) <= 255 for part in host.split("."))
    return bool(_HOSTNAME_RE.fullmatch(host)) and len(host) <= 255


def _parse_port(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise SipParseError(f"invalid port in {what}")
    return int(text)


# --- URIs --------------------------------------------------------------------------------------

Params = tuple[tuple[str, str | None], ...]


def get_param(params: Params, name: str) -> str | None:
    """Value of parameter `name` (case-insensitive); "" for a flag parameter; None if absent."""
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


def set_param(params: Params, name: str, value: str | None) -> Params:
    """A copy of `params` with `name` set (replaced in place, or appended)."""
    lname = name.lower()
    out = []
    done = False
    for key, old in params:
        if key.lower() == lname:
            if not done:
                out.append((key, value))
                done = True
        else:
            out.append((key, old))
    if not done:
        out.append((name, value))
    return tuple(out)


def drop_param(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple((k, v) for k, v in params if k.lower() != lname)


@dataclass(frozen=True)
class SipUri:
    """sip:, sips: or tel: URI. For tel, `user` is the number and `host` is empty.

    Build one with `SipUri("sip", "alice", "example.com", 5060)`; `str(uri)` formats it.
    """

    scheme: str = "sip"
    user: str | None = None
    host: str = ""
    port: int | None = None
    password: str | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        return replace(self, params=set_param(self.params, name, value))

    def without_param(self, name: str) -> SipUri:
        return replace(self, params=drop_param(self.params, name))

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def default_port(self) -> int:
        return 5061 if self.scheme == "sips" else 5060

    def __str__(self) -> str:
        if self.scheme == "tel":
            out = f"tel:{self.user or ''}"
        else:
            userinfo = ""
            if self.user is not None:
                userinfo = escape(self.user, USER_CHARS)
                if self.password is not None:
                    userinfo += ":" + escape(self.password, PASSWORD_CHARS)
                userinfo += "@"
            out = f"{self.scheme}:{userinfo}{self.hostport}"
        for key, value in self.params:
            out += ";" + escape(key, PARAM_CHARS)
            if value is not None:
                out += "=" + escape(value, PARAM_CHARS)
        if self.headers:
            out += "?" + "&".join(f"{escape(k, HNAME_CHARS)}={escape(v, HNAME_CHARS)}"
                                  for k, v in self.headers)
        return out


@dataclass(frozen=True)
class AbsoluteUri:
    """A URI of a scheme we do not interpret (http:, isbn:, ...): kept as `scheme` ":" `rest`."""

    scheme: str
    rest: str
    params: Params = field(default=(), repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def param(self, name: str) -> str | None:
        return None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a URI (no surrounding whitespace or brackets allowed). Raises SipParseError."""
    colon = text.find(":")
    if colon <= 0 or not _SCHEME_RE.fullmatch(text[:colon]):
        raise SipParseError(f"invalid URI (no scheme): {text[:60]!r}")
    scheme = text[:colon].lower()
    rest = text[colon + 1:]
    if not rest:
        raise SipParseError(f"empty {scheme} URI")
    if scheme in SIP_SCHEMES:
        return _parse_sip_uri(scheme, rest)
    if scheme == "tel":
        return _parse_tel_uri(rest)
    if not _valid_escaped(rest, URIC_CHARS):
        raise SipParseError(f"invalid characters in {scheme}: URI")
    return AbsoluteUri(scheme, rest)


def _parse_uri_params(text: str, what: str) -> Params:
    params: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name or not _valid_escaped(name, PARAM_CHARS):
            raise SipParseError(f"invalid parameter in {what}")
        if eq and (not value or not _valid_escaped(value, PARAM_CHARS)):
            raise SipParseError(f"invalid parameter value in {what}")
        params.append((unescape(name), unescape(value) if eq else None))
    return tuple(params)


def _parse_sip_uri(scheme: str, rest: str) -> SipUri:
    what = f"{scheme}: URI"
    if rest.count("@") > 1:
        raise SipParseError(f"more than one '@' in {what}")
    user = password = None
    if "@" in rest:
        userinfo, rest = rest.split("@")
        user, colon, pw = userinfo.partition(":")
        if not user or not _valid_escaped(user, USER_CHARS):
            raise SipParseError(f"invalid user part in {what}")
        if colon:
            if not _valid_escaped(pw, PASSWORD_CHARS):
                raise SipParseError(f"invalid password in {what}")
            password = unescape(pw)
        user = unescape(user)
    # hostport ends at the first ';' or '?' (outside an IPv6 reference)
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise SipParseError(f"unterminated IPv6 reference in {what}")
        end = close + 1
        while end < len(rest) and rest[end] not in ";?":
            end += 1
    else:
        end = len(rest)
        for i, c in enumerate(rest):
            if c in ";?":
                end = i
                break
    hostport, tail = rest[:end], rest[end:]
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port_text = hostport[:close + 1], hostport[close + 1:]
        if port_text and not port_text.startswith(":"):
            raise SipParseError(f"invalid host in {what}")
        port_text = port_text[1:] if port_text else ""
        has_port = bool(hostport[close + 1:])
    else:
        host, has_colon, port_text = hostport.partition(":")
        has_port = bool(has_colon)
    if not is_valid_host(host):
        raise SipParseError(f"invalid host in {what}: {host[:60]!r}")
    port = _parse_port(port_text, what) if has_port else None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    if tail.startswith(";"):
        ptext, q, htext = tail[1:].partition("?")
        params = _parse_uri_params(ptext, what)
        tail = q + htext
    if tail.startswith("?"):
        hdrs = []
        for item in tail[1:].split("&"):
            hname, eq, hvalue = item.partition("=")
            if not hname or not eq or not _valid_escaped(hname, HNAME_CHARS) \
                    or not _valid_escaped(hvalue, HNAME_CHARS):
                raise SipParseError(f"invalid header in {what}")
            hdrs.append((unescape(hname), unescape(hvalue)))
        headers = tuple(hdrs)
    elif tail:
        raise SipParseError(f"invalid {what}")
    return SipUri(scheme, user, host, port, password, params, headers)


def _parse_tel_uri(rest: str) -> SipUri:
    number, _, ptext = rest.partition(";")
    if not _TEL_RE.fullmatch(number):
        raise SipParseError("invalid tel: URI number")
    params = _parse_uri_params(ptext, "tel: URI") if ptext else ()
    return SipUri("tel", number, "", None, None, params)


# --- header parameter and quoted-string scanning (shared with headers.py) ----------------------

def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def read_quoted(text: str, i: int, what: str) -> tuple[str, int]:
    """Read a quoted-string starting at text[i] == '"'; returns (unescaped content, index after)."""
    assert text[i] == '"'
    out = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] in "\r\n" or ord(text[i + 1]) > 0x7F:
                raise SipParseError(f"invalid quoted-pair in {what}")
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        if (ord(c) < 0x20 and c != "\t") or c == "\x7f":
            raise SipParseError(f"control character in quoted string in {what}")
        out.append(c)
        i += 1
    raise SipParseError(f"unterminated quoted string in {what}")


def quote(text: str) -> str:
    """Format `text` as a quoted-string (quoted-pair for '"', '\\' and controls; CR/LF become SP)."""
    out = ['"']
    for c in text:
        if c in "\r\n":
            out.append(" ")
        elif c in '"\\' or (ord(c) < 0x20 and c != "\t") or c == "\x7f":
            out.append("\\" + c)
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


_GEN_VALUE_CHARS = TOKEN_CHARS | frozenset("[]:")


def read_params(text: str, i: int, what: str) -> tuple[Params, int]:
    """Read *( SEMI generic-param ) with SWS around ';' and '='; stops at ',' or end.

    Values are kept as written (quoted strings keep their quotes).
    """
    params: list[tuple[str, str | None]] = []
    while True:
        i = skip_ws(text, i)
        if i >= len(text) or text[i] == ",":
            return tuple(params), i
        if text[i] != ";":
            raise SipParseError(f"unexpected {text[i]!r} in {what}")
        i = skip_ws(text, i + 1)
        start = i
        while i < len(text) and text[i] in TOKEN_CHARS:
            i += 1
        name = text[start:i]
        if not name:
            raise SipParseError(f"empty parameter in {what}")
        i = skip_ws(text, i)
        value: str | None = None
        if i < len(text) and text[i] == "=":
            i = skip_ws(text, i + 1)
            if i < len(text) and text[i] == '"':
                qstart = i
                _, i = read_quoted(text, i, what)
                value = text[qstart:i]
            else:
                start = i
                while i < len(text) and text[i] in _GEN_VALUE_CHARS:
                    i += 1
                value = text[start:i]
                if not value:
                    raise SipParseError(f"empty value for parameter {name!r} in {what}")
        params.append((name, value))


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


# --- name-addr / addr-spec (From, To, Contact, Route, Record-Route, Reply-To) ------------------

@dataclass(frozen=True)
class NameAddr:
    """`"Display" <uri>;params`. `display_name` is unquoted text (None if absent).

    `params` are header parameters (tag, expires, q, ...), values as written.
    """

    uri: Uri
    display_name: str | None = None
    params: Params = ()

    @property
    def tag(self) -> str | None:
        value = get_param(self.params, "tag")
        return value or None

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        return replace(self, params=set_param(self.params, name, value))

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)

    def __str__(self) -> str:
        out = ""
        if self.display_name:
            words = self.display_name.split(" ")
            out = self.display_name if all(is_token(w) for w in words) else quote(self.display_name)
            out += " "
        return f"{out}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(text: str, what: str = "header", *, require_brackets: bool = False) -> NameAddr:
    """Parse name-addr or addr-spec followed by header params (RFC 3261 §20.10, §25.1).

    Strict: spaces inside <...>, an unquoted display name that is not tokens (e.g. with ','), an
    unbalanced quote, or '?'/',' in an unbracketed URI are rejected.
    """
    i = skip_ws(text, 0)
    if i >= len(text):
        raise SipParseError(f"empty {what}")
    display: str | None = None
    bracketed = False
    if text[i] == '"':
        display, i = read_quoted(text, i, what)
        i = skip_ws(text, i)
        if i >= len(text) or text[i] != "<":
            raise SipParseError(f"{what}: expected '<' after display name")
        bracketed = True
    else:
        j = i
        while j < len(text) and (text[j] in TOKEN_CHARS or text[j] in _WS):
            j += 1
        if j < len(text) and text[j] == "<":
            # *(token LWS) display name; RFC 4475 lwsdisp: accept a missing LWS before '<'
            display = " ".join(text[i:j].split()) or None
            i = j
            bracketed = True
        elif "<" in text[i:] and text[j:j + 1] not in (":",):
            raise SipParseError(f"{what}: display name must be a quoted string or tokens")
    if bracketed:
        close = text.find(">", i)
        if close < 0:
            raise SipParseError(f"{what}: missing '>'")
        inner = text[i + 1:close]
        if any(c in inner for c in " \t\r\n"):
            raise SipParseError(f"{what}: whitespace inside <...>")
        uri = parse_uri(inner)
        i = close + 1
    else:
        if require_brackets:
            raise SipParseError(f"{what}: URI must be enclosed in <...>")
        start = i
        while i < len(text) and text[i] not in ";" + _WS:
            i += 1
        spec = text[start:i]
        if "?" in spec or "," in spec:
            raise SipParseError(f"{what}: URI with '?' or ',' must be enclosed in <...>")
        uri = parse_uri(spec)
    params, i = read_params(text, i, what)
    if i < len(text):
        raise SipParseError(f"{what}: unexpected ',' (more than one value)")
    if display is not None and not display:
        display = None
    return NameAddr(uri, display, params)
