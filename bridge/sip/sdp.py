"""SDP (RFC 4566) parse/serialise and audio offer/answer (RFC 3264) for the SIP trunk leg.

Parse with :meth:`SdpSession.parse` (bounded: 64 KiB, 64 media, 256 attributes per section;
raises :class:`SdpParseError`, status 400). As the answerer call :func:`answer_offer`: it
returns an :class:`SdpAnswer` whose ``.sdp`` goes in the 200 OK (``.sdp.serialize()``) and
whose ``.audio`` (:class:`NegotiatedAudio`) tells the media engine where to send, which
codec and which telephone-event PT; it raises :class:`SdpNotAcceptable` (status 488, with a
Warning header) when nothing can be accepted. As the offerer call :func:`build_offer`, then
:func:`negotiated_from_answer` on the answer.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Literal

from .errors import SipError
from .status import SipStatus

MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA = 64
MAX_ATTRIBUTES = 256
MAX_FORMATS = 128  # a PT is 7 bits: more formats than this in one m-line is garbage
MAX_LINES = 4096

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")
RTP_PROFILES = ("RTP/AVP", "RTP/AVPF")  # plain RTP only on the trunk (no SAVP/SDES)
WARN_AGENT = "jego"


class SdpError(SipError, ValueError):
    """An SDP problem that maps to a SIP final response: ``.status`` (400/488), ``.reason``.

    ``.warning`` is an RFC 3261 §20.43 warn-code (304 media type not available, 305
    incompatible media format) carried in ``.headers`` as a Warning header.
    """

    def __init__(
        self, status: int, reason: str, *, warning: int | None = None, q850: int | None = None
    ) -> None:
        headers = [("Warning", f'{warning} {WARN_AGENT} "{reason}"')] if warning else []
        super().__init__(status, reason, q850, headers=headers)
        self.warning = warning


class SdpParseError(SdpError):
    """Malformed or oversized SDP: 400 Bad Request (RFC 3261 §21.4.1)."""

    def __init__(self, reason: str) -> None:
        super().__init__(SipStatus.BAD_REQUEST, f"Bad SDP: {reason}"[:200])


class SdpNotAcceptable(SdpError):
    """No acceptable audio stream: 488 Not Acceptable Here (RFC 3261 §21.4.26), Q.850 cause 65."""

    def __init__(self, reason: str, warning: int = 305) -> None:
        super().__init__(SipStatus.NOT_ACCEPTABLE_HERE, reason, warning=warning, q850=65)


@dataclass(slots=True)
class Origin:
    """``o=`` (RFC 4566 §5.2)."""

    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"

    def serialize(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(slots=True)
class Connection:
    """``c=`` (RFC 4566 §5.7); ``address`` without any /ttl suffix, which goes in ``suffix``."""

    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"
    suffix: str = ""

    @property
    def is_hold(self) -> bool:
        """RFC 2543-style hold: c=0.0.0.0 means "do not send to me" (RFC 3264 §8.4)."""
        return self.address in ("0.0.0.0", "::")

    def serialize(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}{self.suffix}"


@dataclass(slots=True, frozen=True)
class RtpMap:
    """One codec: ``a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`` (RFC 4566 §6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1

    def serialize(self) -> str:
        ch = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{ch}"


# RFC 3551 §6 Table 4: static audio payload types (used when no rtpmap is given).
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap(0, "PCMU", 8000),
    3: RtpMap(3, "GSM", 8000),
    4: RtpMap(4, "G723", 8000),
    8: RtpMap(8, "PCMA", 8000),
    9: RtpMap(9, "G722", 8000),
    13: RtpMap(13, "CN", 8000),
    18: RtpMap(18, "G729", 8000),
}


def _digits(text: str, maxlen: int) -> bool:
    """ASCII digits only (str.isdigit also accepts e.g. superscripts, which int() rejects)."""
    return 0 < len(text) <= maxlen and text.isascii() and text.isdigit()


