"""[pure] The messaging WebSocket types (docs/signalling.md, ## Messaging): send_message,
receipt and sync, parsed into frozen dataclasses and registered with `@message`. Each names its
conversation by `to`/`with` (a user) or `group` (a group id, ## Groups).

Importing this module registers the parsers; `service.setup_messaging` routes the types.
Limits that come from config (max_text_chars) are checked by the handler, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import ErrorCode, SignallingError
from ..signalling.messages import field_str, message

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MEDIA_ID_RE = re.compile(r"^[0-9a-f]{32}$")
GROUP_ID_RE = re.compile(r"^g[0-9a-f]{16}$")  # "g" and 16 hex digits
MAX_TEXT_HARD = 60_000      # characters; the configured messaging.max_text_chars is lower
MAX_SYNC_CONVERSATIONS = 1000
RECEIPT_STATES = ("delivered", "read")


@dataclass(frozen=True, slots=True)
class SendMessage:
    client_id: str
    to: str                  # "" when `group` is set
    text: str | None
    media_id: str | None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    with_: str               # "" when `group` is set
    state: str      # "delivered" or "read"
    up_to_seq: int
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Sync:
    after: tuple[tuple[str, int], ...]   # (peer, after_seq) per conversation the client knows
    groups: tuple[tuple[str, int], ...] = ()   # (group id, after_seq)


def group_id(d: dict[str, Any], name: str = "group") -> str:
    """A group id field ("g" + 16 hex digits)."""
    return str(field_str(d, name, max_len=17, min_len=17, pattern=GROUP_ID_RE))


def _target(d: dict[str, Any], peer_field: str) -> tuple[str, str | None]:
    """(peer, group): exactly one of `peer_field` (a username) and `group`."""
    if (d.get(peer_field) is None) == (d.get("group") is None):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"give exactly one of {peer_field!r} and 'group'")
    if d.get("group") is not None:
        return "", group_id(d)
    return _peer(d, peer_field), None


def _int(d: dict[str, Any], name: str, minimum: int) -> int:
    v = d.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v < 1 << 62:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"field {name!r} must be an integer >= {minimum}")
    return v


def _peer(d: dict[str, Any], name: str) -> str:
    return str(field_str(d, name, max_len=64)).strip().lower()


@message("send_message")
def _send_message(d: dict[str, Any]) -> SendMessage:
    client_id = str(field_str(d, "client_id", max_len=64, min_len=8, pattern=CLIENT_ID_RE))
    to, group = _target(d, "to")
    text = d.get("text")
    media_id = d.get("media_id")
    if (text is None) == (media_id is None):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "give exactly one of 'text' and 'media_id'")
    if text is not None:
        if not isinstance(text, str):
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'text' must be a string")
        if not text.strip():
            raise SignallingError(ErrorCode.INVALID_MESSAGE, "text is empty")
        if len(text) > MAX_TEXT_HARD:
            raise SignallingError(ErrorCode.TOO_LARGE, f"text is longer than {MAX_TEXT_HARD} characters")
    if media_id is not None:
        media_id = str(field_str(d, "media_id", max_len=32, min_len=32, pattern=MEDIA_ID_RE))
    return SendMessage(client_id, to, text, media_id, group)


@message("receipt")
def _receipt(d: dict[str, Any]) -> Receipt:
    state = d.get("state")
    if state not in RECEIPT_STATES:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "field 'state' must be 'delivered' or 'read'")
    peer, group = _target(d, "with")
    return Receipt(peer, str(state), _int(d, "up_to_seq", 1), group)


@message("sync")
def _sync(d: dict[str, Any]) -> Sync:
    convs = d.get("conversations", [])
    if not isinstance(convs, list) or len(convs) > MAX_SYNC_CONVERSATIONS:
        raise SignallingError(ErrorCode.INVALID_MESSAGE,
                              f"field 'conversations' must be a list of at most {MAX_SYNC_CONVERSATIONS}")
    after: list[tuple[str, int]] = []
    groups: list[tuple[str, int]] = []
    for c in convs:
        if not isinstance(c, dict):
            raise SignallingError(ErrorCode.INVALID_MESSAGE,
                                  "each conversation must be {\"with\" or \"group\", \"after_seq\"}")
        peer, group = _target(c, "with")
        if group is not None:
            groups.append((group, _int(c, "after_seq", 0)))
        else:
            after.append((peer, _int(c, "after_seq", 0)))
    return Sync(tuple(after), tuple(groups))
