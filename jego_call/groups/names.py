"""[pure] What a group may be called and how many it may hold.

`normalise_group_name(raw)` returns the stored name (NFC, white space collapsed, 1-64 characters
of any script, no control, private-use or bidirectional-override characters) or raises
SignallingError invalid_message. `MAX_MEMBERS` is the most members a group has (creator included).
"""

from __future__ import annotations

import unicodedata

from ..errors import ErrorCode, SignallingError

MAX_NAME = 64
MAX_MEMBERS = 200
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def normalise_group_name(raw: object) -> str:
    if not isinstance(raw, str):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "a group name must be a string")
    name = " ".join(unicodedata.normalize("NFC", raw).split())
    if not name:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "a group needs a name")
    if len(name) > MAX_NAME:
        raise SignallingError(ErrorCode.INVALID_MESSAGE, f"a group name has at most {MAX_NAME} characters")
    if any(unicodedata.category(c) in _BAD_CATEGORIES or c in _BIDI_CONTROLS for c in name):
        raise SignallingError(ErrorCode.INVALID_MESSAGE, "a group name may not contain control characters")
    return name