def _int(text: str, what: str, lo: int, hi: int) -> int:
    if not _digits(text, 20):
        raise SdpParseError(f"{what} {text[:20]!r} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise SdpParseError(f"{what} {value} out of range {lo}..{hi}")
    return value


def _parse_connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpParseError(f"c= line {value[:40]!r}")
    addr, slash, rest = parts[2].partition("/")
    if not addr:
        raise SdpParseError("c= line without address")
    return Connection(address=addr, nettype=parts[0], addrtype=parts[1], suffix=slash + rest)


@dataclass(slots=True)
class SdpMedia:
    """One ``m=`` section (RFC 4566 §5.14) with its ``c=``, ``b=`` and ``a=`` lines, order kept."""

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    connection: Connection | None = None
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)  # i= and k= lines

    @property
    def rejected(self) -> bool:
        """Port 0: the stream is rejected or disabled (RFC 3264 §6, §8.2)."""
        return self.port == 0

    @property
    def is_rtp(self) -> bool:
        return self.proto.upper().startswith("RTP/") or self.proto.upper().startswith("UDP/TLS/RTP/")

    @property
    def payload_types(self) -> list[int]:
        """The m-line formats as payload types (RTP profiles only; validated at parse time)."""
        return [int(f) for f in self.formats if _digits(f, 3)] if self.is_rtp else []

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name[:value]`` (``""`` for a flag), or None if absent."""
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [v or "" for k, v in self.attributes if k == name]

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        """Valid ``a=rtpmap`` lines by PT; malformed ones (PT > 127, clock 0) are ignored."""
        out: dict[int, RtpMap] = {}
        for value in self.attribute_values("rtpmap"):
            pt_text, _, spec = value.partition(" ")
            parts = spec.strip().split("/")
            if not _digits(pt_text, 3) or len(parts) not in (2, 3) or not parts[0]:
                continue
            if not all(_digits(p, 9) for p in parts[1:]):
                continue
            pt, clock = int(pt_text), int(parts[1])
            channels = int(parts[2]) if len(parts) == 3 else 1
            if pt > 127 or clock == 0 or channels == 0:
                continue
            out.setdefault(pt, RtpMap(pt, parts[0], clock, channels))
        return out

    @property
    def fmtp(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for value in self.attribute_values("fmtp"):
            pt_text, _, params = value.partition(" ")
            if _digits(pt_text, 3) and int(pt_text) <= 127:
                out.setdefault(int(pt_text), params.strip())
        return out

    def codec(self, pt: int) -> RtpMap | None:
        """The codec of payload type ``pt``: its rtpmap, else the RFC 3551 static assignment."""
        return self.rtpmaps.get(pt) or (STATIC_PAYLOAD_TYPES.get(pt) if pt < 96 else None)

    @property
    def codecs(self) -> list[RtpMap]:
        """Known codecs in the offerer's preference order (the m-line order)."""
        return [c for pt in self.payload_types if (c := self.codec(pt)) is not None]

    @property
    def direction(self) -> Direction | None:
        """The media-level direction attribute (RFC 4566 §6), or None if absent."""
        for key, _ in reversed(self.attributes):
            if key in DIRECTIONS:
                return key
        return None

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        if value and _digits(value.strip(), 4) and 0 < int(value) <= 1000:
            return int(value)
        return None

    def serialize_lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        lines = [f"m={self.media} {port} {self.proto} {' '.join(self.formats)}"]
        lines += [f"i={v}" for k, v in self.extra if k == "i"]
        if self.connection is not None:
            lines.append(f"c={self.connection.serialize()}")
        lines += [f"b={t}:{v}" for t, v in self.bandwidths]
        lines += [f"k={v}" for k, v in self.extra if k == "k"]
        lines += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        return lines


