"""SIP requests and responses: parse bytes, validate, build responses, serialise (RFC 3261 §7, §8, §18.3).

    msg = parse_message(data)               # SipRequest | SipResponse, or SipError (400/505/513)
    resp = make_response(request, 180)      # copies Via/From/To/Call-ID/CSeq (§8.2.6.2)
    resp = error_response(request, err)     # a SipError -> its response (Allow, Unsupported, ...)
    wire = resp.serialise()                 # Content-Length always correct

For TCP, feed bytes to a `StreamFramer` and pass each complete message to parse_message(...,
stream=True). Errors carry `partial` (what was read) so a 400 can still be answered.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import MessageTooLarge, SipError, SipParseError, VersionNotSupported
from .headers import (
    LIST_HEADERS,
    SINGLE_HEADERS,
    CSeq,
    Headers,
    MediaType,
    Via,
    canonical_name,
    check_call_id,
    check_date,
    parse_cseq,
    parse_media_type,
    parse_token_list,
    parse_uint,
    parse_via,
    split_list,
)
from .status import reason_phrase
from .uri import TOKEN_CHARS, NameAddr, SipUri, Uri, is_token, parse_name_addr, parse_uri

SIP_VERSION = "SIP/2.0"
MAX_HEADER_BYTES = 64 * 1024   # larger header sections -> 513
MAX_HEADER_FIELDS = 256        # more header lines -> 400
MAX_BODY_BYTES = 1024 * 1024   # stream bodies above this -> 513
MAX_CONTENT_LENGTH_DIGITS = 9

KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})


def random_token(nbytes: int = 8) -> str:
    """A random token for tags, Call-IDs and branches (RFC 3261 §19.3: >= 32 bits of randomness)."""
    return secrets.token_hex(nbytes)


class _MessageMixin:
    """Typed accessors shared by SipRequest and SipResponse; each raises SipParseError if malformed."""

    headers: Headers
    body: bytes

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise SipParseError("missing Via header")
        return parse_via(value)

    def _name_addr(self, name: str) -> NameAddr:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return parse_name_addr(value, name)

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("From")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("To")

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def call_id(self) -> str:
        value = self.headers.get("Call-ID")
        if value is None:
            raise SipParseError("missing Call-ID header")
        return value

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("CSeq")
        if value is None:
            raise SipParseError("missing CSeq header")
        return parse_cseq(value)

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return None if value is None else parse_uint(value, "Max-Forwards", 255)

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; empty for none or for the REGISTER wildcard "*" (see `contact_is_wildcard`)."""
        return [parse_name_addr(v, "Contact") for v in self.headers.get_all("Contact") if v != "*"]

    @property
    def contact_is_wildcard(self) -> bool:
        return self.headers.get_all("Contact") == ["*"]

    @property
    def record_routes(self) -> list[NameAddr]:
        return [parse_name_addr(v, "Record-Route", require_brackets=True)
                for v in self.headers.get_all("Record-Route")]

    @property
    def routes(self) -> list[NameAddr]:
        return [parse_name_addr(v, "Route", require_brackets=True) for v in self.headers.get_all("Route")]

    @property
    def content_type(self) -> MediaType | None:
        value = self.headers.get("Content-Type")
        return None if value is None else parse_media_type(value)

    def token_list(self, name: str) -> list[str]:
        """Require, Supported, Unsupported, Allow ... as a list of tokens."""
        return parse_token_list(self.headers.get_all(name), name)

    def _serialise(self, start_line: str) -> bytes:
        headers = self.headers.copy()
        headers.set("Content-Length", str(len(self.body)))
        lines = [start_line] + [f"{name}: {value}" for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


@dataclass(eq=True)
class SipRequest(_MessageMixin):
    """A SIP request. Build with `new_request(...)` or parse with `parse_message(data)`."""

    method: str
    uri: Uri
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def serialise(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {self.version}")

    @property
    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"


@dataclass(eq=True)
class SipResponse(_MessageMixin):
    """A SIP response. Build with `make_response(request, status)`."""

    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def serialise(self) -> bytes:
        return self._serialise(self.start_line)

    @property
    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_final(self) -> bool:
        return self.status >= 200


SipMessage = SipRequest | SipResponse


@dataclass
class PartialMessage:
    """What the parser read before it failed: enough to answer 400/505 (RFC 3261 §8.2.6)."""

    start_line: str
    headers: Headers
    is_request: bool
    method: str | None = None


# --- parsing -----------------------------------------------------------------------------------

def parse_message(data: bytes, *, stream: bool = False, validate: bool = True) -> SipMessage:
    """Parse one message. UDP rules by default (§18.3): no Content-Length means the body is the rest
    of the datagram; a body shorter than Content-Length is an error; extra bytes are discarded.
    With stream=True, Content-Length is mandatory. Raises SipError (SipParseError has `.partial`).
    """
    # RFC 3261 §7.5: ignore CRLFs before the start-line.
    offset = 0
    while data.startswith(b"\r\n", offset):
        offset += 2
    head_end = data.find(b"\r\n\r\n", offset)
    if head_end < 0:
        if len(data) - offset > MAX_HEADER_BYTES:
            raise MessageTooLarge("header section too large")
        raise SipParseError("no empty line after the header fields")
    if head_end - offset > 2 * MAX_HEADER_BYTES:
        raise MessageTooLarge("header section too large")  # not even worth reading for a reply
    head = data[offset:head_end].decode("utf-8", "surrogateescape")
    rest = data[head_end + 4:]
    lines = head.split("\r\n")
    start_line = lines[0]
    errors: list[SipError] = []
    if head_end - offset > MAX_HEADER_BYTES:
        errors.append(MessageTooLarge("header section too large"))  # §21.5.7, answered with 513

    # header fields: unfold (§7.3.1), expand compact forms, split lists
    headers = Headers()
    raw_fields: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and raw_fields:
            raw_fields[-1].append(line)
        else:
            raw_fields.append([line])
    if len(raw_fields) > MAX_HEADER_FIELDS:
        errors.append(SipParseError(f"more than {MAX_HEADER_FIELDS} header fields"))
        raw_fields = raw_fields[:MAX_HEADER_FIELDS]
    for parts in raw_fields:
        line = " ".join(parts)
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            errors.append(SipParseError(f"malformed header line {line[:40]!r}"))
            continue
        if any("\udc80" <= c <= "\udcff" for c in value) and not errors:
            errors.append(SipParseError(f"{canonical_name(name)}: not valid UTF-8"))
        if "\n" in value or "\r" in value:
            errors.append(SipParseError(f"{canonical_name(name)}: bare CR or LF"))
            value = value.replace("\r", " ").replace("\n", " ")
        value = value.strip(" \t")
        cname = canonical_name(name)
        if cname.lower() in LIST_HEADERS:
            for item in split_list(value):
                headers.add(cname, item)
        else:
            headers.add(cname, value)

    # start line
    message: SipMessage | None = None
    method: str | None = None
    is_request = not start_line[:4].upper() == "SIP/"
    version_error: SipError | None = None
    if is_request:
        parts = start_line.split(" ")
        if len(parts) != 3 or not all(parts):
            errors.insert(0, SipParseError("malformed Request-Line (Method SP Request-URI SP SIP-Version)"))
            if len(parts) >= 1 and is_token(parts[0]):
                method = parts[0]
        else:
            method, uri_text, version = parts
            if not is_token(method):
                errors.insert(0, SipParseError("Request-Line: invalid method"))
                method = None
            if version.upper() != SIP_VERSION:
                if _looks_like_version(version):
                    version_error = VersionNotSupported(version)
                else:
                    errors.insert(0, SipParseError("Request-Line: invalid SIP-Version"))
            try:
                uri = parse_uri(uri_text)
            except SipParseError as exc:
                errors.insert(0, SipParseError(f"Request-URI: {exc.reason}"))
            else:
                if method is not None and not errors and version_error is None:
                    message = SipRequest(method, uri, headers, b"", SIP_VERSION)
    else:
        version, _, rest_line = start_line.partition(" ")
        code_text, _, reason = rest_line.partition(" ")
        if version.upper() != SIP_VERSION:
            errors.insert(0, SipParseError("Status-Line: unsupported SIP-Version"))
        elif len(code_text) != 3 or not code_text.isdigit() or not code_text.isascii() \
                or not 100 <= int(code_text) <= 699:
            errors.insert(0, SipParseError("Status-Line: status code must be 3 digits 100-699"))
        elif any(c < " " and c != "\t" for c in reason):
            errors.insert(0, SipParseError("Status-Line: control character in reason phrase"))
        else:
            message = SipResponse(int(code_text), reason, headers, b"", SIP_VERSION)

    # body (§18.3)
    cl_values = headers.get_all("Content-Length")
    body = rest
    if len(cl_values) > 1:
        errors.append(SipParseError("multiple Content-Length header fields"))
    elif cl_values:
        text = cl_values[0]
        if not text.isdigit() or not text.isascii() or len(text.lstrip("0")) > MAX_CONTENT_LENGTH_DIGITS:
            errors.append(SipParseError("Content-Length: not a valid number"))
        else:
            length = int(text)
            if length > len(rest):
                errors.append(SipParseError("body shorter than Content-Length"))
            body = rest[:length]
    elif stream:
        errors.append(SipParseError("Content-Length is mandatory on stream transports"))

    partial = PartialMessage(start_line, headers, is_request, method)
    if version_error is not None:
        version_error.partial = partial
        raise version_error
    if errors or message is None:
        err = errors[0] if errors else SipParseError("malformed start line")
        err.partial = partial
        raise err
    message.body = body
    if validate:
        try:
            if isinstance(message, SipRequest):
                validate_request(message)
            else:
                validate_response(message)
        except SipParseError as exc:
            exc.partial = partial
            raise
    return message


def _looks_like_version(text: str) -> bool:
    name, slash, num = text.partition("/")
    major, dot, minor = num.partition(".")
    return name.upper() == "SIP" and bool(slash and dot) and major.isdigit() and minor.isdigit()


def _validate_common(msg: SipMessage) -> None:
    for lname in SINGLE_HEADERS:
        if msg.headers.count(lname) > 1:
            raise SipParseError(f"multiple {canonical_name(lname)} header fields")
    for name in ("From", "To", "Call-ID", "CSeq"):
        if name not in msg.headers:
            raise SipParseError(f"missing {name} header")
    if "Via" not in msg.headers:
        raise SipParseError("missing Via header")
    _ = msg.vias
    _ = msg.from_
    _ = msg.to
    check_call_id(msg.call_id)
    _ = msg.cseq
    for name in ("Require", "Proxy-Require", "Supported", "Unsupported", "Allow"):
        msg.token_list(name)
    if "Content-Type" in msg.headers:
        _ = msg.content_type
    elif msg.body and isinstance(msg, SipRequest):
        raise SipParseError("body without Content-Type")  # RFC 3261 §20.15
    if "Max-Forwards" in msg.headers:
        _ = msg.max_forwards
    contacts = msg.headers.get_all("Contact")
    if "*" in contacts and len(contacts) > 1:
        raise SipParseError("Contact: '*' must be the only value")
    _ = msg.contacts
    _ = msg.record_routes


def validate_request(req: SipRequest) -> None:
    """Syntax checks of the header fields a UA relies on (RFC 3261 §8.1.1, §20). Raises SipParseError.

    Semantic checks (method known, CSeq method, Require, URI scheme) are the endpoint's.
    """
    _validate_common(req)
    if req.uri.headers:
        raise SipParseError("Request-URI must not contain headers (RFC 3261 §19.1.1)")
    _ = req.routes
    if "Date" in req.headers:
        check_date(req.headers.get("Date") or "")
    if "Expires" in req.headers:
        parse_uint(req.headers.get("Expires") or "", "Expires", 2**32 - 1)
    if req.contact_is_wildcard and req.method != "REGISTER":
        raise SipParseError("Contact: '*' is only allowed in REGISTER")


def validate_response(resp: SipResponse) -> None:
    """Syntax checks for a received response; the endpoint drops responses failing them."""
    _validate_common(resp)
    if "Retry-After" in resp.headers:
        value = resp.headers.get("Retry-After") or ""
        parse_uint(value.split(";")[0].split("(")[0], "Retry-After", 2**32 - 1)


# --- building ----------------------------------------------------------------------------------

def new_request(method: str, uri: Uri | str, *, from_: NameAddr | str, to: NameAddr | str,
                call_id: str | None = None, cseq: int = 1, contact: NameAddr | str | None = None,
                max_forwards: int = 70, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                content_type: str | None = None) -> SipRequest:
    """A new out-of-dialog request (RFC 3261 §8.1.1). A From tag and Call-ID are generated when
    missing; the endpoint adds the Via on `send_request`.
    """
    if isinstance(uri, str):
        uri = parse_uri(uri)
    from_na = parse_name_addr(from_, "From") if isinstance(from_, str) else from_
    to_na = parse_name_addr(to, "To") if isinstance(to, str) else to
    if from_na.tag is None:
        from_na = from_na.with_tag(random_token(6))
    h = Headers()
    h.add("Max-Forwards", str(max_forwards))
    h.add("From", str(from_na))
    h.add("To", str(to_na))
    h.add("Call-ID", call_id or random_token(12))
    h.add("CSeq", f"{cseq} {method}")
    if contact is not None:
        h.add("Contact", str(contact) if isinstance(contact, NameAddr) else contact)
    for name, value in headers:
        h.add(name, value)
    if body and content_type:
        h.set("Content-Type", content_type)
    return SipRequest(method, uri, h, body)


def _response_headers(req_headers: Headers, status: int, to_tag: str | None) -> Headers:
    """§8.2.6.2: Via (all, in order), From, To (+tag), Call-ID, CSeq copied from the request."""
    h = Headers()
    for value in req_headers.get_all("Via"):
        h.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        found = req_headers.get(name)
        if found is None:
            continue
        value = found
        if name == "To" and to_tag and status != 100:
            try:
                has_tag = parse_name_addr(value, "To").tag is not None
            except SipParseError:
                has_tag = True  # malformed: copy as is
            if not has_tag:
                value = f"{value};tag={to_tag}"  # keep the request's To byte for byte (§8.2.6.2)
        h.add(name, value)
    if status == 100 and "Timestamp" in req_headers:  # §8.2.6.1
        h.add("Timestamp", req_headers.get("Timestamp") or "")
    return h


def make_response(request: SipRequest, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, headers: Iterable[tuple[str, str]] = (),
                  body: bytes = b"", content_type: str | None = None) -> SipResponse:
    """A response to `request` (RFC 3261 §8.2.6). Record-Route is copied into 101-299 responses
    (§12.1.1). The endpoint fills `to_tag` for you when you use `SipEndpoint.respond`.
    """
    h = _response_headers(request.headers, status, to_tag)
    if 100 < status < 300:
        for value in request.headers.get_all("Record-Route"):
            h.add("Record-Route", value)
    for name, value in headers:
        h.add(name, value)
    if body and content_type:
        h.set("Content-Type", content_type)
    return SipResponse(status, reason or reason_phrase(status), h, body)


def error_response(request: SipRequest | PartialMessage, error: SipError, *,
                   to_tag: str | None = None) -> SipResponse:
    """Turn `error` into the response to `request` (or to what a failed parse read)."""
    h = _response_headers(request.headers, error.status, to_tag or random_token(6))
    for name, value in error.headers:
        h.add(name, value)
    if error.q850 is not None:
        from bridge.sip.causes import reason_header  # stdlib-only module

        h.add("Reason", reason_header(error.q850))
    return SipResponse(error.status, error.reason, h)


# --- stream framing (RFC 3261 §18.3) -----------------------------------------------------------

class StreamFramer:
    """Cuts a TCP byte stream into messages. `feed(data)` returns the complete messages (bytes);
    it raises SipError on a framing error (missing/invalid Content-Length, oversize): close the
    connection then, the stream cannot be resynchronised.
    """

    def __init__(self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES):
        self._buf = bytearray()
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            while self._buf.startswith(b"\r\n"):  # keep-alives (RFC 5626 §3.5.1) and §7.5
                del self._buf[:2]
            head_end = self._buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self._buf) > self.max_header_bytes:
                    raise MessageTooLarge("header section too large")
                return out
            if head_end > self.max_header_bytes:
                raise MessageTooLarge("header section too large")
            length = _stream_content_length(bytes(self._buf[:head_end]))
            if length > self.max_body_bytes:
                raise MessageTooLarge("body too large")
            total = head_end + 4 + length
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]


def _stream_content_length(head: bytes) -> int:
    values: list[str] = []
    last_was_cl = False
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line[:1] in (" ", "\t"):
            if last_was_cl:
                values[-1] += " " + line
            continue
        name, _, value = line.partition(":")
        last_was_cl = canonical_name(name.rstrip(" \t")) == "Content-Length"
        if last_was_cl:
            values.append(value)
    if len(values) != 1:
        raise SipParseError("Content-Length must appear exactly once on a stream")
    text = values[0].strip()
    if not text.isdigit() or not text.isascii() or len(text.lstrip("0")) > MAX_CONTENT_LENGTH_DIGITS:
        raise SipParseError("Content-Length: not a valid number")
    return int(text)


__all__ = [
    "KNOWN_METHODS", "MAX_HEADER_BYTES", "MAX_HEADER_FIELDS", "SIP_VERSION", "PartialMessage",
    "SipMessage", "SipRequest", "SipResponse", "SipUri", "StreamFramer", "TOKEN_CHARS",
    "error_response", "make_response", "new_request", "parse_message", "random_token",
    "validate_request", "validate_response",
]
