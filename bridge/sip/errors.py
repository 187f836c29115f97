"""SIP errors that carry their wire code.

Raise one of these from parsing/validation or from your own request handling; the endpoint (or
`message.error_response(request, err)`) turns it into the response: status, a reason phrase that
says what was wrong, the extra headers (Unsupported, Allow, Accept...) and a Q.850 Reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from .status import SipStatus, reason_phrase


class SipError(Exception):
    """The root of bridge.sip's errors: a failure that maps to a SIP final response `status` with `reason` as the phrase.

    `headers` are added to the response (e.g. ("Unsupported", "foo")); `q850` adds an RFC 3326
    Reason header.
    """

    def __init__(self, status: int, reason: str | None = None, q850: int | None = None,
                 *, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.status = int(status)
        self.reason = _clean_reason(reason) if reason else reason_phrase(self.status)
        self.q850 = q850
        self.headers: tuple[tuple[str, str], ...] = tuple(headers)
        # Set by the parser: what it read (a message.PartialMessage), so a response can be built.
        self.partial: object = None
        super().__init__(f"{self.status} {self.reason}")


def _clean_reason(text: str) -> str:
    """A reason phrase may not contain CR/LF or other controls (RFC 3261 §25.1 Reason-Phrase)."""
    return "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text)[:200]


class SipParseError(SipError):
    """Malformed message: 400 Bad Request, `reason` names the faulty part (RFC 3261 §21.4.1)."""

    def __init__(self, reason: str, *, partial: object = None) -> None:
        super().__init__(SipStatus.BAD_REQUEST, reason)
        self.partial = partial


class VersionNotSupported(SipError):
    """505: the request's SIP-Version is not SIP/2.0 (RFC 3261 §8.2.2... §21.5.6)."""

    def __init__(self, version: str) -> None:
        super().__init__(SipStatus.VERSION_NOT_SUPPORTED, f"Version Not Supported: {version[:40]}")


class BadExtension(SipError):
    """420 with Unsupported listing the option tags we do not support (RFC 3261 §8.2.2.3)."""

    def __init__(self, unsupported: Iterable[str]) -> None:
        self.unsupported = tuple(unsupported)
        super().__init__(SipStatus.BAD_EXTENSION, None,
                         headers=[("Unsupported", tag) for tag in self.unsupported])


class MethodNotAllowed(SipError):
    """405 + Allow: we know the method but do not accept it here (RFC 3261 §8.2.1)."""

    def __init__(self, method: str, allow: Iterable[str]) -> None:
        super().__init__(SipStatus.METHOD_NOT_ALLOWED, None, headers=[("Allow", ", ".join(allow))])
        self.method = method


class MethodNotImplemented(SipError):
    """501 + Allow: we do not know the method at all (RFC 3261 §8.2.1, §21.5.2)."""

    def __init__(self, method: str, allow: Iterable[str]) -> None:
        super().__init__(SipStatus.NOT_IMPLEMENTED, None, headers=[("Allow", ", ".join(allow))])
        self.method = method


class UnsupportedUriScheme(SipError):
    """416: the Request-URI scheme is not one we serve (RFC 3261 §8.2.2.1)."""

    def __init__(self, scheme: str) -> None:
        super().__init__(SipStatus.UNSUPPORTED_URI_SCHEME, None)
        self.scheme = scheme


class UnsupportedMediaType(SipError):
    """415 + Accept (and Accept-Encoding): body type or encoding we cannot read (RFC 3261 §8.2.3)."""

    def __init__(self, accept: Iterable[str], *, encoding: bool = False) -> None:
        hdrs = [("Accept", ", ".join(accept))]
        if encoding:
            hdrs.append(("Accept-Encoding", "identity"))
        super().__init__(SipStatus.UNSUPPORTED_MEDIA_TYPE, None, headers=hdrs)


class MessageTooLarge(SipError):
    """513: the message exceeds our limits (RFC 3261 §21.5.7)."""

    def __init__(self, reason: str = "Message Too Large") -> None:
        super().__init__(SipStatus.MESSAGE_TOO_LARGE, reason)


class CallDoesNotExist(SipError):
    """481: an in-dialog request (To-tag present) or CANCEL matches nothing (RFC 3261 §12.2.2)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(SipStatus.CALL_TRANSACTION_DOES_NOT_EXIST, reason)


class NotAcceptableHere(SipError):
    """488: the session description cannot be accepted (RFC 3261 §21.4.26)."""

    def __init__(self, reason: str | None = None, q850: int | None = 65) -> None:
        super().__init__(SipStatus.NOT_ACCEPTABLE_HERE, reason, q850)


class RequestTerminated(SipError):
    """487: the INVITE was cancelled (RFC 3261 §9.2)."""

    def __init__(self) -> None:
        super().__init__(SipStatus.REQUEST_TERMINATED, None)


class Forbidden(SipError):
    """403: e.g. too many failed authentications from this source (see auth.AuthFailureLimiter)."""

    def __init__(self, reason: str | None = None, q850: int | None = None) -> None:
        super().__init__(SipStatus.FORBIDDEN, reason, q850)


class ServerInternalError(SipError):
    """500, e.g. a CSeq lower than the previous in-dialog request (RFC 3261 §12.2.2)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(SipStatus.SERVER_INTERNAL_ERROR, reason)