@dataclass(slots=True)
class SdpSession:
    """A session description (RFC 4566 §5): :meth:`parse` bytes/str, :meth:`serialize` to CRLF text."""

    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    version: int = 0
    connection: Connection | None = None
    bandwidths: list[tuple[str, int]] = field(default_factory=list)
    timing: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[SdpMedia] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)  # i u e p r z k lines, kept verbatim

    @classmethod
    def parse(cls, data: str | bytes) -> SdpSession:
        """Parse and validate; raise :class:`SdpParseError` (400) on anything malformed or oversized."""
        if len(data) > MAX_SDP_BYTES:
            raise SdpParseError(f"body of {len(data)} bytes exceeds {MAX_SDP_BYTES}")
        if isinstance(data, bytes):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise SdpParseError("not UTF-8") from None
        else:
            text = data
        lines = [ln.rstrip("\r") for ln in text.split("\n")]
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) > MAX_LINES:
            raise SdpParseError(f"more than {MAX_LINES} lines")
        if not lines or lines[0].strip() != "v=0":
            raise SdpParseError("must start with v=0")
        session = cls(timing=[])
        seen: set[str] = set()
        current: SdpMedia | None = None
        session_attrs = 0
        for lineno, line in enumerate(lines[1:], start=2):
            if not line:
                continue  # tolerate blank lines
            if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
                raise SdpParseError(f"line {lineno} is not <type>=<value>")
            kind, value = line[0], line[2:]
            if current is None:
                session._parse_session_line(kind, value, seen)
                if kind == "a":
                    session_attrs += 1
                    if session_attrs > MAX_ATTRIBUTES:
                        raise SdpParseError(f"more than {MAX_ATTRIBUTES} session attributes")
            if kind == "m":
                if len(session.media) >= MAX_MEDIA:
                    raise SdpParseError(f"more than {MAX_MEDIA} media sections")
                current = _parse_m_line(value)
                session.media.append(current)
            elif current is not None:
                _parse_media_line(current, kind, value)
        for required in ("o", "s", "t"):
            if required not in seen:
                raise SdpParseError(f"missing {required}= line")
        return session

    def _parse_session_line(self, kind: str, value: str, seen: set[str]) -> None:
        if kind in ("o", "s", "c") and kind in seen:
            raise SdpParseError(f"duplicate {kind}= line")
        seen.add(kind)
        if kind == "o":
            parts = value.split()
            if len(parts) != 6:
                raise SdpParseError("o= line needs 6 fields")
            self.origin = Origin(
                username=parts[0],
                session_id=_int(parts[1], "o= session id", 0, 2**64 - 1),
                session_version=_int(parts[2], "o= session version", 0, 2**64 - 1),
                nettype=parts[3],
                addrtype=parts[4],
                address=parts[5],
            )
        elif kind == "s":
            self.name = value
        elif kind == "c":
            self.connection = _parse_connection(value)
        elif kind == "b":
            self.bandwidths.append(_parse_bandwidth(value))
        elif kind == "t":
            parts = value.split()
            if len(parts) != 2:
                raise SdpParseError("t= line needs 2 fields")
            self.timing.append((_int(parts[0], "t= start", 0, 2**64), _int(parts[1], "t= stop", 0, 2**64)))
        elif kind == "a":
            self.attributes.append(_parse_attribute(value))
        elif kind in "iuepzrk":
            self.extra.append((kind, value))
        # other letters: ignored (unknown types), except "m" handled by the caller

    @property
    def direction(self) -> Direction | None:
        """The session-level direction attribute, or None."""
        for key, _ in reversed(self.attributes):
            if key in DIRECTIONS:
                return key
        return None

    def audio(self) -> SdpMedia | None:
        """The first audio m-line (possibly rejected), or None."""
        return next((m for m in self.media if m.media == "audio"), None)

    def connection_for(self, media: SdpMedia) -> Connection | None:
        """Media-level c= overrides the session-level one (RFC 4566 §5.7)."""
        return media.connection or self.connection

    def direction_for(self, media: SdpMedia) -> Direction:
        """Media-level direction, else session-level, else sendrecv (RFC 3264 §5.1)."""
        return media.direction or self.direction or "sendrecv"

    def serialize(self) -> str:
        """CRLF-terminated text, lines in the RFC 4566 §5 order."""
        lines = [f"v={self.version}", f"o={self.origin.serialize()}", f"s={self.name or '-'}"]
        lines += [f"{k}={v}" for k, v in self.extra if k in "iuep"]
        if self.connection is not None:
            lines.append(f"c={self.connection.serialize()}")
        lines += [f"b={t}:{v}" for t, v in self.bandwidths]
        for start, stop in self.timing or [(0, 0)]:
            lines.append(f"t={start} {stop}")
        lines += [f"{k}={v}" for k, v in self.extra if k in "rzk"]
        lines += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        for m in self.media:
            lines += m.serialize_lines()
        return "\r\n".join(lines) + "\r\n"

    def to_bytes(self) -> bytes:
        return self.serialize().encode("utf-8")


