"""[pure] Why a call ended: one vocabulary for the hub, the gateway, the carrier, the dialer and
the web client.

`EndReason` is an Enum whose values are what travels in `call_ended.reason` (docs/signalling.md).
Each member carries the SIP final response and Q.850 cause it is sent as when a call that has
not been answered must be refused on a SIP leg (`sip_code`, `q850`), the dialer's verdict class
(`outcome`, which decides `jego dial`'s exit code) and plain words in English and Chinese
(`words(lang)`): by default as the caller is told, with `phone=True` when the far end is a phone
number, and with `callee=True` as the person who was called sees it in their history ("Missed
call"). `missed` marks the reasons that are a missed call for the callee. `from_sip(code, cause)` goes the other way: a SIP final response and its
RFC 3326 Reason cause to the reason a user is told. The web client reads `catalogue()` from
`GET /api/reasons`, so no table is copied by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    """What one end reason means on the wire and to people."""

    sip_code: int | None   # final response for an unanswered SIP leg (0: BYE; None: no SIP at all)
    q850: int | None       # Q.850 cause that goes with it (RFC 3326 Reason header)
    outcome: str           # the dialer's verdict: answered busy declined no_answer unavailable
    #                        invalid_number cancelled unreachable failed
    en: str
    zh: str
    phone_en: str = ""     # other words when the far end is a phone number (default: en)
    phone_zh: str = ""
    callee_en: str = ""    # words for the callee's side of the call (default: en)
    callee_zh: str = ""
    missed: bool = False   # the callee missed the call (they neither answered nor declined it)


class EndReason(StrEnum):
    """Every way a call can end. The value is the wire word."""

    HANGUP = "hangup"
    DECLINED = "declined"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    UNAVAILABLE = "unavailable"
    CANCELLED = "cancelled"
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    CONNECTION_LOST = "connection_lost"
    MAX_DURATION = "max_duration"
    MEDIA_TIMEOUT = "media_timeout"
    ACK_TIMEOUT = "ack_timeout"
    SERVER_SHUTDOWN = "server_shutdown"
    FAILED = "failed"
    # phone calls
    INVALID_NUMBER = "invalid_number"
    NOT_FOUND = "not_found"
    NUMBER_CHANGED = "number_changed"
    SWITCHED_OFF = "switched_off"
    TIMEOUT = "timeout"
    EMERGENCY = "emergency"
    SERVICE_NUMBER = "service_number"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    CONGESTION = "congestion"
    # group calls: one member's part ends, the call goes on
    LEFT = "left"
    REMOVED = "removed"
    # prepaid credit and toll-fraud controls (jego_call/billing): refused before any SIP is
    # sent, or (credit_exhausted, limit_reached) cut by a BYE with cause 16
    INSUFFICIENT_CREDIT = "insufficient_credit"
    CREDIT_EXHAUSTED = "credit_exhausted"
    NO_RATE = "no_rate"
    DESTINATION_BARRED = "destination_barred"
    SUSPENDED = "suspended"
    LIMIT_REACHED = "limit_reached"
    # ended in the client before signalling (web: getUserMedia)
    MEDIA_DENIED = "media_denied"
    MEDIA_FAILED = "media_failed"

    @property
    def info(self) -> ReasonInfo:
        return REASONS[self]

    @property
    def sip_code(self) -> int | None:
        return REASONS[self].sip_code

    @property
    def q850(self) -> int | None:
        return REASONS[self].q850

    @property
    def outcome(self) -> str:
        return REASONS[self].outcome

    @property
    def missed(self) -> bool:
        return REASONS[self].missed

    def words(self, lang: str = "en", *, phone: bool = False, callee: bool = False) -> str:
        """Plain words for people, in `lang` ("en" or "zh"; anything else: English); `phone` when
        the far end is a phone number ("The number is busy" rather than "Busy"); `callee` for the
        side that was called ("Missed call" rather than "No answer")."""
        info = REASONS[self]
        if lang.lower().startswith("zh"):
            return (callee and info.callee_zh) or (phone and info.phone_zh) or info.zh
        return (callee and info.callee_en) or (phone and info.phone_en) or info.en

    @classmethod
    def parse(cls, value: object, default: EndReason | None = None) -> EndReason:
        """The member for a wire word; `default` (or FAILED) for anything unknown."""
        try:
            return cls(str(value))
        except ValueError:
            return default if default is not None else cls.FAILED


R = EndReason

REASONS: Final[dict[EndReason, ReasonInfo]] = {
    R.HANGUP: ReasonInfo(0, 16, "answered", "Call ended", "通话已结束"),
    R.DECLINED: ReasonInfo(603, 21, "declined", "Call declined", "对方拒绝了通话",
                           "The call was declined", "对方拒绝接听",
                           callee_en="You declined the call", callee_zh="您拒绝了来电"),
    R.BUSY: ReasonInfo(486, 17, "busy", "Busy: they are in another call", "对方正在通话中",
                       "The number is busy", "您拨打的号码正忙",
                       callee_en="Missed call: you were in another call", callee_zh="未接来电：您当时正在通话",
                       missed=True),
    R.NO_ANSWER: ReasonInfo(480, 19, "no_answer", "No answer", "无人接听",
                            callee_en="Missed call", callee_zh="未接来电", missed=True),
    R.UNAVAILABLE: ReasonInfo(480, 20, "unavailable", "Not available right now", "对方暂时无法接通",
                              callee_en="Missed call", callee_zh="未接来电", missed=True),
    R.CANCELLED: ReasonInfo(487, 16, "cancelled", "Call cancelled", "通话已取消",
                            callee_en="Missed call", callee_zh="未接来电", missed=True),
    R.ANSWERED_ELSEWHERE: ReasonInfo(None, 26, "answered", "Answered on another device", "已在其他设备上接听"),
    R.CONNECTION_LOST: ReasonInfo(480, 41, "failed", "Connection lost", "连接已断开"),
    R.MAX_DURATION: ReasonInfo(0, 102, "answered", "The call reached its maximum length", "通话已达到最长时限"),
    R.MEDIA_TIMEOUT: ReasonInfo(0, 41, "answered", "The call was cut off: no sound was coming through",
                                "通话中断：长时间没有声音"),
    R.ACK_TIMEOUT: ReasonInfo(0, 102, "failed", "The call dropped while it was connecting", "接通时连接中断"),
    R.SERVER_SHUTDOWN: ReasonInfo(503, 41, "unreachable", "The service is restarting", "服务正在重启"),
    R.FAILED: ReasonInfo(480, 31, "failed", "The call could not be completed", "通话未能接通"),
    R.INVALID_NUMBER: ReasonInfo(484, 28, "invalid_number", "The number is incomplete or not valid",
                                 "号码不完整或无效"),
    R.NOT_FOUND: ReasonInfo(404, 1, "invalid_number", "The number does not exist", "您拨打的号码不存在"),
    R.NUMBER_CHANGED: ReasonInfo(410, 22, "invalid_number", "The number has changed", "您拨打的号码已改号"),
    R.SWITCHED_OFF: ReasonInfo(480, 20, "unavailable", "The phone is switched off", "对方已关机"),
    R.TIMEOUT: ReasonInfo(408, 18, "no_answer", "The phone cannot be reached", "对方暂时无法接通"),
    R.EMERGENCY: ReasonInfo(None, None, "failed", "Emergency numbers cannot be called from the app: use a local phone",
                            "无法通过本应用拨打紧急电话，请使用当地电话"),
    R.SERVICE_NUMBER: ReasonInfo(None, None, "invalid_number",
                                 "Service numbers in China cannot be called from the app: use a local phone",
                                 "无法通过本应用拨打中国的服务号码，请使用当地电话"),
    R.REJECTED: ReasonInfo(403, 21, "failed", "This call is not allowed", "不允许拨打此电话"),
    R.UNREACHABLE: ReasonInfo(503, 41, "unreachable", "Phone calls are not available right now, try again later",
                              "暂时无法拨打电话，请稍后再试"),
    R.CONGESTION: ReasonInfo(503, 34, "unreachable", "The phone network is busy, try again later", "网络忙，请稍后再拨"),
    R.LEFT: ReasonInfo(0, 16, "answered", "You left the group call", "您已退出群通话"),
    R.REMOVED: ReasonInfo(0, 16, "failed", "You are no longer a member of this group", "您已不是该群的成员"),
    R.INSUFFICIENT_CREDIT: ReasonInfo(None, None, "failed", "Not enough credit for this call: top up to call",
                                      "余额不足，请充值后再拨打"),
    R.CREDIT_EXHAUSTED: ReasonInfo(0, 16, "answered", "Your credit ran out, so the call ended",
                                   "您的余额已用完，通话已结束"),
    R.NO_RATE: ReasonInfo(None, None, "failed", "There is no rate for this destination, so it cannot be called",
                          "此目的地没有资费，无法拨打"),
    R.DESTINATION_BARRED: ReasonInfo(None, None, "failed", "Calls to this destination are not allowed",
                                     "不允许拨打此目的地"),
    R.SUSPENDED: ReasonInfo(None, None, "failed", "Phone calls from your account are suspended: contact support",
                            "您账户的电话呼叫功能已被暂停，请联系客服"),
    R.LIMIT_REACHED: ReasonInfo(0, 16, "failed", "You have reached a limit on phone calls: try again later",
                                "您已达到电话呼叫上限，请稍后再试"),
    R.MEDIA_DENIED: ReasonInfo(None, None, "failed", "Camera or microphone permission denied", "未获得摄像头或麦克风权限"),
    R.MEDIA_FAILED: ReasonInfo(None, None, "failed", "Could not start audio or video", "无法启动音频或视频"),
}

# Decided by the server's billing and fraud controls, never by a callee or a gateway.
BILLING_REASONS: Final = frozenset({R.INSUFFICIENT_CREDIT, R.CREDIT_EXHAUSTED, R.NO_RATE, R.DESTINATION_BARRED,
                                    R.SUSPENDED, R.LIMIT_REACHED})

# What a callee may give in `decline`: users "declined"/"busy", gateways any set-up failure.
USER_DECLINE_REASONS: Final = frozenset({R.DECLINED, R.BUSY})
GATEWAY_DECLINE_REASONS: Final = frozenset(REASONS) - BILLING_REASONS - {
    R.HANGUP, R.ANSWERED_ELSEWHERE, R.CONNECTION_LOST, R.MAX_DURATION, R.MEDIA_TIMEOUT, R.ACK_TIMEOUT,
    R.SERVER_SHUTDOWN, R.MEDIA_DENIED, R.MEDIA_FAILED, R.SERVICE_NUMBER, R.LEFT, R.REMOVED}

# A SIP final response (with its Q.850 cause) -> the reason (RFC 3398 §8.2.6.1, carrier.md §4.3).
_BY_CODE_AND_CAUSE: Final[dict[tuple[int, int], EndReason]] = {
    (480, 19): R.NO_ANSWER, (480, 18): R.TIMEOUT, (480, 20): R.SWITCHED_OFF, (480, 16): R.NO_ANSWER,
    (404, 1): R.NOT_FOUND, (404, 3): R.UNREACHABLE, (404, 2): R.UNREACHABLE, (484, 28): R.INVALID_NUMBER,
    (403, 21): R.REJECTED, (603, 21): R.DECLINED, (486, 17): R.BUSY, (600, 17): R.BUSY,
    (503, 34): R.CONGESTION, (503, 42): R.CONGESTION, (503, 41): R.UNREACHABLE, (503, 38): R.UNREACHABLE,
    (408, 18): R.TIMEOUT, (408, 102): R.TIMEOUT, (504, 102): R.TIMEOUT, (410, 22): R.NUMBER_CHANGED,
}
_BY_CAUSE: Final[dict[int, EndReason]] = {
    1: R.NOT_FOUND, 2: R.UNREACHABLE, 3: R.UNREACHABLE, 16: R.HANGUP, 17: R.BUSY, 18: R.TIMEOUT,
    19: R.NO_ANSWER, 20: R.SWITCHED_OFF, 21: R.REJECTED, 22: R.NUMBER_CHANGED, 27: R.UNREACHABLE,
    28: R.INVALID_NUMBER, 31: R.FAILED, 34: R.CONGESTION, 38: R.UNREACHABLE, 41: R.FAILED, 42: R.CONGESTION,
    102: R.TIMEOUT,
}
_BY_CODE: Final[dict[int, EndReason]] = {
    404: R.NOT_FOUND, 604: R.NOT_FOUND, 485: R.NOT_FOUND, 484: R.INVALID_NUMBER, 410: R.NUMBER_CHANGED,
    486: R.BUSY, 600: R.BUSY, 480: R.NO_ANSWER, 408: R.TIMEOUT, 504: R.TIMEOUT, 403: R.REJECTED,
    603: R.DECLINED, 503: R.CONGESTION, 502: R.UNREACHABLE, 487: R.CANCELLED,
}


def from_sip(code: int | None, cause: int | None = None) -> EndReason:
    """The reason for a SIP final response `code` (0 or None: a BYE) with its Q.850 `cause`.

    The (code, cause) pair decides first, then the cause alone (a BYE, or a code we do not
    know), then the code; 480 + 19 is no_answer, 480 + 20 switched_off, 404 + 1 not_found.
    """
    if code and cause is not None and (code, cause) in _BY_CODE_AND_CAUSE:
        return _BY_CODE_AND_CAUSE[(code, cause)]
    if not code or code < 300:
        return R.HANGUP if cause in (None, 16) else _BY_CAUSE.get(cause, R.FAILED)
    if code in _BY_CODE and (cause is None or cause not in _BY_CAUSE or code == 487):
        return _BY_CODE[code]
    if cause is not None and cause in _BY_CAUSE and cause != 16:
        return _BY_CAUSE[cause]
    return _BY_CODE.get(code, R.FAILED)


def catalogue() -> dict[str, dict[str, object]]:
    """Every reason with its codes and words, as `GET /api/reasons` serves it to the web client."""
    return {r.value: {"sip_code": i.sip_code, "q850_cause": i.q850, "outcome": i.outcome, "en": i.en, "zh": i.zh,
                      "phone_en": i.phone_en or i.en, "phone_zh": i.phone_zh or i.zh,
                      "callee_en": i.callee_en or i.en, "callee_zh": i.callee_zh or i.zh, "missed": i.missed}
            for r, i in REASONS.items()}
