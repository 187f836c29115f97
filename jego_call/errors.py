"""Errors that carry their wire code. They are translated to the wire at one boundary each:
signalling errors in `signalling.ws`/`signalling.server`, SIP errors in `bridge.sip`.
"""

from __future__ import annotations

from enum import StrEnum


class JegoError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(JegoError):
    """A configuration key is wrong; `key` names it (dotted, e.g. "http.port")."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error: {key}: {message}")
        self.key = key
        self.message = message


class InvalidTransition(JegoError):
    """A state machine was asked for a move its transition table does not allow."""

    def __init__(self, machine: str, state: object, event: object) -> None:
        super().__init__(f"{machine}: no transition from {state} on {event}")
        self.state = state
        self.event = event


class ErrorCode(StrEnum):
    """Signalling and API error codes; docs/signalling.md lists each one."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    MESSAGE_TOO_LARGE = "message_too_large"
    NOT_AUTHENTICATED = "not_authenticated"
    AUTH_FAILED = "auth_failed"
    ALREADY_AUTHENTICATED = "already_authenticated"
    TOO_MANY_SESSIONS = "too_many_sessions"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_USER = "unknown_user"
    USERNAME_TAKEN = "username_taken"
    INVALID_USERNAME = "invalid_username"
    WEAK_PASSWORD = "weak_password"
    INVALID_DISPLAY_NAME = "invalid_display_name"
    SELF_CALL = "self_call"
    SELF_CONTACT = "self_contact"
    NOT_CONTACT = "not_contact"
    UNAVAILABLE = "unavailable"
    UNKNOWN_CALL = "unknown_call"
    CALL_EXISTS = "call_exists"
    NOT_PARTY = "not_party"
    INVALID_STATE = "invalid_state"
    ALREADY_IN_CALL = "already_in_call"
    INVALID_NUMBER = "invalid_number"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA = "unsupported_media"
    SERVICE_UNAVAILABLE = "service_unavailable"   # shared state (Redis) or database (PostgreSQL) unreachable
    GROUP_FULL = "group_full"
    CALL_FULL = "call_full"
    INTERNAL = "internal"


# HTTP status used when a code travels over the JSON API.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.NOT_AUTHENTICATED: 401,
    ErrorCode.AUTH_FAILED: 401,
    ErrorCode.USERNAME_TAKEN: 409,
    ErrorCode.INVALID_USERNAME: 400,
    ErrorCode.WEAK_PASSWORD: 400,
    ErrorCode.INVALID_DISPLAY_NAME: 400,
    ErrorCode.UNKNOWN_USER: 404,
    ErrorCode.SELF_CONTACT: 400,
    ErrorCode.NOT_CONTACT: 403,
    ErrorCode.UNAVAILABLE: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA: 415,
    ErrorCode.GROUP_FULL: 409,
    ErrorCode.CALL_FULL: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class SignallingError(JegoError):
    """An error a client caused; becomes {"type":"error","code":...} or a JSON API error."""

    def __init__(self, code: ErrorCode, message: str, *, call_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.call_id = call_id

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    def to_wire(self, ref: object = None) -> dict[str, object]:
        msg: dict[str, object] = {"type": "error", "code": str(self.code), "message": self.message}
        if self.call_id is not None:
            msg["call_id"] = self.call_id
        if ref is not None:
            msg["ref"] = ref
        return msg