def _parse_bandwidth(value: str) -> tuple[str, int]:
    bwtype, sep, bw = value.partition(":")
    if not sep or not bwtype:
        raise SdpParseError(f"b= line {value[:40]!r}")
    return bwtype, _int(bw.strip(), "b= bandwidth", 0, 2**32)


def _parse_attribute(value: str) -> tuple[str, str | None]:
    name, sep, attr_value = value.partition(":")
    if not name:
        raise SdpParseError("a= line without a name")
    return name, attr_value if sep else None


def _parse_m_line(value: str) -> SdpMedia:
    parts = value.split()
    if len(parts) < 4:
        raise SdpParseError("m= line needs media, port, proto and at least one format")
    port_text, slash, count_text = parts[1].partition("/")
    port = _int(port_text, "m= port", 0, 65535)
    port_count = _int(count_text, "m= port count", 1, 65535) if slash else None
    media = SdpMedia(media=parts[0], port=port, proto=parts[2], formats=parts[3:], port_count=port_count)
    if len(media.formats) > MAX_FORMATS:
        raise SdpParseError(f"m= line lists {len(media.formats)} formats (max {MAX_FORMATS})")
    if media.is_rtp:
        for fmt in media.formats:
            _int(fmt, "payload type", 0, 127)
    return media


def _parse_media_line(media: SdpMedia, kind: str, value: str) -> None:
    if kind == "c":
        if media.connection is not None:
            # RFC 4566 allows several c= only for multicast layering; we take the first.
            return
        media.connection = _parse_connection(value)
    elif kind == "b":
        media.bandwidths.append(_parse_bandwidth(value))
    elif kind == "a":
        if len(media.attributes) >= MAX_ATTRIBUTES:
            raise SdpParseError(f"more than {MAX_ATTRIBUTES} attributes in one media section")
        media.attributes.append(_parse_attribute(value))
    elif kind in "ik":
        media.extra.append((kind, value))


