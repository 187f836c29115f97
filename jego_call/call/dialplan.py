"""[pure] What a typed phone number is, before anyone dials it: `check(typed, region)`.

The web client's dial pad asks `GET /api/numbers/check` (jego_call/signalling/people.py) as the
user types: the number formatted as typed (phonenumbers' AsYouTypeFormatter, the rules phones
use), its E.164 form and kind, and whether the app can call it. When it cannot, `reason` is the
`EndReason` whose words say why (the same vocabulary as a call's end), so the page says it
before dialling instead of after. The decisions follow the hub's routing of phone calls
(docs/signalling.md "App -> phone"); short service numbers, toll-free and shared-cost numbers get
`service_number`, and unallocated ones `not_found`, because the trunk would refuse them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import phonenumbers

from .. import numbering
from .reasons import EndReason

# What the dial pad accepts: digits, +, * and #, and the separators people type.
DIAL_CHARS: Final = re.compile(r"^[0-9+*#() .\-\u00a0\u3000０-９＋]*$")
SERVICE_KINDS: Final = frozenset({"short", "toll_free", "shared_cost"})
# Kinds that are not a refusal yet: the user is still typing.
TYPING_KINDS: Final = frozenset({"incomplete"})


@dataclass(frozen=True, slots=True)
class DialCheck:
    """The answer for one typed number; `to_wire()` is the JSON the endpoint returns."""

    typed: str
    formatted: str                 # as typed, with the spaces phonenumbers would put there
    e164: str | None               # None when it cannot become a number
    kind: str                      # numbering.KINDS, or "empty"
    callable: bool
    reason: EndReason | None       # why not, when not callable
    complete: bool                 # False while the user is plausibly still typing
    detail: str = ""               # the numbering module's reason, for "details"
    international: str = ""        # "+86 138 0013 8000"
    operator: str | None = None
    operator_zh: str | None = None
    city: str | None = None
    city_zh: str | None = None

    def to_wire(self, price: object = None) -> dict[str, object]:
        words = ({"en": self.reason.words("en", phone=True), "zh": self.reason.words("zh", phone=True)}
                 if self.reason is not None else None)
        return {"typed": self.typed, "formatted": self.formatted, "e164": self.e164, "kind": self.kind,
                "callable": self.callable, "complete": self.complete,
                "reason": self.reason.value if self.reason is not None else None, "words": words,
                "detail": self.detail, "international": self.international, "operator": self.operator,
                "operator_zh": self.operator_zh, "city": self.city, "city_zh": self.city_zh, "price": price}


def format_as_typed(typed: str, region: str = "CN") -> str:
    """`typed` reformatted the way a phone formats digits as they are typed ("138 0013 8000",
    "+86 10 6552 9988"); what is not a digit or a leading + is dropped."""
    formatter = phonenumbers.AsYouTypeFormatter(region)
    out = ""
    for ch in typed.translate(str.maketrans("０１２３４５６７８９＋", "0123456789+")):
        if ch.isdigit() or (ch == "+" and not out):
            out = formatter.input_digit(ch)
    return out.strip()  # a trailing space would come back after every backspace


def check(typed: str, region: str = "CN", allow_international: bool = False) -> DialCheck:
    """Whether the app can call `typed` (what the user typed), and if not, why."""
    typed = typed[:64]
    if not DIAL_CHARS.match(typed):
        return DialCheck(typed, typed, None, "invalid", False, EndReason.INVALID_NUMBER, True,
                         "only digits, +, * and # make a phone number")
    digits = re.sub(r"\D", "", typed.translate(str.maketrans("０１２３４５６７８９", "0123456789")))
    # short numbers (110, 12345, 95588) stay as typed; the rest as a phone would format them
    formatted = digits if len(digits) <= 5 and not typed.lstrip().startswith("+") else format_as_typed(typed, region)
    if not digits:
        return DialCheck(typed, formatted, None, "empty", False, EndReason.INVALID_NUMBER, False)
    if "*" in typed or "#" in typed:  # *, # are keys for menus during a call, not in a number
        return DialCheck(typed, typed, None, "invalid", False, EndReason.INVALID_NUMBER, True,
                         "* and # are for menus during a call")
    if numbering.is_emergency(typed, region):
        return DialCheck(typed, formatted, None, "emergency", False, EndReason.EMERGENCY, True,
                         "emergency number")
    try:
        e164 = numbering.normalise(typed, region)
    except numbering.NumberError as exc:
        return DialCheck(typed, formatted, None, exc.kind, False, EndReason.INVALID_NUMBER,
                         exc.kind not in TYPING_KINDS, exc.message)
    info = numbering.classify(e164)

    def answer(callable_: bool, reason: EndReason | None, complete: bool = True) -> DialCheck:
        return DialCheck(typed, formatted, e164, info.kind, callable_, reason, complete, info.reason,
                         info.international, info.operator, info.operator_zh, info.city, info.city_zh)

    if info.kind == "emergency":
        return answer(False, EndReason.EMERGENCY)
    if info.kind in SERVICE_KINDS:
        return answer(False, EndReason.SERVICE_NUMBER)
    if info.kind in ("invalid", "incomplete"):
        return answer(False, EndReason.INVALID_NUMBER, info.kind not in TYPING_KINDS)
    if info.kind == "unallocated":
        return answer(False, EndReason.NOT_FOUND)
    if info.kind == "foreign" and not allow_international:
        return answer(False, EndReason.REJECTED)
    return answer(True, None)
