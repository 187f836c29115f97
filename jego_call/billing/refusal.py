"""[pure] Why a phone call may not be placed: an end reason plus plain words in en and zh.

`Refusal.words(lang)` is what the caller is told (the hub sends it as `call_ended.detail`);
`rule` names the control that refused, for logs and the fraud counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..call.reasons import EndReason


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused authorisation: `reason` travels as call_ended.reason, `words()` as detail."""

    reason: EndReason
    en: str
    zh: str
    rule: str = ""

    def words(self, lang: str = "en") -> str:
        return self.zh if lang.lower().startswith("zh") else self.en