# -- offer / answer (RFC 3264) -------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class NegotiatedAudio:
    """What the media engine needs after offer/answer, from OUR point of view.

    ``remote_host`` is None when the peer must not be sent to (c=0.0.0.0 hold, port 0).
    ``direction`` is ours: "sendonly" means we send and do not expect RTP.
    """

    remote_host: str | None
    remote_port: int
    codec: str  # "PCMU" | "PCMA"
    payload_type: int
    clock_rate: int
    telephone_event_pt: int | None
    ptime: int
    direction: Direction

    @property
    def send(self) -> bool:
        """True when RTP may be sent (direction allows it and the address is usable)."""
        return (
            self.direction in ("sendrecv", "sendonly")
            and self.remote_host is not None
            and self.remote_port > 0
        )

    @property
    def recv(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")

    @property
    def remote(self) -> tuple[str, int] | None:
        """(host, port) to send RTP to, or None (hold / rejected)."""
        return (self.remote_host, self.remote_port) if self.remote_host and self.remote_port else None


@dataclass(slots=True, frozen=True)
class SdpAnswer:
    """Result of :func:`answer_offer`: ``sdp`` for the 200 OK, ``audio`` for the media engine."""

    sdp: SdpSession
    audio: NegotiatedAudio
    media_index: int  # which m-line of the offer carries the audio


def _flags(direction: Direction) -> tuple[bool, bool]:
    return direction in ("sendrecv", "sendonly"), direction in ("sendrecv", "recvonly")


def _from_flags(send: bool, recv: bool) -> Direction:
    return "sendrecv" if send and recv else "sendonly" if send else "recvonly" if recv else "inactive"


def _our_direction(peer: Direction, peer_hold: bool, ours: Direction) -> Direction:
    """RFC 3264 §6.1: the answer's direction mirrors the offer's, narrowed by our own wish."""
    peer_send, peer_recv = _flags(peer)
    if peer_hold:
        peer_recv = False  # c=0.0.0.0: the peer does not want media (RFC 3264 §8.4)
    our_send, our_recv = _flags(ours)
    return _from_flags(our_send and peer_recv, our_recv and peer_send)


def _is_null_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a hostname: not the hold address


def _new_session_id() -> int:
    return random.SystemRandom().getrandbits(62)


def _origin(address: str, session_id: int | None, version: int, username: str) -> Origin:
    sid = _new_session_id() if session_id is None else session_id
    return Origin(username, sid, version, "IN", "IP6" if ":" in address else "IP4", address)


def build_offer(
    address: str,
    port: int,
    *,
    codecs: tuple[str, ...] | list[str] = ("PCMU", "PCMA"),
    telephone_event_pt: int | None = 101,
    ptime: int = 20,
    direction: Direction = "sendrecv",
    session_id: int | None = None,
    session_version: int = 0,
    username: str = "-",
    session_name: str = "Jego Call",
) -> SdpSession:
    """An audio offer: ``m=audio <port> RTP/AVP 0 8 101`` with rtpmaps, ptime and direction.

    For a hold re-INVITE pass ``direction="sendonly"`` and ``session_version`` + 1.
    Serialise with ``.serialize()``; apply the answer with :func:`negotiated_from_answer`.
    """
    static = {"PCMU": 0, "PCMA": 8}
    pts: list[int] = []
    attrs: list[tuple[str, str | None]] = []
    for name in codecs:
        pt = static.get(name.upper())
        if pt is None:
            raise ValueError(f"cannot offer codec {name!r} (PCMU/PCMA only)")
        pts.append(pt)
        attrs.append(("rtpmap", STATIC_PAYLOAD_TYPES[pt].serialize()))
    if telephone_event_pt is not None:
        if not 96 <= telephone_event_pt <= 127:
            raise ValueError("telephone-event needs a dynamic payload type 96..127")
        pts.append(telephone_event_pt)
        attrs.append(("rtpmap", f"{telephone_event_pt} telephone-event/8000"))
        attrs.append(("fmtp", f"{telephone_event_pt} 0-16"))
    attrs.append(("ptime", str(ptime)))
    attrs.append((direction, None))
    media = SdpMedia("audio", port, "RTP/AVP", [str(p) for p in pts], attributes=attrs)
    return SdpSession(
        origin=_origin(address, session_id, session_version, username),
        name=session_name,
        connection=Connection(address, addrtype="IP6" if ":" in address else "IP4"),
        media=[media],
    )


def _telephone_event(media: SdpMedia) -> tuple[int, str] | None:
    for pt in media.payload_types:
        codec = media.codec(pt)
        if codec and codec.encoding.lower() == "telephone-event" and codec.clock_rate == 8000:
            return pt, media.fmtp.get(pt, "0-15")
    return None


def _pick_codec(media: SdpMedia, supported: list[str]) -> RtpMap | None:
    for pt in media.payload_types:
        codec = media.codec(pt)
        if (
            codec is not None
            and codec.encoding.upper() in supported
            and codec.clock_rate == 8000
            and codec.channels == 1
        ):
            return RtpMap(pt, codec.encoding.upper(), 8000)
    return None


def parse_sdp(data: str | bytes | SdpSession) -> SdpSession:
    """Accept an already parsed session or parse text/bytes (400 on error)."""
    return data if isinstance(data, SdpSession) else SdpSession.parse(data)


def answer_offer(
    offer: SdpSession | str | bytes,
    *,
    address: str = "127.0.0.1",
    port: int,
    supported: tuple[str, ...] | list[str] = ("PCMU", "PCMA"),
    telephone_event: bool = True,
    ptime: int = 20,
    direction: Direction = "sendrecv",
    session_id: int | None = None,
    session_version: int = 0,
    username: str = "-",
    session_name: str = "Jego Call",
    profiles: tuple[str, ...] = RTP_PROFILES,
) -> SdpAnswer:
    """Answer an offer (RFC 3264 §6): accept the first usable audio m-line with the first codec
    in the OFFERER's order that we support, echo its telephone-event PT, reject every other
    m-line with port 0. ``profiles`` lists the acceptable m= protos (plain RTP on the trunk).
    Raises :class:`SdpNotAcceptable` (488) or :class:`SdpParseError` (400)."""
    offer_sdp = parse_sdp(offer)
    wanted = [c.upper() for c in supported]
    chosen: tuple[int, RtpMap] | None = None
    reasons: list[str] = []
    for index, media in enumerate(offer_sdp.media):
        if media.media != "audio":
            continue
        if media.rejected:
            reasons.append("audio stream has port 0")
            continue
        if media.proto.upper() not in {p.upper() for p in profiles}:
            reasons.append(f"unsupported transport {media.proto[:30]}")
            continue
        codec = _pick_codec(media, wanted)
        if codec is None:
            offered = " ".join(c.encoding for c in media.codecs) or " ".join(media.formats)
            reasons.append(f"no common codec (offered {offered[:60]}; we support {' '.join(wanted)})")
            continue
        chosen = (index, codec)
        break
    if chosen is None:
        if not reasons:
            raise SdpNotAcceptable("no audio stream offered", warning=304)
        raise SdpNotAcceptable(reasons[0][:1].upper() + reasons[0][1:], warning=305)
    index, codec = chosen
    media = offer_sdp.media[index]
    conn = offer_sdp.connection_for(media)
    if conn is None:
        raise SdpParseError("audio m-line has no c= line at either level")
    hold = _is_null_address(conn.address)
    ours = _our_direction(offer_sdp.direction_for(media), hold, direction)
    te = _telephone_event(media) if telephone_event else None

    formats = [str(codec.payload_type)]
    attrs: list[tuple[str, str | None]] = [("rtpmap", codec.serialize())]
    if te is not None:
        formats.append(str(te[0]))
        attrs.append(("rtpmap", f"{te[0]} telephone-event/8000"))
        attrs.append(("fmtp", f"{te[0]} {te[1]}"))
    attrs += [("ptime", str(ptime)), (ours, None)]
    answer_media: list[SdpMedia] = []
    for i, m in enumerate(offer_sdp.media):
        if i == index:
            answer_media.append(SdpMedia("audio", port, media.proto, formats, attributes=attrs))
        else:
            # RFC 3264 §6: same number of m-lines; a rejected stream gets port 0.
            answer_media.append(SdpMedia(m.media, 0, m.proto, m.formats[:1]))
    sdp = SdpSession(
        origin=_origin(address, session_id, session_version, username),
        name=session_name,
        connection=Connection(address, addrtype="IP6" if ":" in address else "IP4"),
        media=answer_media,
    )
    audio = NegotiatedAudio(
        remote_host=None if hold else conn.address,
        remote_port=media.port,
        codec=codec.encoding,
        payload_type=codec.payload_type,
        clock_rate=8000,
        telephone_event_pt=te[0] if te else None,
        ptime=ptime,
        direction=ours,
    )
    return SdpAnswer(sdp=sdp, audio=audio, media_index=index)


def negotiated_from_answer(
    answer: SdpSession | str | bytes,
    offer: SdpSession,
    *,
    supported: tuple[str, ...] | list[str] = ("PCMU", "PCMA"),
) -> NegotiatedAudio:
    """The offerer's view after the answer arrives (RFC 3264 §7): first accepted audio m-line,
    first codec in the answer we support, our direction as offered narrowed by the answer's."""
    ans = parse_sdp(answer)
    offered = offer.audio()
    our_dir = offer.direction_for(offered) if offered else "sendrecv"
    for media in ans.media:
        if media.media != "audio" or media.rejected:
            continue
        codec = _pick_codec(media, [c.upper() for c in supported])
        if codec is None:
            raise SdpNotAcceptable("answer has no codec we support")
        conn = ans.connection_for(media)
        if conn is None:
            raise SdpParseError("audio m-line has no c= line at either level")
        hold = _is_null_address(conn.address)
        te = _telephone_event(media)
        return NegotiatedAudio(
            remote_host=None if hold else conn.address,
            remote_port=media.port,
            codec=codec.encoding,
            payload_type=codec.payload_type,
            clock_rate=8000,
            telephone_event_pt=te[0] if te else None,
            ptime=media.ptime or 20,
            direction=_our_direction(ans.direction_for(media), hold, our_dir),
        )
    raise SdpNotAcceptable("answer accepted no audio stream", warning=304)
